"""MobileNetV3: timm reference fixture, parameter counts, shapes, gradients, BatchNorm fusion, key conversion."""
import pytest
import torch
from torch import nn

from conftest import load_fixture
from lightdet.backbones import BACKBONES, build_backbone, load_pretrained
from lightdet.backbones.mobilenetv3 import convert_state_dict, mobilenetv3_large, mobilenetv3_small

VARIANTS = ["mobilenetv3_large", "mobilenetv3_small"]
OUT_CHANNELS = {"mobilenetv3_large": (40, 112, 960), "mobilenetv3_small": (24, 48, 576)}


def num_params(model):
    return sum(p.numel() for p in model.parameters())


def fuse_all(model):
    """What Detector.fuse() does: every module that can fuse itself does, parents before children."""
    for module in list(model.modules()):
        if hasattr(module, "fuse"):
            module.fuse()
    return model


def randomize_batchnorm(model):
    """Non-trivial BatchNorm statistics, so that fusion and loading are tested on more than identities."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
    return model


@pytest.fixture(scope="module")
def fixture():
    return load_fixture("backbones", "mobilenetv3_large_100.pt")


def assert_maps_match(model, fixture):
    model.eval()
    with torch.no_grad():
        for x, refs in zip(fixture["inputs"], fixture["outputs"]):
            outs = model(x.float())
            assert len(outs) == len(refs)
            for out, ref in zip(outs, refs):
                assert out.shape == ref.shape
                scale = ref.abs().max()
                assert (out - ref).abs().max() <= 1e-4 * scale


def test_registry():
    assert BACKBONES["mobilenetv3"] is mobilenetv3_large
    assert BACKBONES["mobilenetv3_large"] is mobilenetv3_large
    assert BACKBONES["mobilenetv3_small"] is mobilenetv3_small


@pytest.mark.parametrize("name, expected", [("mobilenetv3_large", 2_971_952), ("mobilenetv3_small", 927_008)])
def test_param_count_matches_timm_feature_extractor(name, expected):
    assert num_params(build_backbone(name)) == expected


def test_fixture_features_only_naming(fixture):
    model = mobilenetv3_large()
    state = {k: v.float() for k, v in fixture["state_dict"].items()}
    report = load_pretrained(model, state)
    assert len(report.matched) == len(model.state_dict()) == len(state)
    assert fixture["channels"] == list(model.out_channels)
    assert_maps_match(model, fixture)
    # timm's blocks.5 output (the last inverted residual, 160@32) is our blocks[-1]'s: one more map checked.
    seen = []
    model.blocks[-1].register_forward_hook(lambda module, inputs, output: seen.append(output))
    with torch.no_grad():
        for x, extra in zip(fixture["inputs"], fixture["extra_outputs"]):
            model(x.float())
            ref = extra["blocks.5"]
            assert (seen[-1] - ref).abs().max() <= 1e-4 * ref.abs().max()


def test_fixture_classification_naming(fixture):
    # A timm classification checkpoint: the same tensors under cls_key_map names, plus the head after pooling.
    state = {fixture["cls_key_map"][k]: v.float() for k, v in fixture["state_dict"].items()}
    state["conv_head.weight"] = torch.randn(1280, 960, 1, 1)
    state["conv_head.bias"] = torch.randn(1280)
    state["classifier.weight"] = torch.randn(1000, 1280)
    state["classifier.bias"] = torch.randn(1000)
    model = mobilenetv3_large()
    load_pretrained(model, {"state_dict": state})
    assert_maps_match(model, fixture)


def test_conversion_is_strict(fixture):
    state = {k: v.float() for k, v in fixture["state_dict"].items()}
    del state["blocks.3.2.conv_dw.weight"]
    with pytest.raises(ValueError, match=r"missing: blocks\.8\.depthwise\.conv\.weight"):
        load_pretrained(mobilenetv3_large(), state)
    state = {k: v.float() for k, v in fixture["state_dict"].items()}
    state["blocks.0.0.bn1.extra"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"unexpected: blocks\.0\.depthwise\.bn\.extra"):
        load_pretrained(mobilenetv3_large(), state)
    # Large's weights into Small: the second block expands 16 -> 64 in Large, 16 -> 72 in Small.
    mismatch = r"shape-mismatched: .*blocks\.1\.expand\.conv\.weight: \(64, 16, 1, 1\) vs \(72, 16, 1, 1\)"
    with pytest.raises(ValueError, match=mismatch):
        load_pretrained(mobilenetv3_small(), convert_state_dict(fixture["state_dict"]))


def test_own_naming_passes_through():
    model = mobilenetv3_small()
    assert convert_state_dict(model.state_dict()).keys() == model.state_dict().keys()


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("size", [(64, 64), (64, 96)])
def test_forward_shapes(name, size):
    model = build_backbone(name).eval()
    assert model.out_channels == OUT_CHANNELS[name]
    with torch.no_grad():
        outs = model(torch.rand(1, 3, *size))
    assert len(outs) == 3
    for out, channels, stride in zip(outs, model.out_channels, (8, 16, 32)):
        assert out.shape == (1, channels, size[0] // stride, size[1] // stride)


def test_width_multiplier():
    model = mobilenetv3_large(width=0.75).eval()
    assert model.out_channels == (32, 88, 720)
    assert num_params(model) < num_params(mobilenetv3_large())
    with torch.no_grad():
        outs = model(torch.rand(1, 3, 64, 96))
    assert [o.shape[1] for o in outs] == list(model.out_channels)


@pytest.mark.parametrize("name", VARIANTS)
def test_every_parameter_gets_a_finite_gradient(name):
    model = build_backbone(name).train()
    outs = model(torch.rand(2, 3, 64, 96))
    sum(o.square().mean() for o in outs).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", VARIANTS)
def test_fuse_removes_batchnorm_and_keeps_outputs(name):
    model = randomize_batchnorm(build_backbone(name)).eval()
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        before = model(x)
        unfused_params = num_params(model)
        fuse_all(model)
        after = model(x)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert num_params(model) < unfused_params
    for a, b in zip(after, before):
        assert (a - b).abs().max() <= 1e-5 * b.abs().max()
