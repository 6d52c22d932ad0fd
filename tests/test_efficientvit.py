import re

import pytest
import torch
from conftest import assert_reproduces, count_parameters, load_fixture
from torch.utils.flop_counter import FlopCounterMode

from lightdet.backbones import build_backbone, load_pretrained
from lightdet.backbones.efficientvit import LiteMLA, convert_state_dict

PARAMS = {"efficientvit_b0": 682_608, "efficientvit_b1": 4_643_936,
          "efficientvit_b2": 14_977_008, "efficientvit_b3": 38_997_440}


@pytest.fixture(scope="module")
def fixture():
    return load_fixture("efficientvit_b0.pt")


def official_naming(cls_state):
    """mit-han-lab/efficientvit's EfficientViTCls spelling of timm's classification keys."""
    renamed = {}
    for key, value in cls_state.items():
        key = re.sub(r"^stem\.in_conv\.", "input_stem.op_list.0.", key)
        key = re.sub(r"^stem\.res(\d+)\.", lambda m: f"input_stem.op_list.{int(m[1]) + 1}.", key)
        key = re.sub(r"^stages\.(\d+)\.blocks\.", r"stages.\1.op_list.", key)
        if not key.endswith("num_batches_tracked"):     # released checkpoints may lack the counters
            renamed["backbone." + key] = value
    return {"state_dict": renamed | {"head.op_list.3.linear.weight": torch.zeros(1000, 1280)}}


def reference_state(fixture, naming):
    state = fixture["state_dict"]
    if naming == "features_only":
        return state
    cls_state = {fixture["cls_key_map"][k]: v for k, v in state.items()}
    if naming == "classification":
        return cls_state | {"head.classifier.4.weight": torch.zeros(1000, 1280), "head.in_conv.conv.weight":
                            torch.zeros(1024, 128, 1, 1)}
    return official_naming(cls_state)


def loaded_b0(fixture, naming="features_only"):
    model = build_backbone("efficientvit_b0").eval()
    load_pretrained(model, reference_state(fixture, naming))
    return model


@pytest.mark.parametrize("naming", ["features_only", "classification", "official"])
def test_reference_maps_reproduced(fixture, naming):
    model = loaded_b0(fixture, naming)
    assert count_parameters(model) == fixture["num_params"]
    assert_reproduces(model, fixture)


def test_converter_is_strict(fixture):
    state = reference_state(fixture, "classification")
    state["stages.3.blocks.1.context_module.main.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="unexpected"):
        load_pretrained(build_backbone("efficientvit_b0"), state)
    assert not any(k.startswith("head") for k in convert_state_dict(reference_state(fixture, "classification")))


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_count(name):
    with torch.device("meta"):                    # counts only: no memory, no init
        model = build_backbone(name)
    assert count_parameters(model) == PARAMS[name]


def test_b0_taps():
    assert build_backbone("efficientvit_b0").out_channels == (32, 64, 128)


def test_bfloat16_autocast_stays_close(fixture):
    model = loaded_b0(fixture)
    image = fixture["inputs"][0]
    with torch.no_grad():
        reference = model(image)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            maps = model(image)
    # bfloat16 keeps 8 mantissa bits: ~1-2 % relative error after 30 layers, the same as running every
    # layer in bfloat16; single pixels near a small attention denominator drift further, so compare norms.
    for out, ref in zip(maps, reference):
        assert torch.isfinite(out).all()
        assert (out.float() - ref).norm() <= 0.03 * ref.norm()


def test_lite_mla_float16_does_not_overflow():
    """Sums over 1024 tokens of products ~1e3·1e3 exceed float16's 65504; LiteMLA must do them in float32."""
    attention = LiteMLA(64, head_dim=16).eval()
    x = 300 * torch.randn(1, 64, 32, 32)
    with torch.no_grad():
        reference = attention(x)
        with torch.autocast("cpu", dtype=torch.float16):
            qkv = attention.qkv(x)
            naive = qkv[:, :16].flatten(2) @ qkv[:, 32:48].flatten(2).transpose(1, 2)
            out = attention(x)
    assert not torch.isfinite(naive).all()        # the input really is out of float16's range
    assert torch.isfinite(out).all()
    assert (out.float() - reference).abs().max() <= 0.01 * reference.abs().max()


def test_flop_counter_sees_attention_matmuls():
    attention, (heads, dim, tokens) = LiteMLA(64, head_dim=16), (2 * 64 // 16, 16, 8 * 10)
    with FlopCounterMode(display=False) as counter:
        attention(torch.rand(1, 64, 8, 10))
    counts = counter.get_flop_counts()["Global"]
    # two products per head (multi-scale heads included): (d+1)×N by N×d, then (d+1)×d by d×N
    assert counts[torch.ops.aten.bmm] == 2 * 2 * heads * (dim + 1) * dim * tokens
