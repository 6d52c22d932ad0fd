"""The YOLOv5 loss: target assignment plus box, objectness and class terms (ultralytics/yolov5 `utils/loss.py`).

Assignment, per level, with no learned matching:
1. Shape: a target goes to every anchor whose size is within `anchor_t` (4.0) of its own in both sides,
   max(w/w_a, w_a/w, h/h_a, h_a/h) < anchor_t. The prediction can reach that: wh = (2σ(t_wh))² · anchor
   spans 0..4 anchors.
2. Place: to the cell holding the centre and to the two nearest neighbours, found by shifting the centre
   half a cell towards them: the left (right) neighbour when the centre is in the left (right) half of its
   cell, the upper (lower) one likewise, if the centre is over one cell from that edge of the grid.
   xy = 2σ(t_xy) − 0.5 spans −0.5..1.5 cells, so a neighbour can still place the box there.
   On an exact cell boundary (fraction 0)
   YOLOv5 takes the left neighbour and also the "right" one, which truncates back to the centre cell: that
   cell is assigned twice (three times on a grid corner), and each counts as a positive. We keep this, to
   reproduce YOLOv5; where one cell gets several objectness targets, the last written wins, as in YOLOv5.
Losses: box = mean over positives of the chosen IoU loss; objectness = BCE over every anchor of every cell
against (1 − gr) + gr · the detached similarity of the assigned box (clamped at 0; YOLOv5's gr = 1; 0 where
nothing is assigned), weighted per
level by [4.0, 1.0, 0.4]; class = BCE over positives against one-hot targets (label smoothed), only when
there is more than one class.
"""
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .iou import WIoULoss, iou_loss, paired_iou

# YOLOv5's data/hyps/hyp.scratch-low.yaml, the terms the loss reads, *unscaled*.
HYP_DEFAULTS = dict(box=0.05, cls=0.5, cls_pw=1.0, obj=1.0, obj_pw=1.0, anchor_t=4.0, fl_gamma=0.0,
                    label_smoothing=0.0)
LEVEL_BALANCE = {3: (4.0, 1.0, 0.4)}  # objectness weight per level, P3 first; P3-P7 below
LEVEL_BALANCE_5 = (4.0, 1.0, 0.25, 0.06, 0.02)
BOX_LOSSES = ("iou", "giou", "diou", "ciou", "eiou", "focal_eiou", "siou", "wiou1", "wiou2", "wiou3")
# The objectness target is the box similarity; the two weighted losses use the similarity they weight.
OBJECTNESS_SIMILARITY = {"focal_eiou": "eiou", "wiou1": "iou", "wiou2": "iou", "wiou3": "iou"}
# In cells, subtracted from the centre: the centre cell, then the left, upper, right and lower neighbour.
NEIGHBOUR_SHIFTS = torch.tensor([[0.0, 0.0], [0.5, 0.0], [0.0, 0.5], [-0.5, 0.0], [0.0, -0.5]])


class LevelTargets(NamedTuple):
    """The positives of one level, one row each."""
    image: torch.Tensor      # [n] image index in the batch
    anchor: torch.Tensor     # [n] anchor index at this level
    gj: torch.Tensor         # [n] grid row
    gi: torch.Tensor         # [n] grid column
    box: torch.Tensor        # [n, 4] target cx, cy relative to the cell's top-left corner, w, h; grid units
    cls: torch.Tensor        # [n] class index
    anchor_wh: torch.Tensor  # [n, 2] the anchor's size, grid units


def bce_with_logits(logits, target, pos_weight=1.0, gamma=0.0, alpha=0.25):
    """Mean binary cross-entropy; YOLOv5's focal loss (Lin et al. 2017, arXiv:1708.02002) when gamma > 0."""
    loss = F.binary_cross_entropy_with_logits(logits, target, pos_weight=logits.new_tensor(pos_weight),
                                              reduction="none")
    if gamma > 0:
        prob = logits.sigmoid()
        p_t = target * prob + (1 - target) * (1 - prob)
        loss = loss * (target * alpha + (1 - target) * (1 - alpha)) * (1 - p_t) ** gamma
    return loss.mean()


def last_write_mask(index, size):
    """For `index` Tensor[n] (long, 0 <= index < size): True where no later entry repeats the value.

    `x[index] = v` with repeated indices keeps one of the values, the last on CPU and any on GPU; writing only
    the masked entries keeps the last one on every device.
    """
    order = torch.arange(len(index), device=index.device)
    last = torch.full((size,), -1, dtype=torch.long, device=index.device)
    return last.scatter_reduce_(0, index, order, "amax")[index] == order


class YOLOLoss(nn.Module):
    """YOLOv5's training loss for an anchor head.

    anchors: per level a list of (w, h) in PIXELS, e.g. [[(10, 13), (16, 30), (33, 23)], ...].
    strides: per level, e.g. (8, 16, 32). num_classes: classes of the head.
    box_loss: iou giou diou ciou eiou focal_eiou siou wiou1 wiou2 wiou3 (`lightdet.losses.iou`).
    imgsz: training image size; it scales the objectness gain.
    hyp: YOLOv5 hyperparameters, UNSCALED as in hyp.scratch-low.yaml (box, obj, cls, cls_pw, obj_pw, anchor_t,
        fl_gamma, label_smoothing; other keys such as lr0 are ignored, missing ones take HYP_DEFAULTS). The
        gains are scaled here as YOLOv5's train.py scales them, into `self.gains`:
        box × 3/nl, cls × nc/80 × 3/nl, obj × (imgsz/640)² × 3/nl. Do not pass already scaled gains.

    `loss(preds, targets)` with preds the training-mode head output, per level `[B, na, h, w, 5 + nc]` raw
    logits, and targets `[M, 6]` (image_index, class, cx, cy, w, h normalised to 0..1) returns
    `(loss × B, tensor([lbox, lobj, lcls]) detached)`.

    With a Wise-IoU v2/v3 box loss the module holds WIoU's running mean (a buffer, in `state_dict()`), moved
    only in training mode: call `.train()` / `.eval()` on the loss as on the model, and save its state_dict.
    """

    ITEM_NAMES = ("box", "obj", "cls")

    def __init__(self, anchors, strides, num_classes, box_loss="ciou", imgsz=640, hyp=None):
        super().__init__()
        if box_loss not in BOX_LOSSES:
            raise ValueError(f"unknown box_loss {box_loss!r}; valid: {', '.join(BOX_LOSSES)}")
        self.num_levels, self.num_classes, self.box_loss = len(anchors), num_classes, box_loss
        self.hyp = {key: (hyp or {}).get(key, default) for key, default in HYP_DEFAULTS.items()}
        level_scale = 3 / self.num_levels
        self.gains = dict(box=self.hyp["box"] * level_scale,
                          obj=self.hyp["obj"] * (imgsz / 640) ** 2 * level_scale,
                          cls=self.hyp["cls"] * num_classes / 80 * level_scale)
        self.balance = LEVEL_BALANCE.get(self.num_levels, LEVEL_BALANCE_5)
        strides = torch.as_tensor(strides, dtype=torch.float32).view(-1, 1, 1)
        # Grid units (pixels / stride), as the predictions are decoded in; not saved, the config rebuilds it.
        self.register_buffer("anchors", torch.as_tensor(anchors, dtype=torch.float32) / strides, persistent=False)
        self.wiou = WIoULoss(version=int(box_loss[-1])) if box_loss.startswith("wiou") else None
        self.objectness_similarity = OBJECTNESS_SIMILARITY.get(box_loss, box_loss)
        smoothing = self.hyp["label_smoothing"]  # Müller et al. 2019, arXiv:1906.02629: 1 − ε/2 and ε/2
        self.cls_positive, self.cls_negative = 1.0 - 0.5 * smoothing, 0.5 * smoothing
        # YOLOv5's model.gr: how much the objectness target follows the predicted box's IoU rather than 1.
        # Early on the IoU of most boxes is near 0, which teaches "no object" where there is one; train.py can
        # ramp gr from 0 to 1 (--gr-ramp).
        self.gr = 1.0

    def build_targets(self, preds, targets):
        """Assign `targets` [M, 6] to anchors and cells of every level; returns a LevelTargets per level."""
        levels = []
        for level, pred in enumerate(preds):
            _, num_anchors, grid_h, grid_w, _ = pred.shape
            anchors = self.anchors[level].to(targets.device)                      # [na, 2]
            grid_size = targets.new_tensor([grid_w, grid_h])
            gxy, gwh = targets[:, 2:4] * grid_size, targets[:, 4:6] * grid_size   # [M, 2] each, grid units

            # 1. Shape match; nonzero walks anchor-major, YOLOv5's order (it decides which duplicate wins).
            ratio = gwh[None] / anchors[:, None]                                  # [na, M, 2]
            matched = torch.maximum(ratio, 1 / ratio).amax(2) < self.hyp["anchor_t"]
            anchor_idx, target_idx = matched.nonzero(as_tuple=True)
            gxy, gwh = gxy[target_idx], gwh[target_idx]                           # [n, 2] each

            # 2. The centre cell and the nearest horizontal and vertical neighbour, offset-major as YOLOv5.
            from_end = grid_size - gxy
            use = torch.cat((torch.ones_like(gxy[None, :, 0], dtype=torch.bool),
                             ((gxy % 1 < 0.5) & (gxy > 1)).T,                      # left, upper
                             ((from_end % 1 < 0.5) & (from_end > 1)).T))           # right, lower: [5, n]
            shift_idx, row = use.nonzero(as_tuple=True)
            cell = (gxy[row] - NEIGHBOUR_SHIFTS.to(gxy)[shift_idx]).long()
            gi, gj = cell[:, 0].clamp(0, grid_w - 1), cell[:, 1].clamp(0, grid_h - 1)

            target_rows = targets[target_idx[row]]
            levels.append(LevelTargets(
                image=target_rows[:, 0].long(), anchor=anchor_idx[row], gj=gj, gi=gi,
                box=torch.cat((gxy[row] - torch.stack((gi, gj), 1), gwh[row]), 1),
                cls=target_rows[:, 1].long(), anchor_wh=anchors[anchor_idx[row]],
            ))
        return levels

    def box_regression_loss(self, pbox, tbox):
        """Unreduced box loss `Tensor[n]` of predicted and target boxes, cxcywh in grid units."""
        if self.wiou is not None:
            return self.wiou(pbox, tbox, xywh=True)
        return iou_loss(pbox, tbox, self.box_loss, xywh=True)

    def forward(self, preds, targets):
        """preds: per level `[B, na, h, w, 5 + nc]` logits; targets `[M, 6]` -> (loss × B, [lbox, lobj, lcls])."""
        batch_size = preds[0].shape[0]
        gamma = self.hyp["fl_gamma"]
        lbox = lobj = lcls = torch.zeros((), device=preds[0].device)  # float32 even under autocast
        for level, (pred, t) in enumerate(zip(preds, self.build_targets(preds, targets))):
            objectness_target = pred.new_zeros(pred.shape[:4])                    # [B, na, h, w]
            if num_positives := len(t.image):
                p = pred[t.image, t.anchor, t.gj, t.gi]                           # [n, 5 + nc]
                pxy = p[:, :2].sigmoid() * 2 - 0.5
                pwh = (p[:, 2:4].sigmoid() * 2) ** 2 * t.anchor_wh
                pbox = torch.cat((pxy, pwh), 1)                                   # [n, 4] cxcywh, grid units
                lbox = lbox + self.box_regression_loss(pbox, t.box).mean()

                with torch.no_grad():
                    similarity = paired_iou(pbox, t.box, self.objectness_similarity, xywh=True).clamp(min=0)
                    quality = (1 - self.gr) + self.gr * similarity
                _, num_anchors, grid_h, grid_w = objectness_target.shape
                flat = ((t.image * num_anchors + t.anchor) * grid_h + t.gj) * grid_w + t.gi
                last = last_write_mask(flat, objectness_target.numel())
                objectness_target.view(-1)[flat[last]] = quality[last].to(objectness_target.dtype)

                if self.num_classes > 1:
                    cls_target = torch.full_like(p[:, 5:], self.cls_negative)
                    cls_target[torch.arange(num_positives, device=p.device), t.cls] = self.cls_positive
                    lcls = lcls + bce_with_logits(p[:, 5:], cls_target, self.hyp["cls_pw"], gamma)
            level_obj = bce_with_logits(pred[..., 4], objectness_target, self.hyp["obj_pw"], gamma)
            lobj = lobj + level_obj * self.balance[level]

        lbox, lobj, lcls = lbox * self.gains["box"], lobj * self.gains["obj"], lcls * self.gains["cls"]
        return (lbox + lobj + lcls) * batch_size, torch.stack((lbox, lobj, lcls)).detach()
