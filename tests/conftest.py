"""Shared test helpers: the reference fixtures in tests/fixtures and the comparisons every family uses.

The fixtures store no weights. Each tensor is regenerated from a seed and a per-key recipe ("seeded-v1"),
exactly as the reference code drew it when it recorded the outputs:

    g     = torch.Generator().manual_seed(zlib.crc32(key.encode(), seed))
    value = lo + (hi - lo) * torch.rand(shape, generator=g, dtype=torch.float64)   # times `scale[key]`, per row
    tensor = value.float()

Inputs are drawn the same way under the name "input:<i>": U(-2, 2) for backbones and blocks, U(0, 1) (an
image) for whole detectors. An input given as a list of shapes (RT-DETR's per-level maps) is a list of tensors,
level l drawn under the name "input:<i>:<l>".
"""
import zlib
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).resolve().parent / "fixtures"
DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


def seeded_uniform(name, shape, seed=0):
    """U(0, 1) in float64 from a generator seeded by crc32(name) started from `seed`."""
    generator = torch.Generator().manual_seed(zlib.crc32(name.encode(), seed))
    return torch.rand(shape, generator=generator, dtype=torch.float64)


def materialize(fixture):
    """The state_dict a seeded-v1 fixture describes: its `params` recipe, `scale` and `int_buffers`."""
    state = {}
    for key, shape, low, high in fixture["params"]:
        value = low + (high - low) * seeded_uniform(key, shape, fixture["seed"])
        if key in fixture["scale"]:
            value = value * fixture["scale"][key].double().view(-1, *[1] * (len(shape) - 1))
        state[key] = value.float()
    state.update(fixture["int_buffers"])
    return state


def seeded_input(fixture, index, low=-2.0, high=2.0):
    """Input `index` of a fixture (a shape in `inputs`, or a list of shapes), drawn as the reference drew it."""
    shape = fixture["inputs"][index]
    if isinstance(shape[0], (list, tuple)):
        return [(low + (high - low) * seeded_uniform(f"input:{index}:{level}", s, fixture["seed"])).float()
                for level, s in enumerate(shape)]
    return (low + (high - low) * seeded_uniform(f"input:{index}", shape, fixture["seed"])).float()


def load_fixture(name):
    """A reference fixture from tests/fixtures with its weights (`state_dict`) and inputs (`inputs` as tensors)
    regenerated. Detector fixtures (`model_*`) take images in 0..1; backbones and blocks take U(-2, 2)."""
    fixture = torch.load(FIXTURES / name, map_location="cpu", weights_only=False)
    if "params" in fixture:
        fixture["state_dict"] = materialize(fixture)
    if "inputs" in fixture:
        low, high = (0.0, 1.0) if name.startswith("model_") else (-2.0, 2.0)
        fixture["inputs"] = [seeded_input(fixture, i, low, high) for i in range(len(fixture["inputs"]))]
    return fixture


def max_relative_error(out, ref):
    """max |out - ref| divided by the reference's scale (its max |value|)."""
    assert out.shape == ref.shape, (tuple(out.shape), tuple(ref.shape))
    return ((out - ref).abs().max() / ref.abs().max()).item()


def assert_maps_close(maps, expected, rel=1e-4):
    """Feature maps equal to a fixture's, map by map: same shape, max abs diff <= rel × the map's scale."""
    assert len(maps) == len(expected)
    for out, ref in zip(maps, expected):
        assert max_relative_error(out, ref) <= rel


def assert_reproduces(model, fixture, expected=None, rel=1e-4):
    """`model` (put in eval mode) maps every fixture input to the fixture's outputs (or to `expected`, one list
    of maps per input)."""
    model.eval()
    with torch.no_grad():
        for images, maps in zip(fixture["inputs"], expected or fixture["outputs"]):
            assert_maps_close(model(images), maps, rel)


def assert_loading_is_strict(name, state_dict, unexpected, missing):
    """load_pretrained refuses `state_dict` with the extra key `unexpected`, and without the key `missing`."""
    from lightdet.backbones import build_backbone, load_pretrained
    with pytest.raises(ValueError, match="unexpected"):
        load_pretrained(build_backbone(name), {**state_dict, unexpected: torch.zeros(1)})
    with pytest.raises(ValueError, match="missing"):
        load_pretrained(build_backbone(name), {k: v for k, v in state_dict.items() if k != missing})


def count_parameters(model):
    return sum(p.numel() for p in model.parameters())


def randomize_batchnorm(model):
    """Non-trivial BatchNorm statistics and affine parameters, so that folding them is really exercised."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
    return model
