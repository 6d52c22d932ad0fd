"""pycocotools scoring and YOLOv5-style precision / recall, on a case small enough to compute by hand."""
import contextlib
import io

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from lightdet.data import build_dataloader, build_dataset, resolve_data
from lightdet.evaluate import evaluate, format_table, score_coco, smooth, update_confusion
from lightdet.heads.anchor import AnchorHead


def ground_truth():
    coco = COCO()
    coco.dataset = {
        "images": [{"id": 1, "width": 100, "height": 100}],
        "categories": [{"id": 1, "name": "a"}, {"id": 7, "name": "b"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [60, 60, 20, 20], "area": 400, "iscrowd": 0},
        ],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def test_one_hit_one_false_positive():
    detections = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9},
                  {"image_id": 1, "category_id": 1, "bbox": [40, 10, 10, 10], "score": 0.8}]
    metrics = score_coco(ground_truth(), detections, [1], [1, 7], ["a", "b"])
    a, b = metrics["per_class"]
    # YOLOv5's curves over a 1000-step confidence grid: below 0.8 both detections count (P = R = 1/2), from 0.8 to
    # 0.9 precision is interpolated up to 1, above 0.9 nothing is left (P = 1, R = 0). The mean F1 is smoothed
    # over 101 grid steps before its peak is taken, which moves the point from 0.9 into the rise.
    grid = np.linspace(0, 1, 1000)
    p = np.where(grid < 0.8, 0.5, np.where(grid > 0.9, 1.0, 0.5 + (grid - 0.8) * 5))
    r = np.where(grid > 0.9, 0.0, 0.5)
    f1 = 2 * p * r / (p + r)
    padded = np.concatenate(([f1[0]] * 50, f1, [f1[-1]] * 50))
    best = int(np.argmax([padded[i:i + 101].mean() for i in range(1000)]))
    assert 0.8 < grid[best] < 0.9
    assert (a["P"], a["R"]) == (pytest.approx(p[best], abs=1e-6), pytest.approx(0.5))
    # COCO's 101-point AP: precision 1 up to recall 0.5, nothing beyond -> 51/101 at every IoU threshold
    assert a["mAP50"] == pytest.approx(51 / 101) and a["mAP50_95"] == pytest.approx(51 / 101)
    assert (a["images"], a["instances"], b["instances"]) == (1, 2, 0)
    # class "b" has no ground truth: the means cover class "a" only
    assert metrics["mAP50"] == pytest.approx(51 / 101) and metrics["R"] == pytest.approx(0.5)
    assert "all" in format_table(metrics)


def test_no_detections_scores_zero():
    metrics = score_coco(ground_truth(), [], [1], [1, 7], ["a", "b"])
    assert metrics["mAP50"] == metrics["P"] == metrics["R"] == 0.0


def test_smooth_is_a_centred_box_filter_with_repeated_ends():
    values = np.zeros(21)
    values[10] = 1.0
    smoothed = smooth(values, 0.15)   # 3 of 21 points: width 3
    assert smoothed[9:12] == pytest.approx([1 / 3] * 3) and smoothed.sum() == pytest.approx(1.0)
    assert smooth(np.arange(5.0), 0.5) == pytest.approx([1 / 3, 1, 2, 3, 11 / 3])   # ends repeated: (0+0+1)/3


def test_confusion_matrix_by_hand():
    matrix = np.zeros((3, 3))   # classes 0, 1 and background
    labels = torch.tensor([[0, 0, 0, 10, 10], [1, 20, 20, 30, 30], [1, 50, 50, 60, 60.0]])
    detections = torch.tensor([[0, 0, 10, 10, 0.9, 0],       # label 0, right class
                               [21, 21, 31, 31, 0.8, 0],     # label 1 (IoU 0.68), wrong class
                               [0, 0, 9, 10, 0.7, 1],        # label 0 again: taken by a better match
                               [80, 80, 90, 90, 0.6, 1],     # nothing there
                               [50, 50, 60, 60, 0.1, 1.0]])  # below 0.25: ignored, label 2 is missed
    update_confusion(matrix, detections, labels)
    assert matrix.tolist() == [[1, 1, 0],     # predicted 0: true 0, true 1
                               [0, 0, 2],     # predicted 1: two false alarms
                               [0, 1, 0]]     # missed: one of class 1
    update_confusion(matrix, detections[3:4], labels[:0])   # an image without labels: still a false alarm
    assert matrix[1, 2] == 3


class FixedPrediction(torch.nn.Module):
    """One candidate box per image at (16..48, 16..48) of a 64 px input: objectness 1, class scores 0.6 / 0.4."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    postprocess = staticmethod(AnchorHead.postprocess)   # YOLOv5's NMS, as a Detector with an anchor head

    def forward(self, images):
        row = torch.tensor([32.0, 32.0, 32.0, 32.0, 1.0, 0.6, 0.4])
        return row.expand(len(images), 1, 7), None


def test_validation_counts_a_box_once_per_class_like_yolov5(tmp_path):
    (tmp_path / "images" / "val").mkdir(parents=True)
    (tmp_path / "labels" / "val").mkdir(parents=True)
    (tmp_path / "classes.txt").write_text("a\nb\n")
    Image.new("RGB", (64, 64), (90, 90, 90)).save(tmp_path / "images" / "val" / "x.png")
    (tmp_path / "labels" / "val" / "x.txt").write_text("1 0.5 0.5 0.5 0.5\n")   # class b, where the box is
    dataset = build_dataset(resolve_data(str(tmp_path)), "val", imgsz=64)
    loader = build_dataloader(dataset, batch_size=1)
    multi = evaluate(FixedPrediction(), loader)                       # YOLOv5's val: b at 0.4 is kept too
    best_class = evaluate(FixedPrediction(), loader, multi_label=False)   # predict.py's choice: a only
    assert multi["mAP50"] == pytest.approx(1.0) and best_class["mAP50"] == 0.0
    # both of the box's classes pass 0.25: the first (higher) takes the label, the other is a false alarm
    assert multi["confusion"].tolist() == [[0, 1, 0], [0, 0, 1], [0, 0, 0]]
