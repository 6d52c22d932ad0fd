"""Mixed-precision training: float16 autocast on CUDA (YOLOv5's AMP), bfloat16 autocast on a CPU that computes
bfloat16 natively (AVX512-BF16 or AMX on x86, the BF16 extension on Arm).

Autocast only changes the precision in which convolutions and matrix products run. The parameters, the
BatchNorm statistics, the EMA and the checkpoints stay float32; the loss is computed in float32 from the
network's outputs; EfficientViT's LiteMLA computes its sums over all tokens in float32 itself.
"""
from pathlib import Path

import torch

# One training step (forward, YOLOv5 loss, backward, AdamW) at batch 16 and the family's `shapes` recipe size,
# bf16 autocast against float32, on the 2-core AVX512-BF16 development CPU: `python -m lightdet.benchmark
# --part train` (README). Dense convolutions gain; depthwise convolutions and attention on small maps lose.
BF16_SPEEDUP = {"cspdarknet": 1.46, "repvit": 1.28, "efficientvit": 1.04, "mobilenetv3": 0.86, "mobilevit": 0.84,
                "emo": 0.63}
# Below this, the step time gained is within run-to-run noise and not worth the rounding.
BF16_MIN_SPEEDUP = 1.1
X86_FLAGS = ("avx512_bf16", "amx_bf16")


def native_bf16(cpuinfo=Path("/proc/cpuinfo")):
    """Whether the CPU computes bfloat16 in hardware, read from /proc/cpuinfo's flags. (oneDNN reports bf16 as
    supported on any AVX512 CPU, where it is emulated and several times slower than float32.)"""
    try:
        words = set(Path(cpuinfo).read_text().split())
    except OSError:   # not Linux: no way to tell, so no bf16 by default
        return False
    return any(flag in words for flag in X86_FLAGS) or ("Features" in words and "bf16" in words)


def default_amp(device, backbone, head="anchor"):
    """AMP by default: always on CUDA; on a CPU only with native bf16 and for a backbone whose training step it
    makes faster (BF16_SPEEDUP, measured with the anchor head)."""
    if device.type == "cuda":
        return True
    family = backbone.split("_")[0]
    return (device.type == "cpu" and head == "anchor" and BF16_SPEEDUP.get(family, 0) >= BF16_MIN_SPEEDUP
            and native_bf16())


def autocast(device, enabled):
    """The autocast context of a training forward: float16 on CUDA, bfloat16 elsewhere."""
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=enabled)


def float32(outputs):
    """The network's outputs (tensors in nested lists, tuples, NamedTuples and dicts) in float32, for the loss."""
    if isinstance(outputs, torch.Tensor):
        return outputs.float() if outputs.is_floating_point() else outputs
    if isinstance(outputs, dict):
        return {key: float32(value) for key, value in outputs.items()}
    if isinstance(outputs, tuple) and hasattr(outputs, "_fields"):   # a NamedTuple (RT-DETR's outputs)
        return type(outputs)(*(float32(value) for value in outputs))
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(float32(value) for value in outputs)
    return outputs


def forward_loss(net, criterion, images, targets, amp):
    """The training forward under autocast (when `amp`) and the loss, in float32, of its outputs."""
    with autocast(images.device, amp):
        outputs = net(images, targets)   # RT-DETR's denoising reads the targets
    return criterion(float32(outputs), targets)
