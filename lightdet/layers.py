"""Building blocks shared by every part of lightdet, each written once.

`ConvBNAct`, `SqueezeExcite`, `DropPath` and `make_divisible` serve all backbones; `Bottleneck`, `C3` and
`SPPF` are YOLOv5's blocks (ultralytics/yolov5 v6, `models/common.py`), used by CSPDarknet and the PAN neck,
which scale them by YOLOv5's `SCALES` table; `C2f` is YOLOv8's block (ultralytics `nn/modules/block.py`), a
neck option. `to_windows` / `from_windows` are EMO's window layout, shared by its backbone and the neck's iRMB.
YOLOv5's blocks keep YOLOv5's attribute names (`cv1`, `cv2`, `cv3`, `m`) so that official weights map onto
them by layer index alone.
"""
import math

import torch
from torch import nn


def make_divisible(value, divisor=8, min_value=None, round_limit=0.9):
    """Round a channel count to the nearest multiple of `divisor`, never dropping below `round_limit` of it.

    The rule of the MobileNet family (and timm); YOLOv5's widths are already multiples of 8 at every scale.
    """
    min_value = min_value or divisor
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < round_limit * value:
        rounded += divisor
    return rounded


# YOLOv5's model sizes n/s/m/l/x as (depth multiple, width multiple): width multiplies channels, depth the
# number of bottlenecks in each C3. CSPDarknet and the PAN neck scale by the same table.
SCALES = {
    "n": (0.33, 0.25),
    "s": (0.33, 0.50),
    "m": (0.67, 0.75),
    "l": (1.00, 1.00),
    "x": (1.33, 1.25),
}


def scaled_depth(depth, depth_multiple):
    """YOLOv5's rule for a scaled block count: round, but keep at least one block."""
    return max(round(depth * depth_multiple), 1)


# The BatchNorm settings each reference was built with. YOLOv5 sets eps 1e-3 / momentum 0.03 on every BatchNorm
# of a model (so lightdet's neck and head use them with every backbone); timm and the official backbone code keep
# PyTorch's defaults; EMO's code asks for eps 1e-6. A checkpoint reproduces its outputs only with its own eps.
BN_SETTINGS = {
    "yolov5": dict(eps=1e-3, momentum=0.03),
    "timm": dict(eps=1e-5, momentum=0.1),
    "emo": dict(eps=1e-6, momentum=0.1),
}


def batch_norm(channels, settings="yolov5"):
    """A BatchNorm2d with the named reference's settings (`BN_SETTINGS`)."""
    return nn.BatchNorm2d(channels, **BN_SETTINGS[settings])


def fuse_conv_bn(conv, bn):
    """Fold an eval-mode BatchNorm into the convolution before it; returns a new conv with a bias.

    y = γ·(Wx + b − μ)/√(σ² + ε) + β  =  (γ/√(σ² + ε))·W x + (β + γ·(b − μ)/√(σ² + ε)).
    """
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
        fused.bias.copy_(bn.bias + (bias - bn.running_mean) * scale)
    return fused.to(conv.weight.device)


def fuse_bn_conv(bn, conv):
    """Fold an eval-mode BatchNorm into the 1×1 convolution after it; returns a new conv with a bias.

    W·(s·x + t) + b  =  (W·s) x + (W·t + b),  with s = γ/√(σ² + ε) and t = β − μ·s. Only a 1×1 conv without
    groups: a wider kernel would add t at the zero-padded border too, where the unfused conv sees zeros.
    """
    if conv.kernel_size != (1, 1) or conv.groups != 1:
        raise ValueError(f"fuse_bn_conv folds into a 1×1 conv without groups, got kernel {conv.kernel_size}, "
                         f"groups {conv.groups}")
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    weight = conv.weight
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, 1, bias=True, device=weight.device, dtype=weight.dtype)
    bias = conv.bias if conv.bias is not None else weight.new_zeros(conv.out_channels)
    with torch.no_grad():
        fused.weight.copy_(weight * scale.view(1, -1, 1, 1))
        fused.bias.copy_(weight.flatten(1) @ shift + bias)
    return fused


def fuse_modules(root):
    """Re-parameterise `root` for inference: call the `fuse()` of `root` and every module in it, parents first.

    Each fusable module (ConvBNAct, RepViT's token mixer, ...) fuses only its own parts, so one walk over the
    tree covers the whole model.
    """
    for module in list(root.modules()):
        if callable(getattr(module, "fuse", None)):
            module.fuse()
    return root


class ConvBNAct(nn.Module):
    """Conv2d (no bias) → BatchNorm → activation; YOLOv5's `Conv`, with its BatchNorm settings as defaults.

    `act` is an activation class (`nn.SiLU`, `nn.ReLU`, `nn.Hardswish`, ...) or None for a linear output;
    `bn` names the reference's BatchNorm settings (`BN_SETTINGS`). Padding defaults to k // 2, 'same' for the
    odd kernels every block uses; YOLOv5's 6×6 stride-2 stem passes its padding of 2 explicitly.
    """

    def __init__(self, in_channels, out_channels, kernel_size=1, stride=1, padding=None, groups=1,
                 act=nn.SiLU, bn="yolov5"):
        super().__init__()
        padding = kernel_size // 2 if padding is None else padding
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False)
        self.bn = batch_norm(out_channels, bn)
        self.act = act() if act is not None else nn.Identity()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))

    @torch.no_grad()
    def fuse(self):
        if isinstance(self.bn, nn.BatchNorm2d):
            self.conv = fuse_conv_bn(self.conv, self.bn)
            self.bn = nn.Identity()


class SqueezeExcite(nn.Module):
    """Squeeze-and-Excitation (Hu et al., CVPR 2018, arXiv:1709.01507): global pool → 1×1 reduce → act →
    1×1 expand → gate, multiplied onto the input. MobileNetV3 and RepViT use a hard-sigmoid or sigmoid gate."""

    def __init__(self, channels, reduced_channels, act=nn.ReLU, gate=nn.Sigmoid):
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced_channels, 1)
        self.act = act()
        self.expand = nn.Conv2d(reduced_channels, channels, 1)
        self.gate = gate()

    def forward(self, x):
        weights = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.expand(self.act(self.reduce(weights))))


class DropPath(nn.Module):
    """Stochastic depth (Huang et al., ECCV 2016): drop a residual branch per sample while training."""

    def __init__(self, drop_prob=0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


def to_windows(x, num_heads, window_size):
    """[B, C, H, W] -> [B·n1·n2, heads, ws·ws, C / heads] tokens of EMO's strided-grid windows.

    With n1 = H / ws and n2 = W / ws, pixel (i·n1 + a, j·n2 + b) is token (i, j) of window (a, b), so each
    window samples the whole map on a grid of step (n1, n2) — the official EMO layout, not Swin's tiles.
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


class Bottleneck(nn.Module):
    """YOLOv5 bottleneck: 1×1 conv → 3×3 conv, plus the input when `shortcut` and the widths agree.

    YOLOv8's C2f uses the same block with two 3×3 convs and no narrowing: `kernel_sizes=(3, 3)`, `expansion=1`.
    """

    def __init__(self, in_channels, out_channels, shortcut=True, expansion=1.0, kernel_sizes=(1, 3)):
        super().__init__()
        hidden = int(out_channels * expansion)
        self.cv1 = ConvBNAct(in_channels, hidden, kernel_sizes[0])
        self.cv2 = ConvBNAct(hidden, out_channels, kernel_sizes[1])
        self.add = shortcut and in_channels == out_channels

    def forward(self, x):
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    """YOLOv5's CSP bottleneck with 3 convolutions (CSPNet, Wang et al., CVPRW 2020, arXiv:1911.11929).

    The input splits into two 1×1 branches of half width: one runs `depth` bottlenecks, the other skips them;
    a third 1×1 conv merges the concatenation. Half the channels skip the deep path, which cuts compute and
    keeps gradients flowing.
    """

    def __init__(self, in_channels, out_channels, depth=1, shortcut=True):
        super().__init__()
        hidden = out_channels // 2
        self.cv1 = ConvBNAct(in_channels, hidden, 1)
        self.cv2 = ConvBNAct(in_channels, hidden, 1)
        self.cv3 = ConvBNAct(2 * hidden, out_channels, 1)
        self.m = nn.Sequential(*(Bottleneck(hidden, hidden, shortcut) for _ in range(depth)))

    def forward(self, x):
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), dim=1))


class C2f(nn.Module):
    """YOLOv8's CSP bottleneck with 2 convolutions (ultralytics `C2f`), on YOLOv5's conv.

    cv1 (1×1) widens to twice the hidden width and splits in halves; `depth` bottlenecks run one after the
    other on the second half, and cv2 (1×1) merges *every* intermediate map — both halves and each
    bottleneck's output, (2 + depth) · hidden channels — so each depth of the chain reaches the output directly.
    """

    def __init__(self, in_channels, out_channels, depth=1, shortcut=False):
        super().__init__()
        hidden = out_channels // 2
        self.cv1 = ConvBNAct(in_channels, 2 * hidden, 1)
        self.cv2 = ConvBNAct((2 + depth) * hidden, out_channels, 1)
        self.m = nn.ModuleList(self.bottleneck(hidden, shortcut) for _ in range(depth))

    def bottleneck(self, channels, shortcut):
        return Bottleneck(channels, channels, shortcut, expansion=1.0, kernel_sizes=(3, 3))

    def forward(self, x):
        maps = list(self.cv1(x).chunk(2, dim=1))
        for block in self.m:
            maps.append(block(maps[-1]))
        return self.cv2(torch.cat(maps, dim=1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast (YOLOv5 v6): three chained 5×5 max-pools see 5×5, 9×9 and 13×13 windows,
    the same outputs as SPP's parallel 5/9/13 pools at a fraction of the cost."""

    def __init__(self, in_channels, out_channels, kernel_size=5):
        super().__init__()
        hidden = in_channels // 2
        self.cv1 = ConvBNAct(in_channels, hidden, 1)
        self.cv2 = ConvBNAct(hidden * 4, out_channels, 1)
        self.m = nn.MaxPool2d(kernel_size, stride=1, padding=kernel_size // 2)

    def forward(self, x):
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), dim=1))


class MultiHeadAttention(nn.Module):
    """Multi-head attention (Vaswani et al., NeurIPS 2017, arXiv:1706.03762) over token sequences.

        head_h = softmax((q W_q^h)(k W_k^h)ᵀ / √d) · (v W_v^h),   out = [head_1, …, head_H] W_o,   d = dim / H

    Parameters are laid out as in `nn.MultiheadAttention` (`in_proj_weight` rows = W_q | W_k | W_v, then
    `out_proj`), so reference weights load by name. RT-DETR's AIFI and decoder self-attention use it.
    """

    def __init__(self, dim, heads):
        super().__init__()
        if dim % heads:
            raise ValueError(f"MultiHeadAttention: dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)   # nn.MultiheadAttention's initialisation
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query, key, value, blocked=None):
        """query (B, Lq, dim), key and value (B, Lk, dim) -> (B, Lq, dim).

        blocked: optional bool (Lq, Lk), True where a query may not attend to a key.
        """
        batch, length, dim = query.shape
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        q = nn.functional.linear(query, w_q, b_q).view(batch, length, self.heads, -1).transpose(1, 2)  # (B, H, Lq, d)
        k = nn.functional.linear(key, w_k, b_k).view(batch, key.shape[1], self.heads, -1).transpose(1, 2)
        v = nn.functional.linear(value, w_v, b_v).view(batch, value.shape[1], self.heads, -1).transpose(1, 2)
        allowed = None if blocked is None else ~blocked   # scaled_dot_product_attention: True = may attend
        out = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed)   # (B, H, Lq, d)
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, dim))
