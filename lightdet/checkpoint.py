"""Checkpoints: plain dicts of tensors and Python types, written atomically and without being interrupted.

Format (docs/design.md): {"model": state_dict, "config": build_model kwargs, "names": [class names], "epoch",
"optimizer", "ema", "best_fitness", "args"} — loadable with `torch.load(path, weights_only=True)`. train.py
adds what an exact resume needs (the loss state, EMA updates, the results rows); at the end of a run
`strip_checkpoint` keeps only what inference needs.
"""
import contextlib
import os
import signal
import tempfile
import threading
from pathlib import Path

import torch


@contextlib.contextmanager
def interrupts_deferred():
    """Hold Ctrl-C (SIGINT) until the block is done, then deliver it. A KeyboardInterrupt raised inside
    torch.save's zip writer surfaces as a RuntimeError and leaves a half-written file behind."""
    previous = signal.getsignal(signal.SIGINT)
    # Only the main thread can install a handler; one installed outside Python (None) could not be restored.
    if threading.current_thread() is not threading.main_thread() or previous is None:
        yield
        return
    received = []
    signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received and previous is not signal.SIG_IGN:
            if callable(previous):
                previous(signal.SIGINT, None)   # Python's own handler raises KeyboardInterrupt here
            elif previous == signal.SIG_DFL:
                os.kill(os.getpid(), signal.SIGINT)
            else:
                raise KeyboardInterrupt


def save_checkpoint(checkpoint, path):
    """Write to a temporary file beside `path`, then rename: an interrupted save never corrupts the last good
    one, and Ctrl-C waits until the file is complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with interrupts_deferred():
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


def remove_stale_temporaries(folder):
    """Delete the temporary files of saves that a killed process (SIGKILL, power loss) never finished."""
    stale = sorted(Path(folder).glob(".*.pt.*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def load_checkpoint(path, map_location="cpu"):
    """Load a lightdet checkpoint; a missing, empty or foreign file raises an error naming the path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty (0 bytes): not a checkpoint (an interrupted copy or download?)")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        first_line = (str(error).splitlines() or ["no message"])[0]
        raise ValueError(f"{path} is not a lightdet checkpoint (torch.load with weights_only=True failed: "
                         f"{error.__class__.__name__}: {first_line})") from None
    if not isinstance(checkpoint, dict) or "model" not in checkpoint or "config" not in checkpoint:
        raise ValueError(f"{path} is not a lightdet checkpoint (expected a dict with 'model' and 'config')")
    return checkpoint


def strip_checkpoint(checkpoint):
    """What inference and fine-tuning need: the EMA weights (when trained with one) as "model", the config,
    names, epoch, fitness, run arguments and results; no optimizer state and no second copy of the weights.
    Kept in float32, so that eval.py reproduces the mAP the run printed."""
    keys = ("config", "names", "epoch", "best_fitness", "args", "results")
    kept = {k: checkpoint[k] for k in keys if k in checkpoint}
    return {"model": checkpoint.get("ema") or checkpoint["model"], **kept, "stripped": True}


def architecture(config):
    """'cspdarknet scale n' (or 'mobilenetv3_small with the rtdetr head') from a build config."""
    if config.get("head", "anchor") != "anchor":
        return f"{config.get('backbone')} with the {config['head']} head"
    return f"{config.get('backbone')} scale {config.get('scale')}"


def load_weights(model, checkpoint, path, log=print):
    """Load a checkpoint's weights (the EMA's when saved) into `model` to start training from them.

    Another class count re-initialises the head's prediction layers (said aloud); any other difference in
    tensor names or shapes (another backbone or scale) raises one ValueError naming both architectures."""
    state = checkpoint.get("ema") or checkpoint["model"]
    num_classes = model.config.get("num_classes")
    per_class = tuple(f"head.{prefix}" for prefix in model.head.CLASS_DEPENDENT)
    if checkpoint["config"].get("num_classes") != num_classes:
        state = {k: v for k, v in state.items() if not k.startswith(per_class)}
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.startswith(per_class)]
    unexpected = [k for k in state if k not in own]
    reshaped = [k for k in state if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or reshaped:
        example = (f"{reshaped[0]} is {tuple(state[reshaped[0]].shape)} there, {tuple(own[reshaped[0]].shape)} "
                   "here" if reshaped else f"{(missing or unexpected)[0]} is {'missing' if missing else 'unexpected'}")
        raise ValueError(f"{path} holds a {architecture(checkpoint['config'])} detector but this run builds a "
                         f"{architecture(model.config)}: {len(missing)} tensors missing, "
                         f"{len(unexpected)} unexpected, {len(reshaped)} of another shape (e.g. {example}); "
                         "pass the checkpoint's --backbone and --scale")
    model.load_state_dict(state, strict=False)
    if checkpoint["config"].get("num_classes") != num_classes:
        log(f"{path} has {checkpoint['config'].get('num_classes')} classes, the data {num_classes}: "
            "the head's class-dependent layers are re-initialised")
    log(f"loaded {path}")
