"""Detect objects in images and draw them.

    python predict.py --weights runs/train/exp/weights/best.pt --source path/to/image_or_folder

For every image: `<out>/<name>.jpg` with boxes, class names and scores drawn, `<name>.txt` with one
`class cx cy w h score` line per detection (normalised, YOLO style) and `<name>.json` with boxes in pixels.
Images are letterboxed to --img (padding only to the next multiple of 32); boxes are mapped back to the
original image. The model is fused (BatchNorm folded, branches merged) unless --no-fuse.
"""
import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

from lightdet.boxes import scale_boxes
from lightdet.data.augment import letterbox_layout, render
from lightdet.data.images import read_image
from lightdet.data.sources import list_images
from lightdet.nms import non_max_suppression
from lightdet.plots import draw_detections
from lightdet.runtime import load_detector


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Run a lightdet detector on images.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--weights", required=True, help="a lightdet checkpoint or an exported .onnx (ONNX Runtime)")
    p.add_argument("--source", required=True, help="an image file or a folder of images")
    p.add_argument("--img", type=int, help="inference size (default: the training size)")
    p.add_argument("--conf", type=float, default=0.25, help="confidence threshold")
    p.add_argument("--iou", type=float, default=0.45, help="NMS IoU threshold")
    p.add_argument("--max-det", type=int, default=300)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="runs/predict/exp")
    p.add_argument("--no-fuse", action="store_true")
    return p.parse_args(argv)


def letterbox(image, size, stride=32):
    """PIL image -> (uint8 tensor (3, H, W), ratio_pad): fit inside size×size, pad to multiples of `stride`."""
    (content_h, content_w), _ = letterbox_layout(image.height, image.width, (size, size))
    shape = (math.ceil(content_h / stride) * stride, math.ceil(content_w / stride) * stride)
    (content_h, content_w), (left, top) = letterbox_layout(image.height, image.width, shape)
    canvas = render([(image, (0, 0, 1, 1), (left, top, left + content_w, top + content_h))], np.eye(3),
                    (shape[1], shape[0]), (shape[1], shape[0]))
    pixels = torch.from_numpy(np.asarray(canvas).transpose(2, 0, 1).copy())
    return pixels, ((content_h / image.height, content_w / image.width), (left, top))


def main(argv=None):
    args = parse_args(argv)
    source = Path(args.source)
    try:
        model, record = load_detector(args.weights)
        paths = [source] if source.is_file() else list_images(source) if source.is_dir() else None
        if not paths:
            raise FileNotFoundError(f"--source {source}: no image file or folder of images there")
    except (FileNotFoundError, ImportError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    size = args.img or record["args"].get("img", 640)
    model = (model if args.no_fuse else model.fuse()).to(args.device, memory_format=torch.channels_last).eval()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for path in paths:
        image = read_image(path)
        pixels, ratio_pad = letterbox(image, size)
        with torch.inference_mode():
            decoded, _ = model(pixels[None].to(args.device).float() / 255)
        detections = non_max_suppression(decoded, args.conf, args.iou, max_det=args.max_det)[0].cpu()
        detections[:, :4] = scale_boxes(detections[:, :4], pixels.shape[1:], (image.height, image.width), ratio_pad)
        draw_detections(image, detections, model.names).save(out / f"{Path(path).stem}.jpg", quality=90)
        write_detections(out / Path(path).stem, detections, model.names, image.width, image.height)
        counts = ", ".join(f"{int((detections[:, 5] == c).sum())} {model.names[int(c)]}"
                           for c in detections[:, 5].unique()) or "no detections"
        print(f"{path}: {counts}")
    print(f"results in {out}")


def write_detections(stem, detections, names, width, height):
    x1, y1, x2, y2, scores, classes = detections.T.tolist() if len(detections) else ([],) * 6
    with open(f"{stem}.txt", "w") as f:
        for a, b, c, d, s, k in zip(x1, y1, x2, y2, scores, classes):
            f.write(f"{int(k)} {(a + c) / 2 / width:.6f} {(b + d) / 2 / height:.6f} {(c - a) / width:.6f} "
                    f"{(d - b) / height:.6f} {s:.5f}\n")
    rows = [{"class": int(k), "name": names[int(k)], "score": round(s, 5), "box_xyxy": [round(v, 2) for v in box]}
            for *box, s, k in zip(x1, y1, x2, y2, scores, classes)]
    Path(f"{stem}.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
