"""RT-DETR's set loss: one-to-one Hungarian matching, then class and box losses on the matched pairs
(DETR, Carion et al., ECCV 2020, arXiv:2005.12872; RT-DETR, arXiv:2304.08069; values as ultralytics'
`RTDETRDetectionLoss`, which the article's models train with).

1. Matching, per image and per output: the cost of giving ground truth j to query i is
       C = 2·C_class + 5·C_L1 + 2·C_GIoU,   on the gt's class probability p = σ(logit):
       C_class = 0.25·(1 − p)²·(−ln p) − 0.75·p²·(−ln(1 − p))     (focal-loss cost, α 0.25, γ 2)
       C_L1 = Σ |Δ(cx, cy, w, h)|,   C_GIoU = 1 − GIoU.
   The minimum-cost assignment (losses/assignment.py) gives each ground truth exactly one query; all other
   queries must predict "no object". This is why the model needs no NMS.
2. Losses, with N the number of matched pairs in the batch:
       class: varifocal loss (VFL, Zhang et al., VarifocalNet, arXiv:2008.13367) on every query and class,
              target = IoU(matched box, gt) at (query, gt class) and 0 elsewhere:
              Σ BCE(x, t) · (α·σ(x)^γ·(1 − label) + t·label) / N
       box:   5·Σ|Δ| / N  +  2·Σ(1 − GIoU) / N over matched pairs.
   Without any ground truth in the batch the class term is a focal loss on all-zero targets, not normalised.
3. Every decoder layer, the encoder's top-k proposals and the denoising groups (their matching is fixed by
   construction) are supervised: 12 terms, summed.
VFL weighting: ultralytics uses γ 1.5, α 0.25 and lets gradients flow through the weight σ(x)^γ (the default
here, `VFL_ULTRALYTICS`); the official RT-DETR uses γ 2, α 0.75 with the weight detached (`VFL_OFFICIAL`).
"""
import torch
import torch.nn.functional as F
from torch import nn

from .assignment import linear_sum_assignment
from .iou import paired_iou

VFL_ULTRALYTICS = dict(gamma=1.5, alpha=0.25, detach_weight=False)
VFL_OFFICIAL = dict(gamma=2.0, alpha=0.75, detach_weight=True)
MATCH_COSTS = dict(cls=2.0, l1=5.0, giou=2.0)
LOSS_GAINS = dict(cls=1.0, l1=5.0, giou=2.0)
FOCAL_COST_ALPHA, FOCAL_COST_GAMMA = 0.25, 2.0


def split_targets(targets, batch_size):
    """(M, 6) rows (image, class, cx, cy, w, h) -> per image (classes (n_b,) long, boxes (n_b, 4)), in row order."""
    per_image = [targets[targets[:, 0] == b] for b in range(batch_size)]
    return [(rows[:, 1].long(), rows[:, 2:]) for rows in per_image]


@torch.no_grad()
def hungarian_match(boxes, logits, gts, costs=MATCH_COSTS):
    """Optimal one-to-one matching of queries to ground truths, per image.

    boxes (B, Q, 4) cxcywh and logits (B, Q, nc) of one output; gts from `split_targets`.
    Returns per image (query indices ascending, gt indices within the image), both long, on the CPU.
    """
    empty = torch.zeros(0, dtype=torch.long)
    if sum(len(classes) for classes, _ in gts) == 0:
        return [(empty, empty)] * len(gts)
    all_classes = torch.cat([classes for classes, _ in gts])
    all_boxes = torch.cat([b for _, b in gts]).float()
    boxes, logits = boxes.float(), logits.float()   # under autocast: 1e-8 and the IoU's 1e-7 vanish in float16
    # One (B, Q, M) cost over all ground truths of the batch, moved to the CPU at once; each image uses its block.
    p = logits.sigmoid()[..., all_classes]
    positive = FOCAL_COST_ALPHA * (1 - p) ** FOCAL_COST_GAMMA * -(p + 1e-8).log()
    negative = (1 - FOCAL_COST_ALPHA) * p ** FOCAL_COST_GAMMA * -(1 - p + 1e-8).log()
    l1 = (boxes[:, :, None] - all_boxes).abs().sum(-1)
    giou = 1 - paired_iou(boxes[:, :, None], all_boxes, "giou", xywh=True)
    cost = costs["cls"] * (positive - negative) + costs["l1"] * l1 + costs["giou"] * giou
    cost = cost.nan_to_num(0.0, 0.0, 0.0).cpu()
    matches, start = [], 0
    for b, (classes, _) in enumerate(gts):
        block = cost[b, :, start:start + len(classes)]
        start += len(classes)
        rows, cols = linear_sum_assignment(block.numpy()) if len(classes) else ([], [])
        matches.append((torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)))
    return matches


def varifocal_loss(logits, scores, labels, gamma, alpha, detach_weight):
    """Σ BCE(x, t)·(α·σ(x)^γ·(1 − label) + t·label); logits, target scores t and one-hot labels alike."""
    probability = logits.sigmoid()
    if detach_weight:
        probability = probability.detach()
    weight = alpha * probability ** gamma * (1 - labels) + scores * labels
    return (F.binary_cross_entropy_with_logits(logits, scores, reduction="none") * weight).sum()


def focal_loss_no_objects(logits, gamma, alpha):
    """Focal loss (Lin et al., arXiv:1708.02002) on all-zero targets, summed: Σ BCE(x, 0)·σ(x)^γ·(1 − α)."""
    return (F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
            * logits.sigmoid() ** gamma * (1 - alpha)).sum()


class RTDETRLoss(nn.Module):
    """RTDETRLoss(num_classes, vfl=VFL_ULTRALYTICS): (RTDETROutput in training mode, targets (M, 6)) ->
    (total, items). `items` are the last layer's (class, L1, GIoU) terms, detached, for logging; `terms()`
    gives all 12. The total is not multiplied by the batch size (ultralytics' RT-DETR loss is not either)."""

    ITEM_NAMES = ("cls", "l1", "giou")

    def __init__(self, num_classes, vfl=VFL_ULTRALYTICS, costs=MATCH_COSTS, gains=LOSS_GAINS):
        super().__init__()
        self.num_classes = num_classes
        self.vfl, self.costs, self.gains = dict(vfl), dict(costs), dict(gains)

    def forward(self, outputs, targets):
        terms = self.terms(outputs, targets)
        items = torch.stack([terms["loss_class"], terms["loss_bbox"], terms["loss_giou"]]).detach()
        return sum(terms.values()), items

    def terms(self, outputs, targets):
        """The 12 terms, ultralytics' names: loss_{class,bbox,giou} (last decoder layer), *_aux (encoder
        proposals + the other decoder layers, summed), *_dn and *_aux_dn (denoising: last layer, the others)."""
        gts = split_targets(targets, outputs.boxes.shape[1])
        # The encoder's proposals first, then the decoder layers: the last one is "the" prediction.
        boxes = torch.cat((outputs.enc_boxes[None], outputs.boxes))
        logits = torch.cat((outputs.enc_logits[None], outputs.logits))
        layers = [self.output_loss(b, x, gts, hungarian_match(b, x, gts, self.costs)) for b, x in zip(boxes, logits)]
        terms = self.named(layers[-1], "") | self.named(self.summed(layers[:-1]), "_aux")
        if outputs.denoising is None:
            zero = boxes.new_zeros(())
            return terms | {f"{name}_dn": zero for name in terms}
        dn = outputs.denoising
        fixed = [(slots.cpu(), gt_index.cpu().repeat(dn.groups))
                 for slots, gt_index in zip(dn.positive_slots, dn.gt_index)]
        dn_layers = [self.output_loss(b, x, gts, fixed) for b, x in zip(outputs.dn_boxes, outputs.dn_logits)]
        return terms | self.named(dn_layers[-1], "_dn") | self.named(self.summed(dn_layers[:-1]), "_aux_dn")

    def output_loss(self, boxes, logits, gts, matches):
        """(class, L1, GIoU) losses of one output: boxes (B, Q, 4), logits (B, Q, nc), matches per image."""
        boxes, logits = boxes.float(), logits.float()
        image = torch.cat([torch.full_like(q, b) for b, (q, _) in enumerate(matches)]).to(boxes.device)
        query = torch.cat([q for q, _ in matches]).to(boxes.device)
        gt_boxes = torch.cat([gt_b[j.to(gt_b.device)] for (_, gt_b), (_, j) in zip(gts, matches)])
        gt_classes = torch.cat([gt_c[j.to(gt_c.device)] for (gt_c, _), (_, j) in zip(gts, matches)])
        num_matched = len(query)
        gamma, alpha = self.vfl["gamma"], self.vfl["alpha"]
        if num_matched == 0:   # nothing to find in the whole batch: every score is pushed to 0
            zero = boxes.sum() * 0
            return focal_loss_no_objects(logits, gamma, alpha) * self.gains["cls"], zero, zero
        matched = boxes[image, query]                                                    # (N, 4)
        labels = torch.zeros_like(logits)
        labels[image, query, gt_classes] = 1
        scores = torch.zeros_like(logits)   # the class target is the matched box's IoU with its object
        scores[image, query, gt_classes] = paired_iou(matched.detach(), gt_boxes, "iou", xywh=True).to(logits.dtype)
        loss_class = varifocal_loss(logits, scores, labels, gamma, alpha, self.vfl["detach_weight"]) / num_matched
        loss_l1 = F.l1_loss(matched, gt_boxes, reduction="sum") / num_matched
        loss_giou = (1 - paired_iou(matched, gt_boxes, "giou", xywh=True)).sum() / num_matched
        return loss_class * self.gains["cls"], loss_l1 * self.gains["l1"], loss_giou * self.gains["giou"]

    @staticmethod
    def summed(layers):
        """Per-term sums over several outputs: [(cls, l1, giou), ...] -> [Σ cls, Σ l1, Σ giou]."""
        return [sum(values) for values in zip(*layers)]

    @staticmethod
    def named(values, suffix):
        return {f"loss_{name}{suffix}": value for name, value in zip(("class", "bbox", "giou"), values)}
