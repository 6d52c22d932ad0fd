"""The IoU family of box-regression losses, for *paired* boxes (prediction i against target i).

Notation, for a predicted box (x, y, w, h) and its target (x_gt, y_gt, w_gt, h_gt), centres and sizes:
    IoU = |B ∩ B_gt| / |B ∪ B_gt|
    Cw, Ch  width and height of the smallest box enclosing both;  c² = Cw² + Ch², its squared diagonal
    ρ² = dx² + dy², with dx = x_gt − x, dy = y_gt − y: the squared distance between the centres

    iou         Yu et al. 2016, UnitBox, arXiv:1608.01471
                    1 − IoU
    giou        Rezatofighi et al. 2019, Generalized IoU, arXiv:1902.09630
                    1 − IoU + (Cw·Ch − |B ∪ B_gt|) / (Cw·Ch)
    diou, ciou  Zheng et al. 2020, Distance-IoU, arXiv:1911.08287
                    DIoU: 1 − IoU + ρ²/c²
                    CIoU: 1 − IoU + ρ²/c² + α·v,  v = 4/π² · (atan(w_gt/h_gt) − atan(w/h))²,  α = v / (v − IoU + 1)
                    α is computed without gradient and not gated on IoU, as YOLOv5 does.
    eiou        Zhang et al. 2021, Focal and Efficient IoU, arXiv:2101.08158
                    1 − IoU + ρ²/c² + (w − w_gt)²/Cw² + (h − h_gt)²/Ch²
    focal_eiou  (same paper)  IoU^γ · L_EIoU, γ = 0.5; the weight IoU^γ is detached
    siou        Gevorgyan 2022, SIoU, arXiv:2205.12740
                    1 − IoU + (Δ + Ω) / 2, with
                    angle cost     Λ = sin 2α = 2·|dx|·|dy| / ρ²  (α: angle of the centre line to the x axis)
                    distance cost  Δ = Σ_{t=x,y} 1 − exp(−γ·ρ_t),  ρ_x = (dx/Cw)², ρ_y = (dy/Ch)²,  γ = 2 − Λ
                    shape cost     Ω = Σ_{t=w,h} (1 − exp(−ω_t))^θ,  ω_w = |w − w_gt| / max(w, w_gt),  θ = 4
    wiou        Tong et al. 2023, Wise-IoU, arXiv:2301.10051  (v1 stateless; v1-v3: the module WIoULoss)
                    v1  R·(1 − IoU),  R = exp(ρ² / (Cw² + Ch²)*)   (* = detached)
                    v2  (L*_IoU / L̄)^0.5 · v1
                    v3  r·v1,  r = β / (δ·α^(β − δ)),  β = L*_IoU / L̄,  α = 1.9, δ = 3
                    L_IoU = 1 − IoU and L̄ is its running mean over training batches.

Every kind except focal_eiou and wiou is "1 − a similarity": `paired_iou` returns that similarity (1 for
identical boxes); YOLOv5's objectness target is exactly this number for CIoU.
"""
import math
from typing import NamedTuple

import torch
from torch import nn

from ..boxes import cxcywh_to_xyxy

EPS = 1e-7
FOCAL_EIOU_GAMMA = 0.5
SIOU_THETA = 4.0


class PairGeometry(NamedTuple):
    """The quantities every kind is built from; each field is `Tensor[N]`."""
    iou: torch.Tensor
    union: torch.Tensor
    w: torch.Tensor       # predicted box size
    h: torch.Tensor
    w_gt: torch.Tensor    # target box size
    h_gt: torch.Tensor
    dx: torch.Tensor      # target centre minus predicted centre
    dy: torch.Tensor
    cw: torch.Tensor      # enclosing box size
    ch: torch.Tensor


def pair_geometry(pred, target, xywh=False, eps=EPS):
    """Intersection, union, sizes, centre offsets and enclosing box of paired boxes `Tensor[N, 4]`.

    Both are `xyxy`, or both `cxcywh` when `xywh=True`.
    """
    if xywh:   # sizes as given, not recomputed from the corners (YOLOv5's rounding)
        (_, _, w, h), (_, _, w_gt, h_gt) = pred.unbind(-1), target.unbind(-1)
        (x1, y1, x2, y2), (gx1, gy1, gx2, gy2) = cxcywh_to_xyxy(pred).unbind(-1), cxcywh_to_xyxy(target).unbind(-1)
    else:
        (x1, y1, x2, y2), (gx1, gy1, gx2, gy2) = pred.unbind(-1), target.unbind(-1)
        w, h, w_gt, h_gt = x2 - x1, y2 - y1, gx2 - gx1, gy2 - gy1
    inter = (torch.minimum(x2, gx2) - torch.maximum(x1, gx1)).clamp(min=0) * \
        (torch.minimum(y2, gy2) - torch.maximum(y1, gy1)).clamp(min=0)
    union = w * h + w_gt * h_gt - inter + eps
    return PairGeometry(
        iou=inter / union, union=union, w=w, h=h, w_gt=w_gt, h_gt=h_gt,
        dx=(gx1 + gx2 - x1 - x2) / 2, dy=(gy1 + gy2 - y1 - y2) / 2,
        cw=torch.maximum(x2, gx2) - torch.minimum(x1, gx1), ch=torch.maximum(y2, gy2) - torch.minimum(y1, gy1),
    )


# Each similarity below is 1 − (its paper's loss); the formulas are in the module docstring.

def _iou(g, eps):
    return g.iou


def _giou(g, eps):
    enclosing_area = g.cw * g.ch + eps
    return g.iou - (enclosing_area - g.union) / enclosing_area


def _diou(g, eps):
    return g.iou - (g.dx ** 2 + g.dy ** 2) / (g.cw ** 2 + g.ch ** 2 + eps)


def _ciou(g, eps):
    v = 4 / math.pi ** 2 * (torch.atan(g.w_gt / (g.h_gt + eps)) - torch.atan(g.w / (g.h + eps))) ** 2
    with torch.no_grad():
        alpha = v / (v - g.iou + (1 + eps))
    return _diou(g, eps) - alpha * v


def _eiou(g, eps):
    return _diou(g, eps) - (g.w - g.w_gt) ** 2 / (g.cw ** 2 + eps) - (g.h - g.h_gt) ** 2 / (g.ch ** 2 + eps)


def _siou(g, eps):
    # sin 2α = 2 sin α cos α = 2|dx||dy| / ρ²; the eps keeps value and gradient finite when the centres coincide.
    angle = 2 * g.dx.abs() * g.dy.abs() / (g.dx ** 2 + g.dy ** 2 + eps)
    gamma = 2 - angle
    rho_x, rho_y = (g.dx / (g.cw + eps)) ** 2, (g.dy / (g.ch + eps)) ** 2
    distance = (1 - torch.exp(-gamma * rho_x)) + (1 - torch.exp(-gamma * rho_y))
    omega_w = (g.w - g.w_gt).abs() / (torch.maximum(g.w, g.w_gt) + eps)
    omega_h = (g.h - g.h_gt).abs() / (torch.maximum(g.h, g.h_gt) + eps)
    shape = (1 - torch.exp(-omega_w)) ** SIOU_THETA + (1 - torch.exp(-omega_h)) ** SIOU_THETA
    return g.iou - (distance + shape) / 2


SIMILARITIES = {"iou": _iou, "giou": _giou, "diou": _diou, "ciou": _ciou, "eiou": _eiou, "siou": _siou}
LOSS_KINDS = (*SIMILARITIES, "focal_eiou", "wiou")


def paired_iou(pred, target, kind="iou", xywh=False, eps=EPS):
    """IoU-family similarity of paired boxes: `Tensor[N, 4]` x2 -> `Tensor[N]`, 1 for identical boxes.

    kind: iou giou diou ciou eiou siou; `iou_loss(kind) = 1 − paired_iou(kind)` for these.
    """
    if kind not in SIMILARITIES:
        raise ValueError(f"unknown IoU kind {kind!r}; valid: {', '.join(SIMILARITIES)}")
    return SIMILARITIES[kind](pair_geometry(pred, target, xywh, eps), eps)


def wiou_v1(g, eps=EPS):
    """Wise-IoU v1 from a PairGeometry: exp(ρ² / (Cw² + Ch²)*) · (1 − IoU), the denominator detached."""
    distance_attention = torch.exp((g.dx ** 2 + g.dy ** 2) / (g.cw ** 2 + g.ch ** 2 + eps).detach())
    return distance_attention * (1 - g.iou)


def iou_loss(pred, target, kind="ciou", xywh=False, eps=EPS):
    """Box-regression loss of paired boxes: `Tensor[N, 4]` x2 (both `xyxy`, or both `cxcywh` with `xywh=True`)
    -> `Tensor[N]`, unreduced.

    kind: iou giou diou ciou eiou focal_eiou siou, or wiou (= Wise-IoU v1, the only stateless version;
    v2 and v3 keep a running mean, use `WIoULoss`).
    """
    if kind in SIMILARITIES:
        return 1 - paired_iou(pred, target, kind, xywh, eps)
    g = pair_geometry(pred, target, xywh, eps)
    if kind == "focal_eiou":
        weight = g.iou.detach() ** FOCAL_EIOU_GAMMA
        return weight * (1 - _eiou(g, eps))
    if kind in ("wiou", "wiou1"):
        return wiou_v1(g, eps)
    raise ValueError(f"unknown IoU loss kind {kind!r}; valid: {', '.join(LOSS_KINDS)} (WIoU v2/v3: WIoULoss)")


class WIoULoss(nn.Module):
    """Wise-IoU v1 / v2 / v3 (Tong et al. 2023, arXiv:2301.10051), unreduced `Tensor[N]`.

    v2 and v3 scale v1 by how a box's L_IoU = 1 − IoU compares with L̄, the running mean of L_IoU over
    training batches: β = L*_IoU / L̄ (detached). v2 multiplies by β^0.5; v3 by the non-monotonic focusing
    coefficient r = β / (δ·α^(β − δ)), which is 1 at β = δ and small for both very good and very poor boxes.

    L̄ lives in the buffer `running_mean` (initial 1.0) so checkpoints save and restore it. In training mode
    each call first moves it towards this batch's mean L_IoU, L̄ <- (1 − m)·L̄ + m·mean(L*_IoU) (the order of
    the authors' WIoU_Scale code), then uses it; in eval mode it is read only. The default momentum is the
    paper's m = 1 − 0.05^(1/(t·n)) with t·n = 890·34 batches, i.e. the mean forgets to 5% over that many.
    """

    def __init__(self, version=3, momentum=1 - 0.05 ** (1 / (890 * 34)), alpha=1.9, delta=3.0, gamma=0.5):
        super().__init__()
        if version not in (1, 2, 3):
            raise ValueError(f"WIoU version must be 1, 2 or 3, got {version!r}")
        self.version, self.momentum, self.alpha, self.delta, self.gamma = version, momentum, alpha, delta, gamma
        self.register_buffer("running_mean", torch.tensor(1.0))

    def extra_repr(self):
        return f"version={self.version}, momentum={self.momentum:.3g}, alpha={self.alpha}, delta={self.delta}"

    def focusing_coefficient(self, beta):
        """The factor that multiplies v1 at outlier degree `beta`: 1 (v1), β^γ (v2), β / (δ·α^(β−δ)) (v3)."""
        if self.version == 1:
            return torch.ones_like(beta)
        if self.version == 2:
            return beta ** self.gamma
        return beta / (self.delta * self.alpha ** (beta - self.delta))

    def forward(self, pred, target, xywh=False):
        """pred, target: `Tensor[N, 4]` (`xyxy`, or `cxcywh` with `xywh=True`) -> loss `Tensor[N]`."""
        g = pair_geometry(pred, target, xywh)
        loss = wiou_v1(g)
        if self.version == 1:
            return loss
        l_iou = (1 - g.iou).detach()
        if self.training and l_iou.numel():
            self.running_mean.mul_(1 - self.momentum).add_(self.momentum * l_iou.mean().to(self.running_mean))
        return self.focusing_coefficient(l_iou / self.running_mean) * loss
