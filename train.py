"""Train a lightdet detector.

    python train.py --backbone mobilevit                    # built-in shapes set and its short CPU recipe
    python train.py --backbone repvit --data datasets/coco128 --img 640 --epochs 100
    python train.py --resume                                # continue the latest run exactly where it stopped
    torchrun --nproc_per_node 4 train.py --backbone emo --data datasets/mydata --device cuda   # DDP, 4 GPUs
    torchrun --nnodes 2 --node_rank R --master_addr HOST --nproc_per_node 8 train.py ...      # multi-node

The loop below is YOLOv5's: SGD (nesterov, momentum 0.937) with three parameter groups, warm-up, linear or
cosine LR decay to lrf = 0.01, gradient accumulation to a nominal batch of 64, an EMA of the weights, AMP on
CUDA, gradient-norm clipping. The built-in dataset brings its own short recipe (RECIPES); any flag you give
overrides it. Each epoch reseeds every RNG from (seed, epoch, rank), so a resumed run draws exactly the
shuffles and augmentations an uninterrupted run would.
"""
import argparse
import csv
import json
import logging
import math
import os
import random
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from lightdet.backbones import BACKBONES, load_pretrained
from lightdet.checkpoint import load_checkpoint, save_checkpoint
from lightdet.data import build_dataloader, build_dataset, resolve_data
from lightdet.evaluate import evaluate, format_table
from lightdet.losses import YOLOLoss
from lightdet.model import build_model
from lightdet.necks import NECK_ATTENTIONS, NECK_BLOCKS
from lightdet.optim import ModelEMA, build_optimizer, set_learning_rate, unwrap
from lightdet.plots import plot_results

# Defaults per dataset; a flag on the command line always wins. YOLOv5's long recipe makes only ~250 updates
# in 10 CPU minutes, so the built-in set trains with AdamW, no accumulation and a short warm-up instead, from
# images cached in RAM (~0.6 GB; decoding was a third of the CPU time at 256 px). Its lr: cspdarknet, 3 epochs,
# reached mAP50 0.18 / 0.22 / 0.14 with 1e-3 / 3e-3 / 6e-3; 2e-3 is between the best two and gentler on the
# attention backbones.
RECIPES = {
    "shapes": dict(img=256, batch=16, epochs=5, optimizer="AdamW", lr=2e-3, nominal_batch=16,
                   warmup_iters=100, schedule="cosine", val_every=0, close_mosaic=1, cache=True),
    "shapes-hard": dict(img=320, batch=16, epochs=5, optimizer="AdamW", lr=2e-3, nominal_batch=16,
                        warmup_iters=100, schedule="cosine", val_every=0, close_mosaic=1, cache=True),
    "yolov5": dict(img=640, batch=16, epochs=100, optimizer="SGD", lr=0.01, nominal_batch=64,
                   warmup_iters=None, schedule="linear", val_every=1, close_mosaic=0, cache=False),
}
# On the built-in `shapes` set the schedule depends on the backbone: what its default variant trains in about
# 9 minutes on the 2-core development CPU, from its measured training speed (img/s at 256: cspdarknet 47,
# efficientvit 36, mobilevit 22, mobilenetv3 19, emo 17, repvit 14). Learning is slow until about the fourth
# epoch, so the slower backbones train at 192 px, where they run 1.6-1.9× faster (mobilevit 36, mobilenetv3 33,
# emo 28, repvit 23) and get more epochs; RepViT at 160 px (34 img/s): 6 epochs there reached mAP50 0.36,
# 4 at 192 px 0.27-0.32. MobileViT did better at 192 px (6 epochs 0.29) than at 160 (9 epochs 0.26).
# README has the measured times and mAP.
SHAPES_PER_BACKBONE = {
    "cspdarknet": dict(epochs=8),
    "efficientvit": dict(epochs=6),
    "mobilevit": dict(epochs=6, img=192),
    "mobilenetv3": dict(epochs=6, img=192),
    "emo": dict(epochs=5, img=192),
    "repvit": dict(epochs=6, img=160),
}
WARMUP_EPOCHS = 3          # YOLOv5: max(3 epochs, 100 iterations) unless the recipe says otherwise
GRAD_CLIP_NORM = 10.0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Train a lightdet detector.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--backbone", default="cspdarknet", help=f"one of: {', '.join(BACKBONES)}")
    p.add_argument("--scale", default="n", help="neck (and CSPDarknet) size: n s m l x")
    p.add_argument("--neck-block", default="c3", choices=list(NECK_BLOCKS), help="the neck's CSP block")
    p.add_argument("--neck-attention", choices=list(NECK_ATTENTIONS), help="a block after each neck output")
    p.add_argument("--data", default="shapes", help="shapes | shapes-hard | YOLO folder | .txt list | COCO json")
    p.add_argument("--names", default=None, help="class names file (one per line) if the dataset has none")
    p.add_argument("--img", type=int, help="training and validation size (multiple of 32)")
    p.add_argument("--batch", type=int, help="total batch size (split across DDP processes)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--workers", type=int,
                   help="dataloader processes (default: 4 with CUDA, a quarter of the cores on CPU)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda, cuda:1")
    p.add_argument("--box-loss", default="ciou",
                   help="iou giou diou ciou eiou focal_eiou siou wiou1 wiou2 wiou3")
    p.add_argument("--optimizer", choices=("SGD", "AdamW"))
    p.add_argument("--lr", type=float, help="initial learning rate")
    p.add_argument("--schedule", choices=("linear", "cosine"), help="LR decay to 0.01 × lr")
    p.add_argument("--nominal-batch", type=int, help="accumulate gradients up to this batch size")
    p.add_argument("--val-every", type=int, help="validate every N epochs (0: only after the last)")
    p.add_argument("--close-mosaic", type=int, help="train the last N epochs without mosaic, on whole images")
    p.add_argument("--weights", help="start from a lightdet checkpoint (a new class count re-initialises the head)")
    p.add_argument("--pretrained-backbone", help="timm / official backbone checkpoint for the family's converter")
    p.add_argument("--freeze-backbone-epochs", type=int, default=0)
    p.add_argument("--resume", nargs="?", const="latest", help="continue a run: its last.pt, or the latest run")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across DDP processes")
    p.add_argument("--cache", action=argparse.BooleanOptionalAction, help="keep decoded images in RAM")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--project", default="runs/train")
    p.add_argument("--name", default="exp")
    p.add_argument("--exist-ok", action="store_true", help="reuse runs/train/<name> instead of numbering a new one")
    return p.parse_args(argv)


def resolve_args(args):
    """Fill unset flags from the dataset's recipe; round the image size up to a multiple of 32."""
    recipe = dict(RECIPES.get(args.data, RECIPES["yolov5"]))
    if args.data == "shapes":
        recipe.update(SHAPES_PER_BACKBONE.get(args.backbone.split("_")[0], {}))
    for key, value in recipe.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.img % 32:
        rounded = math.ceil(args.img / 32) * 32
        print(f"--img {args.img} is not a multiple of 32; using {rounded}")
        args.img = rounded
    if args.backbone not in BACKBONES:
        raise SystemExit(f"error: unknown backbone {args.backbone!r}; valid names: {', '.join(BACKBONES)}")
    return args


def default_workers(device):
    """Loader processes: up to 4 with CUDA. On CPU they take cores from the compute threads, so a quarter of
    the cores: none on a 2-core machine, where loading inside the training process is faster (cspdarknet at 256
    with cached images: 49 img/s with 0 workers, 43 with 2)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(4, cores) if device.type == "cuda" else min(4, cores // 4)


def find_resume_checkpoint(resume, project):
    if resume != "latest":
        return Path(resume)
    candidates = sorted(Path(project).glob("*/weights/last.pt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise SystemExit(f"error: --resume found no runs under {project}/*/weights/last.pt")
    return candidates[-1]


def new_run_dir(project, name, exist_ok):
    path = Path(project) / name
    number = 2
    while path.exists() and not exist_ok:
        path = Path(project) / f"{name}{number}"
        number += 1
    (path / "weights").mkdir(parents=True, exist_ok=True)
    return path


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_detector(args, num_classes, device, log):
    model = build_model(args.backbone, num_classes=num_classes, scale=args.scale, neck_block=args.neck_block,
                        neck_attention=args.neck_attention)
    if args.weights:
        checkpoint = load_checkpoint(args.weights)
        state = checkpoint.get("ema") or checkpoint["model"]
        if checkpoint["config"].get("num_classes") != num_classes:
            state = {k: v for k, v in state.items() if not k.startswith("head.pred.")}
            log(f"{args.weights} has {checkpoint['config'].get('num_classes')} classes, the data {num_classes}: "
                "the head's prediction layers are re-initialised")
        report = model.load_state_dict(state, strict=False)
        if report.unexpected_keys or [k for k in report.missing_keys if not k.startswith("head.pred.")]:
            raise SystemExit(f"error: {args.weights} does not fit backbone {args.backbone!r} scale {args.scale!r}: "
                             f"missing {report.missing_keys[:5]}, unexpected {report.unexpected_keys[:5]}")
        log(f"loaded {args.weights}")
    if args.pretrained_backbone:
        log(f"pretrained backbone {args.pretrained_backbone}: {load_pretrained(model.backbone, args.pretrained_backbone)}")
    return model.to(device)


def wrap(model, rank, device):
    """DistributedDataParallel when running under torchrun (rank >= 0), the model itself otherwise."""
    if rank < 0:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(unwrap(model), device_ids=ids)


def train(args):
    rank, world = int(os.environ.get("RANK", -1)), int(os.environ.get("WORLD_SIZE", 1))
    device = torch.device(args.device)
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    main_process = rank <= 0
    log = print if main_process else (lambda *a, **k: None)

    checkpoint = None
    if args.resume:
        resume_path = find_resume_checkpoint(args.resume, args.project)
        checkpoint = load_checkpoint(resume_path)
        args = argparse.Namespace(**{**checkpoint["args"], "resume": str(resume_path), "workers": args.workers,
                                     "device": args.device})
        run_dir = resume_path.parent.parent
        log(f"resuming {resume_path} after epoch {checkpoint['epoch'] + 1}")
    else:
        args = resolve_args(args)
        run_dir = new_run_dir(args.project, args.name, args.exist_ok) if main_process else None
    if args.workers is None:
        args.workers = default_workers(device)
    seed_everything(args.seed)

    if world > 1 and not main_process:
        dist.barrier()   # rank 0 generates the built-in dataset once; the others wait for it
    spec = resolve_data(args.data, names_file=args.names)
    if world > 1 and main_process:
        dist.barrier()
    names = spec.names
    train_set = build_dataset(spec, "train", args.img, augment=True, batch_size=args.batch, cache=args.cache)
    batch = args.batch // max(world, 1)
    sampler = torch.utils.data.distributed.DistributedSampler(train_set, seed=args.seed) if world > 1 else None
    train_loader = build_dataloader(train_set, batch, args.workers, shuffle=sampler is None, sampler=sampler)
    if main_process:
        val_set = build_dataset(spec, "val", args.img, augment=False, rect=True, batch_size=batch * 2, cache=args.cache)
        val_loader = build_dataloader(val_set, batch * 2, args.workers)

    # channels-last: oneDNN's (and cuDNN's) fast convolution layout; 1.2-2× faster training on CPU here
    model = build_detector(args, len(names), device, log).to(memory_format=torch.channels_last)
    if world > 1 and args.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    accumulate = max(round(args.nominal_batch / args.batch), 1)
    weight_decay = 5e-4 * args.batch * accumulate / args.nominal_batch
    optimizer = build_optimizer(model, args.optimizer, args.lr, weight_decay=weight_decay)
    criterion = YOLOLoss(model.head.anchors.tolist(), model.head.strides, len(names), box_loss=args.box_loss,
                         imgsz=args.img).to(device)
    ema = ModelEMA(model) if main_process else None
    start_epoch, best_fitness = 0, 0.0
    if checkpoint:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        criterion.load_state_dict(checkpoint["loss"])
        if ema:
            ema.ema.load_state_dict(checkpoint["ema"])
            ema.updates = checkpoint["ema_updates"]
        start_epoch, best_fitness = checkpoint["epoch"] + 1, checkpoint["best_fitness"]
    cuda = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=cuda)
    iterations = len(train_loader)
    total = args.epochs * iterations
    warmup = args.warmup_iters if args.warmup_iters is not None else max(round(WARMUP_EPOCHS * iterations), 100)
    if main_process:
        (run_dir / "config.json").write_text(json.dumps({**vars(args), "model": model.config}, indent=2))
        log(f"{args.backbone} scale {args.scale}: {sum(p.numel() for p in model.parameters()):,} parameters; "
            f"{len(train_set)} training images at {args.img}, batch {args.batch}, accumulate {accumulate}, "
            f"{args.optimizer} lr {args.lr}, {args.epochs} epochs; logging to {run_dir}")

    def save(epoch, fitness_improved):
        state = {"model": unwrap(model).state_dict(), "ema": ema.ema.state_dict(), "ema_updates": ema.updates,
                 "optimizer": optimizer.state_dict(), "loss": criterion.state_dict(), "epoch": epoch,
                 "best_fitness": best_fitness, "config": unwrap(model).config, "names": list(names),
                 "args": vars(args)}
        save_checkpoint(state, run_dir / "weights" / "last.pt")
        if fitness_improved:
            save_checkpoint(state, run_dir / "weights" / "best.pt")

    frozen, net, metrics, completed = None, model, None, start_epoch - 1
    try:
        for epoch in range(start_epoch, args.epochs):
            should_freeze = epoch < args.freeze_backbone_epochs
            if should_freeze != frozen:   # (re)wrap for DDP: it fixes the trainable set at construction
                for p in unwrap(model).backbone.parameters():
                    p.requires_grad_(not should_freeze)
                net, frozen = wrap(model, rank, device), should_freeze
                if should_freeze:
                    log(f"backbone frozen for epochs 1..{args.freeze_backbone_epochs}")
            seed_everything(args.seed + 1000 * epoch + max(rank, 0))
            if sampler:
                sampler.set_epoch(epoch)
            train_set.mosaic = epoch < args.epochs - args.close_mosaic   # workers restart each epoch
            net.train()
            mean_items = torch.zeros(3, device=device)
            bar = tqdm(train_loader, total=iterations, disable=not main_process, ncols=110,
                       bar_format="{l_bar}{bar:10}{r_bar}")
            for i, (images, targets, _, _) in enumerate(bar):
                step = i + iterations * epoch
                set_learning_rate(optimizer, step, total, warmup, args.schedule, final=0.01,
                                  warmup_bias_lr=0.1 if args.optimizer == "SGD" else 0.0)
                images = images.to(device, non_blocking=True, memory_format=torch.channels_last).float() / 255
                with torch.autocast("cuda", enabled=cuda):
                    loss, items = criterion(net(images), targets.to(device))
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"non-finite loss at epoch {epoch + 1} iteration {i}: box {items[0]:.4g}, "
                        f"obj {items[1]:.4g}, cls {items[2]:.4g}; try a lower --lr or check the labels")
                scaler.scale(loss * max(world, 1)).backward()   # DDP averages gradients over processes
                if (step + 1) % accumulate == 0 or i == iterations - 1:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP_NORM)
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    if ema:
                        ema.update(model)
                mean_items = (mean_items * i + items.detach()) / (i + 1)
                memory = f"{torch.cuda.memory_reserved(device) / 2**30:.2f}G" if cuda else "cpu"
                bar.set_description(f"{epoch + 1}/{args.epochs} {memory} box {mean_items[0]:.4f} "
                                    f"obj {mean_items[1]:.4f} cls {mean_items[2]:.4f} "
                                    f"targets {len(targets)} img {images.shape[-1]}")
            if main_process:
                metrics = None
                if epoch == args.epochs - 1 or (args.val_every and (epoch + 1) % args.val_every == 0):
                    metrics = evaluate(ema.ema, val_loader, device=device, amp=cuda)
                    log(f"epoch {epoch + 1}: P {metrics['P']:.3f} R {metrics['R']:.3f} "
                        f"mAP50 {metrics['mAP50']:.3f} mAP50-95 {metrics['mAP50_95']:.3f}")
                fitness = 0.1 * metrics["mAP50"] + 0.9 * metrics["mAP50_95"] if metrics else None
                improved = fitness is not None and fitness >= best_fitness
                best_fitness = max(best_fitness, fitness or 0.0)
                save(epoch, improved)
                log_results(run_dir, epoch, mean_items.tolist(), optimizer.param_groups[0]["lr"], metrics)
            completed = epoch
    except KeyboardInterrupt:
        if main_process:
            save(completed, False)   # a partly trained epoch is trained again on --resume
            log(f"\ninterrupted: saved {run_dir / 'weights' / 'last.pt'}; continue with --resume")
        raise SystemExit(130)
    finally:
        if world > 1:
            dist.destroy_process_group()
    if main_process:
        log(f"\n{format_table(metrics)}\nweights: {run_dir / 'weights'}" if metrics else
            f"nothing to train: {args.epochs} epochs were already done")
    return model, metrics, run_dir


def log_results(run_dir, epoch, items, lr, metrics):
    """Append one row to results.csv and redraw results.png."""
    row = {"epoch": epoch + 1, "box_loss": items[0], "obj_loss": items[1], "cls_loss": items[2], "lr": lr,
           "P": "", "R": "", "mAP50": "", "mAP50-95": ""}
    if metrics:
        row.update(P=metrics["P"], R=metrics["R"], mAP50=metrics["mAP50"], **{"mAP50-95": metrics["mAP50_95"]})
    path = run_dir / "results.csv"
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)
    with open(path, newline="") as f:
        plot_results(list(csv.DictReader(f)), run_dir / "results.png")


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(message)s")   # the dataset scan's summary
    args = parse_args(argv)
    try:
        train(args)
    except (FileNotFoundError, ValueError, FloatingPointError) as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
