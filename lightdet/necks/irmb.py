"""The iRMB article's neck blocks: EMO's inverted residual mobile block placed in YOLOv5's neck, and C2f_iRMB.

iRMB comes from EMO (Zhang et al., ICCV 2023, arXiv:2301.01146; https://github.com/zhangzjn/EMO). The article
that puts it into YOLOv5 pastes EMO's `iRMB` class into `models/common.py` with `dim_head=8` and its other
defaults, and adds one `iRMB` after each of the PAN's three output C3s (`yolov5_iRMB.yaml`); it also defines
`C2f_iRMB`, YOLOv8's C2f whose bottlenecks end in an iRMB. Inside a YOLOv5 model every BatchNorm gets eps 1e-3
and momentum 0.03 (YOLOv5 sets that on all of them, overriding the 1e-6 of EMO's code).

This iRMB is not the one of lightdet's EMO backbone, although both come from the same official class: with
these defaults the values are `ReLU(v(x))`, projected *before* attention (EMO's backbone attends over the
normalised map and projects after), q, k and v have no bias, and the pre-norm before attention is a BatchNorm
(EMO uses LayerNorm there). One class covering both would need a switch for each of the three.
"""
import re

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import Bottleneck, C2f, ConvBNAct, batch_norm, from_windows, fuse_bn_conv, to_windows


class iRMB(nn.Module):
    """iRMB(channels) as the article instantiates it: x + proj(y + dw(y)), y = window attention of norm(x).

    Attention has `channels / dim_head` heads inside EMO's strided-grid windows of `window_size`² pixels; the
    map is zero-padded on the right and bottom to a multiple of the window (20×24 -> 21×28) and cropped back.
    The depthwise 3×3 conv (BatchNorm, SiLU) adds to its input; the 1×1 projection closes the outer residual.
    Expansion ratio 1: every conv keeps `channels`. Input and output (B, channels, H, W).
    """

    def __init__(self, channels, dim_head=8, window_size=7):
        super().__init__()
        if channels % dim_head:
            raise ValueError(f"iRMB: {channels} channels do not split into heads of {dim_head}")
        self.num_heads = channels // dim_head
        self.window_size = window_size
        self.norm = batch_norm(channels)   # YOLOv5's settings, as every BatchNorm of a YOLOv5 model
        self.qk = nn.Conv2d(channels, 2 * channels, 1, bias=False)
        self.v = nn.Conv2d(channels, channels, 1, bias=False)
        self.act = nn.ReLU()
        self.conv_local = ConvBNAct(channels, channels, 3, groups=channels, act=nn.SiLU)
        self.proj = nn.Conv2d(channels, channels, 1, bias=False)

    def attend(self, x):
        """softmax(q kᵀ / √dim_head) · ReLU(v) inside each window; (B, C, H, W) -> (B, C, H, W)."""
        H, W = x.shape[-2:]
        ws, heads = self.window_size, self.num_heads
        q, k = self.qk(x).chunk(2, dim=1)
        v = self.act(self.v(x))
        # The article pads the normalised map, then projects. q, k, v have no bias and ReLU(0) = 0, so padding
        # the projections instead is the same, and lets fuse() fold the BatchNorm into qk and v (their bias
        # after folding must not reach the padding).
        padding = (0, -W % ws, 0, -H % ws)
        q, k, v = (to_windows(F.pad(t, padding), heads, ws) for t in (q, k, v))   # (B·n1·n2, heads, ws², dim_head)
        out = F.scaled_dot_product_attention(q, k, v)
        return from_windows(out, H + padding[3], W + padding[1])[:, :, :H, :W]

    def forward(self, x):
        y = self.attend(self.norm(x))
        y = y + self.conv_local(y)
        return x + self.proj(y)

    @torch.no_grad()
    def fuse(self):
        """Fold the pre-norm into qk and v, the 1×1 convs that read it (conv_local folds its own)."""
        if isinstance(self.norm, nn.BatchNorm2d):
            self.qk = fuse_bn_conv(self.norm, self.qk)
            self.v = fuse_bn_conv(self.norm, self.v)
            self.norm = nn.Identity()


class iRMBBottleneck(Bottleneck):
    """C2f's bottleneck (3×3 conv → 3×3 conv) with an iRMB on its output, before the optional residual."""

    def __init__(self, channels, shortcut=False):
        super().__init__(channels, channels, shortcut, expansion=1.0, kernel_sizes=(3, 3))
        self.irmb = iRMB(channels)

    def forward(self, x):
        y = self.irmb(self.cv2(self.cv1(x)))
        return x + y if self.add else y


class C2f_iRMB(C2f):
    """The article's C2f_iRMB(in, out, depth, shortcut): C2f whose bottlenecks end in an iRMB."""

    def bottleneck(self, channels, shortcut):
        return iRMBBottleneck(channels, shortcut)


# The article's code wraps each conv in EMO's ConvNormAct (`qk.conv`, `conv_local.norm`) and names the
# bottleneck's block `iRMB`; lightdet keeps the bare convs, as in its EMO backbone.
ARTICLE_NAMES = {"qk.conv": "qk", "v.conv": "v", "proj.conv": "proj", "conv_local.norm": "conv_local.bn",
                 "iRMB": "irmb"}
_ARTICLE_NAME = re.compile(r"(?<![^.])(" + "|".join(map(re.escape, ARTICLE_NAMES)) + r")(?=\.)")


def convert_state_dict(state_dict):
    """The article's naming -> lightdet's, for the keys of its iRMB and C2f_iRMB blocks wherever they sit in
    `state_dict` (`m.0.iRMB.qk.conv.weight` -> `m.0.irmb.qk.weight`); other keys pass through unchanged."""
    return {_ARTICLE_NAME.sub(lambda m: ARTICLE_NAMES[m.group(1)], key): value for key, value in state_dict.items()}
