"""ONNX export (export.py, lightdet/export.py) and ONNX Runtime inference (lightdet/runtime.py).

Every family exports with dynamic batch and size and matches PyTorch at another size; eval.py and predict.py give
the same mAP and detections from the .onnx as from its checkpoint. These need the export extra
(`pip install -e ".[export]"`) and skip without it, except the checks of what happens without it.
"""
import importlib
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import DATA
from lightdet.backbones import BACKBONES
from lightdet.checkpoint import save_checkpoint
from lightdet.data.images import read_image
from lightdet.model import build_model
from lightdet.necks import NECK_OPTIONS
from lightdet.runtime import INSTALL_HINT

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import eval as eval_script  # noqa: E402  (the repository's eval.py, not the builtin)
import export  # noqa: E402
import predict  # noqa: E402

FAMILIES = [name for name, build in BACKBONES.items() if build.__name__ != name]   # each family's default
NAMES = ["circle", "square", "triangle"]   # the mini set's classes
SKIP = 'needs the export extra: pip install -e ".[export]"'


@pytest.fixture
def export_extra():
    pytest.importorskip("onnx", reason=SKIP)
    pytest.importorskip("onnxruntime", reason=SKIP)


def randomize(model, seed=0):
    """Random BatchNorm statistics and affine terms, so that fusing folds something; returns the model."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
    return model


def save(model, path, img=64):
    save_checkpoint({"model": model.state_dict(), "config": model.config, "names": NAMES, "epoch": 0,
                     "optimizer": None, "ema": None, "best_fitness": 0.0,
                     "args": {"data": str(DATA / "mini"), "img": img}}, path)
    return path


def assert_matches(decoded, expected):
    """Boxes within 1e-4 of their pixel scale, scores within 1e-4 (export.py's tolerance)."""
    assert decoded.shape == expected.shape
    diff = (decoded - expected).abs()
    assert diff[..., :4].max() <= 1e-4 * expected[..., :4].abs().max()
    assert diff[..., 4:].max() <= 1e-4


def test_nothing_imports_onnx_at_module_level(monkeypatch):
    for name in ("onnx", "onnxruntime"):
        monkeypatch.setitem(sys.modules, name, None)   # any `import onnx` now raises ImportError
    for name in ("lightdet.export", "lightdet.runtime", "lightdet.benchmark", "export", "eval", "predict"):
        package, _, attribute = name.rpartition(".")
        if package:   # the re-import rebinds the package's attribute: put the original back afterwards
            monkeypatch.setattr(sys.modules[package], attribute, importlib.import_module(name))
        monkeypatch.delitem(sys.modules, name, raising=False)
        importlib.import_module(name)


def test_without_the_extra_export_prints_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(SystemExit) as stop:
        export.main(["--weights", str(tmp_path / "best.pt")])
    assert stop.value.code == 1
    assert capsys.readouterr().out == INSTALL_HINT + "\n"
    (tmp_path / "best.onnx").write_bytes(b"")
    with pytest.raises(SystemExit, match=r"pip install -e \"\.\[export\]\""):
        eval_script.main(["--weights", str(tmp_path / "best.onnx")])


# Neck options (build_model keywords) join as entries of `options`.
@pytest.mark.parametrize("options", [{}], ids=lambda options: "-".join(map(str, options.values())) or "default")
@pytest.mark.parametrize("backbone", FAMILIES)
def test_every_backbone_exports_and_matches_pytorch(backbone, options, export_extra, tmp_path):
    from lightdet.export import export_onnx
    from lightdet.runtime import OnnxDetector

    model = randomize(build_model(backbone, num_classes=len(NAMES), **options)).eval()
    path, checks = export_onnx(save(model, tmp_path / "best.pt"), 64, dynamic=True)
    assert path == tmp_path / "best.onnx"
    assert [shape for shape, _ in checks] == [(1, 3, 64, 64), (2, 3, 96, 128)]   # export's own check, two sizes
    assert all(diff <= tol for _, parts in checks for _, diff, tol in parts)

    detector = OnnxDetector(path)
    assert (detector.names, detector.stride, detector.imgsz) == (NAMES, 32, (64, 64))
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected, _ = model(images)   # the unfused model: fusion and export together
    assert_matches(detector(images)[0], expected)


# Every neck option on YOLOv5n, and RT-DETR's head. RT-DETR's anchors and query count follow the input size
# in Python, so its trace holds one size: it exports without --dynamic.
@pytest.mark.parametrize("backbone, options", [("cspdarknet", dict(neck_block=block, neck_attention=attention))
                                               for block, attention in NECK_OPTIONS[1:]]
                         + [("mobilenetv3_small", dict(head="rtdetr"))], ids=str)
def test_neck_options_and_rtdetr_export(backbone, options, export_extra, tmp_path):
    from lightdet.export import export_onnx
    from lightdet.runtime import OnnxDetector

    model = randomize(build_model(backbone, num_classes=len(NAMES), **options)).eval()
    dynamic = options.get("head") != "rtdetr"
    path, checks = export_onnx(save(model, tmp_path / "best.pt"), 64, dynamic=dynamic)
    assert all(diff <= tol for _, parts in checks for _, diff, tol in parts)
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected, _ = model(images)
    assert_matches(OnnxDetector(path)(images)[0], expected)


class TinyBackbone(nn.Module):
    """Three strided convs, the smallest backbone contract; with `frozen`, its trace freezes a size (float() of
    the width becomes a constant, as math.ceil did in MobileViT's patch resize)."""
    out_channels = (8, 8, 8)

    def __init__(self, frozen=False):
        super().__init__()
        self.frozen = frozen
        self.p3 = nn.Conv2d(3, 8, 8, 8)
        self.p4 = nn.Conv2d(8, 8, 2, 2)
        self.p5 = nn.Conv2d(8, 8, 2, 2)

    def forward(self, x):
        p3 = self.p3(x) * (float(x.shape[-1]) / 64 if self.frozen else 1.0)
        p4 = self.p4(p3)
        return [p3, p4, self.p5(p4)]


def test_static_raw_and_refused_exports(export_extra, tmp_path, monkeypatch):
    from lightdet.export import export_onnx
    from lightdet.runtime import OnnxDetector

    monkeypatch.setitem(BACKBONES, "tiny", TinyBackbone)
    model = randomize(build_model("tiny", num_classes=len(NAMES))).eval()
    weights = save(model, tmp_path / "best.pt")
    # A fixed 2×3×64×64 file: a batch of 3 smaller images is padded (grey, bottom right) and split.
    path, _ = export_onnx(weights, 64, batch=2)
    images = torch.rand(3, 3, 32, 64)
    padded = nn.functional.pad(images, (0, 0, 0, 32), value=114 / 255)
    with torch.no_grad():
        expected, _ = model(padded)
    assert_matches(OnnxDetector(path)(images)[0], expected)
    with pytest.raises(ValueError, match="without --dynamic"):
        OnnxDetector(path)(torch.rand(1, 3, 96, 64))

    raw_path, checks = export_onnx(weights, 64, raw=True)
    assert [label for label, *_ in checks[0][1]] == ["raw map P3", "raw map P4", "raw map P5"]
    with pytest.raises(ValueError, match="--raw"):
        OnnxDetector(raw_path)
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(ValueError, match="ONNX Runtime cannot load it"):
        OnnxDetector(tmp_path / "empty.onnx")

    monkeypatch.setitem(BACKBONES, "frozen", lambda: TinyBackbone(frozen=True))
    frozen = save(build_model("frozen", num_classes=len(NAMES)), tmp_path / "frozen.pt")
    with pytest.raises(ValueError, match="at 2×3×96×128.*export without --dynamic"):
        export_onnx(frozen, 64, dynamic=True)
    assert not (tmp_path / "frozen.onnx").exists()   # a file that fails the check is not written
    export.main(["--weights", str(frozen), "--img", "64"])   # at a fixed size it is right
    assert (tmp_path / "frozen.onnx").is_file()


def test_onnx_gives_the_checkpoints_map_and_detections(export_extra, tmp_path, capsys):
    # An untrained model whose BatchNorm statistics lean towards those of the mini images (fully calibrated ones
    # amplify rounding too much for the export check), with confident objectness and class biases, so that
    # there are detections to compare.
    images = DATA / "mini" / "images" / "train2017"
    model = build_model("cspdarknet", num_classes=len(NAMES))
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 0.95   # the next batch's statistics nearly replace the running ones
    canvas = torch.full((16, 3, 64, 64), 114, dtype=torch.uint8)
    for i, path in enumerate(sorted(images.glob("*.jpg"))):
        pixels, _ = predict.letterbox(read_image(path), 64)
        canvas[i, :, :pixels.shape[1], :pixels.shape[2]] = pixels
    with torch.no_grad():
        model.train()(canvas.float() / 255)
        for conv in model.head.pred:
            conv.bias.view(model.head.num_anchors, -1)[:, 4:] += 4
    weights = save(model, tmp_path / "best.pt")
    export.main(["--weights", str(weights), "--img", "64", "--dynamic"])
    assert "ONNX Runtime vs PyTorch at 2×3×96×128" in capsys.readouterr().out

    common = ["--workers", "0", "--batch", "4"]
    pt = eval_script.main(["--weights", str(weights), *common])
    ort = eval_script.main(["--weights", str(tmp_path / "best.onnx"), *common])
    assert len(pt["detections"]) > 100 and pt["mAP50"] > 0
    for key in ("mAP50", "mAP50_95", "P", "R"):
        assert round(ort[key], 3) == round(pt[key], 3), key

    for name in ("pt", "onnx"):
        predict.main(["--weights", str(tmp_path / f"best.{name}"), "--source", str(images), "--out",
                      str(tmp_path / name), "--img", "64", "--save-json", "--nosave"])
    files = sorted(p.name for p in (tmp_path / "pt" / "labels").glob("*.json"))
    assert len(files) == 16 and files == sorted(p.name for p in (tmp_path / "onnx" / "labels").glob("*.json"))
    found = 0
    for file in files:
        expected = json.loads((tmp_path / "pt" / "labels" / file).read_text())
        got = json.loads((tmp_path / "onnx" / "labels" / file).read_text())
        assert len(got) == len(expected), file
        found += len(expected)
        for detection in expected:   # each has its twin (near-equal scores may come out in another order)
            twin = next(d for d in got if d["class"] == detection["class"] and
                        d["score"] == pytest.approx(detection["score"], abs=1e-4) and
                        d["box_xyxy"] == pytest.approx(detection["box_xyxy"], abs=0.05))
            got.remove(twin)
    assert found > 0
