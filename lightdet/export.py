"""ONNX export of a trained detector, checked in ONNX Runtime against PyTorch (YOLOv5's export.py, ONNX only).

The checkpoint's model (its EMA weights when saved) is fused — BatchNorm folded, RepViT's branches merged — and
traced in eval mode. The file outputs the decoded `(B, N, 5 + nc)` tensor (rows cx, cy, w, h in input pixels,
objectness, class scores), or with `raw` the three raw head maps `(B, na, h, w, 5 + nc)`. Its metadata holds
the class names, stride, export size and the training run's arguments, so eval.py and predict.py run it alone.

Exporter: torch.onnx's TorchScript tracer (`dynamo=False`), not the torch.export-based default of torch ≥ 2.9.
With dynamic sizes, torch.export's symbolic shape solver ran for over ten minutes on EMO's window padding
without finishing, and it takes 10–20 s per model where tracing takes 1–4 s. Tracing has a known weakness:
Python arithmetic on sizes is frozen at the export size. So every file runs in ONNX Runtime before it is
written: at the export size, and with `dynamic` also at a second size and batch; a mismatch is refused.
"""
import json
import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from .checkpoint import load_checkpoint
from .model import Detector
from .runtime import ort_session, require_onnx

DEFAULT_OPSET = 17   # LayerNormalization is one operator from 17 on; ONNX Runtime ≥ 1.11 and TensorRT ≥ 8.6 run it
TOLERANCE = 1e-4     # max |ONNX Runtime − PyTorch| allowed, relative to the output's scale


class ExportView(nn.Module):
    """The eval-mode detector with the output the file holds: the decoded tensor, or the raw maps with `raw`."""

    def __init__(self, model, raw=False):
        super().__init__()
        self.model = model
        self.raw = raw

    def forward(self, images):
        decoded, maps = self.model(images)
        return tuple(maps) if self.raw else decoded


def export_module(module, images, path, dynamic=False, opset=DEFAULT_OPSET, output_names=None):
    """Trace `module` on `images` into an ONNX file at `path`; `dynamic` frees the batch, height and width axes
    of the input and the matching axes of every output."""
    output_names = list(output_names or ["output"])
    dynamic_axes = None
    if dynamic:
        dynamic_axes = {"images": {0: "batch", 2: "height", 3: "width"}}
        # decoded (B, N, no): B and N vary; raw maps (B, na, h, w, no): B, h and w vary
        dynamic_axes.update({name: {0: "batch", 1: "anchors"} if len(output_names) == 1 else
                             {0: "batch", 2: f"{name}_height", 3: f"{name}_width"} for name in output_names})
    with warnings.catch_warnings():
        # The tracer's deprecation notice (see the module docstring for the choice), and its warnings that a
        # size was frozen: the ONNX Runtime check after export finds any that matter.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(module, (images,), str(path), dynamo=False, opset_version=opset, input_names=["images"],
                          output_names=output_names, dynamic_axes=dynamic_axes, do_constant_folding=True)


def simplify(path):
    """Rewrite the file with ONNX Runtime's basic graph optimisations: constant folding and redundant-node
    removal, standard ONNX operators only, so the file stays portable. Returns (nodes before, nodes after)."""
    onnx, ort = require_onnx()
    before = len(onnx.load(str(path)).graph.node)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    optimized = Path(path).with_suffix(".simplified.onnx")
    options.optimized_model_filepath = str(optimized)
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    os.replace(optimized, path)
    return before, len(onnx.load(str(path)).graph.node)


def compare(view, session, images):
    """Run `images` through PyTorch and ONNX Runtime; returns one (label, max |diff|, tolerance) per output part:
    boxes against their pixel scale and scores against 1 for the decoded output, each map for raw ones."""
    with torch.no_grad():
        expected = view(images)
    try:
        got = session.run(None, {"images": images.numpy()})
    except Exception as error:   # ONNX Runtime's errors derive from Exception alone
        raise ValueError(f"ONNX Runtime failed: {str(error).splitlines()[0]}") from None
    if view.raw:
        return [(f"raw map P{level + 3}", (torch.from_numpy(out) - ref).abs().max().item(),
                 TOLERANCE * ref.abs().max().item()) for level, (out, ref) in enumerate(zip(got, expected))]
    diff = (torch.from_numpy(got[0]) - expected).abs()
    return [("boxes", diff[..., :4].max().item(), TOLERANCE * expected[..., :4].abs().max().item()),
            ("scores", diff[..., 4:].max().item(), TOLERANCE)]


def check_sizes(imgsz, batch):
    """imgsz (int or (h, w)) -> (h, w), each a positive multiple of 32; raise naming the bad argument."""
    height, width = (imgsz, imgsz) if isinstance(imgsz, int) else tuple(imgsz)
    if min(height, width) < 32 or height % 32 or width % 32:
        raise ValueError(f"--img {height} {width}: each side must be a positive multiple of 32 (the stride)")
    if batch < 1:
        raise ValueError(f"--batch {batch}: must be at least 1")
    return height, width


def export_onnx(weights, imgsz=640, batch=1, dynamic=False, opset=DEFAULT_OPSET, simplify_graph=False, raw=False,
                log=print):
    """Export the checkpoint at `weights` to `<same name>.onnx` beside it and check it in ONNX Runtime.

    Returns (path, checks), checks = [(input shape, [(label, max |diff|, tolerance), ...]), ...]. A file that
    does not match PyTorch within tolerance is not written: ValueError, with the differences.
    """
    require_onnx()
    height, width = check_sizes(imgsz, batch)
    checkpoint = load_checkpoint(weights)
    kind = "ema" if checkpoint.get("ema") else "model"
    model = Detector.from_checkpoint(checkpoint, weights=kind).fuse().eval()
    view = ExportView(model, raw).eval()
    path = Path(weights).with_suffix(".onnx")
    outputs = ["p3", "p4", "p5"] if raw else ["detections"]
    generator = torch.Generator().manual_seed(0)
    shapes = [(batch, 3, height, width)]
    if dynamic:   # one more image, and one side's stride-32 map of the other parity (MobileViT's patch resize)
        shapes.append((batch + 1, 3, height + 32, width + 64))

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".onnx")
    os.close(fd)
    try:
        export_module(view, torch.rand(shapes[0], generator=generator), tmp, dynamic, opset, outputs)
        if simplify_graph:
            before, after = simplify(tmp)
            log(f"simplified with ONNX Runtime's basic optimisations: {before} -> {after} nodes")
        write_metadata(tmp, checkpoint, model, kind, (height, width), batch, dynamic, raw)
        session = ort_session(tmp)
        checks, failures = [], {}
        for shape in shapes:
            size = "×".join(map(str, shape))
            try:
                parts = compare(view, session, torch.rand(shape, generator=generator))
            except ValueError as error:
                failures[shape] = f"at {size}: {error}"
                continue
            checks.append((shape, parts))
            wrong = [f"{label} max |diff| {diff:.3g} > {tol:.3g}" for label, diff, tol in parts if not diff <= tol]
            if wrong:
                failures[shape] = f"at {size}: {', '.join(wrong)}"
        if failures:
            hint = ("; it matches at the export size only, so the trace most likely froze a size that depends on "
                    "the input: export without --dynamic" if shapes[0] not in failures else "")
            raise ValueError(f"the ONNX file does not match PyTorch {'; '.join(failures.values())}{hint}")
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path, checks


def write_metadata(path, checkpoint, model, weights, imgsz, batch, dynamic, raw):
    """Store what a user of the file needs as ONNX metadata (JSON strings), then check the model."""
    onnx, _ = require_onnx()
    proto = onnx.load(str(path))
    metadata = {
        "names": model.names,
        "stride": int(max(model.head.strides)),
        "imgsz": list(imgsz),
        "batch": "dynamic" if dynamic else batch,
        "dynamic": dynamic,
        "output": "raw" if raw else "decoded",
        "weights": weights,
        "config": checkpoint["config"],
        "args": checkpoint.get("args") or {},
    }
    onnx.helper.set_model_props(proto, {key: value if isinstance(value, str) else json.dumps(value)
                                        for key, value in metadata.items()})
    proto.doc_string = "lightdet detector; metadata: names, stride, imgsz (h, w), output, config, args"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
