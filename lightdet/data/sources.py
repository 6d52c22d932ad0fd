"""Where a dataset's files are: `resolve_data(--data)` -> class names and a train and a val split.

Accepted: the built-in `shapes` / `shapes-hard` (generated on first use), a YOLO folder (`images/<split>/`,
`labels/<split>/`, `classes.txt` or `names.txt`; splits `train*` and `val*`), a folder of images, a `.txt` list
of image paths, or a COCO `instances_<split>.json`. A dataset with a single split validates on itself. Label
files are found the ultralytics way: the last `/images/` of an image path becomes `/labels/`, suffix `.txt`.
"""
import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .shapes import VARIANTS, ensure_shapes

IMAGE_SUFFIXES = {".bmp", ".jpeg", ".jpg", ".jpe", ".mpo", ".png", ".tif", ".tiff", ".webp"}
TOLERANCE = 0.01   # box corners up to 1% outside the image are clipped (and counted as fixed), beyond that rejected


class DatasetError(ValueError):
    """A dataset that cannot be used at all: a missing path, no images, no class names. The message names the path."""


@dataclass
class Split:
    """One split. YOLO: `im_files` (labels beside them under labels/). COCO: `json` and its `images_dir`."""
    format: str                 # "yolo" or "coco"
    name: str                   # e.g. "train2017"
    path: Path                  # where it came from: an images folder, a list file or a json
    im_files: list = field(default_factory=list, repr=False)
    images_dir: Path = None


@dataclass
class DataSpec:
    """What `--data` resolved to. `train` and `val` are the same object for a single-split dataset."""
    names: list
    train: Split
    val: Split
    root: Path


def label_path(image_path):
    """labels/.../x.txt for images/.../x.jpg (the last `images` folder of the path is swapped)."""
    head, sep, tail = str(image_path).rpartition(f"{os.sep}images{os.sep}")
    labels = f"{head}{os.sep}labels{os.sep}{tail}" if sep else str(image_path)
    return Path(os.path.splitext(labels)[0] + ".txt")


def list_images(folder):
    """Image files under `folder`, recursively, sorted."""
    found = []
    for parent, dirs, files in os.walk(folder):
        dirs.sort()
        found += [os.path.join(parent, f) for f in sorted(files) if os.path.splitext(f)[1].lower() in IMAGE_SUFFIXES]
    return found


def read_names(names_file):
    """Class names: a list as is, or a file with one name per line (blank lines skipped)."""
    if isinstance(names_file, (list, tuple)):
        return list(names_file)
    path = Path(names_file).expanduser()
    if not path.is_file():
        raise DatasetError(f"class names file not found: {path}")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise DatasetError(f"class names file is empty: {path}")
    return names


def _find_names(folders, names_file):
    if names_file is not None:
        return read_names(names_file)
    for folder in folders:
        for candidate in ("classes.txt", "names.txt"):
            if (folder / candidate).is_file():
                return read_names(folder / candidate)
    raise DatasetError(f"no class names for {folders[0]}: put classes.txt (one name per line) in the dataset "
                       "root or pass a names file (--names)")


def _yolo_split(folder):
    files = list_images(folder)
    if not files:
        raise DatasetError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    return Split("yolo", folder.name, folder, files)


def _list_split(list_file):
    """A text file of image paths, one per line, relative to the list file's folder unless absolute."""
    lines = [line.strip() for line in list_file.read_text(encoding="utf-8").splitlines()]
    paths = [Path(line).expanduser() for line in lines if line and not line.startswith("#")]
    files = [str(p if p.is_absolute() else list_file.parent / p) for p in paths]
    if not files:
        raise DatasetError(f"the image list {list_file} is empty")
    return Split("yolo", list_file.stem, list_file, files)


def _coco_split(json_path, images=None):
    stem = json_path.stem
    name = stem[len("instances_"):] if stem.startswith("instances_") else stem
    candidates = [Path(images).expanduser()] if images else [
        json_path.parent / name, json_path.parent.parent / name,                    # beside the json / COCO's own
        json_path.parent.parent / "images" / name, json_path.parent / "images" / name,   # ultralytics' layout
        json_path.parent / "images"]
    for folder in candidates:
        if folder.is_dir():
            return Split("coco", name, json_path, images_dir=folder)
    raise DatasetError(f"no image folder for {json_path}: tried {', '.join(map(str, candidates))} "
                       "(pass the folder with --images)")


def resolve_data(data, names_file=None, images=None, cache_dir=None, seed=0, num_train=None, num_val=None):
    """Resolve `--data` into a DataSpec (see the module docstring); one DatasetError naming the path if unusable.

    `names_file` (a file or a list) gives the class names of YOLO sources (a COCO json carries its own);
    `images` the image folder of a COCO json; `cache_dir`, `seed`, `num_train`, `num_val` the built-in sets.
    """
    if str(data) in VARIANTS:
        root = ensure_shapes(str(data), seed, cache_dir, num_train, num_val)
        train = _yolo_split(root / "images" / "train")
        val = _coco_split(root / "annotations" / "instances_val.json", root / "images" / "val")
        return DataSpec(read_names(root / "classes.txt"), train, val, root)

    path = Path(data).expanduser()
    if not path.exists():
        raise DatasetError(f"dataset not found: {path} (expected 'shapes', 'shapes-hard', a YOLO folder, "
                           "a .txt list of images or a COCO instances_*.json)")
    if path.suffix == ".json":
        train = _coco_split(path, images)
        index = read_coco(path)
        if not index.images:
            raise DatasetError(f"no images in {path}")
        val, sibling = train, path.with_name(path.name.replace("train", "val"))
        if "train" in path.name and sibling.is_file():   # instances_train2017.json validates on instances_val2017.json
            beside = Path(images).expanduser().parent / sibling.stem.replace("instances_", "") if images else None
            val = _coco_split(sibling, beside if beside and beside.is_dir() else None)
        return DataSpec(index.names, train, val, path.parent)
    if path.suffix == ".txt":
        train = _list_split(path)
        sibling = path.with_name(path.name.replace("train", "val"))
        val = _list_split(sibling) if "train" in path.name and sibling.is_file() else train
        return DataSpec(_find_names([path.parent, path.parent.parent], names_file), train, val, path.parent)
    if not path.is_dir():
        raise DatasetError(f"cannot read {path} as a dataset: expected a folder, a .txt list or a .json file")

    images_root = path / "images"
    if images_root.is_dir():
        subdirs = sorted(p for p in images_root.iterdir() if p.is_dir())
        train_dirs = [p for p in subdirs if p.name.startswith("train")]
        val_dirs = [p for p in subdirs if p.name.startswith("val")]
        if train_dirs or val_dirs:
            train = _yolo_split((train_dirs or val_dirs)[0])
            val = _yolo_split(val_dirs[0]) if val_dirs and train_dirs else train
        elif len(subdirs) == 1:
            train = val = _yolo_split(subdirs[0])
        else:
            train = val = _yolo_split(images_root)
        return DataSpec(_find_names([path], names_file), train, val, path)
    # A plain folder of images (e.g. coco128/images/train2017): names may sit a few levels up.
    train = _yolo_split(path)
    return DataSpec(_find_names([path, *list(path.parents)[:3]], names_file), train, train, path)


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
    centres, sizes = (rows[:, 1:3] + rows[:, 3:5]) / 2, rows[:, 3:5] - rows[:, 1:3]
    return np.concatenate([rows[:, :1], centres, sizes], 1).astype(np.float32), fixed, None


def read_yolo_labels(path, num_classes):
    """One YOLO label file -> (labels (n, 5) class cx cy w h, rows fixed, error message or None).

    A line is `class cx cy w h` (normalised), or `class x1 y1 x2 y2 ...` (a polygon, as ultralytics'
    segmentation labels; its box is taken). Blank lines are allowed.
    """
    classes, boxes, where = [], [], []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
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
            cx, cy, w, h = values[1:]
            box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
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
        with open(path, encoding="utf-8") as f:
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
