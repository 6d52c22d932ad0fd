import numpy as np
import torch

from lightdet.boxes import (box_area, box_iou, clip_boxes, cxcywh_to_xyxy, scale_boxes, xyxy_to_cxcywh,
                            xyxy_to_xywh)


def test_format_conversions_known_values_and_round_trip():
    xyxy = torch.tensor([[10.0, 20.0, 50.0, 80.0], [0.0, 0.0, 1.0, 1.0]])
    cxcywh = torch.tensor([[30.0, 50.0, 40.0, 60.0], [0.5, 0.5, 1.0, 1.0]])
    assert torch.equal(xyxy_to_cxcywh(xyxy), cxcywh)
    assert torch.equal(cxcywh_to_xyxy(cxcywh), xyxy)
    boxes = torch.rand(2, 5, 4) * 100
    torch.testing.assert_close(xyxy_to_cxcywh(cxcywh_to_xyxy(boxes)), boxes)  # any leading shape
    assert torch.equal(box_area(xyxy), torch.tensor([2400.0, 1.0]))
    assert xyxy_to_xywh(xyxy).tolist() == [[10, 20, 40, 60], [0, 0, 1, 1]]   # COCO's corner + size
    # numpy in, numpy out, same values: the data pipeline converts its labels with the same functions
    as_numpy = cxcywh_to_xyxy(cxcywh.numpy())
    assert isinstance(as_numpy, np.ndarray) and np.array_equal(as_numpy, xyxy.numpy())
    assert np.array_equal(xyxy_to_cxcywh(xyxy.numpy()), cxcywh.numpy())


def test_box_iou_known_values_shape_and_symmetry():
    a = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.5, 0.0, 1.5, 1.0], [2.0, 2.0, 3.0, 3.0]])
    expected = torch.tensor([[1.0, 1 / 3, 0.0], [0.25, 0.25, 0.0]])  # identical, half-shifted, inside, touching corner
    iou = box_iou(a, b)
    assert iou.shape == (2, 3)
    torch.testing.assert_close(iou, expected)
    boxes = torch.rand(7, 4) * 50
    boxes[:, 2:] += boxes[:, :2]
    torch.testing.assert_close(box_iou(boxes, boxes), box_iou(boxes, boxes).T)
    torch.testing.assert_close(box_iou(boxes, boxes).diagonal(), torch.ones(7))
    assert box_iou(a, b[:0]).shape == (2, 0)


def test_box_iou_of_empty_boxes_is_zero_not_nan():
    point = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    assert box_iou(point, point).item() == 0.0


def test_box_iou_is_differentiable():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]], requires_grad=True)
    iou = box_iou(a, torch.tensor([[1.0, 1.0, 3.0, 3.0]]))  # inter 1, union 7
    iou.sum().backward()
    # d/dx2: (1·7 − 1·(2 − 1)) / 49 ; d/dx1: −1·(−2) / 49
    torch.testing.assert_close(a.grad, torch.tensor([[2 / 49, 2 / 49, 6 / 49, 6 / 49]]))


def test_clip_boxes_does_not_modify_input():
    boxes = torch.tensor([[-5.0, -1.0, 700.0, 300.0]])
    clipped = clip_boxes(boxes, (480, 640))
    assert torch.equal(clipped, torch.tensor([[0.0, 0.0, 640.0, 300.0]]))
    assert boxes[0, 0] == -5.0


def test_scale_boxes_undoes_letterbox():
    # 720x1280 image letterboxed into 384x640: gain 0.5, 360 rows of image, 12 rows of padding above.
    boxes = torch.tensor([[10.0, 22.0, 110.0, 122.0], [600.0, 300.0, 700.0, 390.0]])
    expected = torch.tensor([[20.0, 20.0, 220.0, 220.0], [1200.0, 576.0, 1280.0, 720.0]])  # second one clipped
    torch.testing.assert_close(scale_boxes(boxes, (384, 640), (720, 1280)), expected)
    torch.testing.assert_close(scale_boxes(boxes, (384, 640), (720, 1280), ratio_pad=((0.5, 0.5), (0.0, 12.0))),
                               expected)
    # 480x640 into a square 640 input: gain 1, 80 rows of padding above.
    torch.testing.assert_close(scale_boxes(torch.tensor([[0.0, 80.0, 640.0, 560.0]]), (640, 640), (480, 640)),
                               torch.tensor([[0.0, 0.0, 640.0, 480.0]]))
    assert boxes[0, 0] == 10.0
