"""Box formats and box geometry shared by the losses, NMS, data and evaluation.

Formats (docs/design.md): `xyxy` is (x1, y1, x2, y2), top-left and bottom-right corners; `cxcywh` is
(centre x, centre y, width, height); `xywh` is COCO's (x1, y1, width, height). Coordinates are pixels unless a
name says otherwise (`_norm`). Functions take boxes as `Tensor[..., 4]` (`Tensor[N, 4]` where a count matters)
and return new tensors: nothing is modified in place. The format conversions accept numpy arrays too (the data
pipeline works in numpy) and return the same type.
"""
import numpy as np
import torch


def _stack(columns, like):
    return torch.stack(columns, -1) if isinstance(like, torch.Tensor) else np.stack(columns, -1)


def cxcywh_to_xyxy(boxes):
    """`[..., 4]` (cx, cy, w, h) -> `[..., 4]` (x1, y1, x2, y2)."""
    cx, cy, w, h = (boxes[..., i] for i in range(4))
    return _stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), boxes)


def xyxy_to_cxcywh(boxes):
    """`[..., 4]` (x1, y1, x2, y2) -> `[..., 4]` (cx, cy, w, h)."""
    x1, y1, x2, y2 = (boxes[..., i] for i in range(4))
    return _stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), boxes)


def xyxy_to_xywh(boxes):
    """`[..., 4]` (x1, y1, x2, y2) -> `[..., 4]` COCO's (x1, y1, w, h)."""
    x1, y1, x2, y2 = (boxes[..., i] for i in range(4))
    return _stack((x1, y1, x2 - x1, y2 - y1), boxes)


def box_area(boxes):
    """Area of `xyxy` boxes: `Tensor[..., 4]` -> `Tensor[...]`."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes1, boxes2):
    """Pairwise IoU of two sets of `xyxy` boxes: `Tensor[N, 4]`, `Tensor[M, 4]` -> `Tensor[N, M]`.

    Same arithmetic as torchvision's NMS (inter / (area1 + area2 - inter), no epsilon), so thresholding it
    keeps the boxes torchvision keeps. Two empty boxes (zero union) get IoU 0 instead of NaN.
    """
    # NMS calls this on large matrices: contiguous coordinate rows broadcast faster than strided columns, and
    # in-place steps after the first save copies (autograd still works through them).
    (x1, y1, x2, y2), (u1, v1, u2, v2) = boxes1.T.contiguous()[:, :, None], boxes2.T.contiguous()[:, None, :]
    inter = torch.minimum(x2, u2).sub_(torch.maximum(x1, u1)).clamp_(min=0)  # [N, M]
    inter.mul_(torch.minimum(y2, v2).sub_(torch.maximum(y1, v1)).clamp_(min=0))
    union = ((x2 - x1) * (y2 - y1) + (u2 - u1) * (v2 - v1)).sub_(inter)
    return inter.div_(union.clamp_(min=torch.finfo(union.dtype).tiny))


def clip_boxes(boxes, shape):
    """Clip `xyxy` boxes `Tensor[..., 4]` to an image of `shape` = (height, width)."""
    height, width = shape[0], shape[1]
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack((x1.clamp(0, width), y1.clamp(0, height), x2.clamp(0, width), y2.clamp(0, height)), -1)


def scale_boxes(boxes, input_shape, original_shape, ratio_pad=None):
    """Map `xyxy` boxes from a letterboxed network input back to the original image, then clip.

    boxes: `Tensor[..., 4]` in pixels of the input of `input_shape` = (height, width).
    original_shape: (height, width) of the image before letterboxing.
    ratio_pad: `((gain_y, gain_x), (pad_x, pad_y))` as the letterbox returned it. Without it, the gain and
        the centred padding are recomputed as the letterbox makes them (one gain for both axes, the padding
        split evenly between the two sides).
    Same result as YOLOv5's `scale_boxes(input_shape, boxes, original_shape, ratio_pad)`, boxes first here.
    """
    if ratio_pad is None:
        gain = min(input_shape[0] / original_shape[0], input_shape[1] / original_shape[1])
        pad_x = (input_shape[1] - original_shape[1] * gain) / 2
        pad_y = (input_shape[0] - original_shape[0] * gain) / 2
    else:
        gain = ratio_pad[0][0]
        pad_x, pad_y = ratio_pad[1]
    pad = boxes.new_tensor([pad_x, pad_y, pad_x, pad_y])
    return clip_boxes((boxes[..., :4] - pad) / gain, original_shape)
