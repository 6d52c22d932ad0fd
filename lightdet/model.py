"""The detector: a backbone, a neck and a head, composed in Python.

`build_model("cspdarknet", scale="n")` is YOLOv5n v6 exactly (1,872,157 parameters at 80 classes); any other
registered backbone gets the same neck and head at the chosen scale. The neck's CSP block and an attention block
after its outputs are options (`lightdet.necks`): `neck_attention="irmb"` is the iRMB article's detector.
`head="rtdetr"` gives any backbone RT-DETR's hybrid encoder and decoder instead (rtdetr-l's; 19,592,492
parameters with mobilenetv3_small).
"""
import re

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from .backbones import build_backbone
from .checkpoint import load_checkpoint
from .heads.anchor import DEFAULT_ANCHORS, AnchorHead
from .heads.rtdetr import RTDETRHead
from .layers import SCALES, fuse_modules
from .necks import NECK_ATTENTIONS, NECK_BLOCKS
from .necks.hybrid_encoder import HybridEncoder
from .necks.irmb import convert_state_dict as convert_irmb_names
from .necks.pan import PAN


def check_backbone(backbone, name):
    """Run a dummy rectangular image through `backbone` and check the backbone contract (docs/design.md); raise naming the shapes."""
    channels = tuple(getattr(backbone, "out_channels", ()))
    if len(channels) != 3:
        raise TypeError(f"backbone {name!r} must expose out_channels as three ints (P3, P4, P5), got {channels!r}")
    height, width = 64, 96
    was_training = backbone.training
    backbone.eval()   # eval mode: the check must not move BatchNorm statistics
    try:
        with torch.no_grad():
            param = next(backbone.parameters(), None)
            device = param.device if param is not None else "cpu"
            features = backbone(torch.zeros(1, 3, height, width, device=device))
    finally:
        backbone.train(was_training)
    expected = [(1, c, height // s, width // s) for c, s in zip(channels, (8, 16, 32))]
    actual = [tuple(f.shape) for f in features] if isinstance(features, (list, tuple)) else [type(features)]
    if actual != expected:
        raise ValueError(f"backbone {name!r} breaks the backbone contract on a 1×3×{height}×{width} input: "
                         f"expected [P3, P4, P5] of shapes {expected}, got {actual}")


class Detector(nn.Module):
    """Detector(backbone, neck, head): images (B, 3, H, W) RGB 0..1 -> the head's output (see AnchorHead,
    RTDETRHead). `postprocess` turns the eval-mode output into detections, whatever the head."""

    def __init__(self, backbone, neck, head, config=None):
        super().__init__()
        check_backbone(backbone, (config or {}).get("backbone", type(backbone).__name__))
        self.backbone = backbone
        self.neck = neck
        self.head = head
        self.config = dict(config or {})   # build_model's arguments: a checkpoint rebuilds the model from it

    def forward(self, images, targets=None):
        """targets: (M, 6) rows (image, class, cx, cy, w, h normalised), for heads that use them in training
        (RT-DETR's denoising queries); the anchor head ignores them."""
        return self.head(self.neck(self.backbone(images)), targets)

    def postprocess(self, predictions, conf_thres=0.25, iou_thres=0.45, max_det=300, classes=None, agnostic=False,
                    multi_label=False):
        """The eval-mode output -> one `Tensor[n, 6]` per image: x1, y1, x2, y2 (input pixels), score, class,
        by descending score. The head decides how: NMS for the anchor head, top-k for RT-DETR. `classes` keeps
        only those class indices; `agnostic` and `multi_label` are YOLOv5's NMS options."""
        return self.head.postprocess(predictions, conf_thres, iou_thres, max_det, classes, agnostic, multi_label)

    @torch.no_grad()
    def fuse(self):
        """Fold every BatchNorm into its convolution and merge re-parameterisable branches, for inference.

        Use the fused model in eval mode only: it has no BatchNorm statistics left to train.
        """
        for part in (self.backbone, self.neck, self.head):
            fuse_modules(part)
        return self

    @classmethod
    def from_checkpoint(cls, checkpoint, weights="ema", map_location="cpu"):
        """Rebuild a model from a lightdet checkpoint (a path, or the loaded dict) alone; `weights` picks
        "ema" (when saved) or "model"."""
        if not isinstance(checkpoint, dict):
            checkpoint = load_checkpoint(checkpoint, map_location)
        model = build_model(**checkpoint["config"])
        state = checkpoint.get(weights) or checkpoint["model"]
        model.load_state_dict(state)
        model.names = list(checkpoint.get("names") or [str(i) for i in range(model.head.num_classes)])
        return model


HEADS = ("anchor", "rtdetr")


def build_model(backbone="cspdarknet", num_classes=80, scale="n", head="anchor", neck_block="c3",
                neck_attention=None, anchors=DEFAULT_ANCHORS, **backbone_kwargs):
    """Build a detector. `backbone` is a registry name (`lightdet.backbones.BACKBONES`); `scale` (n/s/m/l/x)
    sets the neck's width and depth, and for the plain name "cspdarknet" the backbone's too (YOLOv5<scale>).
    `head`: "anchor" (YOLOv5's PAN neck and anchor head) or "rtdetr" (RT-DETR's hybrid encoder and decoder,
    rtdetr-l's widths whatever the scale; `anchors` is not used). For the anchor head, `neck_block` names the
    PAN's CSP block and `neck_attention` the block after each of its outputs (None: none), from
    `lightdet.necks.NECK_BLOCKS` and `NECK_ATTENTIONS`; the defaults are YOLOv5's."""
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; valid scales: {', '.join(SCALES)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; valid heads: {', '.join(HEADS)}")
    if neck_block not in NECK_BLOCKS:
        raise ValueError(f"unknown neck_block {neck_block!r}; valid: {', '.join(NECK_BLOCKS)}")
    if neck_attention is not None and neck_attention not in NECK_ATTENTIONS:
        raise ValueError(f"unknown neck_attention {neck_attention!r}; valid: None, {', '.join(NECK_ATTENTIONS)}")
    if head == "rtdetr" and (neck_block, neck_attention) != ("c3", None):
        raise ValueError("neck_block and neck_attention choose the PAN neck of the anchor head; "
                         "head='rtdetr' has its own hybrid encoder")
    depth, width = SCALES[scale]
    body = build_backbone(f"cspdarknet_{scale}" if backbone == "cspdarknet" else backbone, **backbone_kwargs)
    config = dict(backbone=backbone, num_classes=num_classes, scale=scale, head=head, **backbone_kwargs)
    if head == "rtdetr":
        neck = HybridEncoder(body.out_channels)
        return Detector(body, neck, RTDETRHead(num_classes, neck.out_channels), config)
    neck = PAN(body.out_channels, width=width, depth=depth, block=NECK_BLOCKS[neck_block],
               attention=NECK_ATTENTIONS.get(neck_attention))
    config.update(neck_block=neck_block, neck_attention=neck_attention,
                  anchors=[[list(map(float, a)) for a in level] for level in anchors])
    return Detector(body, neck, AnchorHead(num_classes, neck.out_channels, anchors), config)


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def model_info(model, imgsz=640):
    """Parameters and GFLOPs of one forward pass at `imgsz` (int or (h, w)), batch 1, eval mode.

    GFLOPs = 2 × multiply-accumulates of convolutions and matrix products, counted by PyTorch's
    FlopCounterMode (YOLOv5's README counts the same way); attention through
    `scaled_dot_product_attention` is counted too (PyTorch does not count its CPU kernel by itself).
    """
    height, width = (imgsz, imgsz) if isinstance(imgsz, int) else imgsz
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False, custom_mapping={
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops})
    try:
        with torch.no_grad(), counter:
            model(torch.zeros(1, 3, height, width, dtype=param.dtype, device=param.device))
    finally:
        model.train(was_training)
    return {"params": sum(p.numel() for p in model.parameters()), "gflops": counter.get_total_flops() / 1e9}


# ultralytics/yolov5 v6 layer index (models/yolov5*.yaml) -> lightdet module path; the Detect layer's index.
YOLOV5_LAYERS = {
    0: "backbone.stem",
    1: "backbone.stages.0.0", 2: "backbone.stages.0.1",
    3: "backbone.stages.1.0", 4: "backbone.stages.1.1",
    5: "backbone.stages.2.0", 6: "backbone.stages.2.1",
    7: "backbone.stages.3.0", 8: "backbone.stages.3.1",
    9: "neck.sppf", 10: "neck.lateral_p5", 13: "neck.top_down_p4", 14: "neck.lateral_p4",
    17: "neck.out_p3", 18: "neck.down_p3", 20: "neck.out_p4", 21: "neck.down_p4", 23: "neck.out_p5",
}
YOLOV5_DETECT = 24
# The iRMB article's yolov5_iRMB.yaml inserts an iRMB after each PAN output (18, 22, 26); the layers after
# each insertion move up by one, two and three.
YOLOV5_IRMB_LAYERS = {
    **{index: path for index, path in YOLOV5_LAYERS.items() if index <= 17},
    18: "neck.attention_p3", 19: "neck.down_p3", 21: "neck.out_p4",
    22: "neck.attention_p4", 23: "neck.down_p4", 25: "neck.out_p5", 26: "neck.attention_p5",
}
YOLOV5_IRMB_DETECT = 27


def convert_yolov5_state_dict(state_dict, strides=(8, 16, 32), neck_attention=None):
    """Map an ultralytics YOLOv5 v6+ state_dict (`model.N.…` keys) onto `build_model("cspdarknet", scale=…)`.

    The official yolov5{n,s,m,l,x}.pt files pickle the whole model; extract a plain state_dict once, inside a
    clone of ultralytics/yolov5 (their classes must be importable to unpickle):
        torch.save(torch.load("yolov5s.pt", weights_only=False)["model"].float().state_dict(), "yolov5s_sd.pt")
    `neck_attention="irmb"` reads the iRMB article's `yolov5_iRMB.yaml` layout (and its iRMB naming) for
    `build_model("cspdarknet", scale=…, neck_attention="irmb")`.
    Anchors are stored in grid units there and in pixels here. Any key that has no place raises a KeyError.
    """
    if neck_attention not in (None, "irmb"):
        raise ValueError(f"convert_yolov5_state_dict knows neck_attention None or 'irmb', got {neck_attention!r}")
    layers, detect = (YOLOV5_IRMB_LAYERS, YOLOV5_IRMB_DETECT) if neck_attention else (YOLOV5_LAYERS, YOLOV5_DETECT)
    converted, unknown = {}, []
    for key, value in state_dict.items():
        match = re.fullmatch(r"model\.(\d+)\.(.+)", key)
        index, rest = (int(match.group(1)), match.group(2)) if match else (None, key)
        if index in layers:
            converted[f"{layers[index]}.{rest}"] = value
        elif index == detect and rest == "anchors":
            converted["head.anchors"] = value.float() * torch.tensor(strides, dtype=torch.float32).view(-1, 1, 1)
        elif index == detect and rest.startswith("m."):
            converted[f"head.pred.{rest[2:]}"] = value
        elif index == detect and rest == "anchor_grid":
            continue   # YOLOv5 < 6 saved this derived copy of the anchors
        else:
            unknown.append(key)
    if unknown:
        layout = "yolov5_iRMB.yaml" if neck_attention else "YOLOv5 v6"
        raise KeyError(f"not a {layout} detector state_dict; no place for: {', '.join(unknown[:10])}"
                       f"{' ...' if len(unknown) > 10 else ''}")
    return convert_irmb_names(converted) if neck_attention else converted


# ultralytics rtdetr-l.yaml row -> lightdet module path. Rows 0-9 are the backbone (HGNetv2 there), left to
# the backbone converters; the rows in between have no parameters (upsampling, concatenation).
RTDETR_ROWS = {
    10: "neck.input_proj.2", 11: "neck.aifi", 12: "neck.lateral_p5", 14: "neck.input_proj.1",
    16: "neck.top_down_p4", 17: "neck.lateral_p4", 19: "neck.input_proj.0", 21: "neck.out_p3",
    22: "neck.down_p3", 24: "neck.out_p4", 25: "neck.down_p4", 27: "neck.out_p5", 28: "head",
}
RTDETR_BACKBONE_ROWS = range(10)
# Names inside a row that lightdet spells differently: AIFI's attention, the decoder's projection Sequential
# (conv, BN) and its layer list.
RTDETR_RENAMES = ((r"^ma\.", "attn."), (r"^input_proj\.(\d)\.0\.", r"input_proj.\1.conv."),
                  (r"^input_proj\.(\d)\.1\.", r"input_proj.\1.bn."), (r"^decoder\.layers\.", "decoder_layers."))


def convert_ultralytics_rtdetr_state_dict(state_dict):
    """Map an ultralytics RT-DETR state_dict (`model.N.…`, rtdetr-l.yaml rows) onto the neck and head of
    `build_model(..., head="rtdetr")`: rows 10-27 (the hybrid encoder) to `neck.*`, row 28 (RTDETRDecoder) to
    `head.*`. Backbone rows 0-9 are dropped (their converters live with the backbones); any other key raises
    a KeyError. Extract the plain state_dict from a pickled ultralytics checkpoint as for YOLOv5, e.g.
        torch.save(torch.load("rtdetr-l.pt", weights_only=False)["model"].float().state_dict(), "rtdetr-l_sd.pt")
    """
    converted, unknown = {}, []
    for key, value in state_dict.items():
        match = re.fullmatch(r"model\.(\d+)\.(.+)", key)
        row, rest = (int(match.group(1)), match.group(2)) if match else (None, key)
        if row in RTDETR_BACKBONE_ROWS:
            continue
        if row not in RTDETR_ROWS:
            unknown.append(key)
            continue
        for pattern, replacement in RTDETR_RENAMES:
            rest = re.sub(pattern, replacement, rest)
        converted[f"{RTDETR_ROWS[row]}.{rest}"] = value
    if unknown:
        raise KeyError(f"not an ultralytics RT-DETR state_dict; no place for: {', '.join(unknown[:10])}"
                       f"{' ...' if len(unknown) > 10 else ''}")
    return converted
