"""Evaluate a trained detector with COCO mAP (pycocotools), the same `evaluate()` that train.py calls.

    python eval.py --weights runs/train/exp/weights/best.pt                  # the data and size it trained on
    python eval.py --weights best.pt --data datasets/coco128 --img 640 --rect --save-json detections.json
"""
import argparse
import json
import logging
from pathlib import Path

import torch

from lightdet.data import build_dataloader, build_dataset, resolve_data
from lightdet.evaluate import evaluate, format_table
from lightdet.runtime import load_detector


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Evaluate a lightdet checkpoint.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--weights", required=True, help="a lightdet checkpoint (last.pt / best.pt) or an exported .onnx")
    p.add_argument("--data", help="dataset (default: the one the checkpoint trained on)")
    p.add_argument("--names", help="class names file, if the dataset has none")
    p.add_argument("--split", default="val")
    p.add_argument("--img", type=int, help="inference size (default: the training size)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--conf", type=float, default=0.001, help="confidence threshold")
    p.add_argument("--iou", type=float, default=0.6, help="NMS IoU threshold")
    p.add_argument("--rect", action="store_true", help="rectangular batches (least padding)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--save-json", help="write the detections in COCO results format to this file")
    return p.parse_args(argv)


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(message)s")   # the dataset scan's summary
    args = parse_args(argv)
    try:
        model, record = load_detector(args.weights)   # a .onnx file runs in ONNX Runtime
        trained = record["args"]
        data = args.data or trained.get("data")
        if data is None:
            raise ValueError(f"{args.weights} does not record its dataset: pass --data")
        img = args.img or trained.get("img", 640)
        weights = record["weights"]
        model = model.to(args.device)
        spec = resolve_data(data, names_file=args.names)
        if len(spec.names) != len(model.names):
            raise ValueError(f"{args.weights} predicts {len(model.names)} classes but {data} has "
                             f"{len(spec.names)}")
        dataset = build_dataset(spec, args.split, img, augment=False, rect=args.rect, batch_size=args.batch)
    except (FileNotFoundError, ImportError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    loader = build_dataloader(dataset, args.batch, args.workers)
    print(f"weights {args.weights} ({'EMA' if weights == 'ema' else 'raw'} weights), data {data} "
          f"[{args.split}], img {img}{' rect' if args.rect else ''}, conf {args.conf}, NMS IoU {args.iou}")
    metrics = evaluate(model, loader, conf_thres=args.conf, iou_thres=args.iou, device=args.device,
                       amp=args.device.startswith("cuda"))
    print(format_table(metrics))
    pre, inference, nms = metrics["speed_ms"]
    print(f"speed per image: {pre:.1f} ms pre-process, {inference:.1f} ms inference, {nms:.1f} ms NMS")
    if args.save_json:
        Path(args.save_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.save_json).write_text(json.dumps(metrics["detections"]))
        print(f"saved {len(metrics['detections'])} detections to {args.save_json}")
    return metrics


if __name__ == "__main__":
    main()
