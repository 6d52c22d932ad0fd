"""CSPDarknet, the YOLOv5 v6 backbone (ultralytics/yolov5, `models/yolov5*.yaml`; CSPNet arXiv:1911.11929).

A 6×6 stride-2 stem (v6 replaced the Focus slice with it: same receptive field, exportable), then four
stages of a 3×3 stride-2 conv followed by a C3 block. One table of base widths and depths is scaled by the
model size: width multiplies channels, depth multiplies the number of bottlenecks in each C3.
The deepest map's SPPF belongs to the neck in lightdet (`lightdet/necks/pan.py`), so every backbone gets it.
"""
from torch import nn

from ..layers import C3, SCALES, ConvBNAct, make_divisible, scaled_depth

STEM_CHANNELS = 64
# Base (width 1.0, depth 1.0) stage rows: output channels and bottlenecks in the stage's C3.
STAGES = [
    dict(channels=128, depth=3),    # stride 4
    dict(channels=256, depth=6),    # stride 8   -> P3
    dict(channels=512, depth=9),    # stride 16  -> P4
    dict(channels=1024, depth=3),   # stride 32  -> P5
]


class CSPDarknet(nn.Module):
    """YOLOv5 v6 backbone; returns [P3, P4, P5] at strides 8, 16, 32."""

    def __init__(self, depth_multiple=0.33, width_multiple=0.25):
        super().__init__()
        stem = make_divisible(STEM_CHANNELS * width_multiple)
        self.stem = ConvBNAct(3, stem, kernel_size=6, stride=2, padding=2)
        stages, in_channels = [], stem
        for row in STAGES:
            out_channels = make_divisible(row["channels"] * width_multiple)
            stages.append(nn.Sequential(
                ConvBNAct(in_channels, out_channels, kernel_size=3, stride=2),
                C3(out_channels, out_channels, scaled_depth(row["depth"], depth_multiple)),
            ))
            in_channels = out_channels
        self.stages = nn.ModuleList(stages)
        self.out_channels = tuple(make_divisible(row["channels"] * width_multiple) for row in STAGES[1:])

    def forward(self, x):
        x = self.stages[0](self.stem(x))   # stride 4: no output here
        p3 = self.stages[1](x)
        p4 = self.stages[2](p3)
        return [p3, p4, self.stages[3](p4)]


def cspdarknet_n():
    return CSPDarknet(*SCALES["n"])


def cspdarknet_s():
    return CSPDarknet(*SCALES["s"])


def cspdarknet_m():
    return CSPDarknet(*SCALES["m"])


def cspdarknet_l():
    return CSPDarknet(*SCALES["l"])


def cspdarknet_x():
    return CSPDarknet(*SCALES["x"])
