"""Pictures drawn with Pillow: detections on an image, and the training curves of a run."""
import colorsys

from PIL import Image, ImageDraw, ImageFont


def class_colour(index):
    """A stable, well-separated colour per class (golden-ratio hue steps)."""
    r, g, b = colorsys.hsv_to_rgb((index * 0.618034) % 1.0, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(image, detections, names, line_width=None, labels=True, scores=True):
    """Draw `detections` (Tensor[n, 6]: x1, y1, x2, y2, score, class; original-image pixels) on a copy of a PIL
    image: boxes `line_width` pixels wide (default: 0.3% of the image size, YOLOv5's), each with its class name
    and score unless `labels` / `scores` is False."""
    image = image.convert("RGB") if image.mode != "RGB" else image.copy()
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    line = line_width or max(round(sum(image.size) / 2 * 0.003), 2)
    for x1, y1, x2, y2, score, cls in detections.tolist():
        colour = class_colour(int(cls))
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=line)
        label = " ".join(([names[int(cls)]] if labels else []) + ([f"{score:.2f}"] if scores else []))
        if not label:
            continue
        left, top, right, bottom = draw.textbbox((x1, y1), label, font=font)
        top_of_label = y1 - (bottom - top) - 2 if y1 - (bottom - top) - 2 >= 0 else y1
        draw.rectangle((x1, top_of_label, x1 + right - left + 4, top_of_label + bottom - top + 2), fill=colour)
        draw.text((x1 + 2, top_of_label), label, fill=(255, 255, 255), font=font)
    return image


def plot_results(rows, path, columns=("box_loss", "obj_loss", "cls_loss", "P", "R", "mAP50", "mAP50-95")):
    """Draw one small line chart per column of `rows` (dicts per epoch, as in results.csv) into a PNG."""
    panel_w, panel_h, margin = 260, 180, 28
    image = Image.new("RGB", (panel_w * 4, panel_h * 2), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    epochs = [int(r["epoch"]) for r in rows]
    for i, column in enumerate(columns):
        left, top = (i % 4) * panel_w, (i // 4) * panel_h
        values = [float(r[column]) for r in rows if r.get(column) not in (None, "")]
        draw.text((left + margin, top + 6), column, fill="black", font=font)
        box = (left + margin, top + 22, left + panel_w - 10, top + panel_h - margin)
        draw.rectangle(box, outline=(180, 180, 180))
        if not values:
            continue
        low, high = min(values), max(values)
        span = (high - low) or 1.0
        xs = epochs[-len(values):]
        x_span = (xs[-1] - xs[0]) or 1

        def point(x, v):
            return (box[0] + (x - xs[0]) / x_span * (box[2] - box[0]),
                    box[3] - (v - low) / span * (box[3] - box[1]))
        points = [point(x, v) for x, v in zip(xs, values)]
        if len(points) > 1:
            draw.line(points, fill=(31, 119, 180), width=2)
        for p in points:
            draw.ellipse((p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2), fill=(31, 119, 180))
        draw.text((box[0] + 2, box[3] + 2), f"{low:.3g}", fill="gray", font=font)
        draw.text((box[0] + 2, box[1] + 2), f"{high:.3g}", fill="gray", font=font)
    image.save(path)
