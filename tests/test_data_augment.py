"""YOLOv5's augmentations and the loader: boxes stay on their pixels, targets have the (M, 6) layout."""
import random

import numpy as np
import pytest
import torch
from PIL import Image

from lightdet.data import augment, build_dataloader, build_dataset, resolve_data
from lightdet.data.augment import box_candidates, colour_matrix, hsv_jitter, letterbox_layout

COLOURS = np.array([(230, 20, 20), (20, 230, 20), (20, 20, 230), (230, 230, 20), (230, 20, 230), (20, 230, 230)])
SIZES = [(320, 240), (240, 320), (320, 320), (960, 720), (720, 960), (320, 180), (500, 375), (200, 320)]   # (w, h)


@pytest.fixture(scope="module")
def colour_spec(tmp_path_factory):
    """Grey images with solid rectangles; the class of a rectangle is its colour. Two are large, so that
    JPEG decoding at reduced scale is exercised; saved without chroma subsampling so colours stay put."""
    root = tmp_path_factory.mktemp("colours")
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    (root / "classes.txt").write_text("".join(f"c{i}\n" for i in range(len(COLOURS))))
    rng = np.random.default_rng(0)
    for k, (w, h) in enumerate(SIZES):
        pixels = np.full((h, w, 3), 90, np.uint8)
        rows = []
        for j in range(2):   # two rectangles in the left and right halves: they never overlap
            cls = (2 * k + j) % len(COLOURS)
            bw, bh = rng.integers(w // 10, w // 2 - 2), rng.integers(h // 10, h - 2)
            x1 = rng.integers(0, w // 2 - bw + 1) + j * (w // 2)
            y1 = rng.integers(0, h - bh + 1)
            pixels[y1:y1 + bh, x1:x1 + bw] = COLOURS[cls]
            rows.append(f"{cls} {(x1 + bw / 2) / w} {(y1 + bh / 2) / h} {bw / w} {bh / h}\n")
        Image.fromarray(pixels).save(root / "images" / "train" / f"{k}.jpg", quality=95, subsampling=0)
        (root / "labels" / "train" / f"{k}.txt").write_text("".join(rows))
    return resolve_data(str(root))


def colour_masks(image):
    """(classes, H, W) bool: pixels of each class colour (JPEG and resampling leave edges blended: not counted)."""
    pixels = image.permute(1, 2, 0).numpy().astype(np.int64)
    return np.abs(pixels[None] - COLOURS[:, None, None]).max(-1) <= 40


def check_boxes_on_pixels(image, labels, axis_aligned=True):
    """Every coloured pixel lies in a box of its class; with axis-aligned transforms every box is also tight
    around its colour and filled with it."""
    height, width = image.shape[1:]
    masks = colour_masks(image)
    boxes = labels[:, 1:].numpy() * [width, height, width, height]
    boxes = np.concatenate([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2], 1)
    ys, xs = np.mgrid[:height, :width] + 0.5   # pixel centres
    for cls in range(len(COLOURS)):
        covered = np.zeros((height, width), bool)
        for x1, y1, x2, y2 in boxes[labels[:, 0].numpy() == cls]:
            covered |= (xs > x1 - 1.5) & (xs < x2 + 1.5) & (ys > y1 - 1.5) & (ys < y2 + 1.5)
            if x2 - x1 < 6 or y2 - y1 < 6:
                continue
            inside = masks[cls, int(y1 + 0.5):int(y2 + 0.5), int(x1 + 0.5):int(x2 + 0.5)]
            rows, cols = np.nonzero(inside)
            assert len(rows), f"class {cls} box {x1:.1f} {y1:.1f} {x2:.1f} {y2:.1f} holds none of its colour"
            if axis_aligned:   # a rotated box, cut by the border, is loose by nature (YOLOv5 says: use segments)
                extent = np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
                np.testing.assert_allclose(extent + [int(x1 + 0.5), int(y1 + 0.5)] * 2, [x1, y1, x2, y2], atol=2.5)
                core = masks[cls, int(y1) + 2:int(y2) - 1, int(x1) + 2:int(x2) - 1]
                assert core.mean() > 0.99, f"class {cls} box {x1:.1f} {y1:.1f} {x2:.1f} {y2:.1f} is off its pixels"
        stray = masks[cls] & ~covered
        assert not stray.any(), f"{stray.sum()} pixels of class {cls} outside its boxes"


@pytest.mark.parametrize("hyp, axis_aligned", [
    (dict(mosaic=1.0), True),
    (dict(mosaic=1.0, degrees=10.0, shear=3.0), False),
    (dict(mosaic=0.0), True),
    (dict(mosaic=0.0, degrees=15.0, perspective=0.0005), False)],
    ids=["mosaic", "mosaic-rotated", "letterbox-affine", "letterbox-perspective"])
def test_augmented_boxes_stay_on_their_pixels(colour_spec, hyp, axis_aligned, monkeypatch):
    # Keep every box, even a sliver cut by the border, so that every coloured pixel must be inside one.
    monkeypatch.setattr(augment, "box_candidates", lambda before, after: np.ones(len(after), dtype=bool))
    hyp = dict(hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, fliplr=0.5, flipud=0.5, **hyp)
    dataset = build_dataset(colour_spec, "train", imgsz=320, augment=True, hyp=hyp)
    random.seed(0)
    for i in range(12):
        image, labels, _, shape_info = dataset[i % len(dataset)]
        assert image.shape == (3, 320, 320) and image.dtype == torch.uint8 and labels.shape[1] == 5
        assert (shape_info is None) == (hyp["mosaic"] == 1.0)
        check_boxes_on_pixels(image, labels, axis_aligned)


def test_validation_letterbox_keeps_boxes_and_caches_identically(colour_spec):
    plain = build_dataset(colour_spec, "train", imgsz=320)
    cached = build_dataset(colour_spec, "train", imgsz=320, cache=True)
    for i in range(len(plain)):
        image, labels, _, ((h0, w0), ((ratio_h, ratio_w), (pad_w, pad_h))) = plain[i]
        check_boxes_on_pixels(image, labels)
        assert (h0, w0) == tuple(plain.shapes[i]) and max(ratio_h * h0, ratio_w * w0) == pytest.approx(320, abs=1)
        image2, labels2, _, _ = cached[i]
        assert torch.equal(image, image2) and torch.equal(labels, labels2)


def test_letterbox_layout():
    assert letterbox_layout(480, 640, (640, 640)) == ((480, 640), (0, 80))
    assert letterbox_layout(427, 640, (640, 640)) == ((427, 640), (0, 106))   # the odd pixel goes below
    assert letterbox_layout(100, 200, (640, 640), scaleup=False) == ((100, 200), (220, 270))
    assert letterbox_layout(100, 200, (640, 640)) == ((320, 640), (0, 160))
    assert letterbox_layout(640, 480, (640, 512)) == ((640, 480), (16, 0))


def test_box_candidates():
    before = np.array([[0, 0, 100, 100]] * 4, dtype=float)
    after = np.array([[0, 0, 100, 100], [0, 0, 100, 9], [0, 0, 1.5, 100], [0, 0, 100, 11]], dtype=float)
    assert box_candidates(before, after).tolist() == [True, False, False, True]   # 9% area gone, 1.5 px wide


def test_hsv_jitter():
    np.testing.assert_allclose(colour_matrix(0, 1, 1), np.eye(3), atol=1e-12)
    grey = torch.full((3, 8, 8), 100, dtype=torch.uint8)
    # Hue and saturation leave grey alone; the value gain scales it.
    np.testing.assert_allclose(colour_matrix(20, 0.4, 1) @ [100, 100, 100], [100, 100, 100], atol=1e-9)
    random.seed(0)
    out = hsv_jitter(grey, 0.015, 0.7, 0.4)
    assert out.dtype == torch.uint8 and out.shape == grey.shape and len(out.unique()) == 1
    assert 60 <= int(out[0, 0, 0]) <= 140
    rgb = torch.tensor([200, 50, 50], dtype=torch.uint8).view(3, 1, 1).expand(3, 4, 4)
    assert torch.equal(hsv_jitter(rgb, 0, 0, 0), rgb)


def test_loader_targets_layout_and_seeding(colour_spec):
    dataset = build_dataset(colour_spec, "train", imgsz=320, augment=True, hyp=dict(mixup=0.5))

    def first_batch(seed, workers):
        return next(iter(build_dataloader(dataset, 4, workers=workers, shuffle=True, seed=seed)))

    images, targets, paths, shape_infos = first_batch(0, workers=2)
    assert images.shape == (4, 3, 320, 320) and images.dtype == torch.uint8
    assert targets.dtype == torch.float32 and targets.ndim == 2 and targets.shape[1] == 6 and len(targets) > 0
    assert set(targets[:, 0].tolist()) <= {0.0, 1.0, 2.0, 3.0} and len(paths) == len(shape_infos) == 4
    assert torch.equal(targets[:, 1], targets[:, 1].round()) and targets[:, 1].max() < len(COLOURS)
    assert targets[:, 2:].min() >= 0 and targets[:, 2:].max() <= 1
    # The same seed gives the same batch (workers are seeded from it), another seed another batch.
    again, other = first_batch(0, workers=2), first_batch(1, workers=2)
    assert torch.equal(again[0], images) and torch.equal(again[1], targets)
    assert not torch.equal(other[0], images)
