"""Contrastive denoising queries for DETR training (DN-DETR, Li et al., CVPR 2022, arXiv:2203.01305; DINO,
Zhang et al., ICLR 2023, arXiv:2203.03605), as RT-DETR and ultralytics build them.

Hungarian matching is unstable early in training: a query matched to one object in one step may be matched
to another in the next. Denoising adds queries whose answer is known without matching: each is a ground-truth
box with noise added, embedded from its (possibly flipped) label, and must reconstruct its object. They come
in groups of two copies of every ground truth:
- positive copy: corners moved by less than half the box size, must predict the object;
- negative copy: corners moved by 1-2 half sizes, must predict "no object" (it is far from the box).
The decoder runs them together with the ordinary queries; an attention mask keeps the ordinary queries from
seeing them (they carry the answer) and each group from seeing the other groups.
"""
from typing import List, NamedTuple

import torch

from ..boxes import cxcywh_to_xyxy, xyxy_to_cxcywh


class Denoising(NamedTuple):
    """Which denoising query reconstructs which ground truth, per image."""
    positive_slots: List[torch.Tensor]   # [b]: slots of the positive copies, group by group
    gt_index: List[torch.Tensor]         # [b]: the image's ground truths (indices among its own rows) they copy
    groups: int                          # the positive slots are gt_index repeated `groups` times
    num_queries: int                     # denoising queries per image (the first ones of the decoder)


def denoising_queries(targets, batch_size, class_embed, num_matching, num_denoising=100, label_noise=0.5,
                      box_noise=1.0):
    """Noised copies of the ground truths as extra decoder queries.

    targets: `Tensor[M, 6]` rows (image, class, cx, cy, w, h), boxes normalised to 0..1.
    class_embed: `Tensor[nc, C]`, the label embeddings. num_matching: the ordinary queries that follow.
    Returns (embeddings (B, num_dn, C), reference boxes as logits (B, num_dn, 4),
    blocked (num_dn + num_matching)² bool, True = may not attend, Denoising), or None without ground truths.
    Random draws come from torch's global generator, in ultralytics' order.
    """
    device, num_classes = targets.device, class_embed.shape[0]
    per_image = [torch.nonzero(targets[:, 0] == b).flatten() for b in range(batch_size)]   # row indices
    max_objects = min(max((len(rows) for rows in per_image), default=0), num_denoising)
    if max_objects == 0:
        return None
    # An image with more objects than there are denoising queries gets a random subset of them.
    kept = [torch.randperm(len(rows), device=device)[:max_objects].sort().values if len(rows) > max_objects
            else torch.arange(len(rows), device=device) for rows in per_image]
    groups = num_denoising // max_objects
    num_dn = 2 * max_objects * groups
    gts = targets[torch.cat([rows[k] for rows, k in zip(per_image, kept)])]            # (M, 6), image by image
    index_in_image = torch.cat([torch.arange(len(k), device=device) for k in kept])   # (M,)

    # Row r = block·M + j copies ground truth j; block 2g is group g's positive copy, block 2g + 1 its negative.
    blocks = 2 * groups
    block = torch.arange(blocks, device=device).repeat_interleave(len(gts))           # (2G·M,)
    labels = gts[:, 1].long().repeat(blocks)
    boxes = gts[:, 2:].repeat(blocks, 1)                                                # (2G·M, 4) cxcywh
    if label_noise > 0:   # half of label_noise of the rows get a random label
        flip = torch.nonzero(torch.rand(len(labels), device=device) < label_noise * 0.5).flatten()
        labels[flip] = torch.randint(0, num_classes, flip.shape, device=device)
    if box_noise > 0:     # move each corner by up to half the box size (positive) or 1-2 half sizes (negative)
        sign = torch.randint(0, 2, boxes.shape, device=device, dtype=boxes.dtype) * 2 - 1
        part = torch.rand(boxes.shape, device=device) + (block % 2 == 1)[:, None]
        half_size = boxes[:, 2:].repeat(1, 2) * 0.5                                     # (w/2, h/2, w/2, h/2)
        corners = cxcywh_to_xyxy(boxes) + sign * part * half_size * box_noise
        boxes = xyxy_to_cxcywh(corners.clamp(0, 1))
    reference = torch.logit(boxes, eps=1e-6)   # the decoder refines boxes in logit space

    # Slot of row r: its index within its image, plus max_objects per block. Empty slots stay 0.
    image = gts[:, 0].long().repeat(blocks)
    slot = index_in_image.repeat(blocks) + max_objects * block
    embeddings = class_embed.new_zeros(batch_size, num_dn, class_embed.shape[1])
    embeddings[image, slot] = class_embed[labels]
    references = boxes.new_zeros(batch_size, num_dn, 4)
    references[image, slot] = reference

    size = num_dn + num_matching
    blocked = torch.zeros(size, size, dtype=torch.bool, device=device)
    blocked[num_dn:, :num_dn] = True                          # ordinary queries never see the answers
    group = torch.arange(num_dn, device=device) // (2 * max_objects)
    blocked[:num_dn, :num_dn] = group[:, None] != group[None, :]   # each group sees only itself

    offsets = torch.arange(groups, device=device) * 2 * max_objects
    positive_slots = [(offsets[:, None] + torch.arange(len(k), device=device)).flatten() for k in kept]
    return embeddings, references, blocked, Denoising(positive_slots, kept, groups, num_dn)
