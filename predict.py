"""Detect objects in images and draw them (YOLOv5's detect.py, for image files and folders of them).

    python predict.py --weights runs/train/exp/weights/best.pt --source path/to/image_or_folder
    python predict.py --weights best.pt --source images/ --save-txt --save-json --classes 0 2 --hide-conf

Every run writes into a new folder, runs/predict/exp, exp2, ... (or --out DIR): `<name>.jpg` with the boxes,
class names and scores drawn (not with --nosave); with --save-txt `labels/<name>.txt`, one
`class cx cy w h score` line per detection (normalised, YOLO style); with --save-json `labels/<name>.json`,
boxes in pixels. Images are decoded upright (EXIF orientation, as training and eval.py read them), letterboxed
to --img (padded only to the next multiple of 32), and boxes are mapped back to the original image. Each box
keeps its best class (validation counts a box once per class instead, as YOLOv5's val.py does). A file that
cannot be read is skipped with its name, and counted. The model is fused (BatchNorm folded, branches merged)
unless --no-fuse.
"""
import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from lightdet.boxes import scale_boxes
from lightdet.cli import (DEVICE_HELP, HelpFormatter, image_size, increment_path, non_negative_int,
                          positive_int, select_device, unit_interval)
from lightdet.data.augment import letterbox_layout, render
from lightdet.data.images import check_image, read_image
from lightdet.data.sources import list_images
from lightdet.memory import keep_freed_memory
from lightdet.plots import draw_detections
from lightdet.runtime import load_detector

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts"}
STREAMS = ("http://", "https://", "rtsp://", "rtmp://")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Run a lightdet detector on images.", formatter_class=HelpFormatter)
    p.add_argument("--weights", required=True,
                   help="a lightdet checkpoint (best.pt / last.pt) or an exported .onnx (ONNX Runtime)")
    p.add_argument("--source", required=True, help="an image file or a folder of images (searched recursively)")
    p.add_argument("--img", type=image_size, help="inference size, long side (default: the training size)")
    p.add_argument("--conf", type=unit_interval, default=0.25, help="confidence threshold")
    p.add_argument("--iou", type=unit_interval, default=0.45, help="NMS IoU threshold")
    p.add_argument("--max-det", type=positive_int, default=300, help="detections kept per image")
    p.add_argument("--classes", type=non_negative_int, nargs="+", help="keep only these class indices")
    p.add_argument("--agnostic-nms", action="store_true", help="one NMS across classes")
    p.add_argument("--device", help=DEVICE_HELP)
    p.add_argument("--project", default="runs/predict", help="results go to a new folder <project>/<name>N")
    p.add_argument("--name", default="exp", help="run folder name under --project")
    p.add_argument("--exist-ok", action="store_true", help="write into <project>/<name> even if it exists")
    p.add_argument("--out", help="write into this folder exactly (instead of --project/--name)")
    p.add_argument("--save-txt", action="store_true", help="labels/<image>.txt: class cx cy w h score, normalised")
    p.add_argument("--save-json", action="store_true", help="labels/<image>.json: boxes in pixels, names, scores")
    p.add_argument("--nosave", action="store_true", help="do not write the drawn images")
    p.add_argument("--line-thickness", type=positive_int, help="box line width in pixels (default: from image size)")
    p.add_argument("--hide-labels", action="store_true", help="draw boxes without class names")
    p.add_argument("--hide-conf", action="store_true", help="draw class names without scores")
    p.add_argument("--no-fuse", action="store_true", help="run the model as trained, BatchNorm unfused")
    return p.parse_args(argv)


def find_images(source):
    """The image paths named by --source, or SystemExit saying what is supported."""
    text = str(source)
    if text.lower().startswith(STREAMS):
        raise SystemExit(f"error: --source {text}: URLs are not supported; predict.py reads image files and "
                         "folders of them: download the image first")
    path = Path(text).expanduser()
    if path.suffix.lower() in VIDEO_SUFFIXES:
        raise SystemExit(f"error: --source {text}: videos are not supported; predict.py reads image files and "
                         f"folders of them: extract frames first (e.g. ffmpeg -i {path.name} frames/%06d.jpg)")
    paths = [path] if path.is_file() else list_images(path) if path.is_dir() else None
    if not paths:
        raise SystemExit(f"error: --source {text}: no image file or folder of images there")
    return paths


def letterbox(image, size, stride=32):
    """PIL image -> (uint8 tensor (3, H, W), ratio_pad): fit inside size×size, pad to multiples of `stride`."""
    (content_h, content_w), _ = letterbox_layout(image.height, image.width, (size, size))
    shape = (math.ceil(content_h / stride) * stride, math.ceil(content_w / stride) * stride)
    (content_h, content_w), (left, top) = letterbox_layout(image.height, image.width, shape)
    canvas = render([(image, (0, 0, 1, 1), (left, top, left + content_w, top + content_h))], np.eye(3),
                    (shape[1], shape[0]), (shape[1], shape[0]))
    pixels = torch.from_numpy(np.asarray(canvas).transpose(2, 0, 1).copy())
    return pixels, ((content_h / image.height, content_w / image.width), (left, top))


def read_upright(path):
    """The image at `path`, decoded upright; ValueError naming the file when it cannot be read."""
    _, _, orientation, _ = check_image(path)
    try:
        return read_image(path, orientation)
    except Exception as error:   # check_image reads headers only: a broken body fails here
        raise ValueError(f"{path}: unreadable image ({type(error).__name__}: {error})") from None


def main(argv=None):
    args = parse_args(argv)
    keep_freed_memory()
    device = select_device(args.device)
    paths = find_images(args.source)
    try:
        model, record = load_detector(args.weights)
    except (FileNotFoundError, ImportError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    names = model.names
    wrong = [c for c in args.classes or [] if c >= len(names)]
    if wrong:
        raise SystemExit(f"error: --classes {wrong[0]}: the model has {len(names)} classes (0..{len(names) - 1})")
    size = args.img or record["args"].get("img", 640)
    model = (model if args.no_fuse else model.fuse()).to(device, memory_format=torch.channels_last).eval()
    out = Path(args.out) if args.out else increment_path(args.project, args.name, args.exist_ok)
    done, skipped, seconds = 0, 0, np.zeros(3)
    for number, path in enumerate(paths, 1):
        start = time.perf_counter()
        try:
            image = read_upright(path)
        except ValueError as error:
            print(f"skipped {error}")
            skipped += 1
            continue
        pixels, ratio_pad = letterbox(image, size)
        batch = pixels[None].to(device).float() / 255
        loaded = time.perf_counter()
        with torch.inference_mode():
            decoded, _ = model(batch.contiguous(memory_format=torch.channels_last))
        inferred = time.perf_counter()
        detections = model.postprocess(decoded, args.conf, args.iou, args.max_det, classes=args.classes,
                                       agnostic=args.agnostic_nms)[0].cpu()   # NMS, or RT-DETR's top-k
        seconds += (loaded - start, inferred - loaded, time.perf_counter() - inferred)
        detections[:, :4] = scale_boxes(detections[:, :4], pixels.shape[1:], (image.height, image.width), ratio_pad)
        save(out, Path(path).stem, image, detections, names, args)
        done += 1
        print(f"{number}/{len(paths)} {path}: {image.width}x{image.height} {summary(detections, names)}, "
              f"{1000 * (time.perf_counter() - loaded):.0f} ms")
    if not done:
        raise SystemExit(f"error: --source {args.source}: no image could be read ({skipped} skipped)")
    pre, inference, nms = 1000 * seconds / done
    print(f"{plural(done, 'image')}, {skipped} skipped; per image {pre:.1f} ms reading and letterboxing, "
          f"{inference:.1f} ms inference, {nms:.1f} ms NMS at {size}")
    if not args.nosave or args.save_txt or args.save_json:
        print(f"results in {out}")


def plural(count, name):
    if count == 1:
        return f"1 {name}"
    return f"{count} {name}{'es' if name.endswith(('s', 'x', 'sh', 'ch')) else 's'}"


def summary(detections, names):
    """'3 circles, 1 star' (most frequent first), or 'no detections'."""
    classes, counts = detections[:, 5].int().unique(return_counts=True)
    order = counts.argsort(descending=True, stable=True)
    return ", ".join(plural(int(counts[i]), names[int(classes[i])]) for i in order) or "no detections"


def save(out, stem, image, detections, names, args):
    """The drawn image and, when asked, the .txt and .json of one image's detections."""
    if not args.nosave or args.save_txt or args.save_json:
        out.mkdir(parents=True, exist_ok=True)
    if not args.nosave:
        drawn = draw_detections(image, detections, names, line_width=args.line_thickness,
                                labels=not args.hide_labels, scores=not args.hide_conf)
        drawn.save(out / f"{stem}.jpg", quality=90)
    if not (args.save_txt or args.save_json):
        return
    (out / "labels").mkdir(exist_ok=True)
    rows = [(*box, score, int(cls)) for *box, score, cls in detections.tolist()]
    if args.save_txt:
        with open(out / "labels" / f"{stem}.txt", "w") as f:
            for x1, y1, x2, y2, score, cls in rows:
                f.write(f"{cls} {(x1 + x2) / 2 / image.width:.6f} {(y1 + y2) / 2 / image.height:.6f} "
                        f"{(x2 - x1) / image.width:.6f} {(y2 - y1) / image.height:.6f} {score:.5f}\n")
    if args.save_json:
        records = [{"class": cls, "name": names[cls], "score": round(score, 5),
                    "box_xyxy": [round(v, 2) for v in (x1, y1, x2, y2)]} for x1, y1, x2, y2, score, cls in rows]
        (out / "labels" / f"{stem}.json").write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
