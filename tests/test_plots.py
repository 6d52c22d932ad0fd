"""The pictures a run leaves: drawn where the data says, in the class's colour."""
import numpy as np
import torch
from PIL import Image

from lightdet.plots import class_colour, plot_batch, plot_confusion, plot_labels, plot_pr_curves, plot_results


def test_batch_picture_draws_each_box_on_its_own_tile(tmp_path):
    images = torch.full((2, 3, 64, 64), 128, dtype=torch.uint8)
    targets = torch.tensor([[0, 0, 0.5, 0.5, 0.5, 0.5], [1, 2, 0.25, 0.75, 0.25, 0.25]])
    plot_batch(images, targets, ["a", "b", "c"], tmp_path / "batch.png")
    with Image.open(tmp_path / "batch.png") as picture:
        assert picture.size == (128, 64)                             # two tiles side by side
        assert picture.getpixel((16, 40)) == class_colour(0)         # left edge of image 0's box, under its label
        assert picture.getpixel((64 + 8, 56)) == class_colour(2)     # left edge of image 1's box, on tile 2
        assert picture.getpixel((32, 32)) == (128, 128, 128)         # inside a box: the image itself


def test_confusion_picture_shades_by_column_share(tmp_path):
    # columns are the true class: a (8 right, 2 taken for b), b (10 right), background (false alarms 1 a, 3 b)
    matrix = np.array([[8, 0, 1], [2, 10, 3], [0, 0, 0]])
    plot_confusion(matrix, ["a", "b"], tmp_path / "confusion.png")
    with Image.open(tmp_path / "confusion.png") as picture:
        pixels = np.asarray(picture.convert("RGB")).astype(int)

    def centre(share):   # where the cells of this column share are: blue, darker the larger the share
        shade = 255 - int(200 * share)
        ys, xs = np.nonzero((pixels == (shade, shade + (255 - shade) // 3, 255)).all(-1))
        assert len(ys), share
        return xs.mean(), ys.mean()
    (x_aa, y_aa), (x_bb, y_bb), (x_ba, y_ba), (x_a_bg, y_a_bg) = centre(0.8), centre(1.0), centre(0.2), centre(0.25)
    assert x_bb > x_aa and y_bb > y_aa                             # the diagonal runs down to the right
    assert abs(x_ba - x_aa) < 2 and abs(y_ba - y_bb) < 2           # predicted b, true a: row b, column a
    assert x_a_bg > x_bb and abs(y_a_bg - y_aa) < 2                 # a false alarm of a: row a, last column


def test_curves_and_labels_pictures_are_written(tmp_path):
    rows = [{"epoch": 1, "box_loss": 0.1, "obj_loss": 0.05, "cls_loss": 0.04, "lr": 1e-3, "P": "", "R": "",
             "mAP50": "", "mAP50-95": ""}]
    plot_results(rows, tmp_path / "results.png")                    # one epoch, no validation yet
    rows.append({**rows[0], "epoch": 2, "box_loss": 0.08, "P": 0.5, "R": 0.4, "mAP50": 0.3, "mAP50-95": 0.1})
    plot_results(rows, tmp_path / "results.png")
    per_class = [{"class": "a", "instances": 3, "mAP50": 0.5}, {"class": "b", "instances": 0, "mAP50": 0.0}]
    plot_pr_curves(np.linspace(0, 1, 101), np.ones((2, 101)), per_class, tmp_path / "PR_curve.png")
    plot_labels([np.array([[0, 0.5, 0.5, 0.2, 0.3]]), np.zeros((0, 5))], ["a", "b"], tmp_path / "labels.jpg")
    for name in ("results.png", "PR_curve.png", "labels.jpg"):
        with Image.open(tmp_path / name) as picture:
            assert picture.size[0] > 300 and len(picture.convert("RGB").getcolors(1 << 20)) > 10   # not blank
