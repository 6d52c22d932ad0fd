import math

import pytest
import torch

from lightdet.boxes import xyxy_to_cxcywh
from lightdet.losses import WIoULoss, iou_loss, paired_iou
from lightdet.losses.iou import LOSS_KINDS

E = math.exp
# v of CIoU for a 2x1 (1x2) box against a 1x1 box.
V_2X1 = 4 / math.pi ** 2 * (math.atan(1.0) - math.atan(2.0)) ** 2
V_1X2 = 4 / math.pi ** 2 * (math.atan(1.0) - math.atan(0.5)) ** 2

# (pred xyxy, target xyxy, {kind: loss worked out by hand from the formulas in lightdet/losses/iou.py}).
HAND_CASES = {
    # Unit squares offset by 0.5: IoU 1/3, enclosing 1.5 x 1, rho^2 = 0.25, c^2 = 3.25, centres on a horizontal line.
    "offset": ((0, 0, 1, 1), (0.5, 0, 1.5, 1), {
        "iou": 2 / 3, "giou": 2 / 3, "diou": 2 / 3 + 0.25 / 3.25, "ciou": 2 / 3 + 0.25 / 3.25,
        "eiou": 2 / 3 + 0.25 / 3.25, "focal_eiou": (1 / 3) ** 0.5 * (2 / 3 + 0.25 / 3.25),
        "siou": 2 / 3 + (1 - E(-2 * (0.5 / 1.5) ** 2)) / 2,         # angle 0 -> gamma 2, shape cost 0
        "wiou": E(0.25 / 3.25) * 2 / 3}),
    # A 2x1 box against the unit square in its left half: IoU 1/2, enclosing 2 x 1, rho^2 = 0.25, c^2 = 5.
    "aspect": ((0, 0, 2, 1), (0, 0, 1, 1), {
        "iou": 0.5, "giou": 0.5, "diou": 0.55, "ciou": 0.55 + V_2X1 / (V_2X1 - 0.5 + 1) * V_2X1,
        "eiou": 0.55 + 1 / 4, "focal_eiou": 0.5 ** 0.5 * 0.8,
        "siou": 0.5 + ((1 - E(-2 * (0.5 / 2) ** 2)) + (1 - E(-0.5)) ** 4) / 2,   # omega_w = 1/2, theta 4
        "wiou": E(0.25 / 5) * 0.5}),
    # The same, standing: enclosing 1 x 2, so the height term of EIoU divides by Ch^2 = 4.
    "tall": ((0, 0, 1, 2), (0, 0, 1, 1), {
        "iou": 0.5, "giou": 0.5, "diou": 0.55, "ciou": 0.55 + V_1X2 / (V_1X2 - 0.5 + 1) * V_1X2,
        "eiou": 0.55 + 1 / 4, "focal_eiou": 0.5 ** 0.5 * 0.8,
        "siou": 0.5 + ((1 - E(-2 * (0.5 / 2) ** 2)) + (1 - E(-0.5)) ** 4) / 2,
        "wiou": E(0.25 / 5) * 0.5}),
    # Diagonal shift: IoU 1/7, enclosing 1.5 x 1.5, rho^2 = 0.5, c^2 = 4.5, centre line at 45 degrees.
    "diagonal": ((0, 0, 1, 1), (0.5, 0.5, 1.5, 1.5), {
        "iou": 6 / 7, "giou": 6 / 7 + (2.25 - 1.75) / 2.25, "diou": 6 / 7 + 0.5 / 4.5, "ciou": 6 / 7 + 0.5 / 4.5,
        "eiou": 6 / 7 + 0.5 / 4.5, "focal_eiou": (1 / 7) ** 0.5 * (6 / 7 + 0.5 / 4.5),
        "siou": 6 / 7 + 2 * (1 - E(-1 * (0.5 / 1.5) ** 2)) / 2,          # angle cost 1 -> gamma 1
        "wiou": E(0.5 / 4.5) * 6 / 7}),
    # Disjoint: IoU 0, enclosing 3 x 1 with union 2, rho^2 = 4, c^2 = 10.
    "disjoint": ((0, 0, 1, 1), (2, 0, 3, 1), {
        "iou": 1.0, "giou": 1 + 1 / 3, "diou": 1.4, "ciou": 1.4, "eiou": 1.4, "focal_eiou": 0.0,
        "siou": 1 + (1 - E(-2 * (2 / 3) ** 2)) / 2, "wiou": E(0.4)}),
}

GRADIENT_CASES = {  # pred, target
    "identical": ((0.0, 0.0, 2.0, 2.0), (0.0, 0.0, 2.0, 2.0)),
    "disjoint": ((0.0, 0.0, 1.0, 1.0), (3.0, 3.0, 4.0, 5.0)),
    "nested": ((0.0, 0.0, 4.0, 4.0), (1.0, 0.5, 2.0, 3.0)),
    "concentric": ((0.0, 0.0, 4.0, 4.0), (1.0, 1.0, 3.0, 3.0)),
    "concentric_inverted": ((1.0, 1.0, 3.0, 3.0), (0.0, 0.0, 4.0, 4.0)),
}


def random_boxes(n):
    xy = torch.rand(n, 2) * 10
    return torch.cat((xy, xy + 0.5 + torch.rand(n, 2) * 5), 1)


@pytest.mark.parametrize("case", HAND_CASES)
def test_hand_computed_values(case):
    pred, target, expected = HAND_CASES[case]
    pred, target = torch.tensor([pred], dtype=torch.float64), torch.tensor([target], dtype=torch.float64)
    for kind, value in expected.items():
        loss = iou_loss(pred, target, kind)
        assert loss.shape == (1,)
        assert loss.item() == pytest.approx(value, rel=1e-5, abs=1e-6), kind
        if kind in ("iou", "giou", "diou", "ciou", "eiou", "siou"):
            assert paired_iou(pred, target, kind).item() == pytest.approx(1 - value, rel=1e-5, abs=1e-6)
    assert WIoULoss(version=1)(pred, target).item() == pytest.approx(expected["wiou"], rel=1e-5)


@pytest.mark.parametrize("kind", LOSS_KINDS)
def test_identical_boxes_cost_nothing(kind):
    boxes = random_boxes(16)
    torch.testing.assert_close(iou_loss(boxes, boxes, kind), torch.zeros(16), atol=1e-6, rtol=0)


@pytest.mark.parametrize("version", [1, 2, 3])
def test_identical_boxes_cost_nothing_wiou(version):
    boxes = random_boxes(16)
    torch.testing.assert_close(WIoULoss(version)(boxes, boxes), torch.zeros(16), atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", LOSS_KINDS)
def test_symmetric_in_prediction_and_target(kind):
    a, b = random_boxes(64), random_boxes(64)
    torch.testing.assert_close(iou_loss(a, b, kind), iou_loss(b, a, kind))


@pytest.mark.parametrize("kind", LOSS_KINDS)
def test_cxcywh_input_matches_xyxy(kind):
    a, b = random_boxes(32), random_boxes(32)
    torch.testing.assert_close(iou_loss(xyxy_to_cxcywh(a), xyxy_to_cxcywh(b), kind, xywh=True), iou_loss(a, b, kind))


def _all_losses():
    """{name: fn(pred, target, xywh) -> Tensor[N]}: every stateless kind, every WIoU version in both modes."""
    losses = {kind: (lambda p, t, xywh, kind=kind: iou_loss(p, t, kind, xywh=xywh)) for kind in LOSS_KINDS}
    for version in (1, 2, 3):
        for training in (True, False):
            module = WIoULoss(version).train(training)
            losses[f"wiou{version}_{'train' if training else 'eval'}"] = \
                lambda p, t, xywh, module=module: module(p, t, xywh=xywh)
    return losses


@pytest.mark.parametrize("case", GRADIENT_CASES)
def test_finite_values_and_gradients(case):
    pred_box, target_box = GRADIENT_CASES[case]
    for name, loss_fn in _all_losses().items():
        for xywh in (False, True):
            pred, target = torch.tensor([pred_box]), torch.tensor([target_box])
            if xywh:
                pred, target = xyxy_to_cxcywh(pred), xyxy_to_cxcywh(target)
            pred.requires_grad_(True)
            loss = loss_fn(pred, target, xywh)
            assert torch.isfinite(loss).all(), (name, case, xywh)
            loss.sum().backward()
            assert torch.isfinite(pred.grad).all(), (name, case, xywh)


@pytest.mark.parametrize("kind", ["giou", "diou", "ciou", "eiou", "siou", "wiou"])
def test_disjoint_boxes_get_pulled_together(kind):
    # Plain IoU has no gradient for disjoint boxes; the penalty terms must give one that reduces the loss.
    pred = torch.tensor([[0.0, 0.0, 1.0, 1.0]], requires_grad=True)
    target = torch.tensor([[3.0, 2.0, 4.0, 3.5]])
    loss = iou_loss(pred, target, kind)
    loss.sum().backward()
    assert pred.grad.abs().sum() > 0
    with torch.no_grad():
        assert iou_loss(pred - 0.1 * pred.grad, target, kind).item() < loss.item()


def test_unknown_kinds_are_rejected():
    boxes = random_boxes(2)
    with pytest.raises(ValueError, match="giou"):
        iou_loss(boxes, boxes, "gIoU")
    with pytest.raises(ValueError, match="WIoULoss"):
        iou_loss(boxes, boxes, "wiou3")
    with pytest.raises(ValueError):
        WIoULoss(version=4)


def test_wiou_focusing_coefficients():
    v3 = WIoULoss(version=3)
    assert v3.focusing_coefficient(torch.tensor(3.0)).item() == pytest.approx(1.0)      # beta = delta
    assert v3.focusing_coefficient(torch.tensor(0.0)).item() == 0.0
    assert v3.focusing_coefficient(torch.tensor(12.0)).item() < 0.1                     # outliers get little
    assert WIoULoss(version=2).focusing_coefficient(torch.tensor(4.0)).item() == pytest.approx(2.0)


def test_wiou_v2_v3_against_v1_with_a_known_mean():
    pred, target = torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([[0.5, 0.0, 1.5, 1.0]])  # L_IoU = 2/3
    v1 = WIoULoss(version=1)(pred, target)
    for version, factor in ((2, 3 ** 0.5), (3, 1.0)):
        module = WIoULoss(version=version).eval()
        module.running_mean.fill_(2 / 9)  # beta = (2/3) / (2/9) = 3 = delta
        torch.testing.assert_close(module(pred, target), v1 * factor)


def test_wiou_running_mean_moves_only_in_training_and_survives_state_dict():
    momentum = 0.1
    module = WIoULoss(version=3, momentum=momentum)
    assert "running_mean" in module.state_dict() and module.running_mean.item() == 1.0
    a, b = random_boxes(32), random_boxes(32)
    l_iou = 1 - paired_iou(a, b, "iou")
    module.eval()
    module(a, b)
    assert module.running_mean.item() == 1.0
    module.train()
    module(a, b)
    assert module.running_mean.item() == pytest.approx((1 - momentum) * 1.0 + momentum * l_iou.mean().item())
    module(a[:0], b[:0])  # no boxes: nothing to average, the mean stays
    assert module.running_mean.item() == pytest.approx((1 - momentum) + momentum * l_iou.mean().item())

    restored = WIoULoss(version=3, momentum=momentum)
    restored.load_state_dict(module.state_dict())
    assert torch.equal(restored.running_mean, module.running_mean)
    torch.testing.assert_close(restored.eval()(a, b), module.eval()(a, b))


def test_wiou_default_momentum_is_the_papers():
    assert WIoULoss().momentum == pytest.approx(1 - 0.05 ** (1 / (890 * 34)))
