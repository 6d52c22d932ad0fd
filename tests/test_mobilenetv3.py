"""MobileNetV3: timm reference fixture, parameter counts, shapes, gradients, BatchNorm fusion, key conversion."""
import pytest
import torch

from conftest import assert_reproduces, count_parameters, load_fixture
from lightdet.backbones import build_backbone, load_pretrained
from lightdet.backbones.mobilenetv3 import (InvertedResidual, convert_state_dict, mobilenetv3_large,
                                           mobilenetv3_small)



@pytest.fixture(scope="module")
def fixture():
    return load_fixture("mobilenetv3_large_100.pt")


@pytest.mark.parametrize("name, expected, channels", [("mobilenetv3_large", 2_971_952, (40, 112, 960)),
                                                     ("mobilenetv3_small", 927_008, (24, 48, 576))])
def test_param_count_matches_timm_feature_extractor(name, expected, channels):
    backbone = build_backbone(name)
    assert count_parameters(backbone) == expected
    assert backbone.out_channels == channels


def test_fixture_features_only_naming(fixture):
    model = mobilenetv3_large()
    report = load_pretrained(model, fixture["state_dict"])
    assert len(report.matched) == len(model.state_dict()) == len(fixture["state_dict"])
    assert fixture["channels"] == list(model.out_channels)
    assert_reproduces(model, fixture)
    # timm's blocks.5 output (the last inverted residual, 160@32) is our blocks[-1]'s: one more map checked.
    seen = []
    model.blocks[-1].register_forward_hook(lambda module, inputs, output: seen.append(output))
    with torch.no_grad():
        for x, extra in zip(fixture["inputs"], fixture["extra_outputs"]):
            model(x)
            ref = extra["blocks.5"]
            assert (seen[-1] - ref).abs().max() <= 1e-4 * ref.abs().max()


def test_small_fixture_features_only_naming():
    small = load_fixture("mobilenetv3_small_100.pt")   # the RT-DETR article's backbone: taps 24, 48, 576
    model = mobilenetv3_small()
    load_pretrained(model, small["state_dict"])
    assert count_parameters(model) == small["num_params"] and model.out_channels == tuple(small["channels"])
    assert_reproduces(model, small)


def test_fixture_classification_naming(fixture):
    # A timm classification checkpoint: the same tensors under cls_key_map names, plus the head after pooling.
    state = {fixture["cls_key_map"][k]: v for k, v in fixture["state_dict"].items()}
    state["conv_head.weight"] = torch.randn(1280, 960, 1, 1)
    state["conv_head.bias"] = torch.randn(1280)
    state["classifier.weight"] = torch.randn(1000, 1280)
    state["classifier.bias"] = torch.randn(1000)
    model = mobilenetv3_large()
    load_pretrained(model, {"state_dict": state})
    assert_reproduces(model, fixture)


def test_conversion_is_strict(fixture):
    state = dict(fixture["state_dict"])
    del state["blocks.3.2.conv_dw.weight"]
    with pytest.raises(ValueError, match=r"missing: blocks\.8\.depthwise\.conv\.weight"):
        load_pretrained(mobilenetv3_large(), state)
    state = dict(fixture["state_dict"])
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


def test_width_multiplier():
    model = mobilenetv3_large(width=0.75).eval()
    assert model.out_channels == (32, 88, 720)
    assert count_parameters(model) < count_parameters(mobilenetv3_large())
    with torch.no_grad():
        outs = model(torch.rand(1, 3, 64, 96))
    assert [o.shape[1] for o in outs] == list(model.out_channels)


def test_residual_blocks_start_as_the_identity():
    blocks = [m for m in mobilenetv3_large().modules() if isinstance(m, InvertedResidual)]
    residual = [b for b in blocks if b.residual]
    assert len(residual) == 10   # Table 1: the stride-1 rows that keep their width
    torch.manual_seed(0)
    for block in residual:
        x = torch.randn(2, block.project.conv.out_channels, 8, 8)
        torch.testing.assert_close(block.train()(x), x)
