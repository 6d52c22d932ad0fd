"""Training-pipeline throughput of lightdet's loader: mosaic + affine + HSV + flip at 640, batch 16.

    python benchmarks/dataloader.py --data datasets/coco128   # 2 workers and 0 workers (any YOLO/COCO dataset)
    python benchmarks/dataloader.py --workers 4 --cache    # decoded images in RAM

Reference on the 2-core development machine: YOLOv5's own OpenCV loader, same settings, 2 workers: ~166 img/s.
Training itself consumes ~5 img/s at 640 there, so the loader must simply never be the bottleneck.
"""
import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lightdet.data import build_dataloader, build_dataset, resolve_data  # noqa: E402


def images_per_second(dataset, batch_size, workers, batches):
    """Images/s over `batches` batches of one long epoch, after two warm-up batches (worker start-up)."""
    sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=(batches + 2) * batch_size)
    loader = build_dataloader(dataset, batch_size, workers=workers, sampler=sampler, seed=0)
    for seen, (images, targets, _, _) in enumerate(loader, start=1):
        assert images.shape[1:] == (3, dataset.imgsz, dataset.imgsz) and targets.shape[1] == 6
        if seen == 2:
            start = time.perf_counter()
    return batches * batch_size / (time.perf_counter() - start)


def cpu_ms_per_sample(dataset, samples=64):
    """CPU time of one training sample in this process: what a free core pays, whatever else the machine runs."""
    for i in range(4):
        dataset[i]
    start = time.process_time()
    for i in range(samples):
        dataset[i % len(dataset)]
    return (time.process_time() - start) / samples * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="shapes", help="a dataset as train.py takes it (default: the built-in set)")
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 0])
    parser.add_argument("--batches", type=int, default=24, help="timed batches per setting")
    parser.add_argument("--cache", action="store_true", help="decode every image once into RAM")
    args = parser.parse_args()

    torch.set_num_threads(1)   # the loader's work is Pillow / numpy per sample; keep torch out of the way
    dataset = build_dataset(resolve_data(args.data), "train", imgsz=args.imgsz, augment=True, cache=args.cache)
    print(f"{args.data}: {len(dataset)} images, mosaic {dataset.hyp['mosaic']}, {args.imgsz} px, batch {args.batch}"
          f"{', RAM cache' if args.cache else ''}; {os.cpu_count()} CPUs")
    for workers in args.workers:
        rate = images_per_second(dataset, args.batch, workers, args.batches)
        print(f"  {workers} workers: {rate:6.1f} images/s")
    ms = cpu_ms_per_sample(dataset)
    print(f"  CPU per sample: {ms:.1f} ms, i.e. {1000 / ms:.0f} images/s per free core")


if __name__ == "__main__":
    main()
