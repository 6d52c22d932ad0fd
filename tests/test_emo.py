"""EMO: the official-code fixture (both namings and wrappers), exact sizes, shapes, gradients, fusion, windows."""
import pytest
import torch
from torch import nn

from conftest import assert_loading_is_strict, assert_reproduces, count_parameters, load_fixture
from lightdet.backbones import build_backbone, load_pretrained
from lightdet.backbones.emo import emo_1m, from_windows, iRMB, to_windows
from lightdet.layers import fuse_modules

# Official EMO feature extractors (classifier, pre-head and final norm removed), counted with the official code.
PARAMS = {"emo_1m": 1_191_832, "emo_2m": 2_176_072, "emo_5m": 4_819_272, "emo_6m": 5_846_856}
CHANNELS = {"emo_1m": (48, 80, 168), "emo_2m": (48, 120, 200), "emo_5m": (72, 160, 288), "emo_6m": (72, 160, 320)}
SIZES = [(64, 64), (64, 96), (96, 160)]


@pytest.fixture(scope="module")
def reference():
    return load_fixture("EMO_1M.pt")


@pytest.fixture(scope="module")
def loaded(reference):
    model = emo_1m().eval()
    load_pretrained(model, reference["state_dict"])
    return model


def test_fixture_reproduced(reference, loaded):
    assert reference["reference"] == "emo:EMO_1M"
    assert count_parameters(loaded) == reference["num_params"]
    assert loaded.out_channels == tuple(reference["channels"])
    # Input 0 is 128×160: the stride-16/32 maps (8×10, 4×5) are zero-padded to 14×14 and 7×7 for the windows.
    assert_reproduces(loaded, reference)


def test_checkpoint_wrappers_and_classifier_keys(reference, loaded):
    """Published checkpoints: `net` / `net_E` wrappers, DDP `module.` prefix, classifier and final norm."""
    state_dict = {f"module.{k}": v for k, v in reference["state_dict"].items()}
    state_dict.update({"module.norm.weight": torch.ones(168), "module.norm.bias": torch.zeros(168),
                       "module.head.weight": torch.zeros(1000, 168), "module.head.bias": torch.zeros(1000)})
    expected = loaded.state_dict()
    for wrapper in ("net", "net_E"):
        model = emo_1m()
        report = load_pretrained(model, {wrapper: state_dict})
        assert len(report.matched) == len(expected)
        assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())


def test_strict_loading_rejects_missing_and_unknown_keys(reference):
    assert_loading_is_strict("emo_1m", reference["state_dict"], unexpected="stage3.1.extra.weight",
                             missing="stage3.1.qk.conv.weight")


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_count_and_channels(name):
    model = build_backbone(name)
    assert count_parameters(model) == PARAMS[name]
    assert model.out_channels == CHANNELS[name]


def test_fuse_matches_and_leaves_no_batchnorm(loaded):
    fused = emo_1m().eval()
    fused.load_state_dict(loaded.state_dict())
    fuse_modules(fused)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert count_parameters(fused) < count_parameters(loaded)
    images = torch.rand(1, 3, 96, 160)
    with torch.no_grad():
        for out, ref in zip(fused(images), loaded(images)):
            assert (out - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_windows_are_a_strided_grid():
    """Window (a, b) holds pixels (i*n1 + a, j*n2 + b); from_windows inverts to_windows."""
    ws, heads, H, W = 7, 2, 14, 21
    x = torch.arange(2 * 4 * H * W, dtype=torch.float32).view(2, 4, H, W)
    windows = to_windows(x, heads, ws)                       # [2*2*3, heads, 49, 2]
    n1, n2 = H // ws, W // ws
    assert windows.shape == (2 * n1 * n2, heads, ws * ws, 2)
    batch, a, b = 1, 1, 2
    window = windows[(batch * n1 + a) * n2 + b]              # [heads, 49, d]
    pixels = x[batch, :, a::n1, b::n2]                       # [C, ws, ws]
    assert torch.equal(window.permute(0, 2, 1).reshape(4, ws, ws), pixels)
    assert torch.equal(from_windows(windows, H, W), x)


def test_irmb_attention_block_for_necks():
    block = iRMB(64, 64, attn=True, dim_head=16).eval()
    x = torch.rand(2, 64, 20, 12)
    with torch.no_grad():
        assert block(x).shape == x.shape
    with pytest.raises(ValueError):
        iRMB(64, 64, norm="bn", attn=True)


def test_residual_blocks_start_as_the_identity():
    blocks = [m for m in emo_1m().modules() if isinstance(m, iRMB) and m.has_skip]
    assert blocks
    torch.manual_seed(0)
    for block in blocks:
        x = torch.randn(1, block.proj.out_channels, 7, 9)
        torch.testing.assert_close(block.train()(x), x)
