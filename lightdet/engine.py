"""The training engine (torchvision's references/detection/engine.py): one epoch of training, and the time
budget that decides how many epochs a run of `train.py --time` makes.

The budget is decided once, before the first checkpoint: the speed is measured on copies of the model,
optimizer and loss, so the run itself starts as it would with that number of `--epochs`, and `--resume` reads
the decision from the checkpoint instead of measuring again.
"""
import itertools
import math
import random
import time
from copy import deepcopy
from functools import partial

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from .optim import ModelEMA
from .precision import forward_loss
from .recipes import HEAD_RECIPES


def resize_batch(images, size, stride=32):
    """Images [B, 3, H, W] resized (bilinear) so the long side is `size`, each side a multiple of `stride`."""
    factor = size / max(images.shape[2:])
    shape = [math.ceil(side * factor / stride) * stride for side in images.shape[2:]]
    return F.interpolate(images, size=shape, mode="bilinear", align_corners=False) if factor != 1 else images


def describe(names, items):
    """'box 0.0512 obj 0.0301 cls 0.022': a loss's items by the names its criterion gives them."""
    return " ".join(f"{name} {float(value):.4g}" for name, value in zip(names, items))


def train_one_epoch(net, criterion, optimizer, scaler, ema, loader, epoch, args, accumulate, adjust_lr, label=None):
    """One pass over `loader`: per iteration the LR of the warm-up and decay, forward (under autocast with
    --amp) and the loss in float32, backward; an optimizer step with clipped gradients and an EMA update every
    `accumulate` batches and after the last. The progress bar (shown with an EMA, on the main process) starts
    with `label`. Returns the loss items' means by name."""
    device = next(net.parameters()).device
    cuda, world = device.type == "cuda", dist.get_world_size() if dist.is_initialized() else 1
    iterations = len(loader)
    net.train()
    mean_items = torch.zeros(len(criterion.ITEM_NAMES), device=device)
    clip = HEAD_RECIPES[args.head]["grad_clip_norm"]
    bar = tqdm(loader, total=iterations, disable=ema is None, ncols=110, bar_format="{l_bar}{bar:10}{r_bar}")
    for i, (images, targets, _, _) in enumerate(bar):
        step = i + iterations * epoch
        adjust_lr(step)
        images = images.to(device, non_blocking=True, memory_format=torch.channels_last).float() / 255
        if args.multi_scale:   # YOLOv5: a random size from 0.5 to 1.5 × img per batch (targets are normalised)
            images = resize_batch(images, random.randrange(args.img // 2, args.img * 3 // 2 + 32) // 32 * 32)
        targets = targets.to(device)
        if args.gr_ramp:
            criterion.gr = min(step / (args.gr_ramp * iterations), 1.0)
        loss, items = forward_loss(net, criterion, images, targets, args.amp)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at epoch {epoch + 1} iteration {i}: "
                                     f"{describe(criterion.ITEM_NAMES, items)}; try a lower --lr or check the labels")
        scaler.scale(loss * world).backward()   # DDP averages gradients over processes
        if (step + 1) % accumulate == 0 or i == iterations - 1:   # no gradient is carried into the next epoch
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if ema:
                ema.update(net)
        mean_items = (mean_items * i + items.detach()) / (i + 1)
        memory = f"{torch.cuda.memory_reserved(device) / 2**30:.2f}G" if cuda else "cpu"
        bar.set_description(f"{label or f'{epoch + 1}/{args.epochs}'} {memory} "
                            f"{describe(criterion.ITEM_NAMES, mean_items)} targets {len(targets)} "
                            f"img {images.shape[-1]}")
    return dict(zip(criterion.ITEM_NAMES, mean_items.tolist()))


BUDGET_SHARE = 0.9   # of the time left after the speed check, what the epochs are planned to fill


def fit_epochs_to_budget(args, data, model, optimizer, criterion, scaler, started, log, batches=24, warmup=3):
    """--time: the most epochs whose training and validations fit in BUDGET_SHARE of the time left. The speed
    is measured on copies of the model, optimizer and loss (the run itself starts untouched), over `batches`
    training batches after `warmup` untimed ones (the first iterations set up the kernels), including their
    loading, and over one validation batch (over 12 batches the check varied by ±5% between runs). Every process
    of a DDP run takes rank 0's decision."""
    model, optimizer, criterion = deepcopy((model, optimizer, criterion))
    data.train_set.mosaic = not args.rect   # as in the first epoch
    begin = time.perf_counter()
    loaded = list(itertools.islice(data.train_loader, batches))
    load_seconds = time.perf_counter() - begin
    ema = ModelEMA(model) if data.val_loader is not None else None   # the main process's work, and its bar
    check = partial(train_one_epoch, model, criterion, optimizer, scaler, ema, epoch=0, args=args,
                    accumulate=max(round(args.nominal_batch / args.batch), 1), adjust_lr=lambda step: None)
    check(loader=loaded[:warmup], label="speed check")
    begin = time.perf_counter()
    check(loader=loaded, label="speed check")
    iteration = (load_seconds + time.perf_counter() - begin) / len(loaded)
    epoch = iteration * len(data.train_loader)
    validation = validation_seconds(model, data.val_loader) if data.val_loader is not None else 0.0
    left = args.time * 60 - (time.monotonic() - started)
    # Plan 90% of it: on the development CPU a run's epochs took 8% less to 11% more than the speed check
    # predicted (RepViT: 75 s against 68 s on average, and 32 s over 15 minutes when 95% was planned), and
    # checkpoint writes, scoring and the final plots are not measured.
    planned = BUDGET_SHARE * left
    epochs = max(epochs_within(planned, epoch, validation, args.val_every), 1)
    if dist.is_initialized():
        decision = [epochs]
        dist.broadcast_object_list(decision, src=0)
        epochs = decision[0]
    validations = validations_in(epochs, args.val_every)
    log(f"time budget {args.time:g} min, {(args.time * 60 - left) / 60:.1f} spent on setup and the speed check: "
        f"an epoch takes about {epoch / 60:.2f} min ({iteration:.3f} s × {len(data.train_loader)} iterations), "
        f"a validation {validation / 60:.2f} min → {epochs} epoch{'s' * (epochs > 1)}, about "
        f"{(epochs * epoch + validations * validation) / 60:.1f} min (--epochs {epochs} repeats this schedule)")
    if epochs * epoch + validations * validation > planned:
        log(f"warning: even one epoch does not fit in --time {args.time:g}; training one")
    return epochs


@torch.inference_mode()
def validation_seconds(model, val_loader):
    """Seconds for one validation: the model's forward and NMS (evaluate()'s settings) on the first batch, after
    one untimed pass, times the number of batches."""
    model.eval()
    images, *_ = next(iter(val_loader))
    images = images.to(next(model.parameters()).device, memory_format=torch.channels_last).float() / 255
    model.postprocess(model(images)[0].float(), 0.001, 0.6, 300, multi_label=True)
    begin = time.perf_counter()
    model.postprocess(model(images)[0].float(), 0.001, 0.6, 300, multi_label=True)
    return (time.perf_counter() - begin) * len(val_loader)


def validations_in(epochs, val_every):
    """How many validations a run of `epochs` makes: every `val_every` epochs (0: none) and after the last."""
    return (epochs - 1) // val_every + 1 if val_every else 1


def epochs_within(seconds, epoch_seconds, validation_seconds, val_every):
    """The most epochs whose training and validations take at most `seconds` (0 when not even one fits)."""
    epochs = 0
    while (epochs + 1) * epoch_seconds + validations_in(epochs + 1, val_every) * validation_seconds <= seconds:
        epochs += 1
    return epochs
