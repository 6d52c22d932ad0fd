"""RepViT: the timm reference fixture under three checkpoint namings, exact sizes, shapes, gradients, fusion."""
import re

import pytest
import torch
from torch import nn

from conftest import assert_loading_is_strict, assert_reproduces, count_parameters, load_fixture
from lightdet.backbones import build_backbone, load_pretrained
from lightdet.backbones.repvit import VARIANTS, ConvMlp, repvit_m0_9

# timm 1.0 feature extractors (features_only), counted by the fixture script for m0_9 and timm for the rest.
PARAMS = {"repvit_m0_9": 4_717_792, "repvit_m1_0": 6_403_004, "repvit_m1_1": 7_774_864,
          "repvit_m1_5": 13_616_384, "repvit_m2_3": 22_404_232}
FUSED_PARAMS_M0_9 = 4_682_056

# The official repvit_m0_9 config (THU-MIG/RepViT model/repvit.py): 26 block rows after the stem, features.1-26.
# Rows 4, 8, 24 have stride 2; rows with SE=1 are below. Used to write the official naming independently.
OFFICIAL_STRIDED = (4, 8, 24)
OFFICIAL_SE_ROWS = {1, 5, 9, 11, 13, 15, 17, 19, 21, 25}


@pytest.fixture(scope="module")
def reference():
    return load_fixture("repvit_m0_9.pt")


def loaded(state_dict):
    model = build_backbone("repvit_m0_9").eval()
    load_pretrained(model, state_dict)
    return model


def timm_to_official(state_dict):
    """timm classification names -> the official `features.N` names, for RepViT-M0.9 only."""
    block_parts = [("token_mixer.", "token_mixer.0."), ("se.", "token_mixer.1."),
                   ("channel_mixer.conv1.", "channel_mixer.m.0."), ("channel_mixer.conv2.", "channel_mixer.m.2.")]
    downsample_parts = [("spatial_downsample.", "token_mixer.0."), ("channel_downsample.", "token_mixer.2."),
                        ("ffn.conv1.", "channel_mixer.m.0."), ("ffn.conv2.", "channel_mixer.m.2.")]
    official = {}
    for key, value in state_dict.items():
        if key.startswith("stem."):
            key = key.replace("stem.conv1.", "features.0.0.").replace("stem.conv2.", "features.0.2.")
        elif m := re.match(r"stages\.0\.blocks\.(\d+)\.(.*)", key):
            key, parts = f"features.{1 + int(m[1])}.{m[2]}", block_parts
        elif m := re.match(r"stages\.(\d)\.downsample\.pre_block\.(.*)", key):
            key, parts = f"features.{OFFICIAL_STRIDED[int(m[1]) - 1] - 1}.{m[2]}", block_parts
        elif m := re.match(r"stages\.(\d)\.downsample\.(.*)", key):
            key, parts = f"features.{OFFICIAL_STRIDED[int(m[1]) - 1]}.{m[2]}", downsample_parts
        elif m := re.match(r"stages\.(\d)\.blocks\.(\d+)\.(.*)", key):
            key, parts = f"features.{OFFICIAL_STRIDED[int(m[1]) - 1] + 1 + int(m[2])}.{m[3]}", block_parts
        else:
            raise AssertionError(key)
        if not key.startswith("features.0."):
            index, rest = re.match(r"(features\.\d+\.)(.*)", key).groups()
            key = index + next(new + rest[len(old):] for old, new in parts if rest.startswith(old))
        official[key] = value
    return official


@pytest.mark.parametrize("name", list(PARAMS))
def test_parameter_count_matches_timm(name):
    assert count_parameters(build_backbone(name)) == PARAMS[name]


def test_channel_mixers_start_as_the_identity():
    # timm and the official code zero the last BatchNorm scale of every FFN, so each x + FFN(x) starts as x.
    mixers = [m for m in repvit_m0_9().modules() if isinstance(m, ConvMlp)]
    assert len(mixers) == sum(VARIANTS["repvit_m0_9"]["depths"]) + 2 * 3   # + each downsampling's block and FFN
    for mixer in mixers:
        x = torch.randn(2, mixer.conv1.conv.in_channels, 4, 4)
        assert torch.equal(mixer.train()(x), torch.zeros_like(x))


def test_reproduces_timm_features_only(reference):
    model = loaded(reference["state_dict"])
    assert count_parameters(model) == reference["num_params"]
    assert_reproduces(model, reference)   # the rectangular 128×160 input and 224×224


def assert_same_weights_as_features_only(model, reference):
    expected = loaded(reference["state_dict"]).state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_reproduces_timm_classification_checkpoint(reference):
    state = {reference["cls_key_map"][k]: v for k, v in reference["state_dict"].items()}
    assert not any(k.startswith("stages_") for k in state)
    for head in ("head.head", "head.head_dist"):   # a distilled classifier: both heads are dropped
        state.update({f"{head}.bn.weight": torch.ones(384), f"{head}.l.weight": torch.zeros(1000, 384)})
    model = loaded({"state_dict": state})
    assert_same_weights_as_features_only(model, reference)
    assert_reproduces(model, reference)


def test_reproduces_official_checkpoint(reference):
    timm_names = {reference["cls_key_map"][k]: v for k, v in reference["state_dict"].items()}
    official = timm_to_official(timm_names)
    layers = {int(k.split(".")[1]) for k in official}
    assert layers == set(range(27))
    assert {int(k.split(".")[1]) for k in official if ".token_mixer.1.fc1." in k} == OFFICIAL_SE_ROWS
    for head in ("classifier.classifier", "classifier.classifier_dist"):
        official.update({f"{head}.bn.weight": torch.ones(384), f"{head}.l.weight": torch.zeros(1000, 384)})
    model = loaded({"model": official})
    assert_same_weights_as_features_only(model, reference)
    assert_reproduces(model, reference)


def test_strict_loading_rejects_missing_and_unknown_keys(reference):
    assert_loading_is_strict("repvit_m0_9", reference["state_dict"], unexpected="stages_1.blocks.0.extra.weight",
                             missing="stages_2.blocks.3.token_mixer.conv1.bias")


@pytest.mark.parametrize("parents_first", [True, False])
def test_fuse_gives_same_maps_with_fewer_parameters(reference, parents_first):
    model = loaded(reference["state_dict"])   # random BatchNorm statistics: fusion is not trivially exact
    images = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        expected = model(images)
        modules = list(model.modules())       # Detector.fuse() walks parents first; any order must work
        for module in modules if parents_first else reversed(modules):
            if callable(getattr(module, "fuse", None)):
                module.fuse()
        fused = model(images)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert count_parameters(model) == FUSED_PARAMS_M0_9 < PARAMS["repvit_m0_9"]
    for out, ref in zip(fused, expected):
        assert torch.allclose(out, ref, rtol=1e-5, atol=1e-5 * ref.abs().max())
