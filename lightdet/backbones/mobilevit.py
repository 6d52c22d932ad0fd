"""MobileViT v1 (Mehta & Rastegari, "MobileViT: Light-weight, General-purpose, and Mobile-friendly Vision
Transformer", ICLR 2022, arXiv:2110.02178; official code apple/ml-cvnets, weights and naming from timm).

What is new: the MobileViT block. A 3×3 conv sees the local neighbourhood; the map is then cut into 2×2
patches and a transformer attends across patches among the pixels that sit at the same position inside
their patch (four sequences of a quarter of the pixels each), so every pixel gets a global receptive field
at a quarter of full self-attention's cost. The result is folded back, concatenated with the block's input
and fused by a 3×3 conv. The rest of the network is MobileNetV2 inverted residuals ("MV2").
"""
import re
from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import ConvBNAct

# In place: no fresh buffer per activation, which counts at strides 2 and 4 (maps of 6-50 MB at 640×640).
SiLU = partial(nn.SiLU, inplace=True)
PATCH = 2          # patch side of every MobileViT block in v1's xxs/xs/s
NUM_HEADS = 4
MLP_RATIO = 2


class Stage(NamedTuple):
    channels: int              # output channels
    blocks: int                # inverted residual blocks; the first one carries the stride
    stride: int
    transformer_dim: int = 0   # d of the MobileViT block closing the stage; 0 = no MobileViT block
    transformer_depth: int = 0


STEM_CHANNELS = 16   # a 3×3 stride-2 conv
# The paper's Table 4 (timm `model_cfgs`). Columns: channels, MV2 blocks, stride, transformer d, layers L.
VARIANTS = {
    "mobilevit_xxs": dict(expansion=2, stages=(
        Stage(16, 1, 1),              # stride 2
        Stage(24, 3, 2),              # stride 4
        Stage(48, 1, 2, 64, 2),       # stride 8   -> P3
        Stage(64, 1, 2, 80, 4),       # stride 16  -> P4
        Stage(80, 1, 2, 96, 3),       # stride 32  -> P5
    )),
    "mobilevit_xs": dict(expansion=4, stages=(
        Stage(32, 1, 1),
        Stage(48, 3, 2),
        Stage(64, 1, 2, 96, 2),
        Stage(80, 1, 2, 120, 4),
        Stage(96, 1, 2, 144, 3),
    )),
    "mobilevit_s": dict(expansion=4, stages=(
        Stage(32, 1, 1),
        Stage(64, 3, 2),
        Stage(96, 1, 2, 144, 2),
        Stage(128, 1, 2, 192, 4),
        Stage(160, 1, 2, 240, 3),
    )),
}


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1×1 expand → 3×3 depthwise (strided) → 1×1 linear projection, plus the input when
    the shapes agree. The expansion multiplies the *input* width."""

    def __init__(self, in_channels, out_channels, stride, expansion):
        super().__init__()
        hidden = in_channels * expansion
        self.conv1_1x1 = ConvBNAct(in_channels, hidden, 1, act=SiLU, bn="timm")
        self.conv2_kxk = ConvBNAct(hidden, hidden, 3, stride, groups=hidden, act=SiLU, bn="timm")
        self.conv3_1x1 = ConvBNAct(hidden, out_channels, 1, act=None, bn="timm")
        self.residual = stride == 1 and in_channels == out_channels
        if self.residual:   # start as the identity, as timm does (byobnet's zero_init_last)
            nn.init.zeros_(self.conv3_1x1.bn.weight)

    def forward(self, x):
        y = self.conv3_1x1(self.conv2_kxk(self.conv1_1x1(x)))
        return x + y if self.residual else y


class Attention(nn.Module):
    """Multi-head self-attention over (S, N, C) token sequences, qkv with bias (timm's ViT attention)."""

    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        # softmax(q·kᵀ / √d)·v for each of the S sequences and each head, d = C / heads (Vaswani et al. 2017).
        S, N, C = x.shape                                            # S sequences of N tokens
        heads = self.num_heads
        q, k, v = self.qkv(x).view(S, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4)   # each (S, heads, N, d)
        x = F.scaled_dot_product_attention(q, k, v)                 # (S, heads, N, d)
        return self.proj(x.transpose(1, 2).reshape(S, N, C))       # heads side by side again: (S, N, C)


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = SiLU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class TransformerLayer(nn.Module):
    """Pre-norm transformer layer: x + MHSA(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, NUM_HEADS)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, dim * MLP_RATIO)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def unfold(x, patch):
    """(B, C, H, W) → (B·p², H·W/p², C): one sequence per position inside the p×p patch, tokens = patches.

    One copy (timm's reshape/transpose chain makes three); cheapest when x is channels-last.
    """
    B, C, H, W = x.shape
    x = x.reshape(B, C, H // patch, patch, W // patch, patch).permute(0, 3, 5, 2, 4, 1)   # B, ph, pw, nh, nw, C
    return x.reshape(B * patch * patch, (H // patch) * (W // patch), C)


def fold(x, batch, height, width, patch):
    """The inverse of `unfold`; returns (B, C, H, W) in channels-last memory, again one copy."""
    C = x.shape[-1]
    x = x.reshape(batch, patch, patch, height // patch, width // patch, C).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(batch, height, width, C).permute(0, 3, 1, 2)


class MobileViTBlock(nn.Module):
    """Local 3×3 conv → 1×1 to d → unfold 2×2 patches → L transformer layers → LayerNorm → fold → 1×1 back to
    the block width → concat with the input → 3×3 fusion conv."""

    def __init__(self, channels, dim, depth):
        super().__init__()
        self.conv_kxk = ConvBNAct(channels, channels, 3, act=SiLU, bn="timm")
        self.conv_1x1 = nn.Conv2d(channels, dim, 1, bias=False)
        self.transformer = nn.Sequential(*(TransformerLayer(dim) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.conv_proj = ConvBNAct(dim, channels, 1, act=SiLU, bn="timm")
        self.conv_fusion = ConvBNAct(2 * channels, channels, 3, act=SiLU, bn="timm")

    def forward(self, x):
        y = self.conv_1x1(self.conv_kxk(x))                        # (B, d, H, W)
        B, _, H, W = y.shape
        # Patches must tile the map. Like the reference, a map of odd size (7×7 at stride 32 for a 224 input) is
        # resized up to the next multiple and back, rather than zero-padded: padding would need attention masks.
        # Rounded up to the patch grid in integer arithmetic that an ONNX trace keeps as graph ops (math.ceil
        # would freeze the export size's value, and a negative floor division exports as truncation).
        Hp, Wp = (H + PATCH - 1) // PATCH * PATCH, (W + PATCH - 1) // PATCH * PATCH
        # A traced graph serves every input size, so it always resizes; the resize is the identity when the
        # map tiles already (bilinear at scale 1 samples exactly the input pixels).
        resize = torch.jit.is_tracing() or (Hp, Wp) != (H, W)
        if resize:
            y = F.interpolate(y, size=(Hp, Wp), mode="bilinear", align_corners=False)
        y = self.norm(self.transformer(unfold(y, PATCH)))          # (B·4, Hp·Wp/4, d)
        y = fold(y, B, Hp, Wp, PATCH)                              # (B, d, Hp, Wp)
        if resize:
            y = F.interpolate(y, size=(H, W), mode="bilinear", align_corners=False)
        return self.conv_fusion(torch.cat((x, self.conv_proj(y)), dim=1))


class MobileViT(nn.Module):
    """MobileViT v1 backbone; returns [P3, P4, P5] at strides 8, 16, 32 (the outputs of stages 2, 3, 4)."""

    def __init__(self, stages, expansion):
        super().__init__()
        self.stem = ConvBNAct(3, STEM_CHANNELS, 3, 2, act=SiLU, bn="timm")
        blocks_per_stage, in_channels = [], STEM_CHANNELS
        for row in stages:
            blocks = []
            for i in range(row.blocks):
                blocks.append(InvertedResidual(in_channels, row.channels, row.stride if i == 0 else 1, expansion))
                in_channels = row.channels
            if row.transformer_dim:
                blocks.append(MobileViTBlock(row.channels, row.transformer_dim, row.transformer_depth))
            blocks_per_stage.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(blocks_per_stage)
        self.out_channels = tuple(row.channels for row in stages[2:])
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        """Linear layers of std 0.01, as timm initialises them, so that every transformer layer starts close to the
        identity. The convolutions keep PyTorch's default (uniform, std 1/√(3·fan_in)) instead of timm's He-normal
        over fan-out, whose weights are 1.1-3.5× larger: behind BatchNorm only the direction of a weight counts,
        and AdamW's steps turn larger weights more slowly. Trained from scratch on `shapes`, that made MobileViT's
        box loss fall faster and its 15-minute run reach mAP50 0.537 instead of 0.481 (README)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x):
        # Channels-last inside: on CPU, oneDNN runs the wide-map depthwise and 1×1 convs up to ten times faster
        # than on NCHW maps, and unfold/fold then move whole C-vectors. The maps leave in the caller's layout.
        layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        x = self.stem(x.contiguous(memory_format=torch.channels_last))
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return [f.contiguous(memory_format=layout) for f in features[2:]]


def convert_state_dict(state_dict):
    """timm's naming (classification `stages.N...` or features_only `stages_N...`) → lightdet's.

    Drops the classifier (`head.*`) and the 1×1 expansion conv that only feeds it (`final_conv.*`).
    """
    converted = {}
    for key, value in state_dict.items():
        if key.startswith(("final_conv.", "head.")):
            continue
        converted[re.sub(r"^stages_(\d+)\.", r"stages.\1.", key)] = value
    return converted


def mobilevit_xxs():
    return MobileViT(**VARIANTS["mobilevit_xxs"])


def mobilevit_xs():
    return MobileViT(**VARIANTS["mobilevit_xs"])


def mobilevit_s():
    return MobileViT(**VARIANTS["mobilevit_s"])
