"""RT-DETR's set loss against ultralytics' RTDETRDetectionLoss (tests/fixtures/rtdetr_loss.pt), VFL's gradient
by hand, and the denoising group's bookkeeping."""
import pytest
import torch
from conftest import load_fixture, seeded_uniform

from lightdet.heads.denoising import Denoising, denoising_queries
from lightdet.heads.rtdetr import RTDETROutput
from lightdet.losses.detr import (VFL_OFFICIAL, VFL_ULTRALYTICS, RTDETRLoss, hungarian_match, split_targets,
                                  varifocal_loss)


@pytest.fixture(scope="module")
def fixture():
    return load_fixture("rtdetr_loss.pt")


def case_inputs(fixture, case):
    """The case's predictions as an RTDETROutput and its targets as (M, 6) rows."""
    low, high = (torch.tensor(fixture[key], dtype=torch.float64) for key in ("box_lo", "box_hi"))

    def draw(kind, key, shape):
        u = seeded_uniform(key, shape, fixture["seed"])
        if kind == "box":
            return (low + (high - low) * u).float()
        return (fixture["logit_lo"] + (fixture["logit_hi"] - fixture["logit_lo"]) * u).float()
    tensors = {name: draw(*recipe) for name, recipe in case["tensors"].items()}
    stored = case["targets"]
    targets = torch.cat((stored["batch_idx"][:, None].float(), stored["cls"][:, None].float(), stored["bboxes"]), 1)
    denoising = None
    if case["dn_meta"]:
        meta = case["dn_meta"]
        first_gt = torch.tensor([0, *case["gt_groups"][:-1]]).cumsum(0)   # ultralytics' gt indices are global
        denoising = Denoising(meta["dn_pos_idx"], [g - first for g, first in zip(meta["dn_gt_idx"], first_gt)],
                              meta["dn_num_group"], meta["dn_num_split"][0])
    outputs = RTDETROutput(tensors["dec_bboxes"], tensors["dec_scores"], tensors["enc_bboxes"], tensors["enc_scores"],
                           tensors.get("dn_bboxes"), tensors.get("dn_scores"), denoising)
    return outputs, targets


@pytest.mark.parametrize("name", ["plain", "dn", "empty"])
@pytest.mark.parametrize("variant, vfl", [("ultralytics", VFL_ULTRALYTICS), ("official_vfl", VFL_OFFICIAL)])
def test_loss_terms_equal_ultralytics(fixture, name, variant, vfl):
    case = next(c for c in fixture["cases"] if c["name"] == name)
    outputs, targets = case_inputs(fixture, case)
    terms = RTDETRLoss(fixture["num_classes"], vfl=vfl).terms(outputs, targets)
    expected = case["variants"][variant]["terms"]
    assert sorted(terms) == sorted(expected)
    for key, value in expected.items():
        assert terms[key].item() == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert sum(terms.values()).item() == pytest.approx(case["variants"][variant]["total"], rel=1e-5)


@pytest.mark.parametrize("name", ["plain", "empty"])
def test_matches_of_every_output_equal_ultralytics(fixture, name):
    case = next(c for c in fixture["cases"] if c["name"] == name)
    outputs, targets = case_inputs(fixture, case)
    gts = split_targets(targets, outputs.boxes.shape[1])
    boxes = torch.cat((outputs.enc_boxes[None], outputs.boxes))   # the 7-stack: encoder, decoder layers 0-5
    logits = torch.cat((outputs.enc_logits[None], outputs.logits))
    matches = [hungarian_match(b, x, gts) for b, x in zip(boxes, logits)]
    expected = case.get("match_indices") or [None] * 6 + [case["last_layer_matches"]]
    for ours, theirs in zip(matches, expected):
        if theirs is not None:
            assert [(q.tolist(), g.tolist()) for q, g in ours] == [(q.tolist(), g.tolist()) for q, g in theirs]


def test_loss_returns_total_and_last_layer_items(fixture):
    outputs, targets = case_inputs(fixture, fixture["cases"][1])
    loss = RTDETRLoss(fixture["num_classes"])
    total, items = loss(outputs, targets)
    terms = loss.terms(outputs, targets)
    assert total.item() == pytest.approx(sum(t.item() for t in terms.values()), rel=1e-6)
    assert items.tolist() == [terms[k].item() for k in ("loss_class", "loss_bbox", "loss_giou")]


@pytest.mark.parametrize("detach", [False, True])
def test_varifocal_gradient_by_hand(detach):
    """d/dx BCE(x, t)·w = (σ(x) − t)·w, plus BCE·dw/dx when the weight α·σ(x)^γ is not detached."""
    logits = torch.tensor([-2.0, 0.5, 1.0], requires_grad=True)
    scores, labels = torch.tensor([0.0, 0.7, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    varifocal_loss(logits, scores, labels, gamma=2.0, alpha=0.75, detach_weight=detach).backward()
    x = logits.detach()
    p = x.sigmoid()
    weight = 0.75 * p ** 2 * (1 - labels) + scores * labels
    bce = -(scores * p.log() + (1 - scores) * (1 - p).log())
    expected = (p - scores) * weight
    if not detach:
        expected += bce * 0.75 * 2 * p * p * (1 - p) * (1 - labels)
    torch.testing.assert_close(logits.grad, expected)


def test_denoising_groups_by_hand():
    embed = torch.arange(1, 4, dtype=torch.float32)[:, None].repeat(1, 2)   # class c -> (c + 1, c + 1)
    targets = torch.tensor([[1, 2, 0.5, 0.5, 0.2, 0.2], [0, 1, 0.3, 0.3, 0.2, 0.4], [1, 0, 0.6, 0.4, 0.1, 0.1]])
    embeddings, references, blocked, dn = denoising_queries(targets, 2, embed, num_matching=3, num_denoising=4,
                                                            label_noise=0, box_noise=0)
    # at most 2 objects per image: 2 groups of (2 positive + 2 negative) slots
    assert (dn.groups, dn.num_queries) == (2, 8)
    assert [s.tolist() for s in dn.positive_slots] == [[0, 4], [0, 1, 4, 5]]
    assert [g.tolist() for g in dn.gt_index] == [[0], [0, 1]]
    assert embeddings[1, :, 0].tolist() == [3, 1, 3, 1, 3, 1, 3, 1] and embeddings[0, :, 0].tolist() == [2, 0] * 4
    torch.testing.assert_close(references[1, 5].sigmoid(), targets[2, 2:])   # without noise: the box itself
    group = torch.tensor([0] * 4 + [1] * 4)
    assert torch.equal(blocked[:8, :8], group[:, None] != group) and blocked[8:, :8].all() and not blocked[:, 8:].any()


def test_denoising_keeps_a_subset_of_crowded_images():
    targets = torch.cat((torch.zeros(6, 2), torch.rand(6, 2) * 0.5 + 0.25, torch.full((6, 2), 0.1)), 1)   # 6 in image 0
    _, _, _, dn = denoising_queries(targets, 1, torch.ones(1, 4), num_matching=2, num_denoising=4)
    assert (dn.groups, dn.num_queries) == (1, 8)
    kept = dn.gt_index[0].tolist()
    assert len(kept) == 4 and kept == sorted(set(kept)) and 0 <= min(kept) and max(kept) < 6
