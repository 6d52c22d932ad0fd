"""A training run's folder, runs/train/<name>, as YOLOv5 users know it, kept consistent through interruptions.

    weights/last.pt      the state after the last completed epoch, all that `--resume` needs (before the first
                         epoch: the initial state); written atomically, never mid-epoch
    weights/best.pt      the same at the best fitness so far (YOLOv5's 0.1 mAP50 + 0.9 mAP50-95)
    weights/epochN.pt    every N epochs with --save-period
    results.csv, .png    one row per epoch, rewritten from the copy of the rows inside last.pt
    labels.jpg, train_batch0.jpg            drawn when the run starts
    confusion_matrix.png, PR_curve.png      from the final validation
At the end, last.pt and best.pt are stripped to what inference needs (the EMA weights).
"""
import csv
from pathlib import Path

from .checkpoint import (interrupts_deferred, load_checkpoint, remove_stale_temporaries, save_checkpoint,
                         strip_checkpoint)
from .plots import plot_confusion, plot_pr_curves, plot_results


def find_last(resume, project):
    """The last.pt that --resume names, or the most recently written one under `project`."""
    if resume != "latest":
        return Path(resume)
    candidates = sorted(Path(project).glob("*/weights/last.pt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise FileNotFoundError(f"--resume found no runs under {project}/*/weights/last.pt")
    return candidates[-1]


def open_run_dir(run_dir, log=print):
    """Make the folder (and weights/), removing the temporary files of saves that a kill never finished."""
    (run_dir / "weights").mkdir(parents=True, exist_ok=True)
    for stale in remove_stale_temporaries(run_dir / "weights"):
        log(f"removed {stale}, left by a save that never finished")
    return run_dir


def fitness(metrics):
    return 0.1 * metrics["mAP50"] + 0.9 * metrics["mAP50_95"] if metrics else None


def save_epoch(run_dir, state, best, save_period=0):
    """last.pt (and best.pt, and epochN.pt every `save_period` epochs) from one training state. best.pt goes
    first: after a kill between the two, the epoch is trained again and writes best.pt once more."""
    if best:
        save_checkpoint(state, run_dir / "weights" / "best.pt")
    save_checkpoint(state, run_dir / "weights" / "last.pt")
    completed = state["epoch"] + 1
    if save_period and completed and completed % save_period == 0:
        save_checkpoint(state, run_dir / "weights" / f"epoch{completed}.pt")


def results_row(epoch, losses, lr, metrics):
    """One row of results.csv: epoch (from 1), the mean training losses ({name: value}, the criterion's item
    names), the LR, and the metrics if validated."""
    row = {"epoch": epoch + 1, **{f"{name}_loss": value for name, value in losses.items()}, "lr": lr,
           "P": "", "R": "", "mAP50": "", "mAP50-95": ""}
    if metrics:
        row.update(P=metrics["P"], R=metrics["R"], mAP50=metrics["mAP50"], **{"mAP50-95": metrics["mAP50_95"]})
    return row


def write_results(run_dir, rows):
    """results.csv and results.png from all the rows (those last.pt holds), so they never fall out of step."""
    if not rows:
        return
    with open(run_dir / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot_results(rows, run_dir / "results.png")


def finish(run_dir, metrics, names):
    """Strip last.pt and best.pt (Ctrl-C waits), draw the final validation's confusion matrix and PR curves."""
    with interrupts_deferred():
        for weights in (run_dir / "weights" / "last.pt", run_dir / "weights" / "best.pt"):
            if weights.is_file():
                save_checkpoint(strip_checkpoint(load_checkpoint(weights)), weights)
    if metrics:
        plot_confusion(metrics["confusion"], names, run_dir / "confusion_matrix.png")
        plot_pr_curves(*metrics["pr_curve"], metrics["per_class"], run_dir / "PR_curve.png")
