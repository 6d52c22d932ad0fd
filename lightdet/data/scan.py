"""Scan a split once before training: check every image header and label file, keep what is usable, report.

Real datasets are dirty. The rule: never silently train on garbage, never crash mid-epoch on one bad file.
Unreadable or truncated images and label files with a malformed line, a class id out of range or a box far
outside the image are skipped with the path (file:line) in the message; small problems (corners just outside
the image, zero-area boxes, duplicate rows) are fixed and counted; images without a label file are backgrounds.
"""
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .images import check_image
from .labels import DatasetError, read_coco, read_yolo_labels
from .sources import label_path

LOGGER = logging.getLogger("lightdet.data")
SHOWN_MESSAGES = 10


@dataclass
class ScanReport:
    """Counts and messages of one scan; `summary()` is the one line a user reads."""
    source: str
    found: int = 0          # image files listed
    backgrounds: int = 0    # usable images without boxes
    corrupt: int = 0        # images skipped: unreadable image or rejected labels
    fixed: int = 0          # label rows clipped, dropped (zero area) or removed (duplicates)
    boxes: int = 0
    tiny: int = 0           # boxes under 2 px on a side in the original image (kept, as YOLOv5 does)
    converted: dict = field(default_factory=dict)   # PIL mode -> number of images converted to RGB
    orphans: int = 0        # label files without an image (ignored)
    crowd: int = 0          # COCO iscrowd annotations (ignored for training)
    messages: list = field(default_factory=list)

    def summary(self):
        line = (f"{self.source}: found {self.found} images, {self.backgrounds} backgrounds, "
                f"{self.corrupt} corrupt skipped, {self.fixed} labels fixed; {self.boxes} boxes")
        if self.tiny:
            line += f", {self.tiny} boxes under 2 px kept"
        if self.converted:
            modes = ", ".join(f"{count} {mode}" for mode, count in sorted(self.converted.items()))
            line += f", {sum(self.converted.values())} images converted to RGB ({modes})"
        if self.orphans:
            line += f", {self.orphans} label files without an image ignored"
        if self.crowd:
            line += f", {self.crowd} crowd boxes ignored for training"
        return line


@dataclass
class ScanResult:
    im_files: list
    labels: list            # per image float32 (n, 5): class, cx, cy, w, h normalised to the upright image
    shapes: np.ndarray      # (N, 2) int: upright (height, width)
    orientations: list      # EXIF orientation per image
    image_ids: list         # COCO image ids (None for YOLO sources)
    report: ScanReport


def _check(path):
    try:
        return check_image(path), None
    except ValueError as e:
        return None, str(e)


def _orphan_labels(label_files):
    """Label files in the labels folders that belong to no listed image (ultralytics' coco128 has two)."""
    known = {str(p) for p in label_files}
    folders = {p.parent for p in label_files}
    return sorted(str(p) for folder in folders if folder.is_dir() for p in folder.glob("*.txt") if str(p) not in known)


def scan_split(split, num_classes, threads=8, fraction=1.0):
    """Check a Split (see sources.Split); returns a ScanResult, or raises DatasetError if nothing is usable.
    `fraction` < 1 keeps only that share of the images, the first in file order (ultralytics' --fraction)."""
    report = ScanReport(str(split.path))
    if split.format == "coco":
        index = read_coco(split.path)
        files = [str(split.images_dir / image["file_name"]) for image in index.images]
        report.crowd, report.fixed = index.crowd, index.fixed
    else:
        files = list(split.im_files)
        label_files = [label_path(f) for f in files]
        orphans = _orphan_labels(label_files)
        report.orphans = len(orphans)
        if orphans:
            report.messages.append(f"{len(orphans)} label files have no image and are ignored: {', '.join(orphans[:5])}"
                                   + (" ..." if len(orphans) > 5 else ""))
    files = files[:max(1, round(len(files) * fraction))]
    report.found = len(files)
    with ThreadPoolExecutor(threads) as pool:   # headers are I/O bound; PIL releases the GIL while decoding
        headers = list(pool.map(_check, files))

    kept = ScanResult([], [], [], [], [] if split.format == "coco" else None, report)
    for k, (path, (header, error)) in enumerate(zip(files, headers)):
        if error is None and split.format == "coco":
            labels, error = index.labels[k], index.errors.get(k)
            json_size = (index.images[k]["height"], index.images[k]["width"])
            if error is None and json_size != header[:2]:
                report.messages.append(f"{path}: the json says {json_size[1]}x{json_size[0]}, the file is "
                                       f"{header[1]}x{header[0]}; boxes are scaled to the file")
        elif error is None:
            labels, fixed, error = (np.zeros((0, 5), np.float32), 0, None) if not label_files[k].is_file() \
                else read_yolo_labels(label_files[k], num_classes)
            report.fixed += fixed
        if error is not None:
            report.corrupt += 1
            report.messages.append(error + " -> image skipped")
            continue
        height, width, orientation, mode = header
        if mode != "RGB":
            report.converted[mode] = report.converted.get(mode, 0) + 1
        report.backgrounds += len(labels) == 0
        report.boxes += len(labels)
        report.tiny += int(((labels[:, 3] * width < 2) | (labels[:, 4] * height < 2)).sum())
        kept.im_files.append(path)
        kept.labels.append(labels)
        kept.shapes.append((height, width))
        kept.orientations.append(orientation)
        if split.format == "coco":
            kept.image_ids.append(index.images[k]["id"])
    kept.shapes = np.array(kept.shapes, dtype=np.int64).reshape(-1, 2)
    if not kept.im_files:
        first = f" (first problem: {report.messages[0]})" if report.messages else ""
        raise DatasetError(f"no usable images in {split.path}: {report.found} found, {report.corrupt} skipped{first}")
    log_report(report)
    return kept


def log_report(report):
    """The summary line, with the first few problems, on the `lightdet.data` logger."""
    lines = [report.summary()] + [f"  {m}" for m in report.messages[:SHOWN_MESSAGES]]
    if len(report.messages) > SHOWN_MESSAGES:
        lines.append(f"  ... and {len(report.messages) - SHOWN_MESSAGES} more (dataset.report.messages)")
    LOGGER.log(logging.WARNING if report.messages else logging.INFO, "\n".join(lines))
