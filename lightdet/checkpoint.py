"""Checkpoints: plain dicts of tensors and Python types, written atomically.

Format (docs/design.md): {"model": state_dict, "config": build_model kwargs, "names": [class names], "epoch",
"optimizer", "ema", "best_fitness", "args"} — loadable with `torch.load(path, weights_only=True)`.
"""
import os
import tempfile
from pathlib import Path

import torch


def save_checkpoint(checkpoint, path):
    """Write to a temporary file beside `path`, then rename: an interrupted save never corrupts the last good one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path, map_location="cpu"):
    """Load a lightdet checkpoint; a missing file or a foreign format raises an error naming the path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise ValueError(f"{path} is not a lightdet checkpoint (torch.load with weights_only=True failed: "
                         f"{error.__class__.__name__}: {str(error).splitlines()[0]})") from None
    if not isinstance(checkpoint, dict) or "model" not in checkpoint or "config" not in checkpoint:
        raise ValueError(f"{path} is not a lightdet checkpoint (expected a dict with 'model' and 'config')")
    return checkpoint
