import pytest
import torch
from conftest import load_fixture, seeded_uniform

from lightdet.losses import YOLOLoss
from lightdet.losses.yolo import BOX_LOSSES, HYP_DEFAULTS

ANCHORS = [[(10, 13), (16, 30), (33, 23)], [(30, 61), (62, 45), (59, 119)], [(116, 90), (156, 198), (373, 326)]]
STRIDES = (8, 16, 32)


@pytest.fixture(scope="module")
def fixture():
    fixture = load_fixture("loss_yolov5n.pt")
    fixture["preds"] = [(seeded_uniform(f"loss:pred{i}", shape) * 6 - 3).float()
                        for i, shape in enumerate(fixture["pred_shapes"])]
    return fixture


def unscaled_hyp(fixture):
    """The fixture stores YOLOv5's scaled gains; YOLOLoss takes them unscaled and scales them itself."""
    hyp, num_levels = dict(fixture["hyp"]), len(fixture["strides"])
    hyp["box"] /= 3 / num_levels
    hyp["cls"] /= fixture["num_classes"] / 80 * 3 / num_levels
    hyp["obj"] /= (fixture["imgsz"] / 640) ** 2 * 3 / num_levels
    return hyp


def make_loss(fixture, box_loss="ciou"):
    return YOLOLoss(fixture["anchors_pixels"], fixture["strides"], fixture["num_classes"], box_loss=box_loss,
                    imgsz=fixture["imgsz"], hyp=unscaled_hyp(fixture))


def small_batch(num_classes=3, batch=2, imgsz=64, targets_per_image=4):
    preds = [torch.randn(batch, 3, imgsz // s, imgsz // s, 5 + num_classes, requires_grad=True) for s in STRIDES]
    n = batch * targets_per_image
    targets = torch.cat((torch.arange(batch).repeat_interleave(targets_per_image)[:, None].float(),
                         torch.randint(0, num_classes, (n, 1)).float(),
                         0.2 + torch.rand(n, 2) * 0.6, 0.1 + torch.rand(n, 2) * 0.5), 1)
    return preds, targets


def test_reproduces_yolov5_loss(fixture):
    loss_fn = make_loss(fixture)
    assert loss_fn.gains == pytest.approx({k: fixture["hyp"][k] for k in ("box", "obj", "cls")})
    loss, items = loss_fn(fixture["preds"], fixture["targets"])
    torch.testing.assert_close(loss.reshape(1), fixture["loss"].reshape(1).float(), rtol=1e-5, atol=0)
    torch.testing.assert_close(items, fixture["items"].float(), rtol=1e-5, atol=0)


def test_hyp_is_unscaled_and_scaled_like_yolov5_train():
    loss_fn = YOLOLoss(ANCHORS, STRIDES, num_classes=20, imgsz=320, hyp={"lr0": 0.01, "cls": 0.4})
    assert loss_fn.hyp["anchor_t"] == HYP_DEFAULTS["anchor_t"] and "lr0" not in loss_fn.hyp
    assert loss_fn.gains == pytest.approx({"box": 0.05, "cls": 0.4 * 20 / 80, "obj": 1.0 * (320 / 640) ** 2})
    two_levels = YOLOLoss(ANCHORS[:2], STRIDES[:2], num_classes=80)
    assert two_levels.gains == pytest.approx({"box": 0.05 * 1.5, "cls": 0.5 * 1.5, "obj": 1.5})


def assigned_cells(loss_fn, target, imgsz=64):
    preds = [torch.zeros(1, 3, imgsz // s, imgsz // s, 6) for s in STRIDES]
    level = loss_fn.build_targets(preds, torch.tensor([target]))[0]
    return level, [(int(a), int(j), int(i)) for a, j, i in zip(level.anchor, level.gj, level.gi)]


def test_assignment_centre_cell_and_two_nearest_neighbours():
    loss_fn = YOLOLoss(ANCHORS, STRIDES, num_classes=1)
    # 64 px input, stride 8 -> 8x8 grid; centre at (3.3, 4.7) cells; 12x14 px is within 4x of all three P3 anchors.
    level, cells = assigned_cells(loss_fn, [0, 0, 3.3 / 8, 4.7 / 8, 12 / 64, 14 / 64])
    # centre (row 4, col 3), left neighbour (col 2: x in the left half), lower neighbour (row 5: y in the lower half)
    for anchor in (0, 1, 2):
        assert [c[1:] for c in cells if c[0] == anchor] == [(4, 3), (4, 2), (5, 3)]
    # the target's centre is relative to the assigned cell's corner, so the neighbours see it beyond 0..1
    anchor_0 = level.anchor == 0
    torch.testing.assert_close(level.box[anchor_0, :2], torch.tensor([[0.3, 0.7], [1.3, 0.7], [0.3, -0.3]]))
    torch.testing.assert_close(level.box[:, 2:], torch.tensor([1.5, 1.75]).expand(len(level.box), 2))
    torch.testing.assert_close(level.anchor_wh[anchor_0], torch.tensor([[10 / 8, 13 / 8]]).expand(3, 2))


def test_assignment_anchor_ratio_threshold():
    loss_fn = YOLOLoss(ANCHORS, STRIDES, num_classes=1)
    # 44x16 px at stride 8: ratios to 10x13 are 4.4 (out), to 16x30 2.75/1.875 (in), to 33x23 1.33/1.44 (in)
    _, cells = assigned_cells(loss_fn, [0, 0, 0.5 + 1 / 128, 0.5 + 1 / 128, 44 / 64, 16 / 64])
    assert sorted({c[0] for c in cells}) == [1, 2]


def test_assignment_on_exact_cell_boundary_matches_yolov5():
    # Centre exactly on a grid line (4.0, 4.0 cells): YOLOv5 takes the left and upper neighbours, and its
    # "right" and "lower" neighbours truncate back to the centre cell, which is then assigned three times.
    loss_fn = YOLOLoss([[(10, 13)], [(30, 61)], [(116, 90)]], STRIDES, num_classes=1)
    _, cells = assigned_cells(loss_fn, [0, 0, 0.5, 0.5, 10 / 64, 13 / 64])
    assert cells == [(0, 4, 4), (0, 4, 3), (0, 3, 4), (0, 4, 4), (0, 4, 4)]


def test_cells_at_the_border_have_no_outer_neighbour():
    loss_fn = YOLOLoss([[(10, 13)], [(30, 61)], [(116, 90)]], STRIDES, num_classes=1)
    _, cells = assigned_cells(loss_fn, [0, 0, 0.3 / 8, 7.8 / 8, 10 / 64, 13 / 64])  # cell (7, 0)
    assert cells == [(0, 7, 0)]


@pytest.mark.parametrize("box_loss", BOX_LOSSES)
def test_every_box_loss_trains(box_loss):
    preds, targets = small_batch()
    loss, items = YOLOLoss(ANCHORS, STRIDES, num_classes=3, box_loss=box_loss, imgsz=64)(preds, targets)
    assert loss.shape == () and items.shape == (3,) and not items.requires_grad
    assert torch.isfinite(loss) and (items > 0).all()
    torch.testing.assert_close(loss, items.sum() * 2)
    loss.backward()
    for p in preds:
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_no_targets_gives_objectness_loss_only():
    preds, _ = small_batch()
    loss, items = YOLOLoss(ANCHORS, STRIDES, num_classes=3, imgsz=64)(preds, torch.zeros(0, 6))
    assert items[0] == 0 and items[2] == 0 and items[1] > 0
    loss.backward()


def test_gr_moves_the_objectness_target_from_one_to_the_iou():
    preds, targets = small_batch()
    loss = YOLOLoss(ANCHORS, STRIDES, num_classes=3, imgsz=64)
    items = {}
    for gr in (0.0, 0.5, 1.0):
        loss.gr = gr
        items[gr] = loss(preds, targets)[1]
    # BCE is linear in its target: halfway in gr is halfway in the objectness term; box and class do not move
    torch.testing.assert_close(items[0.5][1], (items[0.0][1] + items[1.0][1]) / 2)
    assert items[0.0][1] != items[1.0][1] and items[0.0][0] == items[1.0][0] and items[0.0][2] == items[1.0][2]
    empty = [loss(preds, torch.zeros(0, 6))[1][1] for loss.gr in (0.0, 1.0)]
    assert empty[0] == empty[1]   # where nothing is assigned the target is 0 whatever gr


def test_label_smoothing_and_focal_loss_change_only_their_terms():
    preds, targets = small_batch()
    plain = YOLOLoss(ANCHORS, STRIDES, num_classes=3, imgsz=64)(preds, targets)[1]
    smoothed = YOLOLoss(ANCHORS, STRIDES, num_classes=3, imgsz=64, hyp={"label_smoothing": 0.1})(preds, targets)[1]
    assert smoothed[0] == plain[0] and smoothed[1] == plain[1] and smoothed[2] != plain[2]
    focal = YOLOLoss(ANCHORS, STRIDES, num_classes=3, imgsz=64, hyp={"fl_gamma": 1.5})(preds, targets)[1]
    assert focal[0] == plain[0] and focal[1] < plain[1] and focal[2] < plain[2]
    single_class = YOLOLoss(ANCHORS, STRIDES, num_classes=1, imgsz=64)
    preds_1 = [p[..., :6] for p in preds]
    assert single_class(preds_1, targets * torch.tensor([1, 0, 1, 1, 1, 1]))[1][2] == 0


def test_wiou_running_mean_is_saved_and_moves_only_in_training():
    preds, targets = small_batch()
    loss_fn = YOLOLoss(ANCHORS, STRIDES, num_classes=3, box_loss="wiou3", imgsz=64)
    assert list(loss_fn.state_dict()) == ["wiou.running_mean"]  # anchors are rebuilt from the config
    loss_fn.eval()
    loss_fn(preds, targets)
    assert loss_fn.wiou.running_mean.item() == 1.0
    loss_fn.train()
    loss_fn(preds, targets)
    moved = loss_fn.wiou.running_mean.item()
    assert moved < 1.0

    restored = YOLOLoss(ANCHORS, STRIDES, num_classes=3, box_loss="wiou3", imgsz=64)
    restored.load_state_dict(loss_fn.state_dict())
    assert restored.wiou.running_mean.item() == moved
    restored.eval(), loss_fn.eval()
    torch.testing.assert_close(restored(preds, targets)[1], loss_fn(preds, targets)[1])
    assert YOLOLoss(ANCHORS, STRIDES, num_classes=3).state_dict() == {}


def test_unknown_box_loss_is_rejected():
    with pytest.raises(ValueError, match="ciou"):
        YOLOLoss(ANCHORS, STRIDES, num_classes=3, box_loss="CIoU")
