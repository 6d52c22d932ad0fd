"""Timing of lightdet's NMS and YOLOv5 loss on the CPU (a script, not a test).

    python benchmarks/nms_loss.py                  # 1 then 2 threads, median of 10 runs after warm-up
    python benchmarks/nms_loss.py --threads 2

Measure on a quiet machine. On a 2-core machine shared with other jobs, OpenMP's default busy-waiting makes
2 threads up to 100x slower than 1 (the spinning threads take the core the working one needs); there, run it
with OMP_WAIT_POLICY=PASSIVE. On a quiet machine PASSIVE makes 2 threads about 3x slower instead.

Prints:
- `nms` on 1k / 10k / 30k random boxes in a 640×640 image (side 8..160 px, random scores, IoU 0.45);
- `non_max_suppression` on one 640×640 map of 25,200 rows × 85 (80 classes) where about 19k rows pass
  conf 0.25: the case where YOLOv5's single class-offset NMS takes ~350-430 ms on this CPU;
- the YOLOv5 loss (CIoU) for a batch of 16 at 640 with ~100 targets per image, forward and forward+backward.
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lightdet.losses import YOLOLoss  # noqa: E402
from lightdet.nms import nms, non_max_suppression  # noqa: E402

ANCHORS = [[(10, 13), (16, 30), (33, 23)], [(30, 61), (62, 45), (59, 119)], [(116, 90), (156, 198), (373, 326)]]
STRIDES = (8, 16, 32)


def median_ms(fn, runs=10, warmup_s=0.5):
    """Median wall time in ms. Warm-up runs for at least warmup_s: the first calls in a process pay for
    thread-pool start and fresh memory pages, by hundreds of ms on a busy machine."""
    start = time.perf_counter()
    while time.perf_counter() - start < warmup_s:
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def random_boxes(n, generator, size=640, min_side=8, max_side=160):
    """`Tensor[n, 4]` xyxy boxes with uniform centres and sides, and `Tensor[n]` uniform scores."""
    centre = torch.rand(n, 2, generator=generator) * size
    side = min_side + torch.rand(n, 2, generator=generator) * (max_side - min_side)
    return torch.cat((centre - side / 2, centre + side / 2), 1), torch.rand(n, generator=generator)


def prediction_map(generator, rows=25200, num_classes=80):
    """A decoded `[1, rows, 5 + nc]` map: uniform boxes, objectness and class probabilities."""
    boxes, _ = random_boxes(rows, generator)
    cxcywh = torch.cat(((boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]), 1)
    scores = torch.rand(rows, 1 + num_classes, generator=generator)
    return torch.cat((cxcywh, scores), 1)[None]


def run(runs):
    """Time everything once with the current thread setting."""
    generator = torch.Generator().manual_seed(0)

    for n in (1000, 10000, 30000):
        boxes, scores = random_boxes(n, generator)
        kept = len(nms(boxes, scores, 0.45))
        ms = median_ms(lambda: nms(boxes, scores, 0.45), runs=runs if n < 30000 else max(runs // 3, 1))
        print(f"nms {n:>6} boxes: {ms:8.1f} ms  ({kept} kept)")

    pred = prediction_map(generator)
    candidates = int((pred[0, :, 4:5] * pred[0, :, 5:]).amax(1).gt(0.25).logical_and(pred[0, :, 4] > 0.25).sum())
    for agnostic in (False, True):
        ms = median_ms(lambda: non_max_suppression(pred, 0.25, 0.45, agnostic=agnostic), runs=runs)
        print(f"non_max_suppression 25200x85, {candidates} candidates, agnostic={agnostic}: {ms:8.1f} ms")

    batch, imgsz, num_classes, per_image = 16, 640, 80, 100
    preds = [torch.randn(batch, 3, imgsz // s, imgsz // s, 5 + num_classes, generator=generator).requires_grad_()
             for s in STRIDES]
    targets = torch.cat((
        torch.arange(batch).repeat_interleave(per_image)[:, None].float(),
        torch.randint(0, num_classes, (batch * per_image, 1), generator=generator).float(),
        torch.rand(batch * per_image, 2, generator=generator),
        0.02 + torch.rand(batch * per_image, 2, generator=generator) * 0.3,
    ), 1)
    loss_fn = YOLOLoss(ANCHORS, STRIDES, num_classes, imgsz=imgsz)
    positives = sum(len(t.image) for t in loss_fn.build_targets(preds, targets))

    def forward():
        with torch.no_grad():
            loss_fn(preds, targets)

    def forward_backward():
        loss_fn(preds, targets)[0].backward()

    print(f"YOLOLoss batch {batch} at {imgsz}, {len(targets)} targets, {positives} positives: "
          f"forward {median_ms(forward, runs=runs):.1f} ms, "
          f"forward+backward {median_ms(forward_backward, runs=runs):.1f} ms")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    for threads in args.threads:
        torch.set_num_threads(threads)
        policy = os.environ.get("OMP_WAIT_POLICY", "default")
        print(f"torch {torch.__version__}, {threads} thread(s), OMP_WAIT_POLICY={policy}, median of {args.runs} runs")
        run(args.runs)


if __name__ == "__main__":
    main()
