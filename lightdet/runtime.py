"""Run a detector from its weights file: a lightdet checkpoint in PyTorch, or an exported ONNX file in ONNX Runtime.

eval.py and predict.py load through `load_detector`, so `--weights best.onnx` checks an exported file end to
end with the same data pipeline, NMS and metrics as the checkpoint it came from. onnx and onnxruntime are an
optional extra (`pip install -e ".[export]"`), imported only when an ONNX file is used.
"""
import json
from pathlib import Path

import torch
from torch import nn

from .checkpoint import load_checkpoint
from .data.augment import FILL
from .heads.anchor import AnchorHead
from .heads.rtdetr import RTDETRHead
from .model import Detector

HEADS = {"anchor": AnchorHead, "rtdetr": RTDETRHead}

INSTALL_HINT = 'ONNX export and ONNX Runtime need the optional packages: pip install -e ".[export]"'


class MissingExtra(ImportError):
    """onnx / onnxruntime are not installed; the message says how to install them."""


def require_onnx():
    """Import and return (onnx, onnxruntime), or raise MissingExtra with the one-line install hint."""
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise MissingExtra(INSTALL_HINT) from None
    return onnx, onnxruntime


def ort_session(path, threads=None):
    """An ONNX Runtime CPU session for the file at `path`; `threads` caps its intra-op threads (None: ORT's)."""
    _, ort = require_onnx()
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxDetector(nn.Module):
    """An ONNX file written by export.py, run by ONNX Runtime on the CPU and used like an eval-mode Detector:
    images (B, 3, H, W) RGB 0..1 -> (decoded (B, N, 5 + nc), None); the raw maps are not in the file.

    Class names, stride and export size come from the file's metadata. A file exported without --dynamic takes
    one input shape: smaller images are padded on the bottom and right with the letterbox grey (box coordinates
    do not move) and batches are split or padded to the exported batch size.
    """

    def __init__(self, path, threads=None):
        super().__init__()
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX file not found: {self.path}")
        require_onnx()
        try:
            self.session = ort_session(self.path, threads)
        except Exception as error:   # ONNX Runtime's errors derive from Exception alone
            raise ValueError(f"{self.path}: ONNX Runtime cannot load it ({str(error).splitlines()[0]})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        missing = [key for key in ("names", "stride", "imgsz", "output", "args") if key not in meta]
        if missing:
            raise ValueError(f"{self.path} was not written by lightdet's export.py (no {', '.join(missing)} in "
                             f"its metadata)")
        if meta["output"] != "decoded":
            raise ValueError(f"{self.path} outputs the raw head maps (exported with --raw); evaluation and "
                             f"prediction need the decoded output: export again without --raw")
        self.names = json.loads(meta["names"])
        self.stride = int(meta["stride"])
        self.imgsz = tuple(json.loads(meta["imgsz"]))                 # (height, width) it was exported at
        self.record = {"args": {**json.loads(meta["args"]), "img": max(self.imgsz)},
                       "weights": meta.get("weights", "model")}
        head = json.loads(meta.get("config", "{}")).get("head", "anchor")
        self.postprocess = HEADS[head].postprocess   # the same NMS or top-k as the PyTorch model's
        self.input_name = self.session.get_inputs()[0].name
        # Dynamic axes appear as names (strings), fixed ones as ints.
        batch, _, height, width = self.session.get_inputs()[0].shape
        self.fixed_batch = batch if isinstance(batch, int) else None
        self.fixed_size = (height, width) if isinstance(height, int) and isinstance(width, int) else None

    def forward(self, images):
        b, _, h, w = images.shape
        pixels = images.detach().float().cpu()
        if self.fixed_size is not None and (h, w) != self.fixed_size:
            if h > self.fixed_size[0] or w > self.fixed_size[1]:
                raise ValueError(f"{self.path} takes images up to {self.fixed_size[0]}×{self.fixed_size[1]} "
                                 f"(exported without --dynamic), got {h}×{w}: use --img {max(self.fixed_size)} "
                                 f"or export with --dynamic")
            fill = FILL[0] / 255
            pixels = nn.functional.pad(pixels, (0, self.fixed_size[1] - w, 0, self.fixed_size[0] - h), value=fill)
        chunk = self.fixed_batch or b
        outputs = []
        for part in pixels.split(chunk):
            n = len(part)
            if n < chunk:   # the last partial batch of a fixed-batch file: pad with empty images, drop their rows
                part = torch.cat((part, part.new_zeros(chunk - n, *part.shape[1:])))
            decoded = self.session.run(None, {self.input_name: part.numpy()})[0]
            outputs.append(torch.from_numpy(decoded[:n]))
        return torch.cat(outputs).to(images.device), None

    def fuse(self):
        """Nothing to do: export.py wrote the fused model."""
        return self


def load_detector(path, weights="ema"):
    """Weights file -> (model, record). record: {"args": the training run's arguments, "weights": "ema" or
    "model"}. A `.onnx` file gives an OnnxDetector (its args' img is the size it was exported at); anything else
    is read as a lightdet checkpoint and gives a Detector with the `weights` it saved ("ema" when present)."""
    if Path(path).suffix.lower() == ".onnx":
        model = OnnxDetector(path)
        return model, model.record
    checkpoint = load_checkpoint(path)
    model = Detector.from_checkpoint(checkpoint, weights=weights)
    # a run's final checkpoints are stripped to the EMA weights, saved as "model"
    ema = weights == "ema" and (bool(checkpoint.get("ema")) or checkpoint.get("stripped", False))
    return model, {"args": checkpoint.get("args") or {}, "weights": "ema" if ema else "model"}
