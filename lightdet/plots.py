"""Pictures drawn with Pillow, the ones YOLOv5 leaves in a run folder.

    draw_detections     boxes, names and scores on an image (predict.py)
    plot_results        results.png: train losses, validation metrics and the LR against the epoch
    plot_pr_curves      PR_curve.png: precision against recall at IoU 0.5, per class and the mean
    plot_confusion      confusion_matrix.png: predicted against true class, background included
    plot_labels         labels.jpg: class histogram, where the boxes are and how large they are
    plot_batch          train_batch0.jpg: a training batch as the model sees it, with its boxes
"""
import colorsys
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

MEAN_COLOUR = (31, 119, 180)
GRID_COLOUR = (225, 225, 225)


def class_colour(index):
    """A stable, well-separated colour per class (golden-ratio hue steps)."""
    r, g, b = colorsys.hsv_to_rgb((index * 0.618034) % 1.0, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def font(size=12):
    """Pillow's bundled TrueType font at `size` px, or its fixed bitmap font where FreeType is missing."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def draw_detections(image, detections, names, line_width=None, labels=True, scores=True):
    """Draw `detections` (Tensor[n, 6]: x1, y1, x2, y2, score, class; original-image pixels) on a copy of a PIL
    image: boxes `line_width` pixels wide (default: 0.3% of the image size, YOLOv5's), each with its class name
    and score unless `labels` / `scores` is False."""
    image = image.convert("RGB") if image.mode != "RGB" else image.copy()
    draw = ImageDraw.Draw(image)
    line = line_width or max(round(sum(image.size) / 2 * 0.003), 2)
    text_font = font(max(11, line * 5))
    for x1, y1, x2, y2, score, cls in detections.tolist():
        label = " ".join(([names[int(cls)]] if labels else []) + ([f"{score:.2f}"] if scores else []))
        _labelled_box(draw, (x1, y1, x2, y2), class_colour(int(cls)), line, label, text_font)
    return image


def _labelled_box(draw, box, colour, line, label, text_font):
    x1, y1, x2, y2 = box
    draw.rectangle((x1, y1, max(x1, x2), max(y1, y2)), outline=colour, width=line)
    if not label:
        return
    left, top, right, bottom = draw.textbbox((0, 0), label, font=text_font)
    height = bottom - top + 2
    top_of_label = y1 - height if y1 - height >= 0 else y1   # above the box, inside it at the image's top
    draw.rectangle((x1, top_of_label, x1 + right - left + 4, top_of_label + height), fill=colour)
    draw.text((x1 + 2, top_of_label - top + 1), label, fill=(255, 255, 255), font=text_font)


def _nice_ticks(low, high, count=5):
    """About `count` round values spanning low..high (1, 2 or 5 times a power of ten apart)."""
    if high <= low:
        return [low]
    raw = (high - low) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step - 1e-9) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def _axes(draw, box, x_range, y_range, title="", x_label="", y_label="", integer_x=False, x_names=None):
    """A frame with grid lines, tick labels and titles inside `box` (left, top, right, bottom); returns the
    function that maps data (x, y) to pixels. `x_names`: a name under each integer x instead of numbers."""
    small, left, top, right, bottom = font(11), box[0] + 52, box[1] + 24, box[2] - 10, box[3] - 34
    (x0, x1), (y0, y1) = x_range, y_range
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)

    def to_pixels(x, y):
        return left + (x - x0) / (x1 - x0) * (right - left), bottom - (y - y0) / (y1 - y0) * (bottom - top)
    x_ticks = [t for t in _nice_ticks(x0, x1) if not integer_x or float(t).is_integer()] or [x0]
    for tick in x_ticks if x_names is None else []:
        x, _ = to_pixels(tick, y0)
        draw.line((x, top, x, bottom), fill=GRID_COLOUR)
        draw.text((x, bottom + 4), f"{tick:g}" if not integer_x else str(int(tick)), fill="black", font=small,
                  anchor="ma")
    for k, name in enumerate(x_names or []):
        draw.text((to_pixels(k, y0)[0], bottom + 4), name, fill="black", font=small, anchor="ma")
    for tick in _nice_ticks(y0, y1):
        _, y = to_pixels(x0, tick)
        draw.line((left, y, right, y), fill=GRID_COLOUR)
        draw.text((left - 4, y), f"{tick:.4g}", fill="black", font=small, anchor="rm")
    draw.rectangle((left, top, right, bottom), outline=(120, 120, 120))
    draw.text(((left + right) / 2, box[1] + 4), title, fill="black", font=font(13), anchor="ma")
    draw.text(((left + right) / 2, box[3] - 14), x_label, fill="black", font=small, anchor="ma")
    if y_label:
        draw.text((box[0] + 4, box[1] + 6), y_label, fill="black", font=small)
    return to_pixels


def plot_results(rows, path):
    """results.png: one chart per column of `rows` (dicts per epoch, as in results.csv) against the epoch: the
    losses (whatever the criterion names them), the LR and the metrics. Columns left empty (epochs without
    validation) are skipped; a single epoch shows as a point."""
    panels = [name for name in rows[0] if name != "epoch"]
    panel_w, panel_h, columns = 300, 230, 4
    image = Image.new("RGB", (panel_w * columns, panel_h * math.ceil(len(panels) / columns)), "white")
    draw = ImageDraw.Draw(image)
    first, last = int(rows[0]["epoch"]), int(rows[-1]["epoch"])
    for i, name in enumerate(panels):
        points = [(int(r["epoch"]), float(r[name])) for r in rows if r.get(name) not in (None, "")]
        values = [v for _, v in points] or [0.0]
        low, high = min(values), max(values)
        pad = (high - low) * 0.08 or abs(high) * 0.1 or 0.1
        left, top = (i % columns) * panel_w, (i // columns) * panel_h
        box = (left, top, left + panel_w, top + panel_h)
        to_pixels = _axes(draw, box, (first - 0.5 * (first == last), last + 0.5 * (first == last)),
                          (low - pad, high + pad), title=name, x_label="epoch", integer_x=True)
        pixels = [to_pixels(x, y) for x, y in points]
        if len(pixels) > 1:
            draw.line(pixels, fill=MEAN_COLOUR, width=2)
        for x, y in pixels:
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=MEAN_COLOUR)
    image.save(path)


def _legend(draw, at, entries):
    """Colour swatches with labels, one per line, from `at` (left, top)."""
    for k, (colour, text, width) in enumerate(entries):
        y = at[1] + 18 * k
        draw.line((at[0], y + 7, at[0] + 22, y + 7), fill=colour, width=width)
        draw.text((at[0] + 28, y), text, fill="black", font=font(12))


def plot_pr_curves(recall, precision, per_class, path):
    """PR_curve.png: precision (array [classes, points]) against recall ([points]) at IoU 0.5, a thin line per
    class with ground truth (up to 20 in the legend, each with its AP50; `per_class` rows as `evaluate` gives
    them) and the mean over those classes."""
    image = Image.new("RGB", (920, 600), "white")
    draw = ImageDraw.Draw(image)
    to_pixels = _axes(draw, (0, 0, 620, 600), (0, 1), (0, 1), title="Precision-Recall at IoU 0.5",
                      x_label="recall", y_label="precision")
    present = [k for k, row in enumerate(per_class) if row["instances"] > 0]
    entries = []
    for k in present:
        draw.line([to_pixels(r, p) for r, p in zip(recall, precision[k])], fill=class_colour(k), width=1)
        if len(present) <= 20:
            entries.append((class_colour(k), f"{per_class[k]['class']} {per_class[k]['mAP50']:.3f}", 2))
    if present:
        mean = np.mean([precision[k] for k in present], 0)
        draw.line([to_pixels(r, p) for r, p in zip(recall, mean)], fill=MEAN_COLOUR, width=4)
        mean_ap = np.mean([per_class[k]["mAP50"] for k in present])
        entries.insert(0, (MEAN_COLOUR, f"all classes {mean_ap:.3f} mAP@0.5", 4))
    _legend(draw, (636, 30), entries)
    image.save(path)


def plot_confusion(matrix, names, path):
    """confusion_matrix.png: `matrix` (nc + 1, nc + 1), rows predicted, columns true, background last; each
    column normalised to sum 1 (the share of a true class that went to each prediction), the count in brackets."""
    labels = list(names) + ["background"]
    size = len(labels)
    cell = max(14, min(64, 700 // size))
    margin = 16 + max(font(12).getlength(n) for n in labels)
    image = Image.new("RGB", (int(margin + cell * size + 20), int(margin + cell * size + 40)), "white")
    draw = ImageDraw.Draw(image)
    shares = matrix / np.maximum(matrix.sum(0, keepdims=True), 1e-9)
    text = font(max(8, min(12, cell // 4)))
    for row in range(size):
        for col in range(size):
            x, y = margin + col * cell, 30 + row * cell
            shade = 255 - int(200 * shares[row, col])
            draw.rectangle((x, y, x + cell, y + cell), fill=(shade, shade + (255 - shade) // 3, 255),
                           outline=GRID_COLOUR)
            if shares[row, col] >= 0.005 and cell >= 28:   # as YOLOv5, no "0.00"
                colour = "white" if shares[row, col] > 0.6 else "black"
                draw.text((x + cell / 2, y + cell / 2), f"{shares[row, col]:.2f}", fill=colour, font=text, anchor="mm")
    for k, name in enumerate(labels):
        draw.text((margin - 6, 30 + (k + 0.5) * cell), name, fill="black", font=font(12), anchor="rm")
        column = Image.new("RGBA", (int(margin), 16), (255, 255, 255, 0))
        ImageDraw.Draw(column).text((margin - 6, 8), name, fill="black", font=font(12), anchor="rm")
        column = column.rotate(90, expand=True)
        image.paste(column, (int(margin + (k + 0.5) * cell - 8), int(30 + size * cell + 2)), column)
    draw.text((margin + cell * size / 2, 8), "Confusion matrix (columns: true class, rows: predicted)",
              fill="black", font=font(13), anchor="ma")
    image = image.crop((0, 0, image.width, int(30 + size * cell + margin)))
    image.save(path)


def plot_labels(labels, names, path):
    """labels.jpg from the training labels (a list of (n, 5) class, cx, cy, w, h arrays, normalised): boxes per
    class, box centres, box sizes, and the boxes themselves drawn around a common centre."""
    boxes = np.concatenate([np.asarray(lab, dtype=np.float64).reshape(-1, 5) for lab in labels] or [np.zeros((0, 5))])
    classes = boxes[:, 0].astype(int)
    counts = np.bincount(classes, minlength=len(names))[:len(names)]
    image = Image.new("RGB", (900, 900), "white")
    draw = ImageDraw.Draw(image)
    to_pixels = _axes(draw, (0, 0, 450, 450), (-0.5, len(names) - 0.5), (0, max(counts.max(initial=0), 1) * 1.1),
                      title=f"{len(boxes)} boxes, per class", x_names=list(names) if len(names) <= 12 else None,
                      integer_x=True)
    for k, count in enumerate(counts):
        (x0, y0), (x1, y1) = to_pixels(k - 0.4, count), to_pixels(k + 0.4, 0)
        draw.rectangle((x0, y0, x1, y1), fill=class_colour(k))
    rng = np.random.default_rng(0)   # at most 5000 random boxes in the scatter plots, always the same ones
    shown = boxes[rng.permutation(len(boxes))[:5000]]
    for box, key, title in (((450, 0, 900, 450), (1, 2), "box centres (x, y)"),
                            ((0, 450, 450, 900), (3, 4), "box sizes (width, height)")):
        to_pixels = _axes(draw, box, (0, 1), (0, 1), title=title)
        for row in shown:
            x, y = to_pixels(row[key[0]], row[key[1]])
            draw.ellipse((x - 1.5, y - 1.5, x + 1.5, y + 1.5), fill=class_colour(int(row[0])))
    draw.text((675, 454), "boxes around one centre", fill="black", font=font(13), anchor="ma")
    outlines = Image.new("RGB", (400, 400), "white")
    outline_draw = ImageDraw.Draw(outlines)
    for row in shown[:1000]:
        w, h = row[3] * 400, row[4] * 400
        outline_draw.rectangle((200 - w / 2, 200 - h / 2, 200 + w / 2, 200 + h / 2), outline=class_colour(int(row[0])))
    image.paste(outlines, (475, 478))
    image.save(path, quality=90)


def plot_batch(images, targets, names, path, max_images=16, max_size=1920):
    """train_batch0.jpg: up to 16 images of a batch (uint8 [B, 3, H, W]) in a grid, each with its boxes
    (targets [M, 6]: image index, class, cx, cy, w, h normalised) and class names."""
    images = images[:max_images]
    count, (height, width) = len(images), images.shape[2:]
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    scale = min(1.0, max_size / max(columns * width, rows * height))
    tile_w, tile_h = int(width * scale), int(height * scale)
    grid = Image.new("RGB", (columns * tile_w, rows * tile_h), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    text_font = font(max(10, tile_h // 24))
    for k in range(count):
        left, top = (k % columns) * tile_w, (k // columns) * tile_h
        tile = Image.fromarray(images[k].permute(1, 2, 0).numpy()).resize((tile_w, tile_h))
        grid.paste(tile, (left, top))
        for _, cls, cx, cy, w, h in targets[targets[:, 0] == k].tolist():
            box = (left + (cx - w / 2) * tile_w, top + (cy - h / 2) * tile_h,
                   left + (cx + w / 2) * tile_w, top + (cy + h / 2) * tile_h)
            _labelled_box(draw, box, class_colour(int(cls)), 1, names[int(cls)], text_font)
        draw.rectangle((left, top, left + tile_w - 1, top + tile_h - 1), outline=(255, 255, 255), width=2)
    grid.save(path, quality=90)
