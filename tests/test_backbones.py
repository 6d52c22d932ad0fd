"""The backbone contract, for every registered name: shapes at square and rectangular sizes, gradients through
the whole detector and its loss, and re-parameterisation; the detector's for every neck option on every family.
Family files test what is particular to a family (reference fixtures, parameter counts, key conversion)."""
import pytest
import torch
from torch import nn

from conftest import randomize_batchnorm
from lightdet.backbones import BACKBONES, DEFAULT_VARIANT, VARIANTS, build_backbone
from lightdet.layers import fuse_modules
from lightdet.losses import build_loss
from lightdet.model import build_model
from lightdet.necks import NECK_OPTIONS

# (backbone, neck_block, neck_attention): each family's default variant with every neck option but YOLOv5's own.
NECK_CASES = [(family, *option) for family in DEFAULT_VARIANT for option in NECK_OPTIONS[1:]]


def test_every_family_name_builds_one_of_its_variants():
    families = {name.split("_")[0] for name in VARIANTS}
    assert set(DEFAULT_VARIANT) == families   # a new family must name its default variant
    for family, variant in DEFAULT_VARIANT.items():
        assert variant.startswith(family + "_") and BACKBONES[family] is VARIANTS[variant]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_three_maps_at_strides_8_16_32(name):
    backbone = build_backbone(name).eval()
    for height, width in [(64, 64), (64, 96), (96, 160)]:   # 96×160: odd stride-32 map (3×5)
        with torch.no_grad():
            maps = backbone(torch.rand(1, 3, height, width))
        assert [tuple(m.shape) for m in maps] == [
            (1, c, height // s, width // s) for c, s in zip(backbone.out_channels, (8, 16, 32))]


@pytest.mark.parametrize("name, block, attention", NECK_CASES)
def test_detector_shapes_with_every_neck_option(name, block, attention):
    model = build_model(name, num_classes=3, neck_block=block, neck_attention=attention).eval()
    for height, width in [(64, 96), (96, 160)]:   # 96×160: odd stride-32 map (3×5); iRMB windows padded
        with torch.no_grad():
            decoded, raw = model(torch.rand(1, 3, height, width))
        assert [tuple(r.shape) for r in raw] == [(1, 3, height // s, width // s, 8) for s in (8, 16, 32)]
        assert decoded.shape == (1, 3 * sum((height // s) * (width // s) for s in (8, 16, 32)), 8)


@pytest.mark.parametrize("name, block, attention", [(name, "c3", None) for name in VARIANTS] + NECK_CASES)
def test_detector_loss_reaches_every_parameter(name, block, attention):
    # Residual branches that start as the identity (a zero BatchNorm scale or projection) must be wired in too
    model = build_model(name, num_classes=3, neck_block=block, neck_attention=attention)
    model = randomize_batchnorm(model).train()
    for p in model.parameters():
        if not p.any():
            p.data.normal_(0, 0.1)
    criterion = build_loss(model, 3, imgsz=96)
    targets = torch.tensor([[0, 0, 0.3, 0.4, 0.2, 0.3], [1, 2, 0.6, 0.5, 0.5, 0.6]])
    loss, items = criterion(model(torch.rand(2, 3, 64, 96)), targets)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(items).all()
    for parameter_name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, parameter_name


@pytest.mark.parametrize("name, block, attention", [(name, "c3", None) for name in DEFAULT_VARIANT] + NECK_CASES)
def test_fused_detector_matches_and_has_no_batchnorm(name, block, attention):
    model = build_model(name, num_classes=3, neck_block=block, neck_attention=attention)
    model = randomize_batchnorm(model).eval()
    images = torch.rand(1, 3, 96, 160)
    with torch.no_grad():
        maps = model.backbone(images)
        decoded, _ = model(images)
        params = sum(p.numel() for p in model.parameters())
        model.fuse()
        fused_maps = model.backbone(images)
        fused, _ = model(images)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert sum(p.numel() for p in model.parameters()) < params
    for a, b in zip(fused_maps, maps):
        assert (a - b).abs().max() <= 1e-5 * b.abs().max()
    assert (fused - decoded).abs().max() <= 1e-4 * decoded.abs().max()


def test_fuse_modules_walks_parents_before_children():
    order = []

    class Fusable(nn.Module):
        def __init__(self, name, *children):
            super().__init__()
            self.name, self.inner = name, nn.ModuleList(children)

        def fuse(self):
            order.append(self.name)
    fuse_modules(Fusable("root", Fusable("parent", Fusable("child"))))
    assert order == ["root", "parent", "child"]
