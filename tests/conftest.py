import os
from pathlib import Path

import pytest
import torch

# The read-only reference material lives beside the repository (DEVELOPERS.md); LIGHTDET_SHARED overrides.
SHARED = Path(os.environ.get("LIGHTDET_SHARED", Path(__file__).resolve().parents[2] / "shared"))


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


def shared_path(*parts):
    """A path inside the shared folder (fixtures, coco128)."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: the shared folder must sit beside the repo "
                                "or be named by LIGHTDET_SHARED")
    return path


def load_fixture(*parts):
    """A reference fixture from shared/fixtures, e.g. load_fixture("backbones", "repvit_m0_9.pt")."""
    return torch.load(shared_path("fixtures", *parts), map_location="cpu", weights_only=False)


def assert_maps_close(maps, expected, rel=1e-4):
    """Feature maps equal to a fixture's, map by map: same shape, max abs diff <= rel × the map's scale."""
    assert len(maps) == len(expected) == 3
    for out, ref in zip(maps, expected):
        assert out.shape == ref.shape
        assert (out - ref).abs().max() <= rel * ref.abs().max()
