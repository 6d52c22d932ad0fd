"""Neck options: C2f (ultralytics) and the iRMB article's iRMB, C2f_iRMB and detector, against their reference
fixtures; the article's sizes; fusion across the windows' padding; checkpoints that rebuild every option."""
import pytest
import torch
from torch import nn

from conftest import assert_maps_close, load_fixture, max_relative_error
from lightdet import Detector, build_model
from lightdet.checkpoint import save_checkpoint
from lightdet.layers import C2f, C3, fuse_modules
from lightdet.model import convert_yolov5_state_dict
from lightdet.necks import NECK_OPTIONS
from lightdet.necks.irmb import C2f_iRMB, convert_state_dict, iRMB, iRMBBottleneck


def count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("fixture_name, block", [
    ("block_irmb.pt", lambda: iRMB(64)),
    ("block_c2f.pt", lambda: C2f(128, 64, 1, shortcut=False)),
    ("block_c2f_irmb.pt", lambda: C2f_iRMB(128, 64, 1, shortcut=False)),
])
def test_block_matches_its_reference(fixture_name, block):
    # Input 0 of each is 20×24: the iRMB pads it to 21×28 for its 7×7 windows and crops the result.
    fixture = load_fixture(fixture_name)
    module = block().eval()
    assert count(module) == fixture["num_params"]
    module.load_state_dict(convert_state_dict(fixture["state_dict"]))   # strict
    with torch.no_grad():
        assert_maps_close([module(x) for x in fixture["inputs"]], fixture["outputs"])


def test_reproduces_the_irmb_articles_yolov5n():
    fixture = load_fixture("model_yolov5n_irmb.pt")
    state = fixture["state_dict"]   # YOLOv5 stores anchors in grid units; the recipe leaves them out
    strides = torch.tensor(fixture["strides"]).view(-1, 1, 1)
    state["model.27.anchors"] = torch.tensor(fixture["anchors_pixels"]) / strides
    model = build_model("cspdarknet", scale="n", neck_attention="irmb").eval()
    assert count(model) == fixture["num_params"] == 2_222_045
    irmbs = [model.neck.attention_p3, model.neck.attention_p4, model.neck.attention_p5]
    assert [count(m) for m in irmbs] == fixture["irmb_params"] == [17_216, 67_200, 265_472]
    model.load_state_dict(convert_yolov5_state_dict(state, neck_attention="irmb"))   # strict
    for images, expected in zip(fixture["inputs"], fixture["outputs"]):
        with torch.no_grad():
            decoded, raw = model(images)
        # Float32 noise: the same weights in float64 differ from the stored outputs by up to 3e-5 of the scale.
        assert max_relative_error(decoded, expected["decoded"]) <= 1e-4
        assert_maps_close(raw, expected["raw"])


def test_converter_refuses_the_other_layout():
    plain = load_fixture("model_yolov5n.pt")["state_dict"]
    with pytest.raises(KeyError, match="yolov5_iRMB.yaml.*no place for: model.20"):
        convert_yolov5_state_dict(plain, neck_attention="irmb")


def test_the_articles_full_size_design_and_its_printed_total():
    # yolov5_iRMB.yaml at depth 1.0, width 1.0: the iRMBs are the sizes the article prints; the total is that of
    # the design it describes.
    with torch.device("meta"):
        model = build_model("cspdarknet", scale="l", neck_attention="irmb")
        irmbs = [model.neck.attention_p3, model.neck.attention_p4, model.neck.attention_p5]
        assert [count(m) for m in irmbs] == [265_472, 1_055_232, 4_207_616]
        assert count(model) == 52_092_029
        # The article's printed 84,787,133: its code, pasted into YOLOv5's common.py, also replaces YOLOv5's
        # Bottleneck with its own (3×3, 3×3, iRMB) inside every C3 of backbone and neck.
        for c3 in [m for m in model.modules() if isinstance(m, C3)]:
            c3.m = nn.Sequential(*(iRMBBottleneck(b.cv2.conv.out_channels, b.add) for b in c3.m))
    assert count(model) == 84_787_133


def test_fused_irmb_matches_across_the_window_padding():
    block = iRMB(32).eval()
    for bn in (block.norm, block.conv_local.bn):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
    x = torch.randn(2, 32, 10, 12)   # padded to 14×14: most of each window is padding
    with torch.no_grad():
        before = block(x)
        after = fuse_modules(block)(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in block.modules())
    assert max_relative_error(after, before) <= 1e-5


def test_irmb_rejects_channels_that_do_not_split_into_heads():
    with pytest.raises(ValueError, match="36 channels do not split into heads of 8"):
        iRMB(36)


@pytest.mark.parametrize("block, attention", NECK_OPTIONS)
def test_checkpoint_rebuilds_every_neck_option(tmp_path, block, attention):
    model = build_model("cspdarknet", num_classes=2, neck_block=block, neck_attention=attention).eval()
    path = tmp_path / "last.pt"
    save_checkpoint({"model": model.state_dict(), "config": model.config, "names": ["a", "b"]}, path)
    loaded = Detector.from_checkpoint(path).eval()
    assert loaded.config["neck_block"] == block and loaded.config["neck_attention"] == attention
    images = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(loaded(images)[0], model(images)[0])


def test_checkpoints_from_before_the_neck_options_load_as_yolov5():
    model = build_model("cspdarknet", num_classes=2)
    config = {k: v for k, v in model.config.items() if k not in ("neck_block", "neck_attention")}
    loaded = Detector.from_checkpoint({"model": model.state_dict(), "config": config, "names": ["a", "b"]})
    assert type(loaded.neck.out_p3).__name__ == "C3" and isinstance(loaded.neck.attention_p3, nn.Identity)


def test_unknown_neck_options_list_the_valid_ones():
    with pytest.raises(ValueError, match="c3, c2f, c2f_irmb"):
        build_model("cspdarknet", neck_block="c4")
    with pytest.raises(ValueError, match="None, irmb"):
        build_model("cspdarknet", neck_attention="cbam")
