"""MobileNetV3 (Howard et al., "Searching for MobileNetV3", ICCV 2019, arXiv:1905.02244).

Official code: tensorflow/models (research/slim/nets/mobilenet/mobilenet_v3.py); weights here follow timm
(`mobilenetv3_large_100`, `mobilenetv3_small_100`). What is new over MobileNetV2's inverted residual:
- squeeze-and-excite inside the bottleneck, sized from the *expanded* width, with a hard-sigmoid gate;
- h-swish (x·ReLU6(x+3)/6) in the later layers only, where maps are small and the non-linearity pays most;
- a layout found by platform-aware NAS + NetAdapt, then hand-trimmed: a 16-channel stem and an "efficient
  last stage" whose 1×1 conv (960 / 576) is kept here as the stride-32 feature map.
"""
import re
from typing import NamedTuple

from torch import nn

from ..layers import ConvBNAct, SqueezeExcite, make_divisible

ACTIVATIONS = {"RE": nn.ReLU, "HS": nn.Hardswish}


class Bneck(NamedTuple):
    """One row of the paper's Table 1 / 2: a bottleneck (inverted residual) block."""
    kernel: int      # depthwise kernel size
    exp: int         # expansion size: width of the depthwise conv
    out: int         # output channels
    se: bool         # squeeze-and-excite after the depthwise conv
    act: str         # "RE" (ReLU) or "HS" (h-swish)
    stride: int


STEM = 16  # conv2d 3×3, stride 2, h-swish
# Table 1, MobileNetV3-Large.                   input at 224
LARGE = [
    Bneck(3, 16, 16, False, "RE", 1),          # 112² × 16
    Bneck(3, 64, 24, False, "RE", 2),          # 112² × 16
    Bneck(3, 72, 24, False, "RE", 1),          # 56² × 24
    Bneck(5, 72, 40, True, "RE", 2),           # 56² × 24
    Bneck(5, 120, 40, True, "RE", 1),          # 28² × 40
    Bneck(5, 120, 40, True, "RE", 1),          # 28² × 40   -> P3 (stride 8)
    Bneck(3, 240, 80, False, "HS", 2),         # 28² × 40
    Bneck(3, 200, 80, False, "HS", 1),         # 14² × 80
    Bneck(3, 184, 80, False, "HS", 1),         # 14² × 80
    Bneck(3, 184, 80, False, "HS", 1),         # 14² × 80
    Bneck(3, 480, 112, True, "HS", 1),         # 14² × 80
    Bneck(3, 672, 112, True, "HS", 1),         # 14² × 112  -> P4 (stride 16)
    Bneck(5, 672, 160, True, "HS", 2),         # 14² × 112
    Bneck(5, 960, 160, True, "HS", 1),         # 7² × 160
    Bneck(5, 960, 160, True, "HS", 1),         # 7² × 160
]
# Table 2, MobileNetV3-Small.
SMALL = [
    Bneck(3, 16, 16, True, "RE", 2),           # 112² × 16
    Bneck(3, 72, 24, False, "RE", 2),          # 56² × 16
    Bneck(3, 88, 24, False, "RE", 1),          # 28² × 24   -> P3 (stride 8)
    Bneck(5, 96, 40, True, "HS", 2),           # 28² × 24
    Bneck(5, 240, 40, True, "HS", 1),          # 14² × 40
    Bneck(5, 240, 40, True, "HS", 1),          # 14² × 40
    Bneck(5, 120, 48, True, "HS", 1),          # 14² × 40
    Bneck(5, 144, 48, True, "HS", 1),          # 14² × 48   -> P4 (stride 16)
    Bneck(5, 288, 96, True, "HS", 2),          # 14² × 48
    Bneck(5, 576, 96, True, "HS", 1),          # 7² × 96
    Bneck(5, 576, 96, True, "HS", 1),          # 7² × 96
]
# The last 1×1 conv (h-swish) of each table, our stride-32 output. Table 2 marks SE on Small's 576 conv;
# timm and torchvision (and their published weights) have none there, and neither do we.
VARIANTS = {
    "mobilenetv3_large": dict(rows=LARGE, last_conv=960),
    "mobilenetv3_small": dict(rows=SMALL, last_conv=576),
}


class InvertedResidual(nn.Module):
    """1×1 expand → k×k depthwise → [SE] → 1×1 linear projection, plus the input when shapes allow.

    The projection has no activation (the "linear bottleneck" of MobileNetV2): a ReLU on the narrow map would
    destroy information. Rows whose expansion equals the input width skip the 1×1 expand.
    """

    def __init__(self, in_channels, expanded, out_channels, kernel, stride, se, act):
        super().__init__()
        self.expand = ConvBNAct(in_channels, expanded, 1, act=act, bn="timm") if expanded != in_channels else None
        self.depthwise = ConvBNAct(expanded, expanded, kernel, stride, groups=expanded, act=act, bn="timm")
        # The squeeze width is a quarter of the expanded width (not of the block input, as in SENet), and the
        # gate is a hard sigmoid: cheap, and exact in fixed point.
        self.se = SqueezeExcite(expanded, make_divisible(expanded / 4), act=nn.ReLU, gate=nn.Hardsigmoid) \
            if se else None
        self.project = ConvBNAct(expanded, out_channels, 1, act=None, bn="timm")
        self.residual = stride == 1 and in_channels == out_channels
        if self.residual:   # start as the identity (Goyal et al. 2017, arXiv:1706.02677, §5.1): trains from
            nn.init.zeros_(self.project.bn.weight)   # scratch faster (README has the measured shapes runs)

    def forward(self, x):
        y = self.expand(x) if self.expand is not None else x
        y = self.depthwise(y)
        if self.se is not None:
            y = self.se(y)
        y = self.project(y)
        return x + y if self.residual else y


class MobileNetV3(nn.Module):
    """MobileNetV3 feature extractor; returns [P3, P4, P5] at strides 8, 16, 32.

    P3 and P4 are the outputs of the last bottleneck at stride 8 and 16, P5 that of the last 1×1 conv
    (the taps of timm's `features_only`).
    """

    def __init__(self, rows, last_conv, width=1.0):
        super().__init__()
        # timm keeps the 16-channel stem for widths below 0.75.
        stem = make_divisible(STEM * width) if width >= 0.75 else STEM
        self.stem = ConvBNAct(3, stem, 3, stride=2, act=nn.Hardswish, bn="timm")

        blocks, taps, stride = [], [], 2
        in_channels, base_in = stem, STEM
        for i, row in enumerate(rows):
            out_channels = make_divisible(row.out * width)
            # timm scales the expansion as a ratio of the (rounded) input width; at width 1.0 this is the
            # table's exp size. Following it lets timm's other-width checkpoints load too.
            expanded = make_divisible(in_channels * row.exp / base_in)
            blocks.append(InvertedResidual(in_channels, expanded, out_channels, row.kernel, row.stride, row.se,
                                           ACTIVATIONS[row.act]))
            stride *= row.stride
            rows_after = rows[i + 1:]
            if stride in (8, 16) and (not rows_after or rows_after[0].stride == 2):
                taps.append(i)
            in_channels, base_in = out_channels, row.out
        self.blocks = nn.ModuleList(blocks)
        self.taps = tuple(taps)
        last = make_divisible(last_conv * width)
        self.last_conv = ConvBNAct(in_channels, last, 1, act=nn.Hardswish, bn="timm")
        self.out_channels = tuple(self.blocks[i].project.conv.out_channels for i in taps) + (last,)

    def forward(self, x):
        x = self.stem(x)
        features = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.taps:
                features.append(x)
        features.append(self.last_conv(x))
        return features


# timm's per-block names. Its "ds" block (no expansion: the first row) calls the depthwise conv's
# BatchNorm bn1 and the projection conv_pw/bn2; its inverted residual calls the expansion conv_pw/bn1.
_IR_NAMES = {"conv_pw": "expand.conv", "bn1": "expand.bn", "conv_dw": "depthwise.conv", "bn2": "depthwise.bn",
             "conv_pwl": "project.conv", "bn3": "project.bn"}
_DS_NAMES = {"conv_dw": "depthwise.conv", "bn1": "depthwise.bn", "conv_pw": "project.conv", "bn2": "project.bn"}
_SE_NAMES = {"conv_reduce": "reduce", "conv_expand": "expand"}
_CLASSIFIER = ("conv_head.", "classifier.")  # the classification head after global pooling


def convert_state_dict(state_dict):
    """timm MobileNetV3 (`features_only` or classification naming, which agree) -> lightdet naming.

    timm's `blocks.<stage>.<index>` become one running block index; the final `cn` block (a bare conv, BN)
    becomes `last_conv`. Classifier keys are dropped; keys already in lightdet naming pass through.
    """
    def block_id(key):   # "blocks.3.2.conv_dw.weight" -> (3, 2); None for any other key
        match = re.match(r"blocks\.(\d+)\.(\d+)\.", key)
        return (int(match[1]), int(match[2])) if match else None

    # Each timm block's layer names tell its type apart: "conv_pwl" (inverted residual), "conv" (the last
    # 1×1 conv), neither ("ds"). Our running index follows timm's (stage, index) order.
    layers = {}
    for key in state_dict:
        if block_id(key):
            layers.setdefault(block_id(key), set()).add(key.split(".")[3])
    index = {b: i for i, b in enumerate(sorted(layers))}
    converted = {}
    for key, value in state_dict.items():
        if key.startswith(_CLASSIFIER):
            continue
        parts = key.split(".")
        if parts[0] in ("conv_stem", "bn1"):
            key = ".".join(["stem", "conv" if parts[0] == "conv_stem" else "bn"] + parts[1:])
        elif block_id(key):
            b = block_id(key)
            layer, rest = parts[3], parts[4:]
            if "conv" in layers[b]:   # the last 1×1 conv: conv, bn1
                key = ".".join(["last_conv", "conv" if layer == "conv" else "bn"] + rest)
            elif layer == "se":
                key = ".".join([f"blocks.{index[b]}.se", _SE_NAMES.get(rest[0], rest[0])] + rest[1:])
            else:
                names = _IR_NAMES if "conv_pwl" in layers[b] else _DS_NAMES
                key = ".".join([f"blocks.{index[b]}", names.get(layer, layer)] + rest)
        converted[key] = value
    return converted


def mobilenetv3_large(width=1.0):
    return MobileNetV3(**VARIANTS["mobilenetv3_large"], width=width)


def mobilenetv3_small(width=1.0):
    return MobileNetV3(**VARIANTS["mobilenetv3_small"], width=width)
