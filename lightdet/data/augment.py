"""YOLOv5's training augmentations (ultralytics/yolov5 `utils/augmentations.py`) without OpenCV.

Images are uint8 (3, H, W) tensors (Pillow decodes; torch's uint8 antialiased resize is the fast kernel we
have without OpenCV), boxes numpy (n, 4) xyxy in pixels. Two choices differ from YOLOv5's code, not its result:

- Mosaic + affine are drawn in one pass. YOLOv5 pastes four images into a 2s×2s canvas and warps it into the
  s×s output. With no rotation, shear or perspective (the default) that warp is a scale and a shift, so each
  tile is resized straight from the decoded image into its place in the output: the same picture without the
  canvas and the warp. Rotation, shear and perspective take the canvas + warp path (Pillow's affine warp).
- The HSV jitter is one 3×3 colour matrix (a hue rotation, a saturation blend and a brightness gain, as in the
  W3C filter-effects spec) instead of RGB→HSV, three lookup tables and back. The gains mean what YOLOv5's mean:
  saturation and value are scaled by 1 ± gain; the hue turns by up to ±gain·360° (YOLOv5 multiplies OpenCV's
  0–180 hue by 1 ± gain: the same largest turn).
"""
import math
import random

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..boxes import cxcywh_to_xyxy, xyxy_to_cxcywh

# hyp.scratch-low.yaml of YOLOv5 v6/v7 (the augmentation part).
HYP_DEFAULTS = {"hsv_h": 0.015, "hsv_s": 0.7, "hsv_v": 0.4, "degrees": 0.0, "translate": 0.1, "scale": 0.5,
                "shear": 0.0, "perspective": 0.0, "flipud": 0.0, "fliplr": 0.5, "mosaic": 1.0, "mixup": 0.0}
FILL = (114, 114, 114)   # YOLOv5's grey for padding and empty mosaic areas


def xywhn_to_xyxy(boxes, width, height, pad_x=0.0, pad_y=0.0):
    """(n, 4) normalised cx, cy, w, h -> pixels x1, y1, x2, y2 in an image of width × height placed at the pad."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return cxcywh_to_xyxy(boxes) * [width, height, width, height] + [pad_x, pad_y, pad_x, pad_y]


def xyxy_to_xywhn(boxes, width, height, eps=1e-3):
    """(n, 4) pixels x1, y1, x2, y2 -> normalised cx, cy, w, h, clipped to the image (YOLOv5 clips to size - eps)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    boxes = boxes.clip(0, [width - eps, height - eps, width - eps, height - eps])
    return xyxy_to_cxcywh(boxes) / [width, height, width, height]


def letterbox_layout(height, width, new_shape, scaleup=True):
    """Where an image of height × width goes in a `new_shape` (h, w) canvas, aspect ratio kept.

    Returns ((content_h, content_w), (left, top)). Like YOLOv5's `letterbox(auto=False)`: the content is
    centred, an odd pixel of padding goes to the bottom/right; `scaleup=False` only shrinks.
    """
    ratio = min(new_shape[0] / height, new_shape[1] / width)
    if not scaleup:
        ratio = min(ratio, 1.0)
    content_h, content_w = int(round(height * ratio)), int(round(width * ratio))
    top = int(round((new_shape[0] - content_h) / 2 - 0.1))
    left = int(round((new_shape[1] - content_w) / 2 - 0.1))
    return (content_h, content_w), (left, top)


def random_affine_matrix(out_size, canvas_size, degrees=0.0, translate=0.1, scale=0.5, shear=0.0, perspective=0.0):
    """YOLOv5's `random_perspective` transform: canvas pixels -> output pixels, (3, 3), and its scale factor.

    Centre the canvas, then perspective, rotation + scale, shear, and a shift of the centre to a random point
    near the middle of the output (`out_size` and `canvas_size` are (width, height)).
    """
    centre = np.array([[1, 0, -canvas_size[0] / 2], [0, 1, -canvas_size[1] / 2], [0, 0, 1]])
    persp = np.eye(3)
    persp[2, :2] = [random.uniform(-perspective, perspective), random.uniform(-perspective, perspective)]
    angle, s = math.radians(random.uniform(-degrees, degrees)), random.uniform(1 - scale, 1 + scale)
    # OpenCV's getRotationMatrix2D: a positive angle turns counter-clockwise on screen (y points down).
    rotate = np.array([[s * math.cos(angle), s * math.sin(angle), 0], [-s * math.sin(angle), s * math.cos(angle), 0],
                       [0, 0, 1]])
    skew = np.eye(3)
    skew[0, 1] = math.tan(math.radians(random.uniform(-shear, shear)))
    skew[1, 0] = math.tan(math.radians(random.uniform(-shear, shear)))
    shift = np.eye(3)
    shift[:2, 2] = [random.uniform(0.5 - translate, 0.5 + translate) * out_size[0],
                    random.uniform(0.5 - translate, 0.5 + translate) * out_size[1]]
    return shift @ skew @ rotate @ persp @ centre, s


def transform_boxes(boxes, matrix, out_size):
    """Map (n, 4) xyxy boxes through a (3, 3) transform: the box around the four moved corners, clipped."""
    corners = boxes[:, [0, 1, 2, 1, 0, 3, 2, 3]].reshape(-1, 2)          # (4n, 2): tl, tr, bl, br
    moved = np.concatenate([corners, np.ones((len(corners), 1))], 1) @ matrix.T
    moved = (moved[:, :2] / moved[:, 2:3]).reshape(-1, 4, 2)
    out = np.concatenate([moved.min(1), moved.max(1)], 1)
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, out_size[0])
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, out_size[1])
    return out


def box_candidates(before, after, wh_thr=2, ar_thr=100, area_thr=0.1, eps=1e-16):
    """Boxes worth keeping after a transform (YOLOv5): wider and taller than 2 px, at least 10% of their area
    left (`before` already scaled by the transform's scale), aspect ratio under 100."""
    w1, h1 = before[:, 2] - before[:, 0], before[:, 3] - before[:, 1]
    w2, h2 = after[:, 2] - after[:, 0], after[:, 3] - after[:, 1]
    aspect = np.maximum(w2 / (h2 + eps), h2 / (w2 + eps))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + eps) > area_thr) & (aspect < ar_thr)


def resize(image, height, width):
    """Bilinear, antialiased resize of a uint8 (3, h, w) tensor (torch's uint8 kernel: ~3x faster than Pillow's)."""
    if image.shape[1:] == (height, width):
        return image
    return F.interpolate(image[None], size=(height, width), mode="bilinear", antialias=True, align_corners=False)[0]


def _place(image, src, dst, limit):
    """Whole output pixels for a tile whose source box `src` (normalised) lands on `dst` (float output box),
    cut to the output (`limit` = [w, h, w, h]), and the whole source pixels that land on them.

    Returns (output box, source box) as int arrays, or None when nothing lands. Rounding to whole pixels moves
    an edge by at most half a pixel; boxes are mapped through these very rectangles, so labels match pixels.
    """
    _, height, width = image.shape
    o = np.round(dst).clip(0, limit).astype(np.int64)
    if o[2] <= o[0] or o[3] <= o[1]:
        return None
    src = np.asarray(src, dtype=np.float64) * [width, height, width, height]
    span = (src[2:] - src[:2]) / (dst[2:] - dst[:2])
    a = np.round(src[:2] + (o[:2] - dst[:2]) * span).clip(0, [width - 1, height - 1]).astype(np.int64)
    b = np.round(src[:2] + (o[2:] - dst[:2]) * span).clip(a + 1, [width, height]).astype(np.int64)
    return o, np.concatenate([a, b])


def _map_boxes(labels, image, o, a):
    """Normalised labels of `image` -> (n, 4) xyxy in the frame where source box `a` fills output box `o`."""
    _, height, width = image.shape
    boxes = xywhn_to_xyxy(labels[:, 1:], width, height)
    scale = (o[2:] - o[:2]) / (a[2:] - a[:2])
    return (boxes - np.tile(a[:2], 2)) * np.tile(scale, 2) + np.tile(o[:2], 2)


def compose(tiles, matrix, scale, out_size, canvas_size, filter_boxes=True):
    """Place image tiles on a canvas and warp it by `matrix` into an `out_size` (w, h) image, with their boxes.

    `tiles`: (image uint8 (3, H, W), labels (n, 5) class cx cy w h normalised to that image, source box
    normalised to that image, destination box on the canvas in pixels). Normalised source boxes let a tile come
    from the decoded file, a JPEG decoded at reduced scale or a RAM-cached copy alike. Returns (uint8 (3, h, w),
    float (m, 5) class x1 y1 x2 y2 in output pixels); with `filter_boxes` only YOLOv5's box candidates stay.
    With a scale-and-shift `matrix` (the default hyp) each tile is resized straight into its place in the output.
    """
    out_w, out_h = out_size
    classes, before, after = [], [], []
    if matrix[0, 1] == matrix[1, 0] == matrix[2, 0] == matrix[2, 1] == 0:
        out = torch.full((3, out_h, out_w), FILL[0], dtype=torch.uint8)
        stretch, shift = matrix[[0, 1, 0, 1], [0, 1, 0, 1]], matrix[[0, 1, 0, 1], [2, 2, 2, 2]]
        for image, labels, src, dst in tiles:
            d = np.asarray(dst, dtype=np.float64) * stretch + shift        # where the tile lands, unrounded
            placed = _place(image, src, d, [out_w, out_h, out_w, out_h])
            if placed is None:
                continue
            o, a = placed
            out[:, o[1]:o[3], o[0]:o[2]] = resize(image[:, a[1]:a[3], a[0]:a[2]], o[3] - o[1], o[2] - o[0])
            boxes = _map_boxes(labels, image, o, a)
            classes.append(labels[:, :1])
            before.append(boxes.clip(np.tile(d[:2], 2), np.tile(d[2:], 2)))   # cut only by the tile's own edges
            after.append(boxes.clip(np.tile(o[:2], 2), np.tile(o[2:], 2)))
        before, after = np.concatenate(before or [np.zeros((0, 4))]), np.concatenate(after or [np.zeros((0, 4))])
    else:   # rotation, shear or perspective: paste on the canvas, then one Pillow warp
        canvas = torch.full((3, canvas_size[1], canvas_size[0]), FILL[0], dtype=torch.uint8)
        for image, labels, src, dst in tiles:
            placed = _place(image, src, np.asarray(dst, dtype=np.float64), list(canvas_size) * 2)
            if placed is None:
                continue
            o, a = placed
            canvas[:, o[1]:o[3], o[0]:o[2]] = resize(image[:, a[1]:a[3], a[0]:a[2]], o[3] - o[1], o[2] - o[0])
            classes.append(labels[:, :1])
            before.append(_map_boxes(labels, image, o, a).clip(np.tile(o[:2], 2), np.tile(o[2:], 2)))
        before = np.concatenate(before or [np.zeros((0, 4))])
        after = transform_boxes(before, matrix, out_size)
        before = before * scale
        inverse = np.linalg.inv(matrix)
        inverse /= inverse[2, 2]
        method, data = (Image.AFFINE, inverse[:2].ravel()) if matrix[2, 0] == matrix[2, 1] == 0 \
            else (Image.PERSPECTIVE, inverse.ravel()[:8])
        warped = Image.fromarray(canvas.permute(1, 2, 0).numpy()).transform(
            tuple(out_size), method, tuple(data), Image.BILINEAR, fillcolor=FILL)
        out = torch.from_numpy(np.array(warped)).permute(2, 0, 1).contiguous()
    classes = np.concatenate(classes or [np.zeros((0, 1))])
    keep = box_candidates(before, after) if filter_boxes else np.ones(len(after), dtype=bool)
    return out, np.concatenate([classes[keep], after[keep]], 1)


def render(pieces, matrix, out_size, canvas_size):
    """`compose` for PIL images without labels (predict.py's letterbox): PIL in, PIL out.

    `pieces`: (PIL image, source box normalised to that image, destination box on the canvas in pixels).
    """
    tiles = [(torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1), np.zeros((0, 5)), src, dst)
             for image, src, dst in pieces]
    out, _ = compose(tiles, matrix, 1.0, out_size, canvas_size, filter_boxes=False)
    return Image.fromarray(out.permute(1, 2, 0).numpy())


# W3C Filter Effects: hue rotation about the grey axis with Rec. 709 luma weights.
_LUMA = np.array([[0.213, 0.715, 0.072]] * 3)
_HUE_SIN = np.array([[-0.213, -0.715, 0.928], [0.143, 0.140, -0.283], [-0.787, 0.715, 0.072]])


def colour_matrix(hue_degrees, saturation, value):
    """The (3, 3) RGB matrix that turns the hue, scales the saturation (a blend with grey) and the brightness."""
    angle = math.radians(hue_degrees)
    hue = _LUMA + math.cos(angle) * (np.eye(3) - _LUMA) + math.sin(angle) * _HUE_SIN
    return value * (_LUMA + saturation * (hue - _LUMA))


def hsv_jitter(image, hgain=0.5, sgain=0.5, vgain=0.5):
    """Random hue, saturation and brightness gains (YOLOv5's `augment_hsv`) on a uint8 (3, H, W) tensor."""
    if not (hgain or sgain or vgain):
        return image
    h, s, v = (random.uniform(-1, 1) * gain + 1 for gain in (hgain, sgain, vgain))
    matrix = colour_matrix((h - 1) * 360, s, v).tolist()
    rgb, out = image.float(), torch.empty_like(image)
    for c, (r, g, b) in enumerate(matrix):   # three fused multiply-adds per channel beat a (3, 3) @ (3, N) matmul
        out[c] = (rgb[0] * r).add_(rgb[1], alpha=g).add_(rgb[2], alpha=b).add_(0.5).clamp_(0, 255)
    return out
