import pytest
import torch
from conftest import load_fixture, seeded_uniform

from lightdet.boxes import box_iou
from lightdet.nms import batched_nms, nms, non_max_suppression


def random_boxes(n, max_side=100.0, size=640.0):
    centre = torch.rand(n, 2) * size
    side = 4 + torch.rand(n, 2) * max_side
    return torch.cat((centre - side / 2, centre + side / 2), 1), torch.rand(n)


def reference_nms(boxes, scores, iou_thres):
    """Textbook greedy NMS, one box at a time."""
    order = scores.argsort(descending=True, stable=True)
    iou = box_iou(boxes, boxes)
    suppressed = torch.zeros(len(boxes), dtype=torch.bool)
    keep = []
    for i in order.tolist():
        if not suppressed[i]:
            keep.append(i)
            suppressed |= iou[i] > iou_thres
    return torch.tensor(keep, dtype=torch.long)


def canonical(det):
    """Rows by descending score, ties by x1, so outputs that differ only in tie order compare equal."""
    det = det[det[:, 0].argsort(stable=True)]
    return det[det[:, 4].argsort(descending=True, stable=True)]


def test_hand_made_chain():
    # A overlaps B (IoU 0.6), B overlaps C (IoU 0.6), A and C barely touch: greedy keeps A and C.
    boxes = torch.tensor([[0.0, 0, 10, 10], [2.5, 0, 12.5, 10], [5.0, 0, 15, 10], [100.0, 100, 110, 110]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.1])
    assert nms(boxes, scores, 0.5).tolist() == [0, 2, 3]
    assert nms(boxes, scores, 0.7).tolist() == [0, 1, 2, 3]
    assert nms(boxes, scores.flip(0), 0.5).tolist() == [3, 2, 0]  # now C comes first and suppresses B


def test_threshold_is_strict():
    boxes = torch.tensor([[0.0, 0.0, 4.0, 1.0], [0.0, 0.0, 2.0, 1.0]])  # IoU exactly 0.5
    assert nms(boxes, torch.tensor([0.9, 0.8]), 0.5).tolist() == [0, 1]
    assert nms(boxes, torch.tensor([0.9, 0.8]), 0.49).tolist() == [0]


@pytest.mark.parametrize("n, max_side, iou_thres", [(300, 100, 0.45), (1500, 300, 0.3), (2500, 40, 0.6),
                                                    (1200, 200, 0.0), (1500, 60, 0.9)])
def test_matches_textbook_greedy(n, max_side, iou_thres):
    # Sizes chosen to run over several blocks and over the sweep path (more than 512 kept boxes).
    boxes, scores = random_boxes(n, max_side)
    assert torch.equal(nms(boxes, scores, iou_thres), reference_nms(boxes, scores, iou_thres))


def test_nms_properties():
    boxes, scores = random_boxes(1500, 120)
    keep = nms(boxes, scores, 0.45)
    assert keep.dtype == torch.long and len(keep.unique()) == len(keep) and 0 < len(keep) < 1500
    assert (scores[keep][1:] <= scores[keep][:-1]).all()
    iou = box_iou(boxes[keep], boxes[keep])
    assert (iou.triu(1) <= 0.45).all()
    # every dropped box overlaps a kept box of higher score
    dropped = torch.ones(1500, dtype=torch.bool)
    dropped[keep] = False
    blocker = (box_iou(boxes[dropped], boxes[keep]) > 0.45) & (scores[keep][None] >= scores[dropped][:, None])
    assert blocker.any(1).all()


def test_thresholds_outside_0_1_are_rejected():
    boxes, scores = random_boxes(3)
    with pytest.raises(ValueError, match="iou_thres"):
        nms(boxes, scores, -0.1)
    with pytest.raises(ValueError, match="conf_thres"):
        non_max_suppression(torch.rand(1, 5, 7), conf_thres=1.5)


def test_empty_and_single_inputs():
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).shape == (0,)
    assert batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0), 0.5).shape == (0,)
    assert nms(torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([0.3]), 0.5).tolist() == [0]
    out = non_max_suppression(torch.rand(2, 0, 85))
    assert len(out) == 2 and all(o.shape == (0, 6) for o in out)
    pred = torch.rand(1, 50, 85)
    pred[..., 4] = 0.1
    assert non_max_suppression(pred, conf_thres=0.25)[0].shape == (0, 6)


def test_batched_nms_equals_class_offset_trick():
    boxes, scores = random_boxes(1500, 150)
    classes = torch.randint(0, 7, (1500,))
    keep = batched_nms(boxes, scores, classes, 0.5)
    offset = reference_nms(boxes + classes[:, None] * 4096.0, scores, 0.5)
    assert torch.equal(keep.sort().values, offset.sort().values)
    assert (scores[keep][1:] <= scores[keep][:-1]).all()
    for c in range(7):  # no two kept boxes of one class overlap; other classes may
        same = keep[classes[keep] == c]
        assert (box_iou(boxes[same], boxes[same]).triu(1) <= 0.5).all()


def test_non_max_suppression_options():
    torch.manual_seed(1)
    pred = torch.cat((torch.rand(2, 400, 2) * 320, 10 + torch.rand(2, 400, 2) * 90, torch.rand(2, 400, 6)), 2)
    for options in ({}, {"agnostic": True}, {"multi_label": True}, {"classes": [1, 4]}, {"max_det": 7}):
        out = non_max_suppression(pred, 0.2, 0.45, **options)
        assert len(out) == 2
        for det, x in zip(out, pred):
            assert det.shape[1] == 6 and len(det) <= options.get("max_det", 300)
            assert (det[:, 4] > 0.2).all() and (det[1:, 4] <= det[:-1, 4]).all()
            if "classes" in options:
                assert set(det[:, 5].tolist()) <= {1.0, 4.0}
            same_class = det[:, 5:6] == det[:, 5:6].T
            overlap = box_iou(det[:, :4], det[:, :4]).triu(1) > 0.45
            assert not (overlap & (same_class | bool(options.get("agnostic")))).any()
            # every detection is a candidate row: its box and a score obj x p(class)
            row = (x[:, None, :2] - (det[None, :, :2] + det[None, :, 2:4]) / 2).abs().sum(2).argmin(0)
            torch.testing.assert_close(det[:, 4], x[row, 4] * x[row, 5 + det[:, 5].long()])
    assert len(non_max_suppression(pred, 0.2, max_det=7)[0]) == 7
    torch.testing.assert_close(non_max_suppression((pred, None))[0], non_max_suppression(pred)[0])


def test_reproduces_yolov5_fixture():
    fixture = load_fixture("nms_yolov5n.pt")
    prediction = torch.cat((seeded_uniform("nms:xy", (3, 3000, 2)) * 600 + 20,
                            seeded_uniform("nms:wh", (3, 3000, 2)) * 120 + 4,
                            seeded_uniform("nms:obj", (3, 3000, 1)),
                            seeded_uniform("nms:cls", (3, 3000, 80)) ** 4), 2).float()
    for settings, expected in zip(fixture["settings"], fixture["results"]):
        out = non_max_suppression(prediction, **settings)
        assert len(out) == len(expected)
        for det, ref in zip(out, expected):
            assert det.shape == ref.shape, settings
            assert torch.equal(canonical(det), canonical(ref.to(det.dtype))), settings
