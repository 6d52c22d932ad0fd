"""Where a dataset's files are: `resolve_data(--data)` -> class names and a train and a val split.

Accepted: the built-in `shapes` / `shapes-hard` (generated on first use), a YOLO folder (`images/<split>/`,
`labels/<split>/`, `classes.txt` or `names.txt`; splits `train*` and `val*`), a folder of images, a `.txt` list
of image paths, or a COCO `instances_<split>.json`. A dataset with a single split validates on itself. Label
files are found the ultralytics way: the last `/images/` of an image path becomes `/labels/`, suffix `.txt`.
"""
import os
from dataclasses import dataclass, field
from pathlib import Path


from .labels import DatasetError, read_coco
from .shapes import VARIANTS, ensure_shapes

IMAGE_SUFFIXES = {".bmp", ".jpeg", ".jpg", ".jpe", ".mpo", ".png", ".tif", ".tiff", ".webp"}


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
    names = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
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
    lines = [line.strip() for line in list_file.read_text(encoding="utf-8-sig").splitlines()]
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
