"""The built-in `shapes` dataset: synthetic, generated from a seed, learnable in minutes, not trivial.

Six classes (circle, ring, square, triangle, star, cross) of 1–5 objects per 256×256 image, 16–128 px
(log-uniform), rotated, in random colours (~15% of them barely distinguishable from the background), some
overlapping or cut by the image border, on gradient backgrounds with noise, clutter lines and unlabelled arcs as
distractors. Boxes come from the drawn geometry, so they are tight. `shapes-hard` is 320 px, objects of 10–160
px, 1–8 per image.

The set is written to disk in the YOLO-txt layout a user's dataset has (plus a COCO json for the validation
split) and read back through the same code as any other dataset, so `train.py` on `shapes` exercises the whole
pipeline. The same seed and version give the same files on every machine.
"""
import itertools
import json
import math
import multiprocessing
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

VERSION = 1   # bump whenever a change alters the generated files: the cache folder name carries it
CLASSES = ("circle", "ring", "square", "triangle", "star", "cross")


@dataclass(frozen=True)
class ShapesConfig:
    img_size: int
    min_size: int      # longer side of an object's box, drawn log-uniformly between min_size and max_size
    max_size: int
    max_objects: int
    num_train: int = 3000
    num_val: int = 300
    low_contrast: float = 0.15   # share of objects whose colour is close to the background behind them
    max_lines: int = 5           # clutter lines
    max_arcs: int = 3            # unlabelled arcs: they look like pieces of rings and circles


VARIANTS = {
    "shapes": ShapesConfig(img_size=256, min_size=16, max_size=128, max_objects=5),
    "shapes-hard": ShapesConfig(img_size=320, min_size=10, max_size=160, max_objects=8, max_lines=8, max_arcs=5),
}


def _unit_polygon(kind, rng):
    """Vertices (V, 2) of a shape around the origin, before rotation and scaling."""
    if kind == "square":
        angles = np.arange(4) * (math.pi / 2) + math.pi / 4
        radii = np.ones(4)
    elif kind == "triangle":
        angles = np.arange(3) * (2 * math.pi / 3) - math.pi / 2
        radii = np.ones(3)
    elif kind == "star":   # five points, the inner radius varies so stars are not all alike
        angles = np.arange(10) * (math.pi / 5) - math.pi / 2
        radii = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.38, 0.5))
    elif kind == "cross":  # a plus sign: twelve vertices, arms of random thickness
        t = rng.uniform(0.18, 0.3)
        return np.array([(t, 1), (t, t), (1, t), (1, -t), (t, -t), (t, -1),
                         (-t, -1), (-t, -t), (-1, -t), (-1, t), (-t, t), (-t, 1)], dtype=np.float64)
    else:
        raise ValueError(kind)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _shape_geometry(kind, size, rng):
    """The shape scaled so that the longer side of its box is `size`: (vertices (V, 2) centred on the box, box w, h).

    Circles and rings return vertices None: they are drawn as ellipses from the box alone.
    """
    if kind in ("circle", "ring"):
        return None, size, size
    angle = rng.uniform(0, 2 * math.pi)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    points = _unit_polygon(kind, rng) @ rotation.T
    low, high = points.min(0), points.max(0)
    points = (points - (low + high) / 2) * (size / (high - low).max())
    width, height = (high - low) * (size / (high - low).max())
    return points, width, height


def draw_object(draw, kind, box, points, color, ring_width=None):
    """Draw one object and return its tight box (x1, y1, x2, y2) in pixels, read from what was drawn.

    Pillow fills the pixels whose index lies inside the polygon given in pixel-index coordinates, so we hand it
    integer vertices and the drawn pixels span exactly [min, max] of them: the label is that span, not a guess.
    """
    x1, y1, x2, y2 = box
    if points is None:   # circle or ring: an integer box [x1, x2) of pixels
        x1, y1 = int(round(x1)), int(round(y1))
        side = max(int(round(x2 - box[0])), 2)
        ellipse = (x1, y1, x1 + side - 1, y1 + side - 1)   # Pillow's ellipse box is inclusive
        if kind == "ring":
            draw.ellipse(ellipse, outline=color, width=ring_width)
        else:
            draw.ellipse(ellipse, fill=color)
        return np.array([x1, y1, x1 + side, y1 + side], dtype=np.float64)
    centre = np.array([(x1 + x2) / 2, (y1 + y2) / 2])
    pixels = np.round(points + centre - 0.5).astype(np.int64)   # -0.5: pixel i covers [i, i+1)
    draw.polygon([tuple(p) for p in pixels.tolist()], fill=color)
    return np.concatenate([pixels.min(0), pixels.max(0) + 1]).astype(np.float64)


def _background(rng, size):
    """A linear gradient between two random colours in a random direction: (PIL image, colour at (x, y) function)."""
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    if rng.random() < 0.3:   # a third of the backgrounds are nearly flat
        c1 = np.clip(c0 + rng.normal(0, 20, 3), 0, 255)
    phi = rng.uniform(0, 2 * math.pi)
    dx, dy = math.cos(phi) / (1.4 * size), math.sin(phi) / (1.4 * size)

    def position(x, y):   # 0..1 along the gradient
        return np.clip((np.asarray(x) - size / 2) * dx + (np.asarray(y) - size / 2) * dy + 0.5, 0, 1)

    coords = np.arange(size, dtype=np.float32)
    ramp = Image.fromarray((position(coords[None, :], coords[:, None]) * 255).astype(np.uint8))
    # A 256-entry table per channel turns the 0..255 ramp into colours: cheaper than arithmetic on every pixel.
    tables = np.round(c0 + np.linspace(0, 1, 256)[:, None] * (c1 - c0)).astype(np.uint8)
    image = Image.merge("RGB", (ramp, ramp, ramp)).point(tables.T.ravel().tolist())
    return image, lambda x, y: c0 + position(x, y) * (c1 - c0)


def _object_color(rng, behind, low_contrast):
    """A colour far from the background `behind` it, or (with probability low_contrast) barely different."""
    if rng.random() < low_contrast:
        direction = rng.normal(size=3)
        return np.clip(behind + direction / np.linalg.norm(direction) * rng.uniform(18, 35), 0, 255)
    for _ in range(20):
        color = rng.uniform(0, 255, 3)
        if np.linalg.norm(color - behind) > 80:
            break
    return color


def _overlaps_too_much(box, boxes):
    """True when a new box would hide most of an earlier one, or itself be mostly inside one."""
    for other in boxes:
        inter_w = min(box[2], other[2]) - max(box[0], other[0])
        inter_h = min(box[3], other[3]) - max(box[1], other[1])
        if inter_w <= 0 or inter_h <= 0:
            continue
        inter = inter_w * inter_h
        if inter > 0.35 * (other[2] - other[0]) * (other[3] - other[1]) or \
                inter > 0.6 * (box[2] - box[0]) * (box[3] - box[1]):
            return True
    return False


def render_image(config, seed, split, index, noise):
    """One image and its labels: (PIL RGB image, float array (n, 5) of class, x1, y1, x2, y2 in pixels).

    Every image has its own random generator keyed by (seed, split, index), so any subset of the set can be
    regenerated alone and the result does not depend on the order or the number of processes.
    """
    rng = np.random.default_rng([seed, 0 if split == "train" else 1, index])
    size = config.img_size
    image, background_at = _background(rng, size)
    draw = ImageDraw.Draw(image)

    def random_color():
        return tuple(int(c) for c in rng.integers(0, 256, 3))

    for _ in range(rng.integers(0, config.max_lines + 1)):   # clutter: straight lines
        ends = rng.uniform(-0.2 * size, 1.2 * size, 4)
        draw.line(ends.tolist(), fill=random_color(), width=int(rng.integers(1, 4)))
    for _ in range(rng.integers(0, config.max_arcs + 1)):    # distractors: arcs that are not rings
        centre, radius = rng.uniform(0, size, 2), rng.uniform(config.min_size / 2, config.max_size / 2)
        start = rng.uniform(0, 360)
        draw.arc([*(centre - radius), *(centre + radius)], start, start + rng.uniform(40, 240),
                 fill=random_color(), width=int(rng.integers(1, 5)))

    labels = []
    for _ in range(rng.integers(1, config.max_objects + 1)):
        for _attempt in range(20):
            cls = int(rng.integers(len(CLASSES)))
            obj_size = math.exp(rng.uniform(math.log(config.min_size), math.log(config.max_size)))
            points, width, height = _shape_geometry(CLASSES[cls], obj_size, rng)
            cx, cy = rng.uniform(0, size, 2)
            box = np.array([cx - width / 2, cy - height / 2, cx + width / 2, cy + height / 2])
            clipped = np.clip(box, 0, size)
            visible = (clipped[2] - clipped[0]) * (clipped[3] - clipped[1]) / (width * height)
            if visible >= 0.5 and not _overlaps_too_much(box, [lab[1:] for lab in labels]):
                break
        else:
            continue   # no room left for another object
        color = tuple(int(c) for c in _object_color(rng, background_at(cx, cy), config.low_contrast))
        ring_width = max(2, int(round(obj_size / 2 * rng.uniform(0.18, 0.4))))
        drawn = draw_object(draw, CLASSES[cls], box, points, color, ring_width)
        labels.append(np.concatenate([[cls], np.clip(drawn, 0, size)]))

    # Sensor-like noise: a random window of one shared noise field (much cheaper than fresh noise per image).
    ox, oy = rng.integers(0, noise.shape[0] - size, 2)
    pixels = np.asarray(image, dtype=np.float32) + noise[oy:oy + size, ox:ox + size] * rng.uniform(2, 12)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    if rng.random() < 0.2:   # some images slightly out of focus
        image = image.filter(ImageFilter.BoxBlur(rng.uniform(0.5, 1.0)))
    return image, np.array(labels, dtype=np.float64).reshape(-1, 5)


def _readme(variant, config, seed):
    return f"""# lightdet built-in dataset `{variant}` (generator version {VERSION}, seed {seed})

Synthetic, generated by `lightdet/data/shapes.py`; delete this folder to regenerate it.
{config.num_train} training and {config.num_val} validation images of {config.img_size}x{config.img_size} px.
Classes ({len(CLASSES)}): {", ".join(CLASSES)} (class ids 0..{len(CLASSES) - 1} in this order, in classes.txt).
1-{config.max_objects} objects per image, {config.min_size}-{config.max_size} px (log-uniform), rotated, random
colours, ~{config.low_contrast:.0%} of them low-contrast, some overlapping or cut by the border. Backgrounds:
gradients, noise, up to {config.max_lines} clutter lines and {config.max_arcs} unlabelled arcs. Boxes are the
tight extent of the drawn pixels, clipped to the image.

Layout: images/{{train,val}}/*.jpg, labels/{{train,val}}/*.txt (YOLO: class cx cy w h, normalised),
annotations/instances_val.json (COCO, category ids 1..{len(CLASSES)}, boxes in pixels).
"""


def _write_images(job):
    """Render and write the images `start..stop` of one split; returns their labels (class, x1, y1, x2, y2)."""
    root, config, seed, split, start, stop = job
    noise = np.random.default_rng([seed, 2]).standard_normal((2 * config.img_size,) * 2 + (3,), dtype=np.float32)
    all_labels = []
    for index in range(start, stop):
        image, labels = render_image(config, seed, split, index, noise)
        image.save(root / "images" / split / f"{index:06d}.jpg", quality=92)
        boxes = labels[:, 1:]
        rows = np.concatenate([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], 1) / config.img_size
        (root / "labels" / split / f"{index:06d}.txt").write_text(
            "".join(f"{int(c)} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n" for c, (x, y, w, h) in zip(labels[:, 0], rows)))
        all_labels.append(labels)
    return all_labels


def _coco_json(config, val_labels):
    """The validation split as COCO: category ids 1..6, boxes [x, y, w, h] in pixels."""
    images, annotations = [], []
    for index, labels in enumerate(val_labels):
        images.append({"id": index + 1, "file_name": f"{index:06d}.jpg",
                       "width": config.img_size, "height": config.img_size})
        for cls, x1, y1, x2, y2 in labels.tolist():
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, "category_id": int(cls) + 1,
                                "iscrowd": 0, "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)})
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(CLASSES)]
    return {"images": images, "annotations": annotations, "categories": categories}


def generate_shapes(root, variant="shapes", seed=0, num_train=None, num_val=None, processes=None):
    """Write the `variant` set into the folder `root`; returns root.

    Large sets are drawn by a pool of forked processes (`processes`, default: the usable CPUs); every image
    has its own generator, so the files are the same whatever the number of processes.
    """
    config = VARIANTS[variant]
    config = replace(config, num_train=config.num_train if num_train is None else num_train,
                     num_val=config.num_val if num_val is None else num_val)
    root = Path(root)
    for kind, split in itertools.product(("images", "labels"), ("train", "val")):
        (root / kind / split).mkdir(parents=True, exist_ok=True)
    chunk = 100
    jobs = [(root, config, seed, split, start, min(start + chunk, count))
            for split, count in (("train", config.num_train), ("val", config.num_val))
            for start in range(0, count, chunk)]
    if processes is None:
        processes = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if processes > 1 and len(jobs) > 2 and "fork" in multiprocessing.get_all_start_methods():
        # fork, not spawn: a spawned child would re-import torch through lightdet/__init__ (seconds each).
        with multiprocessing.get_context("fork").Pool(min(processes, len(jobs))) as pool:
            results = pool.map(_write_images, jobs)
    else:
        results = [_write_images(job) for job in jobs]
    val_labels = [labels for job, chunk_labels in zip(jobs, results) if job[3] == "val" for labels in chunk_labels]
    (root / "annotations").mkdir(exist_ok=True)
    (root / "annotations" / "instances_val.json").write_text(json.dumps(_coco_json(config, val_labels)))
    (root / "classes.txt").write_text("".join(f"{name}\n" for name in CLASSES))
    (root / "README.md").write_text(_readme(variant, config, seed))
    return root


def cache_root(cache_dir=None):
    """Where generated datasets live: `cache_dir`, else $LIGHTDET_CACHE, else ~/.cache/lightdet."""
    return Path(cache_dir or os.environ.get("LIGHTDET_CACHE") or Path.home() / ".cache" / "lightdet").expanduser()


def ensure_shapes(variant="shapes", seed=0, cache_dir=None, num_train=None, num_val=None):
    """The folder of the `variant` set for `seed`, generated on first use; returns its path.

    Generation writes into a temporary folder beside the final one and renames it at the end, so an interrupted
    run never leaves a half-written set that a later run would trust; two processes racing (DDP ranks) both
    finish and the loser's copy is dropped.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown built-in dataset {variant!r}; choose from {sorted(VARIANTS)}")
    config = VARIANTS[variant]
    name = f"{variant}-v{VERSION}-{seed}"
    if (num_train, num_val) != (None, None):   # a non-default size is another set
        name += f"-{config.num_train if num_train is None else num_train}"
        name += f"-{config.num_val if num_val is None else num_val}"
    root = cache_root(cache_dir)
    final = root / name
    if final.is_dir():
        return final
    root.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        generate_shapes(temporary, variant, seed, num_train, num_val)
        os.rename(temporary, final)
    except OSError:
        if not final.is_dir():   # not a lost race: a real failure
            raise
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)
    return final
