"""EMO: Rethinking Mobile Block for Efficient Attention-based Models (Zhang et al., ICCV 2023, arXiv:2301.01146).

Official code: https://github.com/zhangzjn/EMO (`model/emo.py`). The whole network is one block, the
inverted residual mobile block (iRMB): pre-norm → [window attention] → 1×1 expansion → depthwise conv → 1×1
projection. Attention (stages 3–4 only) mixes the *normalised input* inside windows and the expansion 1×1
runs on its output, so attention costs C, not 4C, channels. The windows are a strided grid, not Swin's
contiguous tiles: window (a, b) holds the pixels (i·n1 + a, j·n2 + b), so every window spans the whole map.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import ConvBNAct, DropPath, SqueezeExcite, fuse_conv_bn

NORM_EPS = 1e-6         # the official code uses 1e-6 for every BatchNorm and LayerNorm
STEM_CHANNELS = 24
WINDOW_SIZE = 7


@dataclass(frozen=True)
class Stage:
    depth: int          # iRMBs; the first one has stride 2, twice the expansion and no attention
    channels: int
    exp_ratio: float
    norm: str           # pre-norm of each block: "bn" (BatchNorm) or "ln" (LayerNorm over channels)
    act: type           # after the expansion 1×1
    kernel_size: int    # depthwise conv
    dim_head: int       # attention head width (attention stages only)
    attn: bool


VARIANTS = {
    "emo_1m": dict(drop_path=0.04036, stages=(
        Stage(2, 32, 2.0, "bn", nn.SiLU, 3, 16, False),
        Stage(2, 48, 2.5, "bn", nn.SiLU, 3, 16, False),
        Stage(8, 80, 3.0, "ln", nn.GELU, 5, 20, True),
        Stage(3, 168, 3.5, "ln", nn.GELU, 5, 21, True))),
    "emo_2m": dict(drop_path=0.05, stages=(
        Stage(3, 32, 2.0, "bn", nn.SiLU, 3, 16, False),
        Stage(3, 48, 2.5, "bn", nn.SiLU, 3, 16, False),
        Stage(9, 120, 3.0, "ln", nn.GELU, 5, 20, True),
        Stage(3, 200, 3.5, "ln", nn.GELU, 5, 20, True))),
    "emo_5m": dict(drop_path=0.05, stages=(
        Stage(3, 48, 2.0, "bn", nn.SiLU, 3, 24, False),
        Stage(3, 72, 3.0, "bn", nn.SiLU, 3, 24, False),
        Stage(9, 160, 4.0, "ln", nn.GELU, 5, 32, True),
        Stage(3, 288, 4.0, "ln", nn.GELU, 5, 32, True))),
    "emo_6m": dict(drop_path=0.05, stages=(
        Stage(3, 48, 2.0, "bn", nn.SiLU, 3, 16, False),
        Stage(3, 72, 3.0, "bn", nn.SiLU, 3, 24, False),
        Stage(9, 160, 4.0, "ln", nn.GELU, 5, 20, True),
        Stage(3, 320, 5.0, "ln", nn.GELU, 5, 32, True))),
}


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a [B, C, H, W] map."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def make_norm(kind, channels):
    if kind is None:
        return nn.Identity()
    return {"bn": nn.BatchNorm2d, "ln": LayerNorm2d}[kind](channels, eps=NORM_EPS)


def to_windows(x, num_heads, window_size):
    """[B, C, H, W] -> [B·n1·n2, heads, ws·ws, C / heads] tokens of the strided-grid windows.

    With n1 = H / ws and n2 = W / ws, pixel (i·n1 + a, j·n2 + b) is token (i, j) of window (a, b), so each
    window samples the whole map on a grid of step (n1, n2) — the official layout, not Swin's tiles.
    """
    B, C, H, W = x.shape
    ws = window_size
    n1, n2 = H // ws, W // ws
    x = x.view(B, num_heads, C // num_heads, ws, n1, ws, n2).permute(0, 4, 6, 1, 3, 5, 2)
    return x.reshape(B * n1 * n2, num_heads, ws * ws, C // num_heads)


def from_windows(x, height, width):
    """Inverse of `to_windows`: [B·n1·n2, heads, ws·ws, d] -> [B, heads·d, H, W], laid out channels-last."""
    windows, num_heads, tokens, head_dim = x.shape
    ws = math.isqrt(tokens)   # not tokens ** 0.5: under an ONNX trace sizes are tensors, which round() refuses
    n1, n2 = height // ws, width // ws
    x = x.view(-1, n1, n2, num_heads, ws, ws, head_dim).permute(0, 4, 1, 5, 2, 3, 6)
    return x.reshape(-1, height, width, num_heads * head_dim).permute(0, 3, 1, 2)


class iRMB(nn.Module):
    """Inverted residual mobile block: x + proj(dw(expand(attn(norm(x))))), with an inner skip around dw.

    `norm` is "bn", "ln" or None; `attn` adds window attention over the normalised map (LayerNorm only:
    a BatchNorm before attention could not be folded away, because of the zero padding of the windows).
    `expand=False` (EMO's stem block) skips the expansion 1×1; `se` adds a Squeeze-Excite after dw.
    The residual paths exist when the block keeps its shape (stride 1, in == out) and `skip` is set.
    """

    def __init__(self, in_channels, out_channels, exp_ratio=1.0, norm="ln", act=nn.GELU, kernel_size=3,
                 stride=1, attn=False, dim_head=32, window_size=WINDOW_SIZE, expand=True, se=False,
                 skip=True, drop_path=0.0):
        super().__init__()
        if attn and norm != "ln":
            raise ValueError(f"iRMB: attention needs norm='ln', got {norm!r}")
        mid_channels = int(in_channels * exp_ratio)
        self.has_skip = skip and stride == 1 and in_channels == out_channels
        self.norm = make_norm(norm, in_channels)
        self.window_size = window_size
        self.num_heads = in_channels // dim_head if attn else 0
        if attn and in_channels % dim_head:
            raise ValueError(f"iRMB: {in_channels} channels do not split into heads of {dim_head}")
        self.qk = nn.Conv2d(in_channels, 2 * in_channels, 1) if attn else None
        self.v = nn.Conv2d(in_channels, mid_channels, 1) if expand else nn.Identity()
        self.act = act() if expand else nn.Identity()
        self.conv_local = ConvBNAct(mid_channels, mid_channels, kernel_size, stride, groups=mid_channels,
                                    act=nn.SiLU, bn_eps=NORM_EPS, bn_momentum=0.1)
        self.se = SqueezeExcite(mid_channels, mid_channels, act=nn.SiLU) if se else nn.Identity()
        self.proj = nn.Conv2d(mid_channels, out_channels, 1, bias=False)
        if self.has_skip:   # start as the identity (as MobileNetV3 here): shapes run mAP50 0.49 -> 0.56 (README)
            nn.init.zeros_(self.proj.weight)
        self.drop_path = DropPath(drop_path)

    def attend(self, x):
        """Window attention of the normalised map; zero padding to the window grid is not masked (official)."""
        H, W = x.shape[-2:]
        ws, heads = self.window_size, self.num_heads
        x = F.pad(x, (0, -W % ws, 0, -H % ws))
        q, k = self.qk(x).chunk(2, dim=1)
        # The values are the normalised map itself (official attn_pre): scale head_dim ** -0.5, as official.
        out = F.scaled_dot_product_attention(to_windows(q, heads, ws), to_windows(k, heads, ws),
                                             to_windows(x, heads, ws))
        return from_windows(out, *x.shape[-2:])[:, :, :H, :W]

    def forward(self, x):
        shortcut = x
        x = self.norm(x)
        if self.qk is not None:
            x = self.attend(x)
        x = self.act(self.v(x))    # a 1×1 conv, so applying it after the crop equals the official order
        if self.has_skip:
            x = x + self.se(self.conv_local(x))
            return shortcut + self.drop_path(self.proj(x))
        return self.proj(self.se(self.conv_local(x)))

    @torch.no_grad()
    def fuse(self):
        """Fold a BatchNorm pre-norm into the expansion 1×1 after it: v(s·x + t) = (W·s) x + (W t + b)."""
        if not isinstance(self.norm, nn.BatchNorm2d) or not isinstance(self.v, nn.Conv2d):
            return
        scale = self.norm.weight / torch.sqrt(self.norm.running_var + self.norm.eps)
        shift = self.norm.bias - self.norm.running_mean * scale
        weight = self.v.weight.flatten(1)
        self.v.bias.add_(weight @ shift)
        self.v.weight.mul_(scale.view(1, -1, 1, 1))
        self.norm = nn.Identity()


class EMO(nn.Module):
    """EMO backbone; returns the stage 2–4 outputs [P3, P4, P5] at strides 8, 16, 32 (no final norm)."""

    def __init__(self, stages, drop_path=0.0):
        super().__init__()
        self.stem_conv = nn.Conv2d(3, STEM_CHANNELS, 3, 2, 1)    # has a bias, followed by a BatchNorm
        self.stem_bn = nn.BatchNorm2d(STEM_CHANNELS, eps=NORM_EPS)
        self.stem_block = iRMB(STEM_CHANNELS, STEM_CHANNELS, norm=None, act=nn.SiLU, kernel_size=3,
                               expand=False, se=True, skip=False)
        drop_rates = torch.linspace(0, drop_path, sum(row.depth for row in stages)).tolist()
        in_channels, blocks = STEM_CHANNELS, []
        for row in stages:
            stage = []
            for j in range(row.depth):
                first = j == 0
                stage.append(iRMB(in_channels, row.channels, row.exp_ratio * (2 if first else 1), row.norm,
                                  row.act, row.kernel_size, stride=2 if first else 1,
                                  attn=row.attn and not first, dim_head=row.dim_head,
                                  drop_path=drop_rates.pop(0)))
                in_channels = row.channels
            blocks.append(nn.Sequential(*stage))
        self.stages = nn.ModuleList(blocks)
        self.out_channels = tuple(row.channels for row in stages[1:])

    def forward(self, x):
        # Channels-last: oneDNN's depthwise convs are several times faster in it on CPU, and the LayerNorms
        # need no transposing copy. The maps go out in the default layout.
        x = x.contiguous(memory_format=torch.channels_last)
        x = self.stem_block(self.stem_bn(self.stem_conv(x)))
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return [feature.contiguous() for feature in features[1:]]

    @torch.no_grad()
    def fuse(self):
        if isinstance(self.stem_bn, nn.BatchNorm2d):
            self.stem_conv = fuse_conv_bn(self.stem_conv, self.stem_bn)
            self.stem_bn = nn.Identity()


def convert_state_dict(state_dict):
    """Official EMO naming (`stage0.0.convs.0.0`, `stage3.1.norm.norm`, ...) -> lightdet's.

    Drops the classifier (`norm`, `pre_head`, `head`) and a DistributedDataParallel `module.` prefix.
    """
    converted = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        if key.split(".")[0] in ("norm", "pre_head", "head"):
            continue
        key = (key.replace("stage0.0.convs.0.0.", "stem_conv.").replace("stage0.0.convs.0.1.", "stem_bn.")
               .replace("stage0.1.", "stem_block.").replace(".norm.norm.", ".norm.")
               .replace("conv_local.norm.", "conv_local.bn.").replace(".qk.conv.", ".qk.")
               .replace(".v.conv.", ".v.").replace(".proj.conv.", ".proj.")
               .replace(".se.conv_reduce.", ".se.reduce.").replace(".se.conv_expand.", ".se.expand."))
        if key.startswith("stage"):
            stage, rest = key.split(".", 1)
            key = f"stages.{int(stage[len('stage'):]) - 1}.{rest}"
        converted[key] = value
    return converted


def emo_1m():
    return EMO(**VARIANTS["emo_1m"])


def emo_2m():
    return EMO(**VARIANTS["emo_2m"])


def emo_5m():
    return EMO(**VARIANTS["emo_5m"])


def emo_6m():
    return EMO(**VARIANTS["emo_6m"])
