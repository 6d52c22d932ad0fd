"""RepViT: Revisiting Mobile CNN From ViT Perspective (Wang et al., CVPR 2024, arXiv:2307.09283).

Official code: https://github.com/THU-MIG/RepViT. The layout here is timm's (`timm/models/repvit.py`), so its
weights load by renaming alone. RepViT rebuilds MobileNetV3's block with lightweight-ViT design choices:
- separate token mixer (3×3 depthwise) and channel mixer (1×1 FFN), as in a MetaFormer: spatial and channel
  mixing get their own residual paths, and the depthwise part alone can be re-parameterised for inference.
- FFN expansion 2, not 4 or 6: the 1×1 convs hold most parameters and latency; halving them costs little accuracy.
- early-convolution stem (two 3×3 stride-2 convs) instead of a patchify layer: steadier training, better accuracy.
- deeper downsampling (a block, DW stride 2, 1×1 widening, FFN) rather than one stride-2 block: more depth
  where the resolution halves, so less information is lost there.
- 3×3 kernels only: larger depthwise kernels are slow on mobile hardware and gained little accuracy.
- cross-block SE (every other block of a stage): most of SE's accuracy at half of its latency.
The token mixer trains with three branches (3×3 DW+BN, 1×1 DW, identity, then BN) and `fuse()` merges them
into a single 3×3 depthwise conv: the deploy model is a plain MobileNet-like chain.
"""
import re
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import ConvBNAct, SqueezeExcite, batch_norm, fuse_conv_bn, make_divisible

# Embed dims and block counts of stages 0-3 (timm's counts: each stage 1-3 also starts with a downsampling
# layer, which holds the previous resolution's last block; the paper counts that block in the earlier stage).
VARIANTS = {
    "repvit_m0_9": dict(widths=(48, 96, 192, 384), depths=(2, 2, 14, 2)),
    "repvit_m1_0": dict(widths=(56, 112, 224, 448), depths=(2, 2, 14, 2)),
    "repvit_m1_1": dict(widths=(64, 128, 256, 512), depths=(2, 2, 12, 2)),
    "repvit_m1_5": dict(widths=(64, 128, 256, 512), depths=(4, 4, 24, 4)),
    "repvit_m2_3": dict(widths=(80, 160, 320, 640), depths=(6, 6, 34, 2)),
}
MLP_RATIO = 2
KERNEL_SIZE = 3
SE_RATIO = 0.25


class RepVGGDW(nn.Module):
    """Token mixer: BN(3×3 DW conv+BN  +  1×1 DW conv  +  identity); one 3×3 DW conv after `fuse()`."""

    def __init__(self, channels, kernel_size=KERNEL_SIZE):
        super().__init__()
        self.conv = ConvBNAct(channels, channels, kernel_size, groups=channels, act=None, bn="timm")
        self.conv1 = nn.Conv2d(channels, channels, 1, groups=channels)
        self.bn = batch_norm(channels, "timm")
        self.fused = None

    def forward(self, x):
        if self.fused is not None:
            return self.fused(x)
        return self.bn(self.conv(x) + self.conv1(x) + x)

    @torch.no_grad()
    def fuse(self):
        """Merge the three branches and both BatchNorms into `self.fused`, one 3×3 depthwise conv with bias."""
        if self.fused is not None:
            return
        conv3 = self.conv.conv
        if isinstance(self.conv.bn, nn.BatchNorm2d):   # unless the branch's own fuse() already folded it
            conv3 = fuse_conv_bn(conv3, self.conv.bn)
        pad = conv3.kernel_size[0] // 2
        weight = conv3.weight + F.pad(self.conv1.weight, [pad] * 4)   # a 1×1 kernel is a 3×3 one with zeros around
        weight[:, 0, pad, pad] += 1                                      # and the identity is a centred 1
        merged = nn.Conv2d(conv3.in_channels, conv3.out_channels, conv3.kernel_size, padding=pad,
                           groups=conv3.groups, bias=True).to(weight)
        merged.weight.copy_(weight)
        merged.bias.copy_(conv3.bias + self.conv1.bias)
        self.fused = fuse_conv_bn(merged, self.bn)                       # the BN after the sum folds in last
        del self.conv, self.conv1, self.bn


class ConvMlp(nn.Module):
    """Channel mixer: 1×1 expand (×2) → GELU → 1×1 project, each with BatchNorm; always inside a residual."""

    def __init__(self, channels, hidden_channels):
        super().__init__()
        self.conv1 = ConvBNAct(channels, hidden_channels, act=nn.GELU, bn="timm")
        self.conv2 = ConvBNAct(hidden_channels, channels, act=None, bn="timm")
        nn.init.zeros_(self.conv2.bn.weight)   # its residual starts as the identity (official, timm: bn_weight_init=0)

    def forward(self, x):
        return self.conv2(self.conv1(x))


class RepViTBlock(nn.Module):
    """Token mixer (its residual is the identity branch inside it) → optional SE → x + channel mixer(x)."""

    def __init__(self, channels, use_se):
        super().__init__()
        self.token_mixer = RepVGGDW(channels)
        # timm's SE: reduction 0.25 of the block width, rounded to a multiple of 8 without the 90% floor.
        reduced = make_divisible(channels * SE_RATIO, 8, round_limit=0.0)
        self.se = SqueezeExcite(channels, reduced) if use_se else nn.Identity()
        self.channel_mixer = ConvMlp(channels, channels * MLP_RATIO)

    def forward(self, x):
        x = self.se(self.token_mixer(x))
        return x + self.channel_mixer(x)


class RepViTDownsample(nn.Module):
    """The deeper downsampling layer: a block (no SE) at the old resolution, 3×3 DW stride 2, 1×1 to the new
    width, then a residual FFN. timm keeps the block here, so the previous stage's output is the tap before it."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.pre_block = RepViTBlock(in_channels, use_se=False)
        self.spatial_downsample = ConvBNAct(in_channels, in_channels, KERNEL_SIZE, 2, groups=in_channels, act=None,
                                            bn="timm")
        self.channel_downsample = ConvBNAct(in_channels, out_channels, act=None, bn="timm")
        self.ffn = ConvMlp(out_channels, out_channels * MLP_RATIO)

    def forward(self, x):
        x = self.channel_downsample(self.spatial_downsample(self.pre_block(x)))
        return x + self.ffn(x)


class RepViTStage(nn.Module):
    """Optional downsampling layer, then `depth` blocks with SE on the 1st, 3rd, 5th, ..."""

    def __init__(self, in_channels, out_channels, depth, downsample):
        super().__init__()
        self.downsample = RepViTDownsample(in_channels, out_channels) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*(RepViTBlock(out_channels, use_se=i % 2 == 0) for i in range(depth)))

    def forward(self, x):
        return self.blocks(self.downsample(x))


class RepViT(nn.Module):
    """RepViT backbone; returns the outputs of stages 1, 2, 3 at strides 8, 16, 32 (timm's `features_only`
    and the official detection backbone's taps)."""

    def __init__(self, widths, depths):
        super().__init__()
        self.stem = nn.Sequential(OrderedDict(
            conv1=ConvBNAct(3, widths[0] // 2, 3, stride=2, act=nn.GELU, bn="timm"),
            conv2=ConvBNAct(widths[0] // 2, widths[0], 3, stride=2, act=None, bn="timm"),
        ))
        in_channels, stages = widths[0], []
        for i, (width, depth) in enumerate(zip(widths, depths)):
            stages.append(RepViTStage(in_channels, width, depth, downsample=i > 0))   # stage 0 stays at stride 4
            in_channels = width
        self.stages = nn.ModuleList(stages)
        self.out_channels = tuple(widths[1:])

    def forward(self, x):
        x = self.stem(x)              # (B, C0, H/4, W/4)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features[1:]           # (B, C1, H/8, W/8), (B, C2, H/16, W/16), (B, C3, H/32, W/32)


# The official repository numbers every layer `features.N`: N = 0 is the stem, then one entry per block in
# order, where a stride-2 entry (the one with `token_mixer.2`, its 1×1 widening) is a downsampling layer and
# the entry just before it is that layer's pre-block. Part names inside each kind of entry, official -> timm:
OFFICIAL_PARTS = {
    "stem": {"0.": "conv1.", "2.": "conv2."},
    "block": {"token_mixer.0.": "token_mixer.", "token_mixer.1.": "se.",
              "channel_mixer.m.0.": "channel_mixer.conv1.", "channel_mixer.m.2.": "channel_mixer.conv2."},
    "downsample": {"token_mixer.0.": "spatial_downsample.", "token_mixer.2.": "channel_downsample.",
                   "channel_mixer.m.0.": "ffn.conv1.", "channel_mixer.m.2.": "ffn.conv2."},
}


def official_to_timm(state_dict):
    """Rename official `features.N...` keys to timm's classification naming; other keys pass unchanged."""
    layers = {int(k.split(".")[1]) for k in state_dict if k.startswith("features.")}
    strided = {int(k.split(".")[1]) for k in state_dict if re.match(r"features\.\d+\.token_mixer\.2\.", k)}
    where, stage, block = {0: ("stem", "stem")}, 0, 0
    for n in sorted(layers - {0}):
        if n + 1 in strided:
            where[n] = (f"stages.{stage + 1}.downsample.pre_block", "block")
        elif n in strided:
            stage, block = stage + 1, 0
            where[n] = (f"stages.{stage}.downsample", "downsample")
        else:
            where[n] = (f"stages.{stage}.blocks.{block}", "block")
            block += 1
    converted = {}
    for key, value in state_dict.items():
        match = re.match(r"features\.(\d+)\.(.*)", key)
        if match:
            prefix, kind = where[int(match[1])]
            rest = match[2]
            for old, new in OFFICIAL_PARTS[kind].items():
                if rest.startswith(old):
                    rest = new + rest[len(old):]
                    break
            key = f"{prefix}.{rest}"
        converted[key] = value
    return converted


def convert_state_dict(state_dict):
    """timm (classification or `features_only` naming) or official RepViT weights -> lightdet's naming.

    Drops the classifier and its distillation twin (timm `head.head`/`head.head_dist`, official
    `classifier.classifier`/`classifier.classifier_dist`). Keys it does not know stay as they are, so a
    strict load reports them.
    """
    if any(k.startswith("features.") for k in state_dict):
        state_dict = official_to_timm(state_dict)
    converted = {}
    for key, value in state_dict.items():
        if key.startswith(("head.", "classifier.")):
            continue
        key = re.sub(r"^stages_(\d+)\.", r"stages.\1.", key)          # features_only flattens `stages.N`
        key = key.replace(".c.", ".conv.")                              # timm ConvNorm(c, bn) -> ConvBNAct
        key = key.replace(".se.fc1.", ".se.reduce.").replace(".se.fc2.", ".se.expand.")
        converted[key] = value
    return converted


def repvit_m0_9():
    return RepViT(**VARIANTS["repvit_m0_9"])


def repvit_m1_0():
    return RepViT(**VARIANTS["repvit_m1_0"])


def repvit_m1_1():
    return RepViT(**VARIANTS["repvit_m1_1"])


def repvit_m1_5():
    return RepViT(**VARIANTS["repvit_m1_5"])


def repvit_m2_3():
    return RepViT(**VARIANTS["repvit_m2_3"])
