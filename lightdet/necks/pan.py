"""The YOLOv5 v6 neck: SPPF on the deepest map, then a PAN path (Liu et al., CVPR 2018, arXiv:1803.01534).

Top-down, semantic information from P5 flows into the finer maps (FPN); bottom-up, the finer maps' precise
localisation flows back into the coarser ones (PANet's extra path). Every merge is a concatenation followed by
a CSP block without shortcuts: YOLOv5's C3, or another block of the same signature (`lightdet.necks.NECK_BLOCKS`).
An optional attention block follows each of the three outputs, and the bottom-up path reads the attended maps
(the iRMB article's `yolov5_iRMB.yaml`, whose layers 18, 22, 26 are iRMBs). Channels follow YOLOv5's head
(256/512/1024 × width), whatever the backbone gives.
Attribute comments name the layer index of `yolov5*.yaml` (in brackets where `yolov5_iRMB.yaml`'s differs),
which `convert_yolov5_state_dict` relies on.
"""
import torch
from torch import nn

from ..layers import C3, SPPF, ConvBNAct, make_divisible, scaled_depth


class PAN(nn.Module):
    """PAN(in_channels=(c3, c4, c5), width, depth, block=C3, attention=None) -> [P3, P4, P5] with `out_channels`.

    `block(in_channels, out_channels, depth, shortcut=False)` builds the four CSP stages; `attention(channels)`,
    if given, builds the block that follows each output.
    """

    def __init__(self, in_channels, width=0.25, depth=0.33, block=C3, attention=None):
        super().__init__()
        c3, c4, c5 = in_channels
        w256, w512, w1024 = (make_divisible(c * width) for c in (256, 512, 1024))
        n = scaled_depth(3, depth)
        attend = attention or (lambda channels: nn.Identity())
        self.sppf = SPPF(c5, w1024)                                     # 9
        self.lateral_p5 = ConvBNAct(w1024, w512, 1)                     # 10
        self.top_down_p4 = block(w512 + c4, w512, n, shortcut=False)    # 13
        self.lateral_p4 = ConvBNAct(w512, w256, 1)                      # 14
        self.out_p3 = block(w256 + c3, w256, n, shortcut=False)         # 17
        self.attention_p3 = attend(w256)                                # 18 in yolov5_iRMB.yaml
        self.down_p3 = ConvBNAct(w256, w256, 3, stride=2)               # 18 (19)
        self.out_p4 = block(w256 + w256, w512, n, shortcut=False)       # 20 (21)
        self.attention_p4 = attend(w512)                                # 22 in yolov5_iRMB.yaml
        self.down_p4 = ConvBNAct(w512, w512, 3, stride=2)               # 21 (23)
        self.out_p5 = block(w512 + w512, w1024, n, shortcut=False)      # 23 (25)
        self.attention_p5 = attend(w1024)                               # 26 in yolov5_iRMB.yaml
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.out_channels = (w256, w512, w1024)

    def forward(self, features):
        # Shapes for yolov5n (width 0.25) at a 640×640 input.
        p3, p4, p5 = features                                              # (B,64,80,80) (B,128,40,40) (B,256,20,20)
        p5 = self.sppf(p5)                                                 # (B, 256, 20, 20)
        # top-down
        lat5 = self.lateral_p5(p5)                                         # (B, 128, 20, 20)
        td4 = self.top_down_p4(torch.cat((self.upsample(lat5), p4), 1))   # (B, 128, 40, 40)
        lat4 = self.lateral_p4(td4)                                        # (B, 64, 40, 40)
        out3 = self.out_p3(torch.cat((self.upsample(lat4), p3), 1))       # (B, 64, 80, 80)
        out3 = self.attention_p3(out3)                                     # (B, 64, 80, 80)
        # bottom-up
        out4 = self.out_p4(torch.cat((self.down_p3(out3), lat4), 1))      # (B, 128, 40, 40)
        out4 = self.attention_p4(out4)                                     # (B, 128, 40, 40)
        out5 = self.out_p5(torch.cat((self.down_p4(out4), lat5), 1))      # (B, 256, 20, 20)
        out5 = self.attention_p5(out5)                                     # (B, 256, 20, 20)
        return [out3, out4, out5]
