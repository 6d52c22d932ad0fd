"""YOLOv5's optimisation machinery: parameter groups, warm-up + LR decay, and the model EMA."""
import math
from copy import deepcopy

import torch
from torch import nn


def unwrap(model):
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def build_optimizer(model, name="SGD", lr=0.01, momentum=0.937, weight_decay=5e-4, backbone_lr_scale=1.0):
    """YOLOv5's three parameter groups: 0 = norm weights (no decay), 1 = conv/linear weights (decay),
    2 = biases (no decay; their own warm-up). Weight decay on a norm's scale or a bias only shrinks the
    outputs, so it acts as noise rather than regularisation.
    backbone_lr_scale != 1 puts the backbone's parameters in three more groups (3, 4, 5, the same kinds) at
    lr × backbone_lr_scale: DETR-style recipes train a pretrained backbone at a tenth of the rate (RT-DETR)."""
    scaled = backbone_lr_scale != 1.0
    backbone = {id(p) for p in model.backbone.parameters()} if scaled else set()
    groups = tuple([] for _ in range(6 if scaled else 3))
    for module in model.modules():
        for name_, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            offset = 3 if id(param) in backbone else 0
            if name_ == "bias":
                groups[offset + 2].append(param)
            elif param.ndim <= 1 or isinstance(module, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)):
                groups[offset].append(param)
            else:
                groups[offset + 1].append(param)
    param_groups = [{"params": params, "weight_decay": weight_decay if index % 3 == 1 else 0.0,
                     "lr": lr * (backbone_lr_scale if index >= 3 else 1.0)} for index, params in enumerate(groups)]
    for group in param_groups:
        group["initial_lr"] = group["lr"]
    if name == "SGD":
        optimizer = torch.optim.SGD(param_groups, lr=lr, momentum=momentum, nesterov=True)
    elif name == "AdamW":
        optimizer = torch.optim.AdamW(param_groups, lr=lr, betas=(momentum, 0.999))
    else:
        raise ValueError(f"unknown optimizer {name!r}; valid: SGD, AdamW")
    return optimizer


def lr_factor(iteration, total, schedule="linear", final=0.01):
    """LR multiple after warm-up, decaying from 1 at iteration 0 to `final` at `total` (linear or cosine)."""
    progress = min(iteration / max(total, 1), 1.0)
    if schedule == "cosine":
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress))
    return 1 - (1 - final) * progress


def set_learning_rate(optimizer, iteration, total, warmup, schedule, final, warmup_bias_lr=0.1,
                      warmup_momentum=0.8, momentum=0.937):
    """Apply warm-up and decay for this iteration. During warm-up the bias group falls from `warmup_bias_lr`
    while the others rise from 0, and momentum (Adam's β1) rises from `warmup_momentum` (YOLOv5)."""
    target = lr_factor(iteration, total, schedule, final)
    ramp = min(iteration / warmup, 1.0) if warmup > 0 else 1.0
    for index, group in enumerate(optimizer.param_groups):
        start = warmup_bias_lr if index % 3 == 2 else 0.0
        group["lr"] = start + ramp * (group["initial_lr"] * target - start)
        beta = warmup_momentum + ramp * (momentum - warmup_momentum)
        if "betas" in group:
            group["betas"] = (beta, group["betas"][1])
        else:
            group["momentum"] = beta


class ModelEMA:
    """Exponential moving average of the weights (and BatchNorm statistics), YOLOv5's ModelEMA.

    decay ramps as d·(1 − exp(−updates/τ)) so the average follows the fast-moving early weights.
    """

    def __init__(self, model, decay=0.9999, tau=2000, updates=0):
        self.ema = deepcopy(unwrap(model)).eval()
        for param in self.ema.parameters():
            param.requires_grad_(False)
        self.decay, self.tau, self.updates = decay, tau, updates

    @torch.no_grad()
    def update(self, model):
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.tau))
        current = unwrap(model).state_dict()
        for key, value in self.ema.state_dict().items():
            if value.dtype.is_floating_point:
                value.mul_(d).add_(current[key].detach(), alpha=1 - d)
