"""The comparison table: parameters, GFLOPs and latency of every registered backbone, measured honestly.

    python -m lightdet.benchmark                          # every variant, full detector (80 classes, scale n)
    python -m lightdet.benchmark --part backbone repvit_m0_9 mobilevit_xxs --runs 20 --csv runs/backbones.csv
    python -m lightdet.benchmark cspdarknet emo_1m --necks   # each name with every neck option (lightdet.necks)
    python -m lightdet.benchmark cspdarknet --scale s --necks
    python -m lightdet.benchmark --part train             # training images/s of each family, float32 and bf16

Latency is the median of `--runs` timed forward passes at batch 1 after `--warmup` untimed ones, in eval mode
under `torch.inference_mode`, unfused and after `fuse()`; CUDA latency is added when a GPU is present. Model
and input are channels-last, the layout oneDNN and cuDNN convolve fastest (README has the gain measured here).
With the `export` extra installed, the fused model is also exported to ONNX and timed in ONNX Runtime on the
CPU with the same number of threads (`ort_cpu_ms`).

`--part train` measures training instead: images per second of one step (forward, the loss in float32,
backward, AdamW) at --batch random images with three boxes each, at each family's `shapes` recipe size unless
--img is given, median of `--runs` steps, in float32 and, where the CPU has native bf16, under bf16 autocast
(as train.py --amp runs it). The table is printed as Markdown, and written as CSV only where --csv says.
"""
import argparse
import csv
import importlib.util
import statistics
import tempfile
import time
from pathlib import Path

import torch

from .backbones import BACKBONES, DEFAULT_VARIANT, VARIANTS
from .cli import HelpFormatter, image_size, non_negative_int, positive_int, round_image_size
from .layers import SCALES
from .losses import build_loss
from .memory import keep_freed_memory
from .model import HEADS, Detector, build_model, model_info
from .necks import NECK_OPTIONS
from .optim import build_optimizer
from .precision import forward_loss, native_bf16
from .recipes import recipe_for

SHAPES_CLASSES = 6


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


def median_ms(step, runs, warmup, cuda=False):
    """The median time of `runs` calls of `step()` after `warmup` untimed ones, in milliseconds."""
    synchronize = torch.cuda.synchronize if cuda else (lambda: None)
    times = []
    for i in range(warmup + runs):
        synchronize()
        start = time.perf_counter()
        step()
        synchronize()
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def median_latency_ms(module, images, runs, warmup):
    with torch.inference_mode():
        return median_ms(lambda: module(images), runs, warmup, images.is_cuda)


def training_images_per_second(build_kwargs, imgsz, batch, amp, runs, warmup):
    """Images per second of a training step on `batch` random images with three random boxes each."""
    torch.manual_seed(0)
    model = build_model(num_classes=SHAPES_CLASSES, **build_kwargs).train().to(memory_format=torch.channels_last)
    criterion = build_loss(model, SHAPES_CLASSES, imgsz)
    optimizer = build_optimizer(model, "AdamW", lr=1e-4)
    images = torch.rand(batch, 3, imgsz, imgsz).contiguous(memory_format=torch.channels_last)
    boxes = torch.rand(batch * 3, 4) * torch.tensor([0.6, 0.6, 0.3, 0.3]) + torch.tensor([0.2, 0.2, 0.05, 0.05])
    targets = torch.cat((torch.arange(batch).repeat_interleave(3)[:, None],
                         torch.randint(SHAPES_CLASSES, (batch * 3, 1)), boxes), 1).float()

    def step():
        loss, _ = forward_loss(model, criterion, images, targets, amp)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return batch / median_ms(step, runs, warmup) * 1000


def measure_training(label, build_kwargs, imgsz, batch, runs, warmup, bf16):
    size = imgsz or recipe_for("shapes", build_kwargs["backbone"], build_kwargs.get("head", "anchor"))["img"]
    row = {"model": label, "img": size, "fp32_img_s": training_images_per_second(build_kwargs, size, batch, False,
                                                                                 runs, warmup)}
    if bf16:
        row["bf16_img_s"] = training_images_per_second(build_kwargs, size, batch, True, runs, warmup)
        row["bf16_speedup"] = row["bf16_img_s"] / row["fp32_img_s"]
    return row


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
    parser.add_argument("--part", choices=("detector", "backbone", "train"), default="detector",
                        help="time the whole detector (neck and head at --scale, 80 classes) or the backbone alone, "
                             "or measure training speed (6 classes, as on shapes)")
    parser.add_argument("--scale", default="n", choices=list(SCALES),
                        help="neck size (and CSPDarknet's, for the name cspdarknet)")
    parser.add_argument("--necks", action="store_true", help="measure each name with every neck option")
    parser.add_argument("--head", choices=HEADS, default="anchor", help="the detector's head (--part detector)")
    parser.add_argument("--img", type=image_size,
                        help="square input size, a multiple of 32 (default: 640; --part train: the shapes recipe's)")
    parser.add_argument("--batch", type=positive_int, default=16, help="training batch (--part train)")
    parser.add_argument("--runs", type=positive_int, default=10, help="timed forward passes (the median is kept)")
    parser.add_argument("--warmup", type=non_negative_int, default=3, help="untimed passes before timing")
    parser.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--csv", help="also write the table to this CSV file")
    args = parser.parse_args(argv)
    keep_freed_memory()
    if args.img:
        args.img = round_image_size(args.img)
    elif args.part != "train":
        args.img = 640
    if args.threads:
        torch.set_num_threads(args.threads)
    unknown = [n for n in args.names if n not in BACKBONES]
    if unknown:
        parser.error(f"unknown backbone(s) {', '.join(unknown)}; valid names: {', '.join(sorted(BACKBONES))}")
    if args.necks and (args.part == "backbone" or args.head != "anchor"):
        parser.error("--necks compares the anchor head's neck options; drop --part backbone and --head")
    if args.part == "backbone" and args.head != "anchor":
        parser.error("--head is for --part detector or train")

    rows, bf16 = [], native_bf16()
    if args.part == "train" and not bf16:
        print("this CPU has no native bfloat16 (avx512_bf16 / amx_bf16): float32 only")
    default_names = list(DEFAULT_VARIANT if args.part == "train" else VARIANTS)
    for label, build_kwargs in models(args.names or default_names, args.scale, args.necks, args.head):
        if args.part == "train":
            rows.append(measure_training(label, build_kwargs, args.img, args.batch, args.runs, args.warmup, bf16))
        else:
            rows.append(measure(label, build_kwargs, args.part, args.img, args.runs, args.warmup))
        print(f"{label}: " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                       for k, v in rows[-1].items() if k != "model"), flush=True)
    size = f"{args.img}×{args.img}" if args.img else "the shapes recipe's size"
    batch = f"training, batch {args.batch}" if args.part == "train" else f"{args.part}, batch 1"
    print(f"\n{batch}, {size}, {torch.get_num_threads()} CPU threads, median of {args.runs}\n")
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
