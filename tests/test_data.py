"""Datasets: the shapes set, the mini set (tests/data/mini) as YOLO txt and as COCO json, dirty files,
evaluation ground truth."""
import json
import logging
import os

import numpy as np
import pytest
import torch
from conftest import DATA
from PIL import Image, ImageDraw
from pycocotools.cocoeval import COCOeval

from lightdet.data import DatasetError, build_dataloader, build_dataset, resolve_data
from lightdet.data.shapes import CLASSES, _shape_geometry, draw_object, ensure_shapes

# Sparse category ids for the mini set's 3 classes, as COCO's 80 are spread over 1..90.
CATEGORY_IDS = [1, 17, 90]


# 16 generated images of 90-160 px in one split, 3 classes, 41 boxes. Like ultralytics' coco128: a greyscale
# image (img03), two backgrounds (img05 without a label file, img09 with an empty one), two label files without
# an image, and three boxes under 2 px wide (img07).
MINI = DATA / "mini"
MINI_SIZE = 160   # the longest side in the set: rect batches need no upscaling


@pytest.fixture(scope="module")
def mini_val():
    return build_dataset(resolve_data(str(MINI)), "val", imgsz=MINI_SIZE, rect=True, batch_size=4)


@pytest.fixture(scope="module")
def coco_json(tmp_path_factory):
    """The mini set written as COCO's own layout: annotations/instances_train2017.json beside train2017/, with
    sparse category ids, annotation ids beyond 32 bits, a crowd box and the two unlabelled images."""
    root = tmp_path_factory.mktemp("coco")
    os.symlink(MINI / "images" / "train2017", root / "train2017")
    images, annotations = [], []
    for image_id, path in enumerate(sorted((MINI / "images" / "train2017").glob("*.jpg")), start=1000):
        width, height = Image.open(path).size
        images.append({"id": image_id, "file_name": path.name, "width": width, "height": height})
        label_file = MINI / "labels" / "train2017" / f"{path.stem}.txt"
        text = label_file.read_text() if label_file.exists() else ""
        rows = np.array(text.split(), dtype=float).reshape(-1, 5)
        for cls, cx, cy, w, h in rows:
            annotations.append({"id": 2**40 + len(annotations), "image_id": image_id, "iscrowd": 0,
                                "category_id": CATEGORY_IDS[int(cls)], "area": w * width * h * height,
                                "bbox": [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height]})
    annotations.append({**annotations[0], "id": 2**40 + len(annotations), "iscrowd": 1})
    names = (MINI / "classes.txt").read_text().split()
    categories = [{"id": i, "name": n} for i, n in zip(CATEGORY_IDS, names)]
    (root / "annotations").mkdir()
    json_path = root / "annotations" / "instances_train2017.json"
    json_path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return json_path


def perfect_map(dataset, batch_size=4):
    """mAP@0.5:0.95 of detections equal to the labels a loader gives, mapped back to the original pixels."""
    coco, image_ids, category_ids = dataset.coco_ground_truth()
    detections, start = [], 0
    for images, targets, _, shape_infos in build_dataloader(dataset, batch_size):
        for row in targets.tolist():
            i, cls, cx, cy, w, h = row
            (h0, w0), ((ratio_h, ratio_w), (pad_w, pad_h)) = shape_infos[int(i)]
            height, width = images.shape[2:]
            x1 = ((cx - w / 2) * width - pad_w) / ratio_w
            y1 = ((cy - h / 2) * height - pad_h) / ratio_h
            detections.append({"image_id": image_ids[start + int(i)], "category_id": category_ids[int(cls)],
                               "bbox": [x1, y1, w * width / ratio_w, h * height / ratio_h], "score": 1.0})
        start += len(images)
    evaluator = COCOeval(coco, coco.loadRes(detections), "bbox")
    evaluator.params.imgIds = image_ids
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return evaluator.stats[0]


def test_yolo_scan_reports_anomalies(mini_val, caplog):
    spec = resolve_data(str(MINI))
    assert spec.names == ["circle", "square", "triangle"] and spec.val is spec.train   # one split
    report = mini_val.report
    assert (report.found, report.backgrounds, report.corrupt, report.fixed, report.boxes) == (16, 2, 0, 0, 41)
    assert report.orphans == 2 and report.tiny == 3 and report.converted == {"L": 1}
    assert "found 16 images, 2 backgrounds, 0 corrupt skipped, 0 labels fixed" in report.summary()
    assert any("orphan_a.txt" in m and "orphan_b.txt" in m for m in report.messages)
    with caplog.at_level(logging.INFO, logger="lightdet.data"):
        build_dataset(spec, "train", imgsz=96)
    assert "found 16 images, 2 backgrounds" in caplog.text and "orphan_b.txt" in caplog.text

    grey = mini_val.im_files.index(str(MINI / "images" / "train2017" / "img03.jpg"))
    image, labels, _, ((h0, w0), _) = mini_val[grey]
    assert image.dtype == torch.uint8 and image.shape[0] == 3 and (h0, w0) == (160, 120)
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])   # greyscale, as RGB


def test_rect_batches_and_inverse_mapping(mini_val):
    shapes = [tuple(images.shape[2:]) for images, _, _, _ in build_dataloader(mini_val, 4)]
    assert shapes == [tuple(s) for s in mini_val.batch_shapes] and all(h % 32 == 0 == w % 32 for h, w in shapes)
    assert max(max(s) for s in shapes) == MINI_SIZE and min(min(s) for s in shapes) < MINI_SIZE
    aspect = mini_val.shapes[:, 0] / mini_val.shapes[:, 1]
    assert np.all(np.diff(aspect) >= 0)   # sorted by aspect ratio, so batches waste little padding
    # Each batch is the smallest multiple of 32 holding its images with the long side at MINI_SIZE.
    for b, (h, w) in enumerate(mini_val.batch_shapes):
        sizes = np.array([mini_val.load_size(i) for i in np.flatnonzero(mini_val.batch_index == b)])
        assert sizes[:, 0].max() <= h < sizes[:, 0].max() + 32 and sizes[:, 1].max() <= w < sizes[:, 1].max() + 32
    # Labels mapped back through shape_info coincide with the ground truth: a perfect detector scores 1.0.
    assert perfect_map(mini_val) == pytest.approx(1.0)


def test_rect_batches_follow_a_distributed_sampler(mini_val):
    sampler = torch.utils.data.DistributedSampler(mini_val, num_replicas=2, rank=1, shuffle=False)
    loader = build_dataloader(mini_val, 4, sampler=sampler)
    paths = [p for _, _, batch_paths, _ in loader for p in batch_paths]
    assert paths == [p for b in (1, 3) for p in mini_val.im_files[4 * b:4 * b + 4]]
    with pytest.raises(ValueError, match="batch_size"):
        build_dataloader(mini_val, 8)


def test_coco_json_source(coco_json, mini_val):
    spec = resolve_data(str(coco_json))
    assert spec.val is spec.train and spec.train.images_dir.name == "train2017"
    dataset = build_dataset(spec, "val", imgsz=MINI_SIZE, rect=True, batch_size=4)
    assert dataset.names == mini_val.names
    report = dataset.report
    assert (report.found, report.backgrounds, report.corrupt, report.boxes, report.crowd) == (16, 2, 0, 41, 1)
    # Same labels as the YOLO files (class index contiguous again), image for image.
    by_file = {os.path.basename(f): labels for f, labels in zip(mini_val.im_files, mini_val.labels)}
    for path, labels in zip(dataset.im_files, dataset.labels):
        expected = by_file[os.path.basename(path)]
        assert labels.shape == expected.shape
        in_order = [rows[np.lexsort(rows.T[::-1])] for rows in (labels, expected)]
        np.testing.assert_allclose(*in_order, atol=1e-5)
    coco, image_ids, category_ids = dataset.coco_ground_truth()
    assert category_ids == CATEGORY_IDS and sorted(image_ids) == list(range(1000, 1016))
    assert max(coco.getAnnIds()) > 2**32   # ids preserved, not squeezed into 32 bits
    assert perfect_map(dataset) == pytest.approx(1.0)


def test_yolo_splits_by_folder_name(tmp_path):
    for split in ("train2017", "val2017", "test2017"):
        (tmp_path / "images" / split).mkdir(parents=True)
        Image.new("RGB", (32, 32)).save(tmp_path / "images" / split / "x.jpg")
    (tmp_path / "names.txt").write_text("cat\n\ndog\n")
    spec = resolve_data(str(tmp_path))
    assert (spec.train.name, spec.val.name, spec.names) == ("train2017", "val2017", ["cat", "dog"])
    assert resolve_data(str(tmp_path), names_file=["a", "b", "c"]).names == ["a", "b", "c"]


def test_image_list_source(tmp_path):
    (tmp_path / "classes.txt").write_text("a\nb\n")
    first = sorted((MINI / "images" / "train2017").glob("*.jpg"))[:2]
    (tmp_path / "train.txt").write_text(f"{first[0]}\n\n{os.path.relpath(first[1], tmp_path)}\n")
    spec = resolve_data(str(tmp_path / "train.txt"))
    assert spec.names == ["a", "b"] and [os.path.realpath(f) for f in spec.train.im_files] == [os.path.realpath(f) for f in first]


# 48 high, 64 wide: red grows to the right, green downwards, so any turn or flip shows.
RAMP = np.stack(np.broadcast_arrays(np.arange(64)[None, :] * 4, np.arange(48)[:, None] * 5, 0), -1).astype(np.uint8)


def _write_dirty_dataset(root):
    images, labels = root / "images" / "train", root / "labels" / "train"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    (root / "classes.txt").write_text("a\nb\nc\n")
    noise = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    for name in ("good", "badfields", "badclass", "outside", "fixable", "background"):
        Image.fromarray(noise).save(images / f"{name}.jpg")
    Image.new("L", (64, 48), 90).save(images / "grey.png")
    Image.new("RGBA", (64, 48), (10, 20, 30, 0)).save(images / "rgba.png")
    Image.fromarray(np.full((48, 64), 40000, np.uint16)).save(images / "deep.png")   # 16-bit greyscale
    exif = Image.Exif()
    exif[0x0112] = 6   # stored 64 wide, shown turned clockwise: 48 wide, 64 high
    Image.fromarray(RAMP).save(images / "rotated.jpg", exif=exif, quality=95)
    data = (images / "good.jpg").read_bytes()
    (images / "truncated.jpg").write_bytes(data[:len(data) // 2])
    (images / "garbage.jpg").write_bytes(b"this is not an image" * 10)
    Image.new("RGB", (5, 5)).save(images / "tiny.png")
    box = "0 0.5 0.5 0.5 0.5\n"
    for name in ("good", "grey", "rgba", "deep", "rotated", "truncated", "garbage", "tiny"):
        (labels / f"{name}.txt").write_text(box)
    (labels / "badfields.txt").write_text(box + "0 0.5 0.5 0.2\n")
    (labels / "badclass.txt").write_text("3 0.5 0.5 0.2 0.2\n")
    (labels / "outside.txt").write_text("0 1.4 0.5 0.2 0.2\n")
    # a duplicate row, a zero-width box and a box 0.2% past the right edge: three fixes, two boxes left
    (labels / "fixable.txt").write_text(box + box + "1 0.5 0.5 0 0.1\n2 0.9 0.5 0.204 0.2\n")
    (labels / "ghost.txt").write_text(box)   # a label file without an image


def test_utf8_byte_order_marks_are_ignored(tmp_path):
    """Windows editors save UTF-8 with a BOM: it must not become part of a class name or a label's first field."""
    for folder in ("images/train", "labels/train"):
        (tmp_path / folder).mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(tmp_path / "images" / "train" / "a.jpg")
    (tmp_path / "classes.txt").write_text("cat\ndog\n", encoding="utf-8-sig")
    (tmp_path / "labels" / "train" / "a.txt").write_text("1 0.5 0.5 0.25 0.25\r\n", encoding="utf-8-sig")
    spec = resolve_data(str(tmp_path))
    assert spec.names == ["cat", "dog"]
    dataset = build_dataset(spec, "train", imgsz=32)
    np.testing.assert_allclose(dataset.labels[0], [[1, 0.5, 0.5, 0.25, 0.25]])


def test_dirty_dataset_is_reported_not_fatal(tmp_path, caplog):
    _write_dirty_dataset(tmp_path)
    with caplog.at_level(logging.WARNING, logger="lightdet.data"):
        dataset = build_dataset(resolve_data(str(tmp_path)), "train", imgsz=64)
    report = dataset.report
    assert (report.found, report.corrupt, report.backgrounds, report.fixed) == (13, 6, 1, 3)
    assert report.orphans == 1 and report.converted == {"L": 1, "RGBA": 1, "I;16": 1}
    assert "found 13 images, 1 backgrounds, 6 corrupt skipped, 3 labels fixed" in report.summary()
    text = "\n".join(report.messages)
    labels = tmp_path / "labels" / "train"
    for expected in (f"{labels / 'badfields.txt'}:2", f"{labels / 'badclass.txt'}:1", f"{labels / 'outside.txt'}:1",
                     "truncated.jpg", "garbage.jpg", "tiny.png", "ghost.txt"):
        assert expected in text
    assert "truncated.jpg" in caplog.text   # reported on the logger, not only stored
    names = [os.path.basename(f) for f in dataset.im_files]
    assert sorted(names) == sorted(["good.jpg", "grey.png", "rgba.png", "deep.png", "rotated.jpg", "fixable.jpg",
                                    "background.jpg"])
    fixable = dataset.labels[names.index("fixable.jpg")]
    np.testing.assert_allclose(fixable, [[0, 0.5, 0.5, 0.5, 0.5], [2, 0.899, 0.5, 0.202, 0.2]], atol=1e-6)
    assert tuple(dataset.shapes[names.index("rotated.jpg")]) == (64, 48)   # EXIF orientation applied
    rotated, _, _, (_, (_, (pad_w, _))) = dataset[names.index("rotated.jpg")]
    difference = rotated[:, :, pad_w:pad_w + 48].permute(1, 2, 0).numpy() - np.rot90(RAMP, k=-1).astype(int)
    assert np.abs(difference).max() < 8
    deep, _, _, _ = dataset[names.index("deep.png")]
    assert deep.shape == (3, 64, 64) and int(deep[0, 32, 32]) == 40000 >> 8   # 16 bits -> high byte
    # A file that breaks after the scan gives a blank sample, not a crashed epoch.
    (tmp_path / "images" / "train" / "good.jpg").write_bytes(b"broken later")
    image, labels_out, _, _ = dataset[names.index("good.jpg")]
    assert image.shape == (3, 64, 64) and len(labels_out) == 0 and "good.jpg" in caplog.text


def test_unusable_datasets_raise_one_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="not found: .*nowhere"):
        resolve_data(str(tmp_path / "nowhere"))
    (tmp_path / "empty" / "images" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "classes.txt").write_text("a\n")
    with pytest.raises(DatasetError, match=r"no images .* in .*empty/images/train"):
        resolve_data(str(tmp_path / "empty"))
    (tmp_path / "bad" / "images" / "train").mkdir(parents=True)
    (tmp_path / "bad" / "images" / "train" / "x.jpg").write_bytes(b"junk")
    with pytest.raises(DatasetError, match="classes.txt"):
        resolve_data(str(tmp_path / "bad"))
    (tmp_path / "bad" / "classes.txt").write_text("a\n")
    with pytest.raises(DatasetError, match=r"no usable images in .*bad/images/train.*x\.jpg"):
        build_dataset(resolve_data(str(tmp_path / "bad")), "train")
    (tmp_path / "instances_val.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    with pytest.raises(DatasetError, match="no image folder for .*instances_val.json"):
        resolve_data(str(tmp_path / "instances_val.json"))


@pytest.fixture(scope="module")
def shapes_spec(tmp_path_factory):
    return resolve_data("shapes", cache_dir=tmp_path_factory.mktemp("cache"), num_train=24, num_val=8)


def test_shapes_layout_and_labels(shapes_spec):
    root = shapes_spec.root
    assert root.name == "shapes-v1-0-24-8" and not [p for p in root.parent.iterdir() if p.name.startswith(".")]
    assert shapes_spec.names == list(CLASSES) and (root / "README.md").is_file()
    assert shapes_spec.train.format == "yolo" and len(shapes_spec.train.im_files) == 24
    assert shapes_spec.val.format == "coco" and shapes_spec.val.images_dir == root / "images" / "val"
    train = build_dataset(shapes_spec, "train", imgsz=256)
    assert train.report.corrupt == 0 and train.report.backgrounds == 0 and np.all(train.shapes == 256)
    counts = [len(labels) for labels in train.labels]
    assert 1 <= min(counts) and max(counts) <= 5 and len(set(counts)) > 1
    boxes = np.concatenate(train.labels)
    assert set(boxes[:, 0].astype(int)) <= set(range(6)) and len(set(boxes[:, 0].astype(int))) >= 4
    sides = boxes[:, 3:5].max(1) * 256
    assert sides.max() <= 128 + 1 and np.median(sides) > 20   # 16..128 px, possibly cut by the border
    val = build_dataset(shapes_spec, "val", imgsz=256)
    assert len(val) == 8 and val.image_ids == list(range(1, 9))
    assert perfect_map(val, batch_size=4) == pytest.approx(1.0)


def test_shapes_are_deterministic(shapes_spec, tmp_path):
    again = ensure_shapes("shapes", seed=0, cache_dir=tmp_path, num_train=24, num_val=8)
    other = ensure_shapes("shapes", seed=1, cache_dir=tmp_path, num_train=24, num_val=8)
    for relative in ("images/train/000003.jpg", "labels/train/000017.txt", "annotations/instances_val.json"):
        assert (again / relative).read_bytes() == (shapes_spec.root / relative).read_bytes()
        assert (other / relative).read_bytes() != (again / relative).read_bytes()
    hard = ensure_shapes("shapes-hard", cache_dir=tmp_path, num_train=2, num_val=1)
    assert Image.open(hard / "images" / "train" / "000000.jpg").size == (320, 320)


def test_shapes_cache_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTDET_CACHE", str(tmp_path))
    root = ensure_shapes("shapes", seed=3, num_train=1, num_val=1)
    assert root.parent == tmp_path and (root / "annotations" / "instances_val.json").is_file()


@pytest.mark.parametrize("kind", CLASSES)
def test_shape_boxes_are_tight(kind):
    """The label box is exactly the extent of the drawn pixels, for every class, size and rotation."""
    rng = np.random.default_rng(CLASSES.index(kind))
    for size in (11.0, 16.3, 40.7, 97.2):
        canvas = Image.new("L", (160, 160))
        points, w, h = _shape_geometry(kind, size, rng)
        cx, cy = rng.uniform(60, 100, 2)
        box = draw_object(ImageDraw.Draw(canvas), kind, (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), points,
                          255, ring_width=3)
        ys, xs = np.nonzero(np.asarray(canvas))
        drawn = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        np.testing.assert_allclose(box, drawn, atol=1)
        assert abs(max(box[2] - box[0], box[3] - box[1]) - size) <= 2
