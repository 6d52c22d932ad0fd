"""RT-DETR: the hybrid encoder and decoder against ultralytics 8.4 (tests/fixtures/rtdetr_*.pt) through the
state_dict converter, the parameter counts, post-processing, fusion, gradients, checkpoints and a one-batch
overfit."""
import sys
from pathlib import Path

import pytest
import torch
from conftest import load_fixture, max_relative_error, seeded_uniform
from test_backbones import randomize_batchnorm

from lightdet import Detector, build_model
from lightdet.backbones import build_backbone
from lightdet.boxes import box_iou, cxcywh_to_xyxy
from lightdet.checkpoint import save_checkpoint
from lightdet.data import generate_shapes
from lightdet.heads.denoising import denoising_queries
from lightdet.heads.rtdetr import RTDETR_RECIPE, RTDETRHead, top_scores, token_anchors
from lightdet.losses.detr import RTDETRLoss
from lightdet.model import convert_ultralytics_rtdetr_state_dict
from lightdet.necks.hybrid_encoder import HybridEncoder
from lightdet.nms import non_max_suppression
from lightdet.optim import build_optimizer, set_learning_rate

@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """A DETR step is many small ops; with OpenMP's busy-waiting on a busy 2-core machine, two threads made one
    training step of the test model 12× slower than one thread (22 s against 1.8 s). Results do not change."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TARGETS = torch.tensor([[0, 0, 0.3, 0.4, 0.2, 0.3], [1, 2, 0.6, 0.5, 0.5, 0.6], [1, 1, 0.2, 0.7, 0.1, 0.2]])


def load_part(module, fixture, prefix, row=None):
    """Load a fixture's ultralytics weights into the neck or head through the converter, strictly."""
    state = {f"model.{row}.{k}" if row is not None else k: v for k, v in fixture["state_dict"].items()}
    converted = convert_ultralytics_rtdetr_state_dict(state)
    assert all(key.startswith(prefix) for key in converted)
    module.load_state_dict({key[len(prefix):]: value for key, value in converted.items()})
    return module


@pytest.fixture(scope="module")
def decoder_fixture():
    return load_fixture("rtdetr_decoder.pt")


def stored_order(selected, stored):
    """Positions in `selected` (B, k) of the stored token order: our queries permuted to the reference's
    (two tokens can tie within float noise; the decoder is permutation-equivariant over queries)."""
    positions = []
    for ours, theirs in zip(selected.tolist(), stored.tolist()):
        where = {token: i for i, token in enumerate(ours)}
        positions.append([where[token] for token in theirs])
    return torch.tensor(positions)


def reorder(tensor, order):
    """(..., B, k, C) -> the same with its query axis in `order` (B, k)."""
    index = order[..., None].expand(*order.shape, tensor.shape[-1])
    return tensor.gather(-2, index.expand(*tensor.shape[:-2], -1, -1))


def test_mobilenetv3_small_rtdetr_has_the_articles_parameter_count():
    model = build_model("mobilenetv3_small", num_classes=80, head="rtdetr")
    count = lambda module: sum(p.numel() for p in module.parameters())   # noqa: E731
    assert (count(model), count(model.backbone), count(model.neck), count(model.head)) == (
        19_592_492, 927_008, 11_199_232, 7_466_252)
    assert count(RTDETRHead(81, (256,) * 3)) - count(model.head) == 2_055   # per class: 7 score heads + embedding
    assert count(HybridEncoder((512, 1024, 2048))) == 11_950_848             # on rtdetr-l's own backbone (HGNetv2)
    assert model.config["head"] == "rtdetr"


def test_encoder_matches_ultralytics_square_and_rectangular():
    fixture = load_fixture("rtdetr_encoder.pt")
    neck = load_part(HybridEncoder(fixture["channels"]).eval(), fixture, "neck.")
    assert sum(p.numel() for p in neck.parameters()) == fixture["num_params"]
    for maps, expected, extra in zip(fixture["inputs"], fixture["outputs"], fixture["extra_outputs"]):
        with torch.no_grad():
            outputs = neck(maps)
            aifi = neck.aifi(neck.input_proj[2](maps[2]))
        assert [max_relative_error(out, ref) for out, ref in zip(outputs, expected)] < [1e-4] * 3
        assert max_relative_error(aifi, extra["model.11"]) <= 1e-4


@pytest.mark.parametrize("case", range(4))
def test_decoder_matches_ultralytics_in_eval(decoder_fixture, case):
    head = load_part(RTDETRHead(80, (256,) * 3).eval(), decoder_fixture, "head.", row=28)
    maps, expected = decoder_fixture["inputs"][case], decoder_fixture["outputs"][case]
    with torch.no_grad():
        predictions, outputs = head(maps)
        memory, _, shapes, anchors = head.encode(maps)
        best_logit = head.enc_score_head(memory).max(-1).values
    _, valid = token_anchors(shapes, memory.device, memory.dtype)
    assert torch.equal(anchors, expected["anchors"]) and torch.equal(valid, expected["valid_mask"])
    assert (best_logit - expected["enc_max_logit"]).abs().max() <= 1e-4
    k = expected["topk_ind"].shape[1]   # fewer tokens than queries in case 3: every token is selected
    selected = best_logit.topk(k, dim=1).indices
    assert torch.equal(selected.sort(1).values, expected["topk_ind"].sort(1).values)
    order = stored_order(selected, expected["topk_ind"])
    assert (reorder(outputs.boxes, order) - expected["dec_bboxes"]).abs().max() <= 1e-5
    assert (reorder(outputs.logits, order) - expected["dec_scores"]).abs().max() <= 1e-4
    assert (reorder(outputs.enc_boxes, order) - expected["enc_bboxes"]).abs().max() <= 1e-5
    assert (reorder(outputs.enc_logits, order) - expected["enc_scores"]).abs().max() <= 1e-4
    # post-processing: the reference's top-k from its own outputs, then our scores within tolerance
    boxes, scores, classes = top_scores(expected["dec_bboxes"][0], expected["dec_scores"][0].sigmoid(), 300)
    torch.testing.assert_close(torch.cat((boxes, scores[..., None], classes[..., None].float()), -1),
                               expected["detections"], rtol=0, atol=0)
    assert (head.postprocess(predictions, conf_thres=0)[0][:, 4] - expected["detections"][0, :, 4]).abs().max() <= 1e-5


def test_decoder_matches_ultralytics_in_training_with_denoising():
    fixture = load_fixture("rtdetr_decoder_train.pt")
    maps = [(seeded_uniform(f"train:input:{level}", m.shape) * 4 - 2).float()   # this file's own input names
            for level, m in enumerate(fixture["inputs"])]
    head = load_part(RTDETRHead(80, (256,) * 3).train(), fixture, "head.", row=28)
    stored = fixture["targets"]
    targets = torch.cat((stored["batch_idx"][:, None].float(), stored["cls"][:, None].float(), stored["bboxes"]), 1)
    expected_dn, draws = fixture["dn"], fixture["dn_draws"]

    torch.manual_seed(fixture["rng_seed"])   # the four draws, in ultralytics' order
    assert torch.equal(torch.rand(280), draws["label_noise_u"])
    assert torch.equal(torch.randint(0, 80, (len(draws["new_labels"]),)), draws["new_labels"])
    assert torch.equal(torch.randint(0, 2, (280, 4)).float(), draws["sign_bits"])
    assert torch.equal(torch.rand(280, 4), draws["box_noise_u"])

    torch.manual_seed(fixture["rng_seed"])
    embeddings, references, blocked, denoising = denoising_queries(targets, 2, head.denoising_class_embed.weight, 300)
    labels = expected_dn["labels"]
    expected_embeddings = head.denoising_class_embed.weight[labels.clamp(min=0)] * (labels >= 0)[..., None]
    assert torch.equal(embeddings, expected_embeddings)
    assert torch.equal(references, expected_dn["ref_logits"]) and torch.equal(blocked, expected_dn["attn_mask"])
    assert [s.tolist() for s in denoising.positive_slots] == [s.tolist() for s in expected_dn["pos_idx"]]
    assert [(g + offset).tolist() for g, offset in zip(denoising.gt_index, (0, 2))] == [
        g.tolist() for g in expected_dn["gt_idx"]]
    assert (denoising.groups, [denoising.num_queries, 300]) == (expected_dn["num_group"], expected_dn["num_split"])

    torch.manual_seed(fixture["rng_seed"])
    outputs = head(maps, targets)
    expected = fixture["outputs"]
    boxes, logits = torch.cat((outputs.dn_boxes, outputs.boxes), 2), torch.cat((outputs.dn_logits, outputs.logits), 2)
    assert (boxes - expected["dec_bboxes"]).abs().max() <= 1e-5
    assert (logits[expected["dec_scores_layers"]] - expected["dec_scores"]).abs().max() <= 1e-4
    assert (logits.max(-1).values - expected["dec_scores_max"]).abs().max() <= 1e-4
    assert (outputs.enc_boxes - expected["enc_bboxes"]).abs().max() <= 1e-5
    assert (outputs.enc_logits - expected["enc_scores"]).abs().max() <= 1e-4


def test_converter_drops_backbone_rows_and_rejects_foreign_keys():
    converted = convert_ultralytics_rtdetr_state_dict({
        "model.3.conv.weight": torch.zeros(1), "model.11.ma.in_proj_weight": torch.zeros(1),
        "model.28.input_proj.0.1.running_var": torch.zeros(1), "model.28.decoder.layers.5.norm3.bias": torch.zeros(1)})
    assert sorted(converted) == ["head.decoder_layers.5.norm3.bias", "head.input_proj.0.bn.running_var",
                                 "neck.aifi.attn.in_proj_weight"]
    with pytest.raises(KeyError, match="model.29.foo"):
        convert_ultralytics_rtdetr_state_dict({"model.29.foo": torch.zeros(1)})


def test_postprocess_keeps_the_best_query_class_pairs_in_pixels():
    head = RTDETRHead(3, (8,) * 3, hidden=32, num_queries=4, num_layers=1, ffn_dim=32, num_denoising=0)
    boxes = torch.tensor([[[32, 16, 20, 10], [8, 8, 4, 4]]], dtype=torch.float32)   # cx, cy, w, h pixels
    scores = torch.tensor([[[0.1, 0.9, 0.3], [0.8, 0.05, 0.7]]])
    detections = head.postprocess(torch.cat((boxes, scores), -1), conf_thres=0.2, max_det=3)[0]
    torch.testing.assert_close(detections, torch.tensor([[22, 11, 42, 21, 0.9, 1], [6, 6, 10, 10, 0.8, 0],
                                                         [6, 6, 10, 10, 0.7, 2]]))


def test_eval_output_for_any_input_size():
    model = build_model("mobilenetv3_small", num_classes=3, head="rtdetr").eval()
    for height, width in [(64, 64), (96, 160)]:
        with torch.no_grad():
            predictions, outputs = model(torch.rand(2, 3, height, width))
        tokens = sum((height // s) * (width // s) for s in (8, 16, 32))
        k = min(300, tokens)
        assert predictions.shape == (2, k, 7) and outputs.boxes.shape == (1, 2, k, 4)
        normalised = outputs.boxes[-1] * torch.tensor([width, height, width, height])
        assert torch.allclose(predictions[..., :4], normalised) and 0 <= predictions[..., 4:].min()
        detections = model.postprocess(predictions, conf_thres=0.0, max_det=10)
        assert [d.shape for d in detections] == [(10, 6)] * 2


def test_anchor_head_postprocess_is_yolov5_nms():
    model = build_model("cspdarknet", num_classes=3).eval()
    with torch.no_grad():
        predictions = model(torch.rand(1, 3, 64, 64))
    expected = non_max_suppression(predictions, 0.01, 0.5, max_det=50)
    assert torch.equal(model.postprocess(predictions, conf_thres=0.01, iou_thres=0.5, max_det=50)[0], expected[0])


def predictions_by_token(model, images):
    """Eval predictions with their rows in token order instead of score order. With fewer tokens than queries
    every token is a query, so the rows compare one to one even where float noise swaps two scores."""
    features = model.neck(model.backbone(images))
    memory = model.head.encode(features)[0]
    best_logit = model.head.enc_score_head(memory).max(-1).values
    assert best_logit.shape[1] < model.head.num_queries
    selected = best_logit.topk(best_logit.shape[1], dim=1).indices
    predictions, _ = model.head(features)
    return reorder(predictions, selected.argsort(1))


def test_fused_rtdetr_matches_and_has_no_batchnorm():
    model = randomize_batchnorm(build_model("mobilenetv3_small", num_classes=3, head="rtdetr")).eval()
    images = torch.rand(1, 3, 96, 128)   # 252 tokens
    with torch.no_grad():
        before = predictions_by_token(model, images)
        params = sum(p.numel() for p in model.parameters())
        after = predictions_by_token(model.fuse(), images)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert sum(p.numel() for p in model.parameters()) < params
    assert max_relative_error(after, before) <= 1e-4


def test_loss_reaches_every_parameter():
    model = randomize_batchnorm(build_model("mobilenetv3_small", num_classes=3, head="rtdetr")).train()
    for p in model.parameters():   # zero-initialised layers (box heads' last layer, ...) must be wired in too
        if not p.any() or p.ndim == 2 and (p == p[0]).all():
            p.data.normal_(0, 0.02)
    outputs = model(torch.rand(2, 3, 64, 96), TARGETS)
    loss, items = RTDETRLoss(3)(outputs, TARGETS)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(items).all()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_checkpoint_round_trip(tmp_path):
    model = build_model("mobilenetv3_small", num_classes=3, head="rtdetr").eval()
    path = tmp_path / "best.pt"
    save_checkpoint({"model": model.state_dict(), "config": model.config, "names": ["a", "b", "c"]}, path)
    loaded = Detector.from_checkpoint(path).eval()
    assert isinstance(loaded.head, RTDETRHead) and loaded.names == ["a", "b", "c"]
    images = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(loaded(images)[0], model(images)[0])


def test_recipe_optimizer_trains_the_backbone_at_a_tenth_of_the_rate():
    model = build_model("mobilenetv3_small", num_classes=3, head="rtdetr")
    recipe = RTDETR_RECIPE
    optimizer = build_optimizer(model, recipe["optimizer"], recipe["lr"], recipe["momentum"], recipe["weight_decay"],
                                backbone_lr_scale=recipe["backbone_lr_scale"])
    backbone = {id(p) for p in model.backbone.parameters()}
    groups = optimizer.param_groups
    assert all(g["params"] for g in groups) and all(id(p) in backbone for g in groups[3:] for p in g["params"])
    assert not any(id(p) in backbone for g in groups[:3] for p in g["params"])
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    set_learning_rate(optimizer, 5000, 10000, recipe["warmup_iters"], recipe["schedule"], recipe["final_lr_scale"],
                      warmup_bias_lr=0.0, momentum=recipe["momentum"])
    assert [g["lr"] for g in groups] == pytest.approx([1e-4] * 3 + [1e-5] * 3)
    assert [g["weight_decay"] for g in groups] == [0, 1e-4, 0] * 2


def test_eval_script_scores_an_rtdetr_checkpoint(tmp_path):
    """eval.py rebuilds the model from the checkpoint alone and evaluates through the head's post-processing."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import eval as eval_script   # the repository's eval.py, not the builtin

    data = generate_shapes(tmp_path / "shapes", num_train=1, num_val=2, processes=1)
    model = build_model("mobilenetv3_small", num_classes=6, head="rtdetr")
    path = tmp_path / "last.pt"
    save_checkpoint({"model": model.state_dict(), "config": model.config, "names": [str(i) for i in range(6)],
                     "args": {"data": str(data), "img": 64}}, path)
    metrics = eval_script.main(["--weights", str(path), "--workers", "0", "--batch", "2"])
    assert len(metrics["detections"]) == 2 * 300   # untrained: every (query, class) score is ~0.01 > conf 0.001
    assert 0 <= metrics["mAP50"] <= 1


def test_unknown_head_lists_the_valid_ones():
    with pytest.raises(ValueError, match="anchor, rtdetr"):
        build_model("mobilenetv3_small", head="detr")


def test_overfits_one_batch():
    """A slim RT-DETR (hidden 128, 3 decoder layers, 100 queries) learns one batch of two 64×64 images with
    three boxes: the loss falls and each image's top detections are its objects, with their classes."""
    backbone = build_backbone("mobilenetv3_small")
    neck = HybridEncoder(backbone.out_channels, hidden=128, ffn_dim=256, depth=1)
    head = RTDETRHead(3, neck.out_channels, hidden=128, num_queries=100, num_layers=3, ffn_dim=256, num_denoising=20)
    model = Detector(backbone, neck, head).train()
    targets = torch.tensor([[0, 0, 0.30, 0.35, 0.30, 0.40], [0, 2, 0.70, 0.65, 0.35, 0.30],
                            [1, 1, 0.50, 0.50, 0.50, 0.45]])
    images = torch.full((2, 3, 64, 64), 0.2)
    for image, cls, *box in targets.tolist():   # a bright rectangle in the channel of its class
        x1, y1, x2, y2 = (int(v * 64) for v in cxcywh_to_xyxy(torch.tensor(box)).tolist())
        images[int(image), int(cls), y1:y2, x1:x2] = 0.9
    criterion = RTDETRLoss(3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1.5e-3, weight_decay=0)
    losses = []
    for _ in range(80):
        loss, _ = criterion(model(images, targets), targets)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.35 * losses[0]
    model.eval()
    with torch.no_grad():
        detections = model.postprocess(model(images), conf_thres=0.0)
    for image, found in enumerate(detections):
        objects = targets[targets[:, 0] == image]
        top = found[:len(objects)]   # as many detections as objects, by score
        iou = box_iou(top[:, :4], cxcywh_to_xyxy(objects[:, 2:] * 64))
        best = iou.argmax(0)
        assert sorted(best.tolist()) == list(range(len(objects)))       # one detection per object
        assert (iou.amax(0) > 0.75).all() and (top[best, 5] == objects[:, 1]).all() and (top[:, 4] > 0.5).all()
