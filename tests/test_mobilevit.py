"""MobileViT: the timm reference fixture under both checkpoint namings, exact sizes, any input size, gradients,
fusion."""
import math

import pytest
import torch
from torch import nn

from conftest import assert_loading_is_strict, assert_reproduces, count_parameters, load_fixture
from lightdet.backbones import build_backbone, load_pretrained
from lightdet.backbones.mobilevit import InvertedResidual, MobileViTBlock, mobilevit_xxs

# timm 1.0 feature extractors without the classifier's 1×1 `final_conv` (xxs: the fixture's num_params 951,024
# minus final_conv's 320·80 + 2·320 = 26,240).
PARAMS = {"mobilevit_xxs": 924_784, "mobilevit_xs": 1_895_216, "mobilevit_s": 4_833_952}
CHANNELS = {"mobilevit_xxs": (48, 64, 80), "mobilevit_xs": (64, 80, 96), "mobilevit_s": (96, 128, 160)}


@pytest.fixture(scope="module")
def reference():
    return load_fixture("mobilevit_xxs.pt")


def loaded(state_dict):
    model = mobilevit_xxs().eval()
    load_pretrained(model, state_dict)
    return model


def assert_reproduces_timm(model, reference):
    # lightdet's stride-32 tap is stage 4's 80-channel output, not timm's 320-channel classifier conv.
    expected = [[*outputs[:2], extra["stages.4"]]
                for outputs, extra in zip(reference["outputs"], reference["extra_outputs"])]
    assert_reproduces(model, reference, expected)


@pytest.mark.parametrize("name", list(PARAMS))
def test_parameter_count_matches_timm(name):
    model = build_backbone(name)
    assert count_parameters(model) == PARAMS[name]
    assert model.out_channels == CHANNELS[name]


def test_initialisation():
    torch.manual_seed(0)
    model = mobilevit_xxs()
    residual = [m for m in model.modules() if isinstance(m, InvertedResidual) and m.residual]
    assert len(residual) == 3   # Table 4: the MV2 blocks that keep stride and width (1 at stride 2, 2 at 4)
    for block in residual:      # zero_init_last: the block starts as the identity
        x = torch.randn(2, block.conv1_1x1.conv.in_channels, 8, 8)
        assert torch.equal(block.train()(x), x)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.weight.numel() >= 2000]
    for conv in convs:          # PyTorch's default, not timm's He-normal over fan-out (1.1-3.5× larger here)
        fan_in = conv.weight[0].numel()
        assert conv.weight.std().item() == pytest.approx(1 / math.sqrt(3 * fan_in), rel=0.1)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 4 * (2 + 4 + 3)   # qkv, proj, fc1, fc2 of each transformer layer
    for linear in linears:
        assert linear.weight.std().item() == pytest.approx(0.01, rel=0.1) and not linear.bias.any()


def test_reproduces_timm_features_only(reference):
    # The 224 input gives a 7×7 stride-32 map and 128×160 a 4×5 one: the MobileViT block resizes each to whole
    # 2×2 patches (8×8, 4×6) and back.
    assert [tuple(i.shape[-2:]) for i in reference["inputs"]] == [(128, 160), (224, 224)]
    model = loaded(reference["state_dict"])
    assert count_parameters(model) + 320 * 80 + 2 * 320 == reference["num_params"]
    assert_reproduces_timm(model, reference)


def test_reproduces_timm_classification_checkpoint(reference):
    state = {reference["cls_key_map"][k]: v for k, v in reference["state_dict"].items()}
    assert not any(k.startswith("stages_") for k in state) and "final_conv.conv.weight" in state
    state.update({"head.fc.weight": torch.zeros(1000, 320), "head.fc.bias": torch.zeros(1000)})
    assert_reproduces_timm(loaded({"state_dict": state}), reference)


def test_strict_loading_rejects_missing_and_unknown_keys(reference):
    assert_loading_is_strict("mobilevit_xxs", reference["state_dict"], unexpected="stages_3.1.extra.weight",
                             missing="stages_3.1.transformer.2.attn.qkv.bias")


# 96×160: the stride-32 map is 3×5, odd both ways, so the patch resize runs on a rectangle.
def test_channels_last_input_gives_channels_last_maps_with_the_same_values():
    model = mobilevit_xxs().eval()
    images = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        expected = model(images)
        maps = model(images.contiguous(memory_format=torch.channels_last))
    for out, ref in zip(maps, expected):
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert torch.allclose(out, ref, atol=1e-5)


def test_odd_maps_are_resized_to_whole_patches_and_back():
    block = MobileViTBlock(8, 16, 1).eval()
    seen = []
    block.transformer.register_forward_hook(lambda module, args, out: seen.append(args[0].shape))
    with torch.no_grad():
        out = block(torch.rand(2, 8, 5, 7))
    assert out.shape == (2, 8, 5, 7)
    assert seen == [(2 * 4, 3 * 4, 16)]     # 6×8 after the resize: 4 pixel positions per patch, 3·4 patches
