"""Validation: run a detector over a dataset and score it with pycocotools (COCO mAP@0.5:0.95 and mAP@0.5).

Every dataset format provides COCO ground truth (`dataset.coco_ground_truth()`), so one scorer serves them
all. The defaults are YOLOv5's val.py settings: confidence 0.001, NMS IoU 0.6, at most 300 detections per
image, and multi-label NMS (a box yields one detection per class above the threshold), so that the mAP
compares with the numbers YOLOv5 prints. Precision and recall are YOLOv5's too: per class at the one
confidence that maximises the mean F1 over classes, after smoothing that mean F1 curve with YOLOv5's box
filter. One difference remains: the true positives behind P and R are pycocotools' IoU-0.5 matches (greedy by
score, crowd regions ignored), where YOLOv5 matches by IoU with its own code; the two agree on most detections.
The confusion matrix is YOLOv5's (detections above 0.25, matched at IoU 0.45).
"""
import contextlib
import io
import time

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from .boxes import box_iou, cxcywh_to_xyxy, scale_boxes, xyxy_to_xywh

CONFUSION_CONF, CONFUSION_IOU = 0.25, 0.45   # YOLOv5's ConfusionMatrix thresholds


@torch.no_grad()
def evaluate(model, dataloader, conf_thres=0.001, iou_thres=0.6, max_det=300, device="cpu", amp=False,
             multi_label=True, single_cls=False):
    """Score `model` on the dataset behind `dataloader`; returns a dict of metrics, a per-class table, the
    precision-recall curves at IoU 0.5 (`pr_curve`), the confusion matrix (`confusion`), per-image speeds in
    ms (pre-process, inference, post-processing: NMS or top-k) and the detections in COCO json format. `single_cls`: every ground-truth
    box counts as class 0 (train.py --single-cls)."""
    dataset = dataloader.dataset
    coco, image_ids, category_ids = dataset.coco_ground_truth()
    if single_cls:
        coco, category_ids = _one_class(coco), [1]
    index_of = {path: i for i, path in enumerate(dataset.im_files)}
    was_training = model.training
    model.eval()
    detections, seconds, images_seen = [], np.zeros(3), 0
    confusion = np.zeros((len(category_ids) + 1,) * 2)
    for images, targets, paths, shape_infos in dataloader:
        start = time.perf_counter()
        images = images.to(device, non_blocking=True).float() / 255
        _synchronize(device)
        loaded = time.perf_counter()
        with torch.autocast("cuda", enabled=amp and images.is_cuda):
            decoded, _ = model(images)
        _synchronize(device)
        inferred = time.perf_counter()
        results = model.postprocess(decoded.float(), conf_thres, iou_thres, max_det, multi_label=multi_label)
        _synchronize(device)
        seconds += (loaded - start, inferred - loaded, time.perf_counter() - inferred)
        images_seen += len(paths)
        height, width = images.shape[2:]
        for k, (result, path, (original_shape, ratio_pad)) in enumerate(zip(results, paths, shape_infos)):
            labels = targets[targets[:, 0] == k, 1:].to(result.device)   # class, cx, cy, w, h; 0..1 of the input
            in_pixels = cxcywh_to_xyxy(labels[:, 1:] * labels.new_tensor([width, height, width, height]))
            update_confusion(confusion, result, torch.cat((labels[:, :1] * (not single_cls), in_pixels), 1))
            boxes = xyxy_to_xywh(scale_boxes(result[:, :4], images.shape[2:], original_shape, ratio_pad).cpu())
            image_id = image_ids[index_of[path]]
            detections += [{"image_id": image_id, "category_id": category_ids[int(c)],
                            "bbox": [round(float(v), 3) for v in box], "score": round(float(s), 5)}
                           for box, s, c in zip(boxes, result[:, 4].tolist(), result[:, 5].tolist())]
    model.train(was_training)
    metrics = score_coco(coco, detections, image_ids, category_ids, dataset.names)
    metrics["confusion"] = confusion
    metrics["speed_ms"] = tuple(1000 * seconds / max(images_seen, 1))
    metrics["detections"] = detections
    return metrics


def merge_classes(dataset):
    """Make every box of a dataset class 0, named 'item' (YOLOv5's --single-cls); returns the dataset."""
    dataset.names = ["item"]
    for labels in dataset.labels:
        labels[:, 0] = 0
    return dataset


def _one_class(coco):
    """A copy of a pycocotools COCO with every annotation in one category (id 1)."""
    one = COCO()
    one.dataset = {**coco.dataset, "categories": [{"id": 1, "name": "item"}],
                   "annotations": [{**a, "category_id": 1} for a in coco.dataset.get("annotations", [])]}
    with contextlib.redirect_stdout(io.StringIO()):
        one.createIndex()
    return one


def update_confusion(matrix, detections, labels, conf_thres=CONFUSION_CONF, iou_thres=CONFUSION_IOU):
    """Add one image to a confusion matrix `matrix` (nc + 1, nc + 1): rows the predicted class, columns the true
    class, the last row and column background (YOLOv5's ConfusionMatrix).

    detections `Tensor[n, 6]` (x1, y1, x2, y2, score, class) and labels `Tensor[m, 5]` (class, x1, y1, x2, y2)
    in the same pixels. Pairs with IoU > iou_thres, highest IoU first, keep each detection's best label, then
    each label's best remaining detection. A matched label counts at (its detection's class, its class); an
    unmatched label in the background row (missed); an unmatched detection in the background column (a false
    alarm; YOLOv5 forgets these on images where nothing matched at all).
    """
    background = matrix.shape[0] - 1
    detections = detections[detections[:, 4] > conf_thres]
    true_class, predicted_class = labels[:, 0].long().tolist(), detections[:, 5].long().tolist()
    iou = box_iou(labels[:, 1:], detections[:, :4])
    rows, cols = (iou > iou_thres).nonzero(as_tuple=True)
    order = iou[rows, cols].argsort(descending=True, stable=True).tolist()
    best_label_of = {}
    for i in order:
        best_label_of.setdefault(int(cols[i]), int(rows[i]))
    detection_of = {}
    for i in order:
        label, detection = int(rows[i]), int(cols[i])
        if best_label_of[detection] == label:
            detection_of.setdefault(label, detection)
    for label, cls in enumerate(true_class):
        detection = detection_of.get(label)
        matrix[background if detection is None else predicted_class[detection], cls] += 1
    for detection in set(range(len(predicted_class))) - set(detection_of.values()):
        matrix[predicted_class[detection], background] += 1


def score_coco(coco, detections, image_ids, category_ids, names):
    """pycocotools evaluation -> {"P", "R", "mAP50", "mAP50_95", "per_class": [row per class],
    "pr_curve": (recall (101,), precision (classes, 101)) at IoU 0.5}."""
    instances = {c: 0 for c in category_ids}
    images_with = {c: set() for c in category_ids}
    evaluated = set(image_ids)
    for ann in coco.dataset["annotations"]:
        if ann["category_id"] in instances and not ann.get("iscrowd", 0) and ann["image_id"] in evaluated:
            instances[ann["category_id"]] += 1
            images_with[ann["category_id"]].add(ann["image_id"])
    num_classes = len(category_ids)
    precision, recall = np.zeros(num_classes), np.zeros(num_classes)
    ap50, ap = np.zeros(num_classes), np.zeros(num_classes)
    pr_curve = np.zeros((num_classes, 101))
    if detections:
        with contextlib.redirect_stdout(io.StringIO()):   # pycocotools prints a progress chatter
            evaluator = COCOeval(coco, coco.loadRes(detections), "bbox")
            evaluator.params.imgIds = list(image_ids)
            evaluator.params.catIds = list(category_ids)
            evaluator.evaluate()
            evaluator.accumulate()
        table = evaluator.eval["precision"][:, :, :, 0, -1]   # (IoU thresholds, recall points, classes), area all
        for k in range(num_classes):
            ap50[k] = _mean_valid(table[0, :, k])
            ap[k] = _mean_valid(table[:, :, k])
        pr_curve = np.clip(table[0].T, 0, None)   # -1 (no ground truth) -> 0
        precision, recall = _precision_recall_at_best_f1(evaluator, category_ids, instances)
    rows = [{"class": names[k], "images": len(images_with[c]), "instances": instances[c],
             "P": precision[k], "R": recall[k], "mAP50": ap50[k], "mAP50_95": ap[k]}
            for k, c in enumerate(category_ids)]
    present = [k for k, c in enumerate(category_ids) if instances[c] > 0]   # COCO averages over these
    mean = (lambda v: float(np.mean(v[present]))) if present else (lambda v: 0.0)
    return {"P": mean(precision), "R": mean(recall), "mAP50": mean(ap50), "mAP50_95": mean(ap),
            "images": len(evaluated), "per_class": rows, "pr_curve": (np.linspace(0, 1, 101), pr_curve)}


def _mean_valid(values):
    values = values[values > -1]   # pycocotools marks classes without ground truth with -1
    return float(values.mean()) if values.size else 0.0


def smooth(values, fraction=0.05):
    """YOLOv5's box filter: a centred moving average over `fraction` of the points (made odd), ends repeated."""
    width = round(len(values) * fraction) // 2 * 2 + 1
    padded = np.concatenate((np.full(width // 2, values[0]), values, np.full(width // 2, values[-1])))
    return np.convolve(padded, np.ones(width) / width, mode="valid")


def _precision_recall_at_best_f1(evaluator, category_ids, instances):
    """Per-class P and R at the one confidence threshold with the highest smoothed mean F1 (YOLOv5's report)."""
    all_areas = evaluator.params.areaRng[0]
    confidence = np.linspace(0, 1, 1000)
    p_curves, r_curves = np.zeros((len(category_ids), 1000)), np.zeros((len(category_ids), 1000))
    scores, hits = {c: [] for c in category_ids}, {c: [] for c in category_ids}
    for entry in evaluator.evalImgs:   # one pass: COCO has ~80 × 5000 × 4 entries
        if entry is None or entry["aRng"] != all_areas:
            continue
        keep = ~entry["dtIgnore"][0].astype(bool)   # IoU 0.5
        scores[entry["category_id"]].append(np.asarray(entry["dtScores"])[keep])
        hits[entry["category_id"]].append(entry["dtMatches"][0][keep] > 0)
    for k, category in enumerate(category_ids):
        if not scores[category] or instances[category] == 0:
            continue
        score = np.concatenate(scores[category])
        order = np.argsort(-score, kind="stable")
        score = score[order]
        if score.size == 0:
            continue
        true_positives = np.cumsum(np.concatenate(hits[category])[order])
        precision = true_positives / np.arange(1, score.size + 1)
        recall = true_positives / instances[category]
        # curves as functions of the confidence threshold (np.interp needs increasing x: negate)
        p_curves[k] = np.interp(-confidence, -score, precision, left=1)
        r_curves[k] = np.interp(-confidence, -score, recall, left=0)
    f1 = 2 * p_curves * r_curves / (p_curves + r_curves + 1e-16)
    best = smooth(f1.mean(0), 0.1).argmax()
    return p_curves[:, best], r_curves[:, best]


def _synchronize(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


def format_table(metrics):
    """The per-class table as text: class, images, instances, P, R, mAP50, mAP50-95, and an 'all' row first."""
    rows = metrics["per_class"]
    header = f"{'class':>16}{'images':>9}{'instances':>11}{'P':>9}{'R':>9}{'mAP50':>9}{'mAP50-95':>10}"
    all_row = {"class": "all", "images": metrics["images"], "instances": sum(r["instances"] for r in rows),
               "P": metrics["P"], "R": metrics["R"], "mAP50": metrics["mAP50"], "mAP50_95": metrics["mAP50_95"]}
    lines = [header]
    for row in [all_row] + rows:
        lines.append(f"{row['class']:>16}{row['images']:>9}{row['instances']:>11}{row['P']:>9.3f}{row['R']:>9.3f}"
                     f"{row['mAP50']:>9.3f}{row['mAP50_95']:>10.3f}")
    return "\n".join(lines)
