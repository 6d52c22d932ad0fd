"""What a dataset's label files say: YOLO txt label files and COCO instances json -> per-image labels.

Both formats end in the same checked form, float32 (n, 5) rows of class, cx, cy, w, h normalised to the image,
through `clean_boxes`, which fixes what is harmless (corners just outside, zero-area boxes, duplicates) and
rejects what is not, naming the file:line or annotation. Text is read as UTF-8 with an optional byte-order mark
(Windows editors write one).
"""
import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..boxes import cxcywh_to_xyxy, xyxy_to_cxcywh

TOLERANCE = 0.01   # box corners up to 1% outside the image are clipped (and counted as fixed), beyond that rejected


class DatasetError(ValueError):
    """A dataset that cannot be used at all: a missing path, no images, no class names. The message names the path."""


def clean_boxes(classes, boxes, where, tolerance=TOLERANCE):
    """Check and tidy one image's boxes, xyxy normalised to 0..1 with classes already validated.

    Returns (labels float32 (n, 5) class, cx, cy, w, h; number of rows fixed; error message or None).
    Corners slightly outside the image are clipped, zero-area boxes and duplicate rows dropped (all "fixed");
    a non-finite box, negative size or a corner further out than `tolerance` rejects the image's labels, and
    the message names the row (`where[i]`: file:line or annotation id).
    """
    classes = np.asarray(classes, dtype=np.float64).reshape(-1)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        return np.zeros((0, 5), np.float32), 0, None
    bad = ~np.isfinite(boxes).all(1) | (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    bad |= ((boxes < -tolerance) | (boxes > 1 + tolerance)).any(1)
    if bad.any():
        i = int(np.argmax(bad))
        return None, 0, (f"{where[i]}: box outside the image or of negative size "
                         f"(x1 y1 x2 y2 = {' '.join(f'{v:.4g}' for v in boxes[i])})")
    clipped = np.clip(boxes, 0, 1)
    fixed = int((np.abs(clipped - boxes) > 1e-6).any(1).sum())
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    rows = np.concatenate([classes[:, None], clipped], 1)[keep]
    _, first = np.unique(rows, axis=0, return_index=True)
    rows = rows[np.sort(first)]   # first occurrence of each row, in file order
    fixed += int((~keep).sum()) + int(keep.sum()) - len(rows)
    return np.concatenate([rows[:, :1], xyxy_to_cxcywh(rows[:, 1:])], 1).astype(np.float32), fixed, None


def read_yolo_labels(path, num_classes):
    """One YOLO label file -> (labels (n, 5) class cx cy w h, rows fixed, error message or None).

    A line is `class cx cy w h` (normalised), or `class x1 y1 x2 y2 ...` (a polygon, as ultralytics'
    segmentation labels; its box is taken). Blank lines are allowed.
    """
    classes, boxes, where = [], [], []
    for number, line in enumerate(path.read_text(encoding="utf-8-sig", errors="replace").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        here = f"{path}:{number}"
        if len(fields) != 5 and (len(fields) < 7 or len(fields) % 2 == 0):
            return None, 0, f"{here}: expected 5 fields (class cx cy w h), got {len(fields)}: {line.strip()!r}"
        try:
            values = [float(v) for v in fields]
        except ValueError:
            return None, 0, f"{here}: not a number in {line.strip()!r}"
        if not values[0].is_integer() or not 0 <= values[0] < num_classes:
            return None, 0, f"{here}: class {fields[0]} is not in 0..{num_classes - 1} ({num_classes} class names)"
        if len(values) == 5:
            box = cxcywh_to_xyxy(np.array(values[1:]))
        else:
            xs, ys = values[1::2], values[2::2]
            box = [min(xs), min(ys), max(xs), max(ys)]
        classes.append(values[0])
        boxes.append(box)
        where.append(here)
    return clean_boxes(classes, boxes, where)


@dataclass
class CocoIndex:
    """What training needs from a COCO json, compact: no per-annotation dicts are kept."""
    names: list
    category_ids: list          # contiguous class index -> COCO category id (sorted ids, often sparse 1..90)
    images: list                # dicts: id, file_name, height, width
    labels: list                # per image: float32 (n, 5) class, cx, cy, w, h normalised
    errors: dict                # image index -> message: its labels are rejected
    fixed: int = 0
    crowd: int = 0


def read_coco(json_path):
    """Parse a COCO instances json once (cached by path and modification time); see CocoIndex."""
    json_path = Path(json_path).resolve()
    return _read_coco(str(json_path), json_path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _read_coco(path, _mtime):
    try:
        with open(path, encoding="utf-8-sig") as f:
            data = json.load(f)
        categories = sorted(data["categories"], key=lambda c: c["id"])
        images = [{k: im.get(k) for k in ("id", "file_name", "height", "width")} for im in data["images"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DatasetError(f"cannot read {path} as a COCO instances json: {e!r}") from None
    class_of = {c["id"]: i for i, c in enumerate(categories)}
    index_of = {im["id"]: k for k, im in enumerate(images)}
    rows = [([], [], []) for _ in images]
    errors, crowd = {}, 0
    for ann in data.get("annotations", []):
        k = index_of.get(ann.get("image_id"))
        if k is None:
            continue   # an annotation of an image the json does not list: nothing to train on
        if ann.get("iscrowd", 0):
            crowd += 1   # crowd regions are ignored for training; pycocotools uses them as "ignore" in evaluation
            continue
        here = f"{path}: annotation id {ann.get('id')}"
        width, height = images[k]["width"], images[k]["height"]
        if ann.get("category_id") not in class_of:
            errors.setdefault(k, f"{here}: category_id {ann.get('category_id')} is not among the categories")
        elif not width or not height:
            errors.setdefault(k, f"{path}: image id {images[k]['id']} has no width/height")
        else:
            try:
                x, y, w, h = (float(v) for v in ann["bbox"])
            except (KeyError, TypeError, ValueError):
                errors.setdefault(k, f"{here}: bbox is not [x, y, w, h]")
                continue
            rows[k][0].append(class_of[ann["category_id"]])
            rows[k][1].append([x / width, y / height, (x + w) / width, (y + h) / height])
            rows[k][2].append(here)
    labels, fixed = [], 0
    for k, (classes, boxes, where) in enumerate(rows):
        cleaned, n_fixed, error = clean_boxes(classes, boxes, where)
        if error and k not in errors:
            errors[k] = error
        labels.append(cleaned if cleaned is not None else np.zeros((0, 5), np.float32))
        fixed += n_fixed
    return CocoIndex([c["name"] for c in categories], [c["id"] for c in categories], images, labels, errors,
                     fixed, crowd)
