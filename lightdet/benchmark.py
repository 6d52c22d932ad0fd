"""The comparison table: parameters, GFLOPs and latency of every registered backbone, measured honestly.

    python -m lightdet.benchmark                          # every variant, full detector (80 classes, scale n)
    python -m lightdet.benchmark --part backbone repvit_m0_9 mobilevit_xxs --runs 20

Latency is the median of `--runs` timed forward passes at batch 1 after `--warmup` untimed ones, in eval mode
under `torch.inference_mode`, unfused and after `fuse()`; CUDA latency is added when a GPU is present. Model
and input are channels-last, the layout oneDNN and cuDNN convolve fastest (1.1-1.4× here on the CPU).
With the `export` extra installed, the fused model is also exported to ONNX and timed in ONNX Runtime on the
CPU with the same number of threads (`ort_cpu_ms`).
"""
import argparse
import csv
import importlib.util
import statistics
import tempfile
import time
from pathlib import Path

import torch

from .backbones import BACKBONES
from .model import Detector, build_model, model_info


def variant_names():
    """Registered names that are variants, not family aliases (an alias points at a differently named constructor)."""
    return [name for name, build in BACKBONES.items() if build.__name__ == name]


def median_latency_ms(module, images, runs, warmup):
    synchronize = torch.cuda.synchronize if images.is_cuda else (lambda: None)
    times = []
    with torch.inference_mode():
        for i in range(warmup + runs):
            synchronize()
            start = time.perf_counter()
            module(images)
            synchronize()
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def measure(name, part, imgsz, runs, warmup):
    model = build_model(name, num_classes=80, scale="n").eval().to(memory_format=torch.channels_last)
    module = model if part == "detector" else model.backbone
    info = model_info(module, imgsz)
    images = torch.rand(1, 3, imgsz, imgsz).contiguous(memory_format=torch.channels_last)
    row = {"model": name, "params_M": info["params"] / 1e6, "gflops": info["gflops"],
           "cpu_ms": median_latency_ms(module, images, runs, warmup)}
    if torch.cuda.is_available():
        row["cuda_ms"] = median_latency_ms(module.cuda(), images.cuda(), runs, warmup)
        module.cpu()
    model.fuse()
    row["cpu_fused_ms"] = median_latency_ms(module, images, runs, warmup)
    if onnxruntime_installed():
        row["ort_cpu_ms"] = onnxruntime_latency_ms(module, images, runs, warmup)
    return row


def onnxruntime_installed():
    return all(importlib.util.find_spec(name) for name in ("onnx", "onnxruntime"))


def onnxruntime_latency_ms(module, images, runs, warmup):
    """`module` (fused, eval) exported as export.py exports it, timed in ONNX Runtime on the CPU with torch's
    number of threads. A detector is exported with its decoded output only, as export.py writes it."""
    from .export import ExportView, export_module   # the export extra, imported only when installed
    from .runtime import ort_session
    module = ExportView(module) if isinstance(module, Detector) else module
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        export_module(module, images.cpu(), path)
        session = ort_session(path, threads=torch.get_num_threads())
    feed = {"images": images.cpu().numpy()}
    return median_latency_ms(lambda _: session.run(None, feed), images.cpu(), runs, warmup)


def markdown(rows):
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in row.values()) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="registered names (default: every variant)")
    parser.add_argument("--part", choices=("detector", "backbone"), default="detector")
    parser.add_argument("--img", type=int, default=640)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--csv", default="runs/benchmark.csv")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    unknown = [n for n in args.names if n not in BACKBONES]
    if unknown:
        parser.error(f"unknown backbone(s) {', '.join(unknown)}; valid names: {', '.join(sorted(BACKBONES))}")

    rows = []
    for name in args.names or variant_names():
        rows.append(measure(name, args.part, args.img, args.runs, args.warmup))
        print(f"{name}: " + ", ".join(f"{k} {v:.2f}" for k, v in rows[-1].items() if k != "model"), flush=True)
    print(f"\n{args.part}, {args.img}×{args.img}, batch 1, {torch.get_num_threads()} CPU threads, "
          f"median of {args.runs}\n")
    print(markdown(rows))
    path = Path(args.csv)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"\nsaved {path}")


if __name__ == "__main__":
    main()
