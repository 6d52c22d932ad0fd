"""pycocotools scoring and YOLOv5-style precision / recall, on a case small enough to compute by hand."""
import contextlib
import io

import pytest
from pycocotools.coco import COCO

from lightdet.evaluate import format_table, score_coco


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
    # best F1 just below 0.9: the hit alone -> P 1, R 1/2 (the curves are interpolated on a 1000-step
    # confidence grid as YOLOv5 does, hence the tolerance)
    assert (a["P"], a["R"]) == (pytest.approx(1.0, abs=1e-3), pytest.approx(0.5, abs=1e-3))
    # COCO's 101-point AP: precision 1 up to recall 0.5, nothing beyond -> 51/101 at every IoU threshold
    assert a["mAP50"] == pytest.approx(51 / 101) and a["mAP50_95"] == pytest.approx(51 / 101)
    assert (a["images"], a["instances"], b["instances"]) == (1, 2, 0)
    # class "b" has no ground truth: the means cover class "a" only
    assert metrics["mAP50"] == pytest.approx(51 / 101) and metrics["R"] == pytest.approx(0.5, abs=1e-3)
    assert "all" in format_table(metrics)


def test_no_detections_scores_zero():
    metrics = score_coco(ground_truth(), [], [1], [1, 7], ["a", "b"])
    assert metrics["mAP50"] == metrics["P"] == metrics["R"] == 0.0
