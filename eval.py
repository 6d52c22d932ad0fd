"""Evaluate a trained detector with COCO mAP (pycocotools), the same `evaluate()` that train.py calls.

    python eval.py --weights runs/train/exp/weights/best.pt                  # the data and size it trained on
    python eval.py --weights best.pt --data datasets/coco128 --img 640 --rect --save-json detections.json

The defaults are YOLOv5's val.py settings (confidence 0.001, NMS IoU 0.6, up to 300 detections per image, a
box counted once per class above the threshold), so the mAP compares with the numbers YOLOv5 prints.
"""
import argparse
import json
import logging
from pathlib import Path

from lightdet.cli import (DEVICE_HELP, HelpFormatter, fraction, image_size, non_negative_int, positive_int,
                          round_image_size, select_device, unit_interval)
from lightdet.data import build_dataloader, build_dataset, resolve_data
from lightdet.evaluate import evaluate, format_table, merge_classes
from lightdet.memory import keep_freed_memory
from lightdet.runtime import load_detector


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Evaluate a lightdet checkpoint.", formatter_class=HelpFormatter)
    p.add_argument("--weights", required=True,
                   help="a lightdet checkpoint (last.pt / best.pt) or an exported .onnx (ONNX Runtime)")
    p.add_argument("--data", help="dataset (default: the one the checkpoint trained on)")
    p.add_argument("--names", help="class names file, if the dataset has none")
    p.add_argument("--split", default="val", choices=("train", "val"), help="which split of --data to score")
    p.add_argument("--img", type=image_size, help="inference size (default: the training size)")
    p.add_argument("--batch", type=positive_int, default=32, help="images per batch")
    p.add_argument("--conf", type=unit_interval, default=0.001, help="confidence threshold")
    p.add_argument("--iou", type=unit_interval, default=0.6, help="NMS IoU threshold")
    p.add_argument("--max-det", type=positive_int, default=300, help="detections kept per image")
    p.add_argument("--rect", action="store_true", help="rectangular batches (least padding)")
    p.add_argument("--fraction", type=fraction, default=1.0,
                   help="score this share of the split's images, the first in file order (quick checks)")
    p.add_argument("--workers", type=non_negative_int, default=2, help="dataloader processes")
    p.add_argument("--device", help=DEVICE_HELP)
    p.add_argument("--save-json", help="write the detections in COCO results format to this file")
    return p.parse_args(argv)


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(message)s")   # the dataset scan's summary
    args = parse_args(argv)
    keep_freed_memory()
    device = select_device(args.device)
    try:
        model, record = load_detector(args.weights)   # a .onnx file runs in ONNX Runtime
        trained = record["args"]
        data = args.data or trained.get("data")
        if data is None:
            raise ValueError(f"{args.weights} does not record its dataset: pass --data")
        img = round_image_size(args.img or trained.get("img", 640))
        ema = record["weights"] == "ema"
        model = model.to(device)
        spec = resolve_data(data, names_file=args.names)
        single_cls = trained.get("single_cls", False)   # trained with --single-cls: every class is one
        if len(spec.names) != len(model.names) and not single_cls:
            raise ValueError(f"{args.weights} predicts {len(model.names)} classes but {data} has "
                             f"{len(spec.names)}")
        dataset = build_dataset(spec, args.split, img, augment=False, rect=args.rect, batch_size=args.batch,
                                fraction=args.fraction)
        if single_cls:
            merge_classes(dataset)
    except (FileNotFoundError, ImportError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    loader = build_dataloader(dataset, args.batch, args.workers)
    print(f"weights {args.weights} ({'EMA' if ema else 'raw'} weights), data {data} [{args.split}], "
          f"img {img}{' rect' if args.rect else ''}, conf {args.conf}, NMS IoU {args.iou}")
    metrics = evaluate(model, loader, conf_thres=args.conf, iou_thres=args.iou, max_det=args.max_det,
                       device=device, amp=device.type == "cuda", single_cls=single_cls)
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
