"""RT-DETR's hybrid encoder (Zhao et al., "DETRs Beat YOLOs on Real-time Object Detection", CVPR 2024,
arXiv:2304.08069; official code lyuwenyu/RT-DETR; here ultralytics' rtdetr-l, `rtdetr-l.yaml` rows 10-27).

Deformable DETR's encoder runs attention over the tokens of every level, and that is most of its cost. RT-DETR
splits the encoder in two:
- AIFI (attention-based intra-scale feature interaction): one transformer layer on the stride-32 map alone.
  Its tokens are few and already semantic, so attention is cheap there and useful: at 640² it attends over
  400 tokens instead of the 8,400 of all three levels.
- CCFM (CNN-based cross-scale feature fusion): a PAN-like top-down and bottom-up path of convolutions whose
  fusion blocks are RepC3, stacks of re-parameterisable 3×3 + 1×1 convolutions (one 3×3 conv after fuse()).
Every level is first projected to `hidden` channels by a 1×1 conv + BatchNorm without activation.
Attribute comments give the rtdetr-l.yaml row, which `convert_ultralytics_rtdetr_state_dict` maps by.
"""
import torch
import torch.nn.functional as F
from torch import nn

from ..layers import ConvBNAct, MultiHeadAttention, fuse_conv_bn


def sincos_position_embedding(height, width, dim, temperature=10000.0, device=None):
    """2-D sine-cosine position embedding for a map flattened row-major (token y·W + x): `Tensor[H·W, dim]`,

        [sin(y·ω) | cos(y·ω) | sin(x·ω) | cos(x·ω)],  ω_k = temperature^(−k / (dim/4)),  k = 0 … dim/4 − 1,

    float32. Built for each map size, so a rectangular map gets rows and columns right.
    """
    quarter = dim // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float32, device=device) / quarter)
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32, device=device),
                            torch.arange(width, dtype=torch.float32, device=device), indexing="ij")
    y_angles = ys.reshape(-1, 1) * omega   # (H·W, dim/4)
    x_angles = xs.reshape(-1, 1) * omega
    return torch.cat((y_angles.sin(), y_angles.cos(), x_angles.sin(), x_angles.cos()), 1)


class AIFI(nn.Module):
    """One post-norm transformer encoder layer over the tokens of a map (B, C, H, W) -> (B, C, H, W).

    The position embedding is added to queries and keys only; values stay the plain features.
    """

    def __init__(self, dim=256, heads=8, ffn_dim=1024):
        super().__init__()
        self.attn = MultiHeadAttention(dim, heads)
        self.norm1 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, ffn_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(ffn_dim, dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x):
        batch, channels, height, width = x.shape
        tokens = x.flatten(2).transpose(1, 2)                                      # (B, H·W, C)
        pos = sincos_position_embedding(height, width, channels, device=x.device).to(x.dtype)   # (H·W, C)
        query = tokens + pos
        tokens = self.norm1(tokens + self.attn(query, query, tokens))
        tokens = self.norm2(tokens + self.fc2(self.act(self.fc1(tokens))))
        return tokens.transpose(1, 2).reshape(batch, channels, height, width)


class RepConv(nn.Module):
    """SiLU(BN(3×3 conv(x)) + BN(1×1 conv(x))), RepVGG's block without its identity branch (Ding et al.,
    CVPR 2021, arXiv:2101.03697). After `fuse()` it is one 3×3 conv: a 1×1 kernel is a 3×3 kernel that is
    zero around its centre, and two convolutions of the same input add up to one with summed kernels."""

    def __init__(self, channels):
        super().__init__()
        self.conv1 = ConvBNAct(channels, channels, 3, act=None)
        self.conv2 = ConvBNAct(channels, channels, 1, act=None)
        self.act = nn.SiLU()
        self.fused = None

    def forward(self, x):
        if self.fused is not None:
            return self.act(self.fused(x))
        return self.act(self.conv1(x) + self.conv2(x))

    @torch.no_grad()
    def fuse(self):
        if self.fused is not None:
            return
        conv3, conv1 = (branch.conv if isinstance(branch.bn, nn.Identity) else fuse_conv_bn(branch.conv, branch.bn)
                        for branch in (self.conv1, self.conv2))   # unless the branches' own fuse() ran first
        merged = nn.Conv2d(conv3.in_channels, conv3.out_channels, 3, padding=1, bias=True).to(conv3.weight)
        merged.weight.copy_(conv3.weight + F.pad(conv1.weight, [1, 1, 1, 1]))
        merged.bias.copy_(conv3.bias + conv1.bias)
        self.fused = merged
        del self.conv1, self.conv2


class RepC3(nn.Module):
    """CSP block of RepConvs: m(cv1(x)) + cv2(x), where m is `depth` RepConvs in sequence, then a 1×1 conv
    (cv3) back to `out_channels` when the hidden width differs (expansion < 1); rtdetr-l uses expansion 1."""

    def __init__(self, in_channels, out_channels, depth=3, expansion=1.0):
        super().__init__()
        hidden = int(out_channels * expansion)
        self.cv1 = ConvBNAct(in_channels, hidden, 1)
        self.cv2 = ConvBNAct(in_channels, hidden, 1)
        self.m = nn.Sequential(*(RepConv(hidden) for _ in range(depth)))
        self.cv3 = ConvBNAct(hidden, out_channels, 1) if hidden != out_channels else nn.Identity()

    def forward(self, x):
        return self.cv3(self.m(self.cv1(x)) + self.cv2(x))


class HybridEncoder(nn.Module):
    """HybridEncoder(in_channels=(c3, c4, c5), hidden, heads, ffn_dim, depth) -> [X3, F4, F5] with
    `out_channels` = (hidden,) * 3, at strides 8, 16, 32. Defaults are rtdetr-l's."""

    def __init__(self, in_channels, hidden=256, heads=8, ffn_dim=1024, depth=3, expansion=1.0):
        super().__init__()
        if len(in_channels) != 3:
            raise ValueError(f"HybridEncoder: expected three input levels (P3, P4, P5), got {in_channels}")
        # projections without activation, P3, P4, P5                            # rows 19, 14, 10
        self.input_proj = nn.ModuleList(ConvBNAct(c, hidden, 1, act=None) for c in in_channels)
        self.aifi = AIFI(hidden, heads, ffn_dim)                                # 11
        self.lateral_p5 = ConvBNAct(hidden, hidden, 1)                          # 12
        self.top_down_p4 = RepC3(2 * hidden, hidden, depth, expansion)          # 16
        self.lateral_p4 = ConvBNAct(hidden, hidden, 1)                          # 17
        self.out_p3 = RepC3(2 * hidden, hidden, depth, expansion)               # 21
        self.down_p3 = ConvBNAct(hidden, hidden, 3, stride=2)                   # 22
        self.out_p4 = RepC3(2 * hidden, hidden, depth, expansion)               # 24
        self.down_p4 = ConvBNAct(hidden, hidden, 3, stride=2)                   # 25
        self.out_p5 = RepC3(2 * hidden, hidden, depth, expansion)               # 27
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.out_channels = (hidden,) * 3

    def forward(self, features):
        # Shapes for rtdetr-l's widths (hidden 256) at a 640×640 input.
        p3, p4, p5 = (proj(f) for proj, f in zip(self.input_proj, features))  # (B,256,80,80), 40×40, 20×20
        y5 = self.lateral_p5(self.aifi(p5))                                   # (B, 256, 20, 20)
        # top-down: coarse semantics into the finer maps
        y4 = self.lateral_p4(self.top_down_p4(torch.cat((self.upsample(y5), p4), 1)))   # (B, 256, 40, 40)
        x3 = self.out_p3(torch.cat((self.upsample(y4), p3), 1))               # (B, 256, 80, 80)
        # bottom-up: fine localisation back into the coarse maps; it concatenates the lateral outputs y4, y5
        f4 = self.out_p4(torch.cat((self.down_p3(x3), y4), 1))                # (B, 256, 40, 40)
        f5 = self.out_p5(torch.cat((self.down_p4(f4), y5), 1))                # (B, 256, 20, 20)
        return [x3, f4, f5]
