"""EfficientViT, the MIT family (Cai et al., "EfficientViT: Multi-Scale Linear Attention for High-Resolution
Dense Prediction", ICCV 2023, arXiv:2205.14756; https://github.com/mit-han-lab/efficientvit). Not Microsoft's
cascaded-group-attention model of the same name.

A MobileNetV2-style conv network (DSConv stem, MBConv stages) whose two deepest stages alternate LiteMLA with
an MBConv. LiteMLA replaces softmax attention with ReLU linear attention, O(N·d²) instead of O(N²·d), so it
stays cheap at detection resolutions; because ReLU attention is poor at local detail, each head also sees
its q/k/v aggregated over 5×5 neighbourhoods (depthwise 5×5 + grouped 1×1), which doubles the heads.
Follows timm's `efficientvit_mit.py` (eps 1e-5, always the linear form); the official code's eps is 1e-15.
"""
import re
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import ConvBNAct


# widths: stem, then stages 1-4 (strides 2, 4, 8, 16, 32). depths: stem DSConvs; stages 1-2: MBConvs (the
# stride-2 one included); stages 3-4: EfficientViT blocks after the stride-2 MBConv. head_dim: channels per head.
VARIANTS = {
    "efficientvit_b0": dict(widths=(8, 16, 32, 64, 128), depths=(1, 2, 2, 2, 2), head_dim=16),
    "efficientvit_b1": dict(widths=(16, 32, 64, 128, 256), depths=(1, 2, 3, 3, 4), head_dim=16),
    "efficientvit_b2": dict(widths=(24, 48, 96, 192, 384), depths=(1, 3, 4, 4, 6), head_dim=32),
    "efficientvit_b3": dict(widths=(32, 64, 128, 256, 512), depths=(1, 4, 6, 6, 9), head_dim=32),
}
EXPAND_RATIO = 4


class ConvAct(nn.Module):
    """Conv2d with a bias → activation, no norm: the first two convs of every MBConv in the attention stages."""

    def __init__(self, in_channels, out_channels, kernel_size=1, stride=1, groups=1, act=nn.Hardswish):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups)
        self.act = act()

    def forward(self, x):
        return self.act(self.conv(x))


class DSConv(nn.Module):
    """Depthwise-separable residual block of the stem: 3×3 depthwise → hardswish → 1×1 pointwise (linear)."""

    def __init__(self, channels):
        super().__init__()
        self.depth_conv = ConvBNAct(channels, channels, 3, groups=channels, act=nn.Hardswish, bn="timm")
        self.point_conv = ConvBNAct(channels, channels, 1, act=None, bn="timm")

    def forward(self, x):
        return x + self.point_conv(self.depth_conv(x))


class MBConv(nn.Module):
    """Inverted residual (MobileNetV2): 1×1 expand → 3×3 depthwise (carries the stride) → 1×1 linear project.

    `fewer_norm` (attention stages): the expand and depthwise convs have a bias instead of a BatchNorm.
    A residual is added whenever the shape is kept.
    """

    def __init__(self, in_channels, out_channels, stride=1, expand_ratio=EXPAND_RATIO, fewer_norm=False):
        super().__init__()
        hidden = round(in_channels * expand_ratio)
        conv = ConvAct if fewer_norm else partial(ConvBNAct, act=nn.Hardswish, bn="timm")
        self.inverted_conv = conv(in_channels, hidden, 1)
        self.depth_conv = conv(hidden, hidden, 3, stride, groups=hidden)
        self.point_conv = ConvBNAct(hidden, out_channels, 1, act=None, bn="timm")
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x):
        y = self.point_conv(self.depth_conv(self.inverted_conv(x)))
        return x + y if self.residual else y


class LiteMLA(nn.Module):
    """Lightweight multi-scale linear attention.

    q, k, v come from one 1×1 conv; a depthwise 5×5 + per-head 1×1 conv makes a second, locally aggregated
    set of heads. With φ = ReLU, each head computes  out_i = Σ_j φ(q_i)·φ(k_j) v_j / Σ_j φ(q_i)·φ(k_j)
    as ([V; 1] φ(K)ᵀ) φ(Q), tokens last: the small (d+1)×d product comes first, so the cost is linear in the
    number of tokens, and the row of ones appended to V yields the normaliser in the same products.
    """

    def __init__(self, channels, head_dim, kernel_size=5, eps=1e-5):
        super().__init__()
        self.head_dim = head_dim
        self.eps = eps
        heads = channels // head_dim
        qkv_channels = 3 * heads * head_dim
        self.qkv = nn.Conv2d(channels, qkv_channels, 1, bias=False)
        self.aggregate = nn.Sequential(
            nn.Conv2d(qkv_channels, qkv_channels, kernel_size, padding=kernel_size // 2, groups=qkv_channels,
                      bias=False),
            # one group per q, k or v of a head: mixes each head's channels, never across heads
            nn.Conv2d(qkv_channels, qkv_channels, 1, groups=3 * heads, bias=False),
        )
        self.proj = ConvBNAct(2 * heads * head_dim, channels, 1, act=None, bn="timm")

    def forward(self, x):
        B, _, H, W = x.shape
        qkv = self.qkv(x)
        qkv = torch.cat((qkv, self.aggregate(qkv)), dim=1)        # (B, 2·heads·3d, H, W)
        qkv = qkv.reshape(B, -1, 3 * self.head_dim, H * W)        # (B, 2·heads, 3d, N): [q; k; v] per head
        q, k, v = qkv.split(self.head_dim, dim=2)                 # each (B, 2·heads, d, N)
        # Sums over all N tokens overflow float16 (65504) and the ratio loses its digits in bfloat16: compute
        # the products and the division in float32 even under autocast (the official repo's fp16 NaN bug).
        with torch.autocast(device_type=x.device.type, enabled=False):
            q, k, v = F.relu(q.float()), F.relu(k.float()), v.float()
            v = F.pad(v, (0, 0, 0, 1), value=1.0)                 # (B, 2·heads, d + 1, N), last row ones
            vk = v @ k.transpose(-1, -2)                          # (B, 2·heads, d + 1, d)
            out = vk @ q                                          # (B, 2·heads, d + 1, N)
            out = out[:, :, :-1] / (out[:, :, -1:] + self.eps)
        return self.proj(out.to(qkv.dtype).reshape(B, -1, H, W))


class EfficientViTBlock(nn.Module):
    """Global context (LiteMLA, residual) followed by local mixing (MBConv with bias, residual)."""

    def __init__(self, channels, head_dim, expand_ratio=EXPAND_RATIO):
        super().__init__()
        self.context = LiteMLA(channels, head_dim)
        self.local = MBConv(channels, channels, expand_ratio=expand_ratio, fewer_norm=True)

    def forward(self, x):
        return self.local(x + self.context(x))


class EfficientViT(nn.Module):
    """EfficientViT-B backbone; returns [P3, P4, P5], the outputs of stages 2, 3, 4 (strides 8, 16, 32)."""

    def __init__(self, widths, depths, head_dim, expand_ratio=EXPAND_RATIO):
        super().__init__()
        self.stem = nn.Sequential(ConvBNAct(3, widths[0], 3, stride=2, act=nn.Hardswish, bn="timm"),
                                  *(DSConv(widths[0]) for _ in range(depths[0])))
        stages, in_channels = [], widths[0]
        for index, (width, depth) in enumerate(zip(widths[1:], depths[1:])):
            attention = index >= 2
            blocks = [MBConv(in_channels, width, stride=2, expand_ratio=expand_ratio, fewer_norm=attention)]
            if attention:
                blocks += [EfficientViTBlock(width, head_dim, expand_ratio) for _ in range(depth)]
            else:
                blocks += [MBConv(width, width, expand_ratio=expand_ratio) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
            in_channels = width
        self.stages = nn.ModuleList(stages)
        self.out_channels = tuple(widths[2:])

    def forward(self, x):
        x = self.stem(x)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features[1:]


# Reference spellings → ours, applied in order. Block paths: timm classification `stem.in_conv`,
# `stem.res{k}`, `stages.{i}.blocks.{j}`; timm features_only `stem_in_conv`, `stem_res{k}`, `stages_{i}`;
# official `backbone.input_stem.op_list.{k}` (k = 0 is the first conv), `backbone.stages.{i}.op_list.{j}`.
_RENAMES = [
    (r"^backbone\.", ""),
    (r"^stem[._]in_conv\.", "stem.0."),
    (r"^stem[._]res(\d+)\.", lambda m: f"stem.{int(m[1]) + 1}."),
    (r"^input_stem\.op_list\.", "stem."),
    (r"^stages[._](\d+)\.(?:blocks|op_list)\.", r"stages.\1."),
    (r"\.context_module\.main\.", ".context."),
    (r"\.local_module\.main\.", ".local."),
    (r"\.main\.", "."),                              # the residual wrappers of DSConv / MBConv
    (r"\.qkv\.conv\.", ".qkv."),
    (r"\.aggreg\.0\.", ".aggregate."),
    (r"\.norm\.", ".bn."),
]


def convert_state_dict(state_dict):
    """timm (classification or features_only) or official mit-han-lab EfficientViT-B weights → lightdet.

    The classifier (`head.*`) is dropped; BatchNorm counters missing from a checkpoint are filled with 0.
    """
    converted = {}
    for key, value in state_dict.items():
        if key.startswith(("head.", "backbone.head.")):
            continue
        for pattern, replacement in _RENAMES:
            key = re.sub(pattern, replacement, key)
        converted[key] = value
    for key in list(converted):
        counter = key.replace(".running_mean", ".num_batches_tracked")
        if key.endswith(".running_mean") and counter not in converted:
            converted[counter] = torch.tensor(0)
    return converted


def efficientvit_b0():
    return EfficientViT(**VARIANTS["efficientvit_b0"])


def efficientvit_b1():
    return EfficientViT(**VARIANTS["efficientvit_b1"])


def efficientvit_b2():
    return EfficientViT(**VARIANTS["efficientvit_b2"])


def efficientvit_b3():
    return EfficientViT(**VARIANTS["efficientvit_b3"])
