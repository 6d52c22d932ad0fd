"""The comparison table: parameters, GFLOPs and latency of every registered backbone, measured honestly.

    python -m lightdet.benchmark                          # every variant, full detector (80 classes, scale n)
    python -m lightdet.benchmark --part backbone repvit_m0_9 mobilevit_xxs --runs 20 --csv runs/backbones.csv
    python -m lightdet.benchmark cspdarknet emo_1m --necks   # each name with every neck option (lightdet.necks)
    python -m lightdet.benchmark cspdarknet --scale s --necks

Latency is the median of `--runs` timed forward passes at batch 1 after `--warmup` untimed ones, in eval mode
under `torch.inference_mode`, unfused and after `fuse()`; CUDA latency is added when a GPU is present. Model
and input are channels-last, the layout oneDNN and cuDNN convolve fastest (README has the gain measured here).
With the `export` extra installed, the fused model is also exported to ONNX and timed in ONNX Runtime on the
CPU with the same number of threads (`ort_cpu_ms`). The table is printed as Markdown, and written as CSV only
where --csv says.
"""
import argparse
import csv
import importlib.util
import statistics
import tempfile
import time
from pathlib import Path

import torch

from .backbones import BACKBONES, VARIANTS
from .cli import HelpFormatter, image_size, non_negative_int, positive_int, round_image_size
from .layers import SCALES
from .model import HEADS, Detector, build_model, model_info
from .necks import NECK_OPTIONS


def models(names, scale, necks, head="anchor"):
    """(label, build_model kwargs) of each row: every name, with every neck option when `necks` is set, or with
    RT-DETR's encoder and decoder for `head="rtdetr"`."""
    for name in names:
        if head == "rtdetr":
            yield f"{name} + RT-DETR", dict(backbone=name, head=head)
            continue
        for block, attention in NECK_OPTIONS if necks else NECK_OPTIONS[:1]:
            label = name + (f", scale {scale}" if scale != "n" else "")
            if necks:
                label += f", {block}" + (f" + {attention}" if attention else "")
            yield label, dict(backbone=name, scale=scale, neck_block=block, neck_attention=attention)


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


def measure(label, build_kwargs, part, imgsz, runs, warmup):
    model = build_model(num_classes=80, **build_kwargs).eval().to(memory_format=torch.channels_last)
    module = model if part == "detector" else model.backbone
    info = model_info(module, imgsz)
    images = torch.rand(1, 3, imgsz, imgsz).contiguous(memory_format=torch.channels_last)
    row = {"model": label, "params_M": info["params"] / 1e6, "gflops": info["gflops"],
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("names", nargs="*", help="registered names (default: every variant, no family aliases)")
    parser.add_argument("--part", choices=("detector", "backbone"), default="detector",
                        help="time the whole detector (neck and head at --scale, 80 classes) or the backbone alone")
    parser.add_argument("--scale", default="n", choices=list(SCALES),
                        help="neck size (and CSPDarknet's, for the name cspdarknet)")
    parser.add_argument("--necks", action="store_true", help="measure each name with every neck option")
    parser.add_argument("--head", choices=HEADS, default="anchor", help="the detector's head (--part detector)")
    parser.add_argument("--img", type=image_size, default=640, help="square input size (a multiple of 32)")
    parser.add_argument("--runs", type=positive_int, default=10, help="timed forward passes (the median is kept)")
    parser.add_argument("--warmup", type=non_negative_int, default=3, help="untimed passes before timing")
    parser.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--csv", help="also write the table to this CSV file")
    args = parser.parse_args(argv)
    args.img = round_image_size(args.img)
    if args.threads:
        torch.set_num_threads(args.threads)
    unknown = [n for n in args.names if n not in BACKBONES]
    if unknown:
        parser.error(f"unknown backbone(s) {', '.join(unknown)}; valid names: {', '.join(sorted(BACKBONES))}")
    if args.necks and (args.part == "backbone" or args.head != "anchor"):
        parser.error("--necks compares the anchor head's neck options; drop --part backbone and --head")

    rows = []
    for label, build_kwargs in models(args.names or list(VARIANTS), args.scale, args.necks, args.head):
        rows.append(measure(label, build_kwargs, args.part, args.img, args.runs, args.warmup))
        print(f"{label}: " + ", ".join(f"{k} {v:.2f}" for k, v in rows[-1].items() if k != "model"), flush=True)
    print(f"\n{args.part}, {args.img}×{args.img}, batch 1, {torch.get_num_threads()} CPU threads, "
          f"median of {args.runs}\n")
    print(markdown(rows))
    if args.csv:
        path = Path(args.csv)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print(f"\nsaved {path}")
    return rows


if __name__ == "__main__":
    main()
