"""What train.py, eval.py and predict.py share on the command line.

Bad numbers are refused by argparse itself (one line naming the flag, exit status 2) before a dataset is read
or a folder made; a device that does not exist is named along with the ones that do; run folders are numbered
as YOLOv5 numbers them (exp, exp2, exp3, ...).
"""
import argparse
import math
from pathlib import Path

import torch

STRIDE = 32   # the detector's largest stride: input sides must be multiples of it


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show a flag's default only when it has a real one: flags left to the dataset's recipe (default None)
    describe their defaults in their help text instead of printing "(default: None)"."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS \
                or "%(default)" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _number(kind, low, strict=False, high=None):
    """An argparse `type` that parses `kind` and refuses values below `low` (or not above it, with
    `strict`) and above `high`; argparse puts the flag's name in front of the message."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if high is not None and not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low:g} and {high:g}, got {text}")
        if strict and not value > low:
            raise argparse.ArgumentTypeError(f"must be above {low:g}, got {text}")
        if value < low or not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be at least {low:g}, got {text}")
        return value
    parse.__name__ = kind.__name__   # argparse names the type in its own messages
    return parse


positive_int = _number(int, 1)
non_negative_int = _number(int, 0)
image_size = _number(int, STRIDE)
positive_float = _number(float, 0.0, strict=True)
non_negative_float = _number(float, 0.0)
unit_interval = _number(float, 0.0, high=1.0)


def fraction(text):
    """0 < f <= 1."""
    value = _number(float, 0.0, strict=True)(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 1, got {text}")
    return value


def round_image_size(size, flag="--img", log=print):
    """The next multiple of the stride, said aloud when it differs (the neck's feature maps must line up)."""
    rounded = math.ceil(size / STRIDE) * STRIDE
    if rounded != size:
        log(f"{flag} {size} is not a multiple of {STRIDE}; using {rounded}")
    return rounded


def available_devices():
    names = ["cpu"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        names.append("mps")
    return names


DEVICE_HELP = "cpu, cuda, cuda:N or mps (default: cuda when available, else cpu)"


def select_device(name=None):
    """--device as a torch.device: cpu, cuda, cuda:N, N (YOLOv5's spelling of cuda:N) or mps; None: cuda when
    available, else cpu. A device this machine lacks raises SystemExit naming the devices it has."""
    name = name or ("cuda" if torch.cuda.is_available() else "cpu")
    text = str(name).strip().lower()
    text = f"cuda:{text}" if text.isdigit() else text
    here = f"available here: {', '.join(available_devices())}"
    try:
        device = torch.device(text)
    except RuntimeError:
        raise SystemExit(f"error: unknown device {name!r}; use cpu, cuda, cuda:N or mps ({here})") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise SystemExit(f"error: --device {name}: CUDA is not available (torch {torch.__version__}, {build}); "
                             f"{here}")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise SystemExit(f"error: --device {name}: there is no GPU {device.index}; {here}")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise SystemExit(f"error: --device {name}: MPS is not available; {here}")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise SystemExit(f"error: unknown device {name!r}; use cpu, cuda, cuda:N or mps ({here})")
    return device


def increment_path(project, name, exist_ok=False):
    """project/name, or the first free project/name2, name3, ... unless `exist_ok`. Nothing is created."""
    path = Path(project) / name
    number = 2
    while path.exists() and not exist_ok:
        path = Path(project) / f"{name}{number}"
        number += 1
    return path
