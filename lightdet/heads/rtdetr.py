"""RT-DETR's decoder head (Zhao et al., "DETRs Beat YOLOs on Real-time Object Detection", CVPR 2024,
arXiv:2304.08069; here ultralytics' `RTDETRDecoder`, rtdetr-l.yaml row 28).

A set predictor: a fixed number of queries each predict one box and class scores, trained by one-to-one
matching (lightdet/losses/detr.py), so no NMS is needed afterwards. The steps:
1. Every level is projected (1×1 conv + BN) and flattened into one sequence of T tokens.
2. Query selection: each token gets class scores and a box from its memory vector (a linear + LayerNorm of
   its features); the 300 tokens with the highest score become the queries, their boxes the references.
   Boxes are predicted as offsets, in logit space, to an anchor box centred on the token.
3. Six decoder layers, each: self-attention among the queries; multi-scale *deformable* cross-attention,
   where a query reads only 4 points per level and head, placed around its reference box (Deformable DETR,
   Zhu et al., ICLR 2021, arXiv:2010.04159); an FFN. After each layer a box head refines the reference
   (iterative box refinement) and a class head scores it; training supervises every layer.
4. In training, denoising queries (heads/denoising.py) run alongside.
Output: the last layer's boxes (cx, cy, w, h) and class scores; post-processing keeps the top-k scores.
"""
import math
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..boxes import cxcywh_to_xyxy
from ..layers import ConvBNAct, MultiHeadAttention
from .denoising import Denoising, denoising_queries

# The training recipe of the official RT-DETR (AdamW, backbone at a tenth of the learning rate, 2,000
# warm-up iterations, then a constant rate; gradient norm clipped at 0.1; EMA; 72 epochs from an ImageNet
# backbone). DETR-style training needs this gentle, clipped AdamW: YOLOv5's SGD at lr 0.01 diverges on the
# attention layers. train.py reads it for `--head rtdetr`; a flag on the command line overrides it.
RTDETR_RECIPE = dict(
    optimizer="AdamW", lr=1e-4, backbone_lr_scale=0.1, momentum=0.9, weight_decay=1e-4,   # momentum = Adam β1
    grad_clip_norm=0.1, warmup_iters=2000, schedule="linear", final_lr_scale=1.0,          # constant after warm-up
    ema_decay=0.9999, ema_tau=2000, epochs=72, img=640, close_mosaic=10,
)


class RTDETROutput(NamedTuple):
    """The decoder's predictions; boxes are (cx, cy, w, h) normalised to 0..1 of the input, scores are logits."""
    boxes: torch.Tensor                      # (L, B, k, 4) per decoder layer: 6 in training, the last in eval
    logits: torch.Tensor                     # (L, B, k, nc)
    enc_boxes: torch.Tensor                  # (B, k, 4) the k selected tokens' own proposals
    enc_logits: torch.Tensor                 # (B, k, nc)
    dn_boxes: Optional[torch.Tensor] = None  # (L, B, num_dn, 4) denoising queries (training with targets)
    dn_logits: Optional[torch.Tensor] = None
    denoising: Optional[Denoising] = None    # which denoising query copies which ground truth


class MLP(nn.Module):
    """Linear layers with ReLU between them: dims[0] -> dims[1] -> ... -> dims[-1]."""

    def __init__(self, *dims):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


def inverse_sigmoid(x, eps=1e-5):
    """logit(x) with x clamped to [0, 1] and both x and 1 − x kept ≥ eps, so boxes at the border stay finite."""
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


class MSDeformableAttention(nn.Module):
    """Multi-scale deformable attention: each query reads `points` bilinear samples per level and head, at
    offsets it predicts around its reference box, and sums them with weights it predicts too. Cost grows with
    the number of queries, not with the number of tokens."""

    def __init__(self, dim=256, heads=8, levels=3, points=4):
        super().__init__()
        self.heads, self.levels, self.points = heads, levels, points
        self.sampling_offsets = nn.Linear(dim, heads * levels * points * 2)
        self.attention_weights = nn.Linear(dim, heads * levels * points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        """Deformable DETR's start: head h samples along direction 2πh/heads, point p at (p + 1) steps, every
        sample weighted equally."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.heads) * (2 * math.pi / self.heads)
        directions = torch.stack((angles.cos(), angles.sin()), -1)
        directions = directions / directions.abs().max(-1, keepdim=True).values     # onto the unit square
        steps = torch.arange(1, self.points + 1).view(1, 1, -1, 1)
        self.sampling_offsets.bias.copy_((directions.view(-1, 1, 1, 2) * steps).expand(
            self.heads, self.levels, self.points, 2).flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for layer in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, query, reference, value, shapes):
        """query (B, Q, C); reference (B, Q, 4) boxes (cx, cy, w, h) in 0..1; value (B, T, C), the flattened
        levels of `shapes` [(H_l, W_l)], T = Σ H_l·W_l -> (B, Q, C)."""
        batch, num_queries, dim = query.shape
        heads, levels, points, head_dim = self.heads, self.levels, self.points, dim // self.heads
        value = self.value_proj(value).view(batch, -1, heads, head_dim)                  # (B, T, H, d)
        offsets = self.sampling_offsets(query).view(batch, num_queries, heads, levels, points, 2)
        weights = self.attention_weights(query).view(batch, num_queries, heads, levels * points)
        weights = weights.softmax(-1).view(batch, num_queries, heads, levels, points)   # Σ over (level, point) = 1
        # Sampling locations: offsets in units of the reference box's half size, divided by the point count,
        # so the points spread over the box whatever its size.
        centre, size = reference[:, :, None, None, None, :2], reference[:, :, None, None, None, 2:]
        locations = centre + offsets / points * size * 0.5              # (B, Q, H, L, P, 2): x, y in 0..1
        grids = 2 * locations - 1                                                          # grid_sample's −1..1
        out = 0
        for level, (level_value, (height, width)) in enumerate(zip(value.split([h * w for h, w in shapes], 1), shapes)):
            # one image per (batch, head): (B·H, d, H_l, W_l)
            level_map = level_value.permute(0, 2, 3, 1).reshape(batch * heads, head_dim, height, width)
            level_grid = grids[:, :, :, level].transpose(1, 2).reshape(batch * heads, num_queries, points, 2)
            # bilinear samples at pixel (x·W_l − 0.5, y·H_l − 0.5); 0 outside the map: (B·H, d, Q, P)
            samples = F.grid_sample(level_map, level_grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            level_weights = weights[:, :, :, level].transpose(1, 2).reshape(batch * heads, 1, num_queries, points)
            out = out + (samples * level_weights).sum(-1)                                  # (B·H, d, Q)
        out = out.view(batch, heads * head_dim, num_queries).transpose(1, 2)   # (B, Q, C), heads concatenated
        return self.output_proj(out)


class DecoderLayer(nn.Module):
    """Post-norm decoder layer: self-attention among queries, deformable cross-attention into the image
    features, FFN. The position embedding of the reference box is added to the queries of both attentions."""

    def __init__(self, dim=256, heads=8, ffn_dim=1024, levels=3, points=4):
        super().__init__()
        self.self_attn = MultiHeadAttention(dim, heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn = MSDeformableAttention(dim, heads, levels, points)
        self.norm2 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, queries, reference, pos, value, shapes, blocked=None):
        q = queries + pos
        queries = self.norm1(queries + self.self_attn(q, q, queries, blocked))
        queries = self.norm2(queries + self.cross_attn(queries + pos, reference, value, shapes))
        return self.norm3(queries + self.linear2(F.relu(self.linear1(queries))))


def token_anchors(shapes, device, dtype, base_size=0.05, eps=0.01):
    """Anchor boxes of every token, as logits (1, T, 4), and which are valid (1, T, 1).

    Token (x, y) of level l (H_l × W_l): box ((x + 0.5)/W_l, (y + 0.5)/H_l, 0.05·2^l, 0.05·2^l), normalised.
    A box with any value outside (0.01, 0.99) is invalid: its anchor is +inf, so its box is (1, 1, 1, 1).
    """
    anchors = []
    for level, (height, width) in enumerate(shapes):
        ys, xs = torch.meshgrid(torch.arange(height, device=device, dtype=dtype),
                                torch.arange(width, device=device, dtype=dtype), indexing="ij")
        centres = torch.stack(((xs + 0.5) / width, (ys + 0.5) / height), -1).view(-1, 2)
        sizes = torch.full_like(centres, base_size * 2.0 ** level)
        anchors.append(torch.cat((centres, sizes), -1))
    anchors = torch.cat(anchors)[None]                                    # (1, T, 4)
    valid = ((anchors > eps) & (anchors < 1 - eps)).all(-1, keepdim=True)
    return torch.log(anchors / (1 - anchors)).masked_fill(~valid, float("inf")), valid


def top_scores(boxes, scores, k):
    """The k best (query, class) pairs of each image: boxes (B, Q, 4), scores (B, Q, nc) ->
    (boxes (B, k', 4), scores (B, k'), classes (B, k')), k' = min(k, Q·nc), by descending score. A query
    may appear with several classes; no NMS: the one-to-one training already leaves one query per object."""
    num_classes = scores.shape[-1]
    best, index = scores.flatten(1).topk(min(k, scores.shape[1] * num_classes), dim=1)   # index = q·nc + c
    query = torch.div(index, num_classes, rounding_mode="floor")
    return boxes.gather(1, query[..., None].expand(-1, -1, 4)), best, index % num_classes


class RTDETRHead(nn.Module):
    """RTDETRHead(num_classes, in_channels, ...), defaults rtdetr-l's.

    forward(features, targets=None) takes the neck's [P3, P4, P5] (strides `strides`).
    Training: returns `RTDETROutput` with every decoder layer; with `targets` ((M, 6) rows image, class,
    cx, cy, w, h normalised), denoising queries run too. Eval: returns `(predictions, RTDETROutput)` with
    predictions (B, k, 4 + nc): cx, cy, w, h in input pixels, then class probabilities.
    """

    # parameters whose shape follows the class count
    CLASS_DEPENDENT = ("enc_score_head.", "dec_score_head.", "denoising_class_embed.")

    def __init__(self, num_classes, in_channels, hidden=256, num_queries=300, num_layers=6, heads=8, points=4,
                 ffn_dim=1024, num_denoising=100, label_noise=0.5, box_noise=1.0, strides=(8, 16, 32)):
        super().__init__()
        self.num_classes, self.num_queries, self.strides = num_classes, num_queries, tuple(strides)
        self.num_denoising, self.label_noise, self.box_noise = num_denoising, label_noise, box_noise
        levels = len(in_channels)
        self.input_proj = nn.ModuleList(ConvBNAct(c, hidden, 1, act=None) for c in in_channels)
        self.enc_output = nn.Sequential(nn.Linear(hidden, hidden), nn.LayerNorm(hidden))   # token -> memory
        self.enc_score_head = nn.Linear(hidden, num_classes)
        self.enc_bbox_head = MLP(hidden, hidden, hidden, 4)
        self.query_pos_head = MLP(4, 2 * hidden, hidden)       # reference box -> position embedding
        self.decoder_layers = nn.ModuleList(DecoderLayer(hidden, heads, ffn_dim, levels, points)
                                            for _ in range(num_layers))
        self.dec_score_head = nn.ModuleList(nn.Linear(hidden, num_classes) for _ in range(num_layers))
        self.dec_bbox_head = nn.ModuleList(MLP(hidden, hidden, hidden, 4) for _ in range(num_layers))
        self.denoising_class_embed = nn.Embedding(num_classes, hidden)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        """Class scores start at the focal-loss prior p = 0.01 (Lin et al., arXiv:1708.02002 §3.3); box heads
        start at 0, so the first boxes are the anchors and each layer begins by keeping its reference."""
        prior = -math.log((1 - 0.01) / 0.01)
        for head in (self.enc_score_head, *self.dec_score_head):
            nn.init.constant_(head.bias, prior)
        for head in (self.enc_bbox_head, *self.dec_bbox_head):
            nn.init.zeros_(head.layers[-1].weight)
            nn.init.zeros_(head.layers[-1].bias)
        for layer in (self.enc_output[0], *self.query_pos_head.layers):
            nn.init.xavier_uniform_(layer.weight)
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj.conv.weight)

    def forward(self, features, targets=None):
        memory, value, shapes, anchors = self.encode(features)
        batch, num_tokens, _ = memory.shape
        k = min(self.num_queries, num_tokens)

        # Query selection: the k tokens whose best class logit is highest.
        enc_logits = self.enc_score_head(memory)                                           # (B, T, nc)
        selected = enc_logits.max(-1).values.topk(k, dim=1).indices                        # (B, k)
        selected_memory = memory.gather(1, selected[..., None].expand(-1, -1, memory.shape[-1]))
        reference = self.enc_bbox_head(selected_memory) + anchors[0, selected]           # (B, k, 4) logits
        enc_boxes = reference.sigmoid()
        enc_logits = enc_logits.gather(1, selected[..., None].expand(-1, -1, self.num_classes))
        queries = selected_memory
        if self.training:   # the decoder learns from its own losses; the encoder from its proposals' losses
            queries, reference = queries.detach(), reference.detach()

        denoising, blocked = None, None
        if self.training and targets is not None and self.num_denoising > 0:
            group = denoising_queries(targets, batch, self.denoising_class_embed.weight, k, self.num_denoising,
                                      self.label_noise, self.box_noise)
            if group is not None:
                dn_queries, dn_reference, blocked, denoising = group
                queries = torch.cat((dn_queries.to(queries.dtype), queries), 1)           # denoising queries first
                reference = torch.cat((dn_reference.to(reference.dtype), reference), 1)

        boxes, logits = self.decode(queries, reference.sigmoid(), value, shapes, blocked)
        num_dn = denoising.num_queries if denoising else 0
        outputs = RTDETROutput(boxes[:, :, num_dn:], logits[:, :, num_dn:], enc_boxes, enc_logits,
                               boxes[:, :, :num_dn] if denoising else None,
                               logits[:, :, :num_dn] if denoising else None, denoising)
        if self.training:
            return outputs
        height, width = shapes[0][0] * self.strides[0], shapes[0][1] * self.strides[0]   # the input's size
        pixels = outputs.boxes[-1] * outputs.boxes.new_tensor([width, height, width, height])
        return torch.cat((pixels, outputs.logits[-1].sigmoid()), -1), outputs

    def encode(self, features):
        """Project and flatten the levels: memory (B, T, C), value (B, T, C), shapes [(H_l, W_l)], anchors."""
        value = [proj(f) for proj, f in zip(self.input_proj, features)]                  # (B, C, H_l, W_l)
        shapes = [tuple(v.shape[2:]) for v in value]
        value = torch.cat([v.flatten(2).transpose(1, 2) for v in value], 1)              # (B, T, C), level by level
        anchors, valid = token_anchors(shapes, value.device, value.dtype)
        # Invalid tokens (anchors outside the image) are zeroed, so they all share one memory vector.
        memory = self.enc_output(value * valid)
        return memory, value, shapes, anchors

    def decode(self, queries, reference, value, shapes, blocked=None):
        """Run the decoder layers with iterative box refinement.

        queries (B, Q, C), reference (B, Q, 4) boxes in 0..1 -> boxes (L, B, Q, 4), logits (L, B, Q, nc),
        every layer in training, the last one in eval.
        """
        boxes, logits = [], []
        previous = reference
        for i, layer in enumerate(self.decoder_layers):
            queries = layer(queries, reference, self.query_pos_head(reference), value, shapes, blocked)
            delta = self.dec_bbox_head[i](queries)                                      # a correction in logit space
            refined = torch.sigmoid(delta + inverse_sigmoid(reference))
            if self.training:
                # The reported box is the same number, but computed from the previous layer's box *before*
                # detaching: its loss also trains the previous box head ("look forward twice", DINO §3.5).
                boxes.append(refined if i == 0 else torch.sigmoid(delta + inverse_sigmoid(previous)))
                logits.append(self.dec_score_head[i](queries))
            previous = refined
            # The next layer starts from this box, detached in training: each layer learns its own correction.
            reference = refined.detach() if self.training else refined
        if not self.training:
            boxes, logits = [refined], [self.dec_score_head[-1](queries)]
        return torch.stack(boxes), torch.stack(logits)

    @staticmethod
    def postprocess(predictions, conf_thres=0.25, iou_thres=None, max_det=300, classes=None, agnostic=None,
                    multi_label=None):
        """Detections from the eval-mode output: the `max_det` best (query, class) scores above `conf_thres`,
        of `classes` only when given.

        predictions: (B, k, 4 + nc) as `forward` returns in eval (the `(predictions, outputs)` tuple works too).
        iou_thres, agnostic and multi_label are NMS settings, unused: RT-DETR needs no NMS, and its top-k may
        list one query under several classes.
        Returns one `Tensor[n, 6]` per image: x1, y1, x2, y2 (input pixels), score, class, by descending score.
        """
        if isinstance(predictions, (list, tuple)):
            predictions = predictions[0]
        boxes, scores, labels = top_scores(predictions[..., :4], predictions[..., 4:], max_det)
        detections = torch.cat((cxcywh_to_xyxy(boxes), scores[..., None], labels[..., None].to(boxes.dtype)), -1)
        keep = detections[..., 4] > conf_thres
        if classes is not None:
            keep &= torch.isin(labels, torch.as_tensor(classes, device=labels.device))
        return [image[mask] for image, mask in zip(detections, keep)]
