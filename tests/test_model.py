"""The YOLOv5 baseline: exact sizes, the ultralytics reference fixture, shapes, gradients, fusion, build checks."""
import pytest
import torch
from torch import nn

from conftest import load_fixture, randomize_batchnorm
from lightdet import Detector, build_model
from lightdet.backbones import build_backbone
from lightdet.checkpoint import save_checkpoint
from lightdet.heads.anchor import AnchorHead
from lightdet.layers import make_divisible
from lightdet.model import convert_yolov5_state_dict, model_info
from lightdet.necks.pan import PAN


@pytest.fixture(scope="module")
def yolov5n():
    return build_model("cspdarknet", scale="n")


@pytest.mark.parametrize("scale, params, gflops", [
    ("n", 1_872_157, 4.47), ("s", 7_235_389, 16.43), ("m", 21_190_557, 48.87)])
def test_yolov5_parameters_and_gflops(scale, params, gflops):
    info = model_info(build_model("cspdarknet", scale=scale), imgsz=640)
    assert info["params"] == params
    assert info["gflops"] == pytest.approx(gflops, rel=0.005)


def test_reproduces_ultralytics_yolov5n():
    fixture = load_fixture("model_yolov5n.pt")
    state = fixture["state_dict"]   # YOLOv5 stores anchors in grid units; the recipe leaves them out
    strides = torch.tensor(fixture["strides"]).view(-1, 1, 1)
    state["model.24.anchors"] = torch.tensor(fixture["anchors_pixels"]) / strides
    model = build_model("cspdarknet", scale="n").eval()
    model.load_state_dict(convert_yolov5_state_dict(state))   # strict
    for images, expected in zip(fixture["inputs"], fixture["outputs"]):
        with torch.no_grad():
            decoded, raw = model(images.float())
        scale = expected["decoded"].abs().max()
        assert (decoded - expected["decoded"]).abs().max() <= 1e-4 * scale
        for level, expected_raw in zip(raw, expected["raw"]):
            assert (level - expected_raw).abs().max() <= 1e-4 * expected_raw.abs().max()


def test_convert_yolov5_rejects_foreign_keys():
    with pytest.raises(KeyError, match="model.99.conv.weight"):
        convert_yolov5_state_dict({"model.99.conv.weight": torch.zeros(1)})


@pytest.mark.parametrize("height, width", [(320, 320), (256, 320), (384, 640)])
def test_forward_shapes(yolov5n, height, width):
    model = yolov5n.eval()
    with torch.no_grad():
        decoded, raw = model(torch.rand(2, 3, height, width))
    cells = sum((height // s) * (width // s) for s in (8, 16, 32))
    assert decoded.shape == (2, 3 * cells, 85)
    assert [tuple(r.shape) for r in raw] == [(2, 3, height // s, width // s, 85) for s in (8, 16, 32)]
    # decoded centres lie near the image, sizes are positive, scores are probabilities
    assert decoded[..., 2:4].min() > 0 and 0 <= decoded[..., 4:].min() and decoded[..., 4:].max() <= 1


def test_every_parameter_gets_a_finite_gradient(yolov5n):
    model = yolov5n.train()
    raw = model(torch.rand(2, 3, 64, 96))
    sum(r.square().mean() for r in raw).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    model.zero_grad()


def test_head_decode_by_hand():
    head = AnchorHead(1, (4, 4, 4), anchors=(((10, 20),),) * 3).eval()
    for conv in head.pred:
        nn.init.zeros_(conv.weight)
        nn.init.zeros_(conv.bias)
    decoded, _ = head([torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 1, 1), torch.zeros(1, 4, 1, 1)])
    # σ(0) = 0.5: xy = (0.5 + cell) · stride, wh = anchor, scores 0.5
    first_level = decoded[0, :4]
    assert first_level[:, :2].tolist() == [[4, 4], [12, 4], [4, 12], [12, 12]]
    assert first_level[:, 2:].tolist() == [[10, 20, 0.5, 0.5]] * 4


def test_head_rejects_malformed_anchors():
    with pytest.raises(ValueError, match=r"anchors.*\(levels, anchors, 2\).*\(3, 2\)"):
        AnchorHead(1, (4, 4, 4), anchors=((10, 20),) * 3)


def test_head_bias_prior():
    head = AnchorHead(80, (8, 8, 8))
    # the prior is added to PyTorch's default init, which lies within ±1/sqrt(fan_in)
    bound = 1 / 8 ** 0.5
    bias = head.pred[0].bias.view(3, 85)
    assert (bias[:, 4] - torch.log(torch.tensor(8 / 80 ** 2))).abs().max() <= bound
    assert (bias[:, 5:] - torch.log(torch.tensor(0.6 / 79.00001))).abs().max() <= bound


def test_fuse_keeps_outputs_and_removes_batchnorm():
    model = randomize_batchnorm(build_model("cspdarknet", scale="n")).eval()
    images = torch.rand(1, 3, 128, 160)
    with torch.no_grad():
        before, _ = model(images)
        after, _ = model.fuse()(images)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert (before - after).abs().max() <= 1e-4 * before.abs().max()


def test_pan_accepts_any_channels():
    neck = PAN((40, 112, 960), width=0.25, depth=0.33)
    outs = neck([torch.rand(1, 40, 8, 12), torch.rand(1, 112, 4, 6), torch.rand(1, 960, 2, 3)])
    assert [tuple(o.shape) for o in outs] == [(1, 64, 8, 12), (1, 128, 4, 6), (1, 256, 2, 3)]
    assert neck.out_channels == (64, 128, 256)


class ToyBackbone(nn.Module):
    """Claims strides 8/16/32 but its P5 is really at stride 16."""
    out_channels = (8, 16, 32)

    def __init__(self):
        super().__init__()
        self.p3 = nn.Conv2d(3, 8, 8, stride=8)
        self.p4 = nn.Conv2d(8, 16, 2, stride=2)
        self.p5 = nn.Conv2d(16, 32, 1)

    def forward(self, x):
        p3 = self.p3(x)
        p4 = self.p4(p3)
        return [p3, p4, self.p5(p4)]


def test_wrong_backbone_shapes_fail_at_build_time():
    with pytest.raises(ValueError, match=r"toy.*expected.*\(1, 32, 2, 3\).*got.*\(1, 32, 4, 6\)"):
        Detector(ToyBackbone(), PAN((8, 16, 32)), AnchorHead(1, (64, 128, 256)), config={"backbone": "toy"})


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(KeyError, match="cspdarknet_s"):
        build_backbone("resnet50")
    with pytest.raises(ValueError, match="n, s, m, l, x"):
        build_model("cspdarknet", scale="q")


def test_make_divisible():
    assert [make_divisible(v) for v in (16, 20, 30, 64 * 0.25, 1024 * 1.25)] == [16, 24, 32, 16, 1280]
    assert make_divisible(9, 8) == 16   # rounding 9 down to 8 would lose more than 10%


def test_checkpoint_round_trip(tmp_path, yolov5n):
    path = tmp_path / "weights" / "last.pt"
    save_checkpoint({"model": yolov5n.state_dict(), "config": yolov5n.config, "names": ["a"] * 80,
                     "ema": None, "epoch": 3}, path)
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]   # no temporary file left behind
    loaded = Detector.from_checkpoint(path).eval()
    assert loaded.config == yolov5n.config and loaded.names == ["a"] * 80
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(images)[0], yolov5n.eval()(images)[0])


def test_from_checkpoint_rejects_foreign_files(tmp_path):
    path = tmp_path / "not_a_checkpoint.pt"
    torch.save({"weights": 1}, path)
    with pytest.raises(ValueError, match="not_a_checkpoint.pt.*not a lightdet checkpoint"):
        Detector.from_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        Detector.from_checkpoint(tmp_path / "missing.pt")


def test_model_info_counts_scaled_dot_product_attention():
    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Conv2d(3, 8, 1, bias=False)

        def forward(self, x):
            tokens = self.proj(x).flatten(2).transpose(1, 2).reshape(1, 2, -1, 4)   # (B, heads, L, d)
            return torch.nn.functional.scaled_dot_product_attention(tokens, tokens, tokens)

    length = 8 * 8
    info = model_info(Attention(), imgsz=8)
    projection = 2 * 3 * 8 * length
    attention = 2 * (2 * 2 * length * length * 4)   # QKᵀ and (softmax)·V, 2 heads, 2 FLOPs per MAC
    assert info["gflops"] * 1e9 == projection + attention
