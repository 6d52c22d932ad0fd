"""Greedy non-maximum suppression in pure torch, and YOLOv5's post-processing around it.

Greedy NMS: walk the boxes by descending score; keep a box unless a box kept before it overlaps it with
IoU > iou_thres. That rule goes one box at a time, slow as a Python loop. We get the same answer with tensor
operations, block by block:
1. Sort by score and cut the boxes into blocks of BLOCK. Boxes of later blocks never affect earlier ones.
2. In a block, first drop every box that an already kept box (of an earlier block) overlaps. Once many boxes
   are kept, each box is compared only with the kept boxes near it along x (`_overlaps_any`).
3. The rest of the block resolves itself with a small fixed-point iteration on its overlap matrix S
   (S[i, j]: box i scores higher than box j and overlaps it): start with keep = all, repeat
   keep[j] = not any_i(keep[i] and S[i, j]) until nothing changes. Box j only depends on boxes before it, so
   the greedy answer is the one and only fixed point, and after k rounds the first k boxes are settled;
   in practice a handful of rounds suffice.
Class-aware NMS runs this on each class's boxes alone: the same answer as offsetting the boxes by class
(torchvision's batched_nms, YOLOv5), but on many small matrices instead of one big one. YOLOv5 spends
350-430 ms on one 640x640 map with ~19k candidates that way; see benchmarks/nms_loss.py for ours.
"""
import torch

from .boxes import box_iou, cxcywh_to_xyxy

# Sizes picked by timing on a 2-core CPU: blocks of boxes in score order, the number of kept boxes compared in
# one piece, and the rows per piece once the kept boxes are more than that.
BLOCK = 512
CHUNK = 512
ROWS = 64
MAX_NMS = 30000  # YOLOv5 keeps the 30,000 highest-scoring candidates per image before NMS


def _greedy_keep(suppresses):
    """Greedy NMS inside one block: `suppresses` Bool[n, n], i suppresses j (i before j) -> keep Bool[n]."""
    rank = torch.arange(suppresses.shape[0], device=suppresses.device)
    suppresses = (suppresses & (rank[:, None] < rank)).float()  # upper triangle; 0/1 sums are exact in float32
    keep = torch.ones(suppresses.shape[0], dtype=torch.bool, device=suppresses.device)
    while True:
        new_keep = (keep.to(suppresses.dtype) @ suppresses) == 0
        if torch.equal(new_keep, keep):
            return keep
        keep = new_keep


def _overlaps_any(boxes, others, iou_thres):
    """Bool[N]: box i of `boxes` has IoU > iou_thres with at least one of `others` (sorted by x1).

    Sweep and prune along x: IoU > t needs an x-overlap > t·max(w_i, w_k) (the union is at least the wider
    width times the y-overlap), so the two left edges lie less than (1 − t) × the wider width apart. Rows,
    taken in x1 order in chunks, are compared only with the slice of `others` whose x1 is within that reach.
    """
    if others.shape[0] <= CHUNK:
        return box_iou(boxes, others).amax(1) > iou_thres
    reach = 1 - iou_thres + 1e-5  # the 1e-5 covers the float rounding of an IoU right at the threshold
    others_x1 = others[:, 0].contiguous()
    others_reach = reach * (others[:, 2] - others_x1).max()
    overlaps = torch.zeros(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    for rows in boxes[:, 0].argsort().split(ROWS):
        row_boxes = boxes[rows]
        x1, width = row_boxes[:, 0], row_boxes[:, 2] - row_boxes[:, 0]
        lo = int(torch.searchsorted(others_x1, x1.min() - others_reach))
        hi = int(torch.searchsorted(others_x1, (x1 + reach * width).max(), right=True))
        if hi > lo:
            overlaps[rows] = box_iou(row_boxes, others[lo:hi]).amax(1) > iou_thres
    return overlaps


def _greedy_sorted(boxes, iou_thres):
    """Greedy NMS of `boxes` Tensor[N, 4] already sorted by descending score -> kept positions, ascending."""
    if not 0 <= iou_thres <= 1:  # below 0 even disjoint boxes would overlap "enough"; the sweep assumes not
        raise ValueError(f"iou_thres must be in [0, 1], got {iou_thres}")
    positions = torch.arange(boxes.shape[0], device=boxes.device)
    if boxes.shape[0] < 2:
        return positions
    kept_pos, kept_boxes = [], boxes[:0]  # kept_boxes sorted by x1 for the sweep in _overlaps_any
    for start in range(0, boxes.shape[0], BLOCK):
        block, block_pos = boxes[start:start + BLOCK], positions[start:start + BLOCK]
        if kept_boxes.shape[0]:
            alive = ~_overlaps_any(block, kept_boxes, iou_thres)
            block, block_pos = block[alive], block_pos[alive]
        keep = _greedy_keep(box_iou(block, block) > iou_thres)
        kept_pos.append(block_pos[keep])
        if start + BLOCK < boxes.shape[0]:
            kept_boxes = torch.cat((kept_boxes, block[keep]))
            kept_boxes = kept_boxes[kept_boxes[:, 0].argsort()]
    return torch.cat(kept_pos)


def nms(boxes, scores, iou_thres):
    """Greedy NMS: boxes `Tensor[N, 4]` xyxy, scores `Tensor[N]` -> indices of the kept boxes `Tensor[K]`
    (long), by descending score. A box is dropped when a higher-scoring kept box has IoU > iou_thres with it.
    """
    order = scores.argsort(descending=True, stable=True)
    return order[_greedy_sorted(boxes[order], iou_thres)]


def batched_nms(boxes, scores, classes, iou_thres):
    """Class-aware NMS: boxes of different classes never suppress each other.

    boxes `Tensor[N, 4]` xyxy, scores `Tensor[N]`, classes `Tensor[N]` (any numeric dtype) -> kept indices
    `Tensor[K]` by descending score. Equal to NMS on boxes offset by class × a large constant (torchvision,
    YOLOv5), computed per class.
    """
    order = scores.argsort(descending=True, stable=True)
    order = order[classes[order].argsort(stable=True)]  # by class, by descending score within a class
    counts = torch.unique_consecutive(classes[order], return_counts=True)[1]
    keep = [group[_greedy_sorted(boxes[group], iou_thres)] for group in order.split(counts.tolist())]
    if not keep:
        return order
    keep = torch.cat(keep)
    return keep[scores[keep].argsort(descending=True, stable=True)]


def non_max_suppression(pred, conf_thres=0.25, iou_thres=0.45, classes=None, agnostic=False, multi_label=False,
                        max_det=300):
    """YOLOv5's post-processing of decoded predictions, without its wall-clock limit.

    pred: `Tensor[B, N, 5 + nc]` rows (cx, cy, w, h, objectness, class probabilities), as the eval-mode head
        returns them (a `(decoded, raw)` tuple is accepted too). Scores are objectness × class probability.
    conf_thres: candidates need objectness and score above it. iou_thres: NMS threshold.
    classes: keep only these class indices. agnostic: one NMS across classes.
    multi_label: a box yields one candidate per class above conf_thres (else only its best class).
    max_det: detections kept per image.
    Returns one `Tensor[n, 6]` per image: x1, y1, x2, y2, score, class, by descending score.
    """
    if not 0 <= conf_thres <= 1:
        raise ValueError(f"conf_thres must be in [0, 1], got {conf_thres}")
    if isinstance(pred, (list, tuple)):
        pred = pred[0]
    num_classes = pred.shape[2] - 5
    multi_label &= num_classes > 1
    output = []
    for x in pred:
        x = x[x[:, 4] > conf_thres]
        scores = x[:, 5:] * x[:, 4:5]                                # [n, nc]
        box = cxcywh_to_xyxy(x[:, :4])
        if multi_label:
            i, j = (scores > conf_thres).nonzero(as_tuple=True)
            det = torch.cat((box[i], scores[i, j, None], j[:, None].to(x.dtype)), 1)
        else:
            conf, j = scores.max(1, keepdim=True)
            det = torch.cat((box, conf, j.to(x.dtype)), 1)[conf.view(-1) > conf_thres]
        if classes is not None:
            det = det[(det[:, 5:6] == torch.as_tensor(classes, device=det.device, dtype=det.dtype)).any(1)]
        det = det[det[:, 4].argsort(descending=True, stable=True)[:MAX_NMS]]
        if agnostic:
            keep = nms(det[:, :4], det[:, 4], iou_thres)
        else:
            keep = batched_nms(det[:, :4], det[:, 4], det[:, 5], iou_thres)
        output.append(det[keep[:max_det]])
    return output
