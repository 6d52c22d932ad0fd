"""YOLOv5's anchor-based detection head (`Detect` in ultralytics/yolov5 `models/yolo.py`).

One 1×1 convolution per level predicts, for each of `na` anchors at every cell, a box (4), an objectness
logit (1) and class logits (nc). Decoding (YOLOv5 v6 / v7 era):
    xy = (2·σ(t_xy) − 0.5 + cell) · stride      the centre may move half a cell beyond its own cell
    wh = (2·σ(t_wh))² · anchor                  bounded to 4× the anchor, unlike YOLOv3's exp()
"""
import math

import torch
from torch import nn

from ..nms import non_max_suppression

# YOLOv5's default anchors (w, h) in pixels for strides 8, 16, 32 (k-means on COCO).
DEFAULT_ANCHORS = (
    ((10, 13), (16, 30), (33, 23)),
    ((30, 61), (62, 45), (59, 119)),
    ((116, 90), (156, 198), (373, 326)),
)


class AnchorHead(nn.Module):
    """AnchorHead(num_classes, in_channels, anchors, strides).

    Training: returns the raw maps `[B, na, h, w, 5 + nc]` per level (what the loss consumes).
    Eval: returns `(decoded [B, N, 5 + nc], raw maps)`, decoded rows `cx, cy, w, h` in input pixels followed
    by sigmoided objectness and class scores, N = na · Σ h·w.
    """

    CLASS_DEPENDENT = ("pred.",)   # parameters whose shape follows the class count

    def __init__(self, num_classes, in_channels, anchors=DEFAULT_ANCHORS, strides=(8, 16, 32)):
        super().__init__()
        anchors = torch.tensor(anchors, dtype=torch.float32)
        if anchors.ndim != 3 or anchors.shape[-1] != 2:
            raise ValueError(f"AnchorHead: anchors must have shape (levels, anchors, 2) as (w, h) pixels, "
                             f"got {tuple(anchors.shape)}")
        if len(anchors) != len(in_channels) or len(strides) != len(in_channels):
            raise ValueError(f"AnchorHead: {len(in_channels)} levels but {len(anchors)} anchor sets and "
                             f"{len(strides)} strides")
        self.num_classes = num_classes
        self.num_outputs = 5 + num_classes
        self.num_anchors = len(anchors[0])
        self.strides = tuple(float(s) for s in strides)
        # A buffer so that checkpoints carry the anchors they were trained with.
        self.register_buffer("anchors", anchors)  # (nl, na, 2) pixels
        self.pred = nn.ModuleList(nn.Conv2d(c, self.num_anchors * self.num_outputs, 1) for c in in_channels)
        self.reset_bias()

    @torch.no_grad()
    def reset_bias(self):
        """YOLOv5's prior (arXiv:1708.02002 §3.3): ~8 objects per 640² image, class probability ~0.6/nc."""
        for conv, stride in zip(self.pred, self.strides):
            bias = conv.bias.view(self.num_anchors, self.num_outputs)
            bias[:, 4] += math.log(8 / (640 / stride) ** 2)
            bias[:, 5:] += math.log(0.6 / (self.num_classes - 0.99999))

    def forward(self, features, targets=None):
        """targets are not used: YOLOv5 assigns them to cells in its loss (lightdet/losses/yolo.py)."""
        raw = []
        for conv, x in zip(self.pred, features):
            b, _, h, w = x.shape
            # (B, na·no, h, w) -> (B, na, h, w, no)
            raw.append(conv(x).view(b, self.num_anchors, self.num_outputs, h, w).permute(0, 1, 3, 4, 2).contiguous())
        if self.training:
            return raw
        return torch.cat([self.decode(r, level) for level, r in enumerate(raw)], 1), raw

    def decode(self, raw, level):
        """Raw level map (B, na, h, w, no) -> (B, na·h·w, no) rows cx, cy, w, h (pixels), obj, classes."""
        b, na, h, w, no = raw.shape
        ys, xs = torch.meshgrid(torch.arange(h, device=raw.device), torch.arange(w, device=raw.device),
                                indexing="ij")
        cell = torch.stack((xs, ys), -1).to(raw.dtype)                 # (h, w, 2) as (x, y)
        anchor = self.anchors[level].view(1, na, 1, 1, 2).to(raw.dtype)
        xy, wh, scores = raw.sigmoid().split((2, 2, no - 4), dim=-1)
        xy = (xy * 2 - 0.5 + cell) * self.strides[level]
        wh = (wh * 2) ** 2 * anchor
        return torch.cat((xy, wh, scores), -1).view(b, na * h * w, no)

    @staticmethod
    def postprocess(predictions, conf_thres=0.25, iou_thres=0.45, max_det=300, classes=None, agnostic=False,
                    multi_label=False):
        """Detections from the eval-mode output, `(decoded, raw)` or `decoded`: YOLOv5's NMS
        (`lightdet.nms.non_max_suppression`). Returns one `Tensor[n, 6]` per image: x1, y1, x2, y2 (pixels),
        score, class."""
        return non_max_suppression(predictions, conf_thres, iou_thres, classes, agnostic, multi_label, max_det)
