"""Train a lightdet detector.

    python train.py --backbone mobilevit                    # built-in shapes set and its short CPU recipe
    python train.py --backbone repvit --time 30 --amp       # 30 minutes in all, bf16 autocast on the CPU
    python train.py --backbone repvit --data datasets/coco128 --img 640 --epochs 100
    python train.py --resume                                # continue the latest run exactly where it stopped
    torchrun --nproc_per_node 4 train.py --backbone emo --data datasets/mydata --device cuda   # DDP, 4 GPUs
    torchrun --nnodes 2 --node_rank R --master_addr HOST --nproc_per_node 8 train.py ...      # multi-node

The loop (lightdet/engine.py) is YOLOv5's: SGD (nesterov, momentum 0.937) with three parameter groups,
warm-up, linear or cosine LR decay to lrf = 0.01, gradient accumulation to a nominal batch of 64, an EMA of the
weights, AMP (float16 on CUDA, bfloat16 on CPUs with native bf16), gradient-norm clipping. The built-in dataset
brings its own short recipe and time budget (lightdet/recipes.py); any flag you give overrides it. Each epoch
reseeds every RNG from (seed, epoch, rank), so a resumed run draws exactly the shuffles and augmentations an
uninterrupted run would.

Interruptions: weights/last.pt always holds the state after the last completed epoch (before the first, the
initial state). Ctrl-C leaves it that way (a save in progress finishes first) and a kill cannot corrupt it, so
`--resume` repeats the interrupted epoch and ends with the same weights as an uninterrupted run.
"""
import argparse
import json
import logging
import os
import random
import time
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist

from lightdet.backbones import BACKBONES, load_pretrained
from lightdet.checkpoint import architecture, interrupts_deferred, load_checkpoint, load_weights
from lightdet.cli import (DEVICE_HELP, HelpFormatter, fraction, image_size, increment_path, non_negative_float,
                          non_negative_int, positive_float, positive_int, round_image_size, select_device,
                          unit_interval)
from lightdet.data import build_dataloader, build_dataset, resolve_data
from lightdet.engine import fit_epochs_to_budget, train_one_epoch
from lightdet.evaluate import evaluate, format_table, merge_classes
from lightdet.layers import SCALES
from lightdet.losses import build_loss
from lightdet.losses.yolo import BOX_LOSSES
from lightdet.memory import keep_freed_memory
from lightdet.model import HEADS, build_model
from lightdet.necks import NECK_ATTENTIONS, NECK_BLOCKS
from lightdet.optim import ModelEMA, build_optimizer, set_learning_rate
from lightdet.plots import plot_batch, plot_labels
from lightdet.precision import default_amp, native_bf16
from lightdet.recipes import HEAD_RECIPES, RECIPES, WARMUP_EPOCHS, recipe_default, recipe_for
from lightdet.runs import find_last, finish, fitness, open_run_dir, results_row, save_epoch, write_results


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Train a lightdet detector.", formatter_class=HelpFormatter)
    p.add_argument("--backbone", default="cspdarknet", help=f"one of: {', '.join(BACKBONES)}")
    p.add_argument("--scale", default="n", choices=SCALES, help="neck (and CSPDarknet) size")
    p.add_argument("--neck-block", default="c3", choices=list(NECK_BLOCKS), help="the neck's CSP block")
    p.add_argument("--neck-attention", choices=list(NECK_ATTENTIONS), help="a block after each neck output")
    p.add_argument("--head", default="anchor", choices=HEADS,
                   help="anchor: YOLOv5's PAN neck and anchor head; rtdetr: RT-DETR's encoder and decoder")
    p.add_argument("--data", default="shapes", help="shapes | shapes-hard | YOLO folder | .txt list | COCO json")
    p.add_argument("--names", help="class names file (one per line) if the dataset has none")
    p.add_argument("--img", type=image_size, help=f"training and validation size ({recipe_default('img')})")
    p.add_argument("--batch", type=positive_int, help=f"total batch, split across DDP processes "
                                                     f"({recipe_default('batch')})")
    p.add_argument("--epochs", type=positive_int,
                   help="epochs to train; given, they win over --time (default: fitted to --time on shapes, "
                        f"{RECIPES['yolov5']['epochs']} on others)")
    p.add_argument("--time", type=positive_float, metavar="MINUTES",
                   help="time budget: the epochs (and LR schedule) are fitted to it after measuring the training "
                        f"speed on a few batches ({recipe_default('time')})")
    p.add_argument("--workers", type=non_negative_int,
                   help="dataloader processes (default: 4 with CUDA, a quarter of the cores on CPU)")
    p.add_argument("--device", help=DEVICE_HELP)
    p.add_argument("--amp", action=argparse.BooleanOptionalAction,
                   help="mixed precision: float16 on CUDA, bfloat16 on a CPU with native bf16 (default: on with "
                        "CUDA; on CPU where the CPU has native bf16 and it speeds up the backbone, see README)")
    p.add_argument("--box-loss", default="ciou", choices=BOX_LOSSES, help="IoU loss of the box term")
    p.add_argument("--optimizer", choices=("SGD", "AdamW"), help=f"optimizer ({recipe_default('optimizer')})")
    p.add_argument("--lr", type=positive_float, help=f"initial learning rate ({recipe_default('lr')})")
    p.add_argument("--schedule", choices=("linear", "cosine"),
                   help=f"LR decay to 0.01 × lr ({recipe_default('schedule')})")
    p.add_argument("--nominal-batch", type=positive_int, help="accumulate gradients up to this batch size "
                                                              f"({recipe_default('nominal_batch')})")
    p.add_argument("--val-every", type=non_negative_int, help="validate every N epochs, 0: only after the last "
                                                              f"({recipe_default('val_every')})")
    p.add_argument("--close-mosaic", type=non_negative_int, help="train the last N epochs without mosaic "
                                                                 f"({recipe_default('close_mosaic')})")
    p.add_argument("--noval", action="store_true", help="validate only after the final epoch (--val-every 0)")
    p.add_argument("--patience", type=non_negative_int, default=100,
                   help="stop when N epochs passed since the best fitness (checked after validations; 0: never)")
    p.add_argument("--save-period", type=non_negative_int, default=0,
                   help="also keep weights/epochN.pt every N epochs (0: never)")
    p.add_argument("--fraction", type=fraction, default=1.0,
                   help="train on this share of the training images, the first in file order (quick trials)")
    p.add_argument("--rect", action="store_true", help="rectangular training batches (least padding, no mosaic)")
    p.add_argument("--multi-scale", action="store_true", help="resize each batch to 0.5-1.5 × --img")
    p.add_argument("--single-cls", action="store_true", help="train every class as one class, 'item'")
    p.add_argument("--label-smoothing", type=unit_interval, default=0.0, help="class targets 1 − ε/2 and ε/2")
    p.add_argument("--gr-ramp", type=non_negative_float, metavar="EPOCHS",
                   help="objectness target: ramp from 1 to the box's IoU (YOLOv5's gr from 0 to 1) over the first "
                        f"EPOCHS epochs ({recipe_default('gr_ramp')})")
    p.add_argument("--weights", help="start from a lightdet checkpoint (a new class count re-initialises the head)")
    p.add_argument("--pretrained-backbone", help="timm / official backbone checkpoint for the family's converter")
    p.add_argument("--freeze-backbone-epochs", type=non_negative_int, default=0,
                   help="keep the backbone frozen for the first N epochs")
    p.add_argument("--resume", nargs="?", const="latest", help="continue a run: its last.pt, or the latest run")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across DDP processes")
    p.add_argument("--cache", action=argparse.BooleanOptionalAction,
                   help="keep decoded images in RAM (default: on for shapes, off for others)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random number generator")
    p.add_argument("--project", default="runs/train", help="runs go to <project>/<name>")
    p.add_argument("--name", default="exp", help="run folder name; numbered exp2, exp3, ... when taken")
    p.add_argument("--exist-ok", action="store_true", help="reuse <project>/<name> instead of numbering a new one")
    return p.parse_args(argv)


def resolve_args(args, log=print):
    """Fill unset flags from the recipe (lightdet/recipes.py); round the image size up to a multiple of 32."""
    if args.backbone not in BACKBONES:
        raise SystemExit(f"error: unknown backbone {args.backbone!r}; valid names: {', '.join(BACKBONES)}")
    if args.noval:
        args.val_every = 0
    given_epochs, given_time = args.epochs, args.time
    for key, value in recipe_for(args.data, args.backbone, args.head).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if given_epochs is not None:   # epochs given win over a time budget, given or from the recipe
        if given_time is not None:
            log(f"--epochs {given_epochs} given: the --time {given_time:g} budget is not used")
        args.time = None
    elif given_time is not None:   # a budget given replaces the recipe's epochs
        args.epochs = None
    if args.head == "rtdetr" and args.gr_ramp:
        raise SystemExit("error: --gr-ramp ramps the anchor head's objectness target; RT-DETR has none")
    args.img = round_image_size(args.img, log=log)
    return args


def default_workers(device):
    """Loader processes: up to 4 with CUDA. On CPU they take cores from the compute threads, so a quarter of
    the cores: none on a 2-core machine, where loading inside the training process is the faster (README)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(4, cores) if device.type == "cuda" else min(4, cores // 4)


def resume_args(args):
    """The run's own arguments from its last.pt (only --workers and --device may change), and the checkpoint."""
    path = find_last(args.resume, args.project)
    checkpoint = load_checkpoint(path)
    if checkpoint.get("stripped") or "optimizer" not in checkpoint:
        raise ValueError(f"{path} is the final checkpoint of a finished run (optimizer stripped): nothing to "
                         f"resume; start a new run from it with --weights {path}")
    saved = {**vars(parse_args([])), **checkpoint["args"]}   # flags added since the run started: defaults
    resumed = argparse.Namespace(**{**saved, "resume": str(path), "workers": args.workers, "device": args.device})
    return resumed, checkpoint


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_detector(args, num_classes, log):
    """The detector, from --weights or --pretrained-backbone when given (not when resuming: last.pt has it all)."""
    model = build_model(args.backbone, num_classes=num_classes, scale=args.scale, head=args.head,
                        neck_block=args.neck_block, neck_attention=args.neck_attention)
    if args.resume:
        return model
    if args.weights:
        load_weights(model, load_checkpoint(args.weights), args.weights, log)
    if args.pretrained_backbone:
        report = load_pretrained(model.backbone, args.pretrained_backbone)
        log(f"pretrained backbone {args.pretrained_backbone}: {report}")
    return model


def wrap(model, rank, device):
    """DistributedDataParallel when running under torchrun (rank >= 0), the model itself otherwise."""
    if rank < 0:
        return model
    ids = [device.index] if device.type == "cuda" else None
    # RT-DETR's denoising embedding gets no gradient from a batch without boxes
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids,
                                                     find_unused_parameters=model.config["head"] == "rtdetr")


def train(args):
    """The outline: arguments, data, model and optimizer, the run folder, then the epochs."""
    started = time.monotonic()   # a --time budget counts from here
    rank, world = int(os.environ.get("RANK", -1)), int(os.environ.get("WORLD_SIZE", 1))
    device, main_process = select_device(args.device), rank <= 0
    log = print if main_process else (lambda *a, **k: None)
    args, checkpoint = resume_args(args) if args.resume else (resolve_args(args, log), None)
    if args.amp is None:
        args.amp = default_amp(device, args.backbone, args.head)
    elif args.amp and device.type == "cpu" and not native_bf16():
        log("warning: --amp on a CPU without native bfloat16 (no avx512_bf16 or amx_bf16 in /proc/cpuinfo): "
            "it is emulated, usually several times slower than float32")
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    run_dir, progress = None, {"epoch": -1}
    try:
        data = build_data(args, device, rank, world)
        model, optimizer, criterion, ema, progress = build_training(args, data.names, device, checkpoint, log)
        scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and args.amp)
        if args.epochs is None:   # decided once, before the first checkpoint records it
            args.epochs = fit_epochs_to_budget(args, data, model, optimizer, criterion, scaler, started, log)
        run_dir = start_run(args, data, model, ema, optimizer, criterion, progress, log) if main_process else None
        iterations = len(data.train_loader)
        warmup = args.warmup_iters if args.warmup_iters is not None else max(round(WARMUP_EPOCHS * iterations), 100)
        head = HEAD_RECIPES[args.head]
        adjust_lr = partial(set_learning_rate, optimizer, total=args.epochs * iterations, warmup=warmup,
                            schedule=args.schedule, final=head["final_lr_scale"], momentum=head["momentum"],
                            warmup_bias_lr=0.1 if args.optimizer == "SGD" else 0.0)
        accumulate = max(round(args.nominal_batch / args.batch), 1)
        first, net, metrics = progress["epoch"] + 1, model, None
        for epoch in range(first, args.epochs):
            if epoch in (first, args.freeze_backbone_epochs):
                net = freeze_backbone(model, epoch < args.freeze_backbone_epochs, rank, device, log)
            seed_everything(args.seed + 1000 * epoch + max(rank, 0))
            if data.sampler:
                data.sampler.set_epoch(epoch)
            # read by the loader's workers, which restart every epoch
            data.train_set.mosaic = not args.rect and epoch < args.epochs - args.close_mosaic
            losses = train_one_epoch(net, criterion, optimizer, scaler, ema, data.train_loader, epoch, args,
                                     accumulate, adjust_lr)
            if main_process:
                metrics = validate(ema.ema, data.val_loader, epoch, args, log)
                progress = end_epoch(run_dir, epoch, losses, metrics, model, ema, optimizer, criterion, progress,
                                     data.names, args)
            if out_of_patience(progress, metrics, epoch, args, log):
                break
        if main_process:
            finish(run_dir, metrics, data.names)
            budget = f" (budget {args.time:g})" if args.time else ""
            log(f"\n{format_table(metrics) if metrics else 'all epochs were done: final checkpoints stripped'}\n"
                f"weights: {run_dir / 'weights'}; {(time.monotonic() - started) / 60:.1f} min{budget}")
        return model, metrics, run_dir
    except KeyboardInterrupt:
        last = run_dir / "weights" / "last.pt" if run_dir else None
        log(f"\ninterrupted: {last} holds epoch {progress['epoch'] + 1} of {args.epochs}; continue exactly with "
            f"python train.py --resume {last}" if last else "\ninterrupted before training started")
        raise SystemExit(130) from None
    finally:
        if world > 1:
            dist.destroy_process_group()


def build_data(args, device, rank, world):
    """Class names, the training set, its DistributedSampler (or None) and loader, and the validation loader
    (rank 0 only). With --single-cls every box becomes class 0, 'item'."""
    if args.workers is None:
        args.workers = default_workers(device)
    seed_everything(args.seed)
    if world > 1 and rank > 0:
        dist.barrier()   # rank 0 generates the built-in dataset once; the others wait for it
    spec = resolve_data(args.data, names_file=args.names)
    if world > 1 and rank == 0:
        dist.barrier()
    batch = args.batch // max(world, 1)
    train_set = build_dataset(spec, "train", args.img, augment=True, rect=args.rect, batch_size=batch,
                              cache=args.cache, fraction=args.fraction)
    sampler = torch.utils.data.distributed.DistributedSampler(train_set, seed=args.seed) if world > 1 else None
    train_loader = build_dataloader(train_set, batch, args.workers, shuffle=sampler is None, sampler=sampler)
    val_set = val_loader = None
    if rank <= 0:
        val_set = build_dataset(spec, "val", args.img, augment=False, rect=True, batch_size=batch * 2, cache=args.cache)
        val_loader = build_dataloader(val_set, batch * 2, args.workers)
    for dataset in (train_set, val_set) if args.single_cls else ():
        merge_classes(dataset)
    return SimpleNamespace(names=train_set.names, train_set=train_set, sampler=sampler, train_loader=train_loader,
                           val_loader=val_loader)


def build_training(args, names, device, checkpoint, log):
    """Model, optimizer, loss, EMA (rank 0) and progress, restored from `checkpoint` when resuming."""
    # channels-last: the convolution layout oneDNN and cuDNN run fastest (README)
    model = build_detector(args, len(names), log).to(device, memory_format=torch.channels_last)
    if dist.is_initialized() and args.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    accumulate = max(round(args.nominal_batch / args.batch), 1)
    weight_decay = 5e-4 * args.batch * accumulate / args.nominal_batch
    head = HEAD_RECIPES[args.head]
    optimizer = build_optimizer(model, args.optimizer, args.lr, head["momentum"], weight_decay,
                                backbone_lr_scale=head["backbone_lr_scale"])
    criterion = build_loss(model, len(names), args.img, args.box_loss,
                           hyp={"label_smoothing": args.label_smoothing}).to(device)
    ema = ModelEMA(model) if not dist.is_initialized() or dist.get_rank() == 0 else None
    # saved with the weights, so that last.pt is the whole truth about the run
    progress = {"epoch": -1, "best_fitness": 0.0, "best_epoch": -1, "results": []}
    if checkpoint:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        criterion.load_state_dict(checkpoint["loss"])
        if ema:
            ema.ema.load_state_dict(checkpoint["ema"])
            ema.updates = checkpoint["ema_updates"]
        progress = {key: checkpoint.get(key, default) for key, default in progress.items()}
    return model, optimizer, criterion, ema, progress


def start_run(args, data, model, ema, optimizer, criterion, progress, log):
    """The run folder, made only now that the run can start, with stale temporaries of a killed run removed.
    A new run gets its initial last.pt (so that even the first epoch can be resumed), labels.jpg and
    train_batch0.jpg; a resumed one gets results.csv rewritten as last.pt knows it."""
    run_dir = open_run_dir(Path(args.resume).parent.parent if args.resume else
                           increment_path(args.project, args.name, args.exist_ok), log)
    (run_dir / "config.json").write_text(json.dumps({**vars(args), "model": model.config}, indent=2))
    if args.resume:
        log(f"resuming {args.resume}: {progress['epoch'] + 1} of {args.epochs} epochs done")
        write_results(run_dir, progress["results"])
    else:
        save_epoch(run_dir, training_state(model, ema, optimizer, criterion, progress, data.names, args), best=False)
        plot_labels(data.train_set.labels, data.names, run_dir / "labels.jpg")
        seed_everything(args.seed)   # the first batch of epoch 1, exactly as it will be drawn
        data.train_set.mosaic = not args.rect and args.epochs > args.close_mosaic
        images, targets, _, _ = next(iter(data.train_loader))
        plot_batch(images, targets, data.names, run_dir / "train_batch0.jpg")
    log(f"{architecture(model.config)}: {sum(p.numel() for p in model.parameters()):,} parameters; "
        f"{len(data.train_set)} training images at {args.img}, batch {args.batch}, {args.optimizer} lr {args.lr}, "
        f"{args.epochs} epochs; logging to {run_dir}")
    return run_dir


def freeze_backbone(model, frozen, rank, device, log):
    """Freeze or unfreeze the backbone, and wrap the model for DDP again (it fixes the trainable set)."""
    for p in model.backbone.parameters():
        p.requires_grad_(not frozen)
    if frozen:
        log("backbone frozen")
    return wrap(model, rank, device)


def validate(model, val_loader, epoch, args, log):
    """Metrics of the EMA weights on the validation split, when this epoch is due for validation; else None."""
    if epoch != args.epochs - 1 and not (args.val_every and (epoch + 1) % args.val_every == 0):
        return None
    device = next(model.parameters()).device
    metrics = evaluate(model, val_loader, device=device, amp=device.type == "cuda" and args.amp,
                       single_cls=args.single_cls)
    log(f"epoch {epoch + 1}: P {metrics['P']:.3f} R {metrics['R']:.3f} mAP50 {metrics['mAP50']:.3f} "
        f"mAP50-95 {metrics['mAP50_95']:.3f}")
    return metrics


def end_epoch(run_dir, epoch, losses, metrics, model, ema, optimizer, criterion, progress, names, args):
    """Record a completed epoch: best.pt when the fitness improved, last.pt, results.csv and results.png, all
    or (after Ctrl-C, which waits) none of them. Returns the new progress."""
    score = fitness(metrics)
    improved = score is not None and score >= progress["best_fitness"]
    row = results_row(epoch, losses, optimizer.param_groups[0]["lr"], metrics)
    with interrupts_deferred():
        progress = {"epoch": epoch, "best_fitness": score if improved else progress["best_fitness"],
                    "best_epoch": epoch if improved else progress["best_epoch"], "results": progress["results"] + [row]}
        save_epoch(run_dir, training_state(model, ema, optimizer, criterion, progress, names, args), improved,
                   args.save_period)
        write_results(run_dir, progress["results"])
    return progress


def out_of_patience(progress, metrics, epoch, args, log):
    """YOLOv5's early stop, decided on rank 0 after a validation and shared with every process."""
    stop = bool(metrics and args.patience and epoch - progress["best_epoch"] >= args.patience)
    if dist.is_initialized():
        decision = [stop]
        dist.broadcast_object_list(decision, src=0)
        stop = decision[0]
    if stop:
        log(f"stopping early: no better fitness in the {args.patience} epochs since epoch {progress['best_epoch'] + 1}")
    return stop


def training_state(model, ema, optimizer, criterion, progress, names, args):
    """The checkpoint of a run in progress: DESIGN.md's keys plus what an exact resume needs."""
    return {"model": model.state_dict(), "ema": ema.ema.state_dict(), "ema_updates": ema.updates,
            "optimizer": optimizer.state_dict(), "loss": criterion.state_dict(), **progress, "config": model.config,
            "names": list(names), "args": vars(args)}


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(message)s")   # the dataset scan's summary
    args = parse_args(argv)
    keep_freed_memory()
    try:
        train(args)
    except (FileNotFoundError, ValueError, FloatingPointError) as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
