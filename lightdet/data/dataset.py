"""The detection dataset: scanned files in, YOLOv5's samples out (mosaic + affine + HSV + flips, or letterbox).

A sample is `(image uint8 (3, H, W) RGB, labels float32 (n, 5) class cx cy w h normalised to that image, path,
shape_info)`. `shape_info = ((h0, w0), ((ratio_h, ratio_w), (pad_w, pad_h)))` maps boxes back to the original
image (x_original = (x - pad_w) / ratio_w); it is None for mosaic samples, which have no single original.
"""
import contextlib
import io
import logging
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from pycocotools.coco import COCO

from ..boxes import cxcywh_to_xyxy, xyxy_to_xywh
from .augment import (FILL, HYP_DEFAULTS, compose, hsv_jitter, letterbox_layout, random_affine_matrix, resize,
                      xyxy_to_xywhn)
from .images import read_image
from .labels import read_coco
from .scan import scan_split

LOGGER = logging.getLogger("lightdet.data")


def rect_batch_shapes(aspect, batch_size, imgsz, stride=32, pad=0.0):
    """YOLOv5's rectangular batches: (num_batches, 2) canvas (h, w), each the smallest multiple of `stride`
    that holds every image of its batch with the long side at `imgsz`. `aspect` (h / w) must be sorted."""
    starts = np.arange(0, len(aspect), batch_size)
    low, high = np.minimum.reduceat(aspect, starts), np.maximum.reduceat(aspect, starts)
    relative = np.ones((len(starts), 2))
    relative[high < 1, 0] = high[high < 1]          # all wide: full width, height of the tallest
    relative[low > 1, 1] = 1 / low[low > 1]         # all tall: full height, width of the widest
    return (np.ceil(relative * imgsz / stride + pad) * stride).astype(np.int64)


class DetectionDataset(torch.utils.data.Dataset):
    """One split, scanned (see scan.py), ready to sample. Build it with `build_dataset`.

    Attributes: `names`, `im_files`, `labels` (per image (n, 5) normalised to the original upright image),
    `shapes` ((N, 2) original (height, width)), `report` (the scan), and with rect=True `batch_shapes` /
    `batch_index` (images are then sorted by aspect ratio: batch b is indices b*batch_size ...).
    """

    def __init__(self, split, names, imgsz=640, augment=False, hyp=None, rect=False, batch_size=16, cache=False,
                 stride=32, rect_pad=0.0, fraction=1.0):
        self.split, self.names = split, list(names)
        self.imgsz, self.augment, self.rect, self.batch_size, self.stride = imgsz, augment, rect, batch_size, stride
        self.hyp = {**HYP_DEFAULTS, **(hyp or {})}
        self.mosaic = augment and not rect   # rectangular batches need one image per sample
        scan = scan_split(split, len(self.names), fraction=fraction)
        self.report = scan.report
        self.im_files, self.labels, self.shapes = scan.im_files, scan.labels, scan.shapes
        self.orientations, self.image_ids = scan.orientations, scan.image_ids
        self.batch_shapes = self.batch_index = None
        if rect:
            aspect = self.shapes[:, 0] / self.shapes[:, 1]
            order = np.argsort(aspect, kind="stable")
            self._reorder(order)
            self.batch_index = np.arange(len(order)) // batch_size
            self.batch_shapes = rect_batch_shapes(aspect[order], batch_size, imgsz, stride, rect_pad)
        self._cache = None
        if cache:
            self._cache = self._cache_images()

    def __len__(self):
        return len(self.im_files)

    def _reorder(self, order):
        self.im_files = [self.im_files[i] for i in order]
        self.labels = [self.labels[i] for i in order]
        self.orientations = [self.orientations[i] for i in order]
        self.shapes = self.shapes[order]
        if self.image_ids is not None:
            self.image_ids = [self.image_ids[i] for i in order]

    def load_size(self, index):
        """(h, w) of image `index` resized so its long side is imgsz (YOLOv5's load_image)."""
        h0, w0 = self.shapes[index]
        r = self.imgsz / max(h0, w0)
        return max(1, round(h0 * r)), max(1, round(w0 * r))

    def _cache_images(self):
        """Decode every image once at its load size into RAM (YOLOv5's --cache ram), as numpy (3, h, w)."""
        def load(index):
            h, w = self.load_size(index)
            image = self._read(index, zoom=w / self.shapes[index][1])
            return None if image is None else resize(image, h, w).contiguous().numpy()
        with ThreadPoolExecutor(8) as pool:
            cache = list(pool.map(load, range(len(self))))
        size = sum(a.nbytes for a in cache if a is not None) / 2**30
        LOGGER.info(f"{self.split.path}: cached {len(cache)} images ({size:.2f} GiB)")
        return cache

    def _read(self, index, zoom=1.0):
        """Image `index` as a uint8 (3, H, W) tensor, None if it cannot be decoded. `zoom`: the final scale, so
        that a JPEG can be decoded at 1/2..1/8 size when it will be shrunk that much anyway."""
        if self._cache is not None and self._cache[index] is not None:
            return torch.from_numpy(self._cache[index])
        h0, w0 = self.shapes[index]
        try:
            image = read_image(self.im_files[index], self.orientations[index],
                               (w0 * zoom, h0 * zoom) if zoom <= 0.5 else None)
        except Exception as e:   # never stop an epoch for one file: a grey image without boxes instead
            LOGGER.warning(f"{self.im_files[index]}: cannot be decoded ({e!r}); using a blank image without boxes")
            return None
        return torch.from_numpy(np.array(image)).permute(2, 0, 1)   # a (3, H, W) view of the (H, W, 3) pixels

    def __getitem__(self, index):
        hyp = self.hyp
        if self.mosaic and random.random() < hyp["mosaic"]:
            image, boxes = self._mosaic(index)
            if random.random() < hyp["mixup"]:
                image2, boxes2 = self._mosaic(random.randrange(len(self)))
                r = random.betavariate(32.0, 32.0)
                image = (image * r + image2 * (1 - r)).to(torch.uint8)
                boxes = np.concatenate([boxes, boxes2])
            shape_info = None
        else:
            image, boxes, shape_info = self._letterbox(index)
        height, width = image.shape[1:]
        labels = np.concatenate([boxes[:, :1], xyxy_to_xywhn(boxes[:, 1:], width, height)], 1).astype(np.float32)
        if self.augment:
            image = hsv_jitter(image, hyp["hsv_h"], hyp["hsv_s"], hyp["hsv_v"])
            if random.random() < hyp["flipud"]:
                image, labels[:, 2] = image.flip(1), 1 - labels[:, 2]
            if random.random() < hyp["fliplr"]:
                image, labels[:, 1] = image.flip(2), 1 - labels[:, 1]
        return image.contiguous(), torch.from_numpy(labels), self.im_files[index], shape_info

    def _affine(self, out_size, canvas_size):
        hyp = self.hyp
        return random_affine_matrix(out_size, canvas_size, hyp["degrees"], hyp["translate"], hyp["scale"],
                                    hyp["shear"], hyp["perspective"])

    def _letterbox(self, index):
        """One image letterboxed into its (rect batch or square) canvas, randomly warped when augmenting."""
        h0, w0 = (int(v) for v in self.shapes[index])
        shape = tuple(self.batch_shapes[self.batch_index[index]]) if self.rect else (self.imgsz, self.imgsz)
        (ch, cw), (left, top) = letterbox_layout(*self.load_size(index), shape, scaleup=self.augment)
        out_size = (int(shape[1]), int(shape[0]))
        matrix, scale = self._affine(out_size, out_size) if self.augment else (np.eye(3), 1.0)
        image, labels = self._read(index, zoom=cw / w0 * min(scale, 1.0)), self.labels[index]
        if image is None:
            image, labels = torch.full((3, h0, w0), FILL[0], dtype=torch.uint8), labels[:0]
        tile = (image, labels, (0, 0, 1, 1), (left, top, left + cw, top + ch))
        out, boxes = compose([tile], matrix, scale, out_size, out_size, filter_boxes=self.augment)
        return out, boxes, ((h0, w0), ((ch / h0, cw / w0), (left, top)))

    def _mosaic(self, index):
        """YOLOv5's 4-image mosaic: four images around a random centre of a 2s × 2s canvas, warped to s × s."""
        s = self.imgsz
        xc, yc = (int(random.uniform(s / 2, 3 * s / 2)) for _ in range(2))
        indices = [index] + random.choices(range(len(self)), k=3)
        random.shuffle(indices)
        matrix, scale = self._affine((s, s), (2 * s, 2 * s))
        axis_aligned = matrix[0, 1] == matrix[1, 0] == matrix[2, 0] == matrix[2, 1] == 0
        tiles = []
        for i, k in enumerate(indices):
            h, w = self.load_size(k)
            if i == 0:    # top left: the image's bottom-right corner at the centre
                x1a, y1a, x2a, y2a = max(xc - w, 0), max(yc - h, 0), xc, yc
                x1b, y1b, x2b, y2b = w - (x2a - x1a), h - (y2a - y1a), w, h
            elif i == 1:  # top right
                x1a, y1a, x2a, y2a = xc, max(yc - h, 0), min(xc + w, 2 * s), yc
                x1b, y1b, x2b, y2b = 0, h - (y2a - y1a), min(w, x2a - x1a), h
            elif i == 2:  # bottom left
                x1a, y1a, x2a, y2a = max(xc - w, 0), yc, xc, min(2 * s, yc + h)
                x1b, y1b, x2b, y2b = w - (x2a - x1a), 0, w, min(y2a - y1a, h)
            else:         # bottom right
                x1a, y1a, x2a, y2a = xc, yc, min(xc + w, 2 * s), min(2 * s, yc + h)
                x1b, y1b, x2b, y2b = 0, 0, min(w, x2a - x1a), min(y2a - y1a, h)
            dst = (x1a, y1a, x2a, y2a)
            if axis_aligned and not _lands_in(matrix, dst, s):
                continue   # warped entirely out of the output: skip decoding it
            image = self._read(k, zoom=w / self.shapes[k][1] * (scale if axis_aligned else 1.0))
            if image is not None:
                tiles.append((image, self.labels[k], (x1b / w, y1b / h, x2b / w, y2b / h), dst))
        return compose(tiles, matrix, scale, (s, s), (2 * s, 2 * s))

    def coco_ground_truth(self):
        """(pycocotools COCO of this split, image id per dataset index, COCO category id per class index).

        COCO json sources keep their own ids (images the scan skipped are left out); YOLO sources get a COCO
        built from the labels, boxes in original pixels, image ids 1..N, category ids 1..num_classes.
        """
        if self.split.format == "coco":
            with contextlib.redirect_stdout(io.StringIO()):   # pycocotools prints progress
                coco = COCO(str(self.split.path))
            keep = set(self.image_ids)
            if set(coco.getImgIds()) != keep:   # the scan skipped images: their boxes must not count as missed
                coco = _coco_from_dict({**coco.dataset,
                                        "images": [im for im in coco.dataset["images"] if im["id"] in keep],
                                        "annotations": [a for a in coco.dataset.get("annotations", [])
                                                        if a["image_id"] in keep]})
            return coco, list(self.image_ids), list(read_coco(self.split.path).category_ids)
        images, annotations = [], []
        for i, (path, labels, (h, w)) in enumerate(zip(self.im_files, self.labels, self.shapes.tolist())):
            images.append({"id": i + 1, "file_name": Path(path).name, "height": h, "width": w})
            boxes = xyxy_to_xywh(cxcywh_to_xyxy(labels[:, 1:].astype(np.float64)) * [w, h, w, h])
            for cls, box in zip(labels[:, 0].tolist(), boxes.tolist()):
                annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(cls) + 1,
                                    "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
        categories = [{"id": i + 1, "name": name} for i, name in enumerate(self.names)]
        coco = _coco_from_dict({"images": images, "annotations": annotations, "categories": categories})
        return coco, list(range(1, len(images) + 1)), list(range(1, len(self.names) + 1))


def _lands_in(matrix, box, size):
    """Whether an axis-aligned `matrix` puts any of canvas `box` inside the size × size output."""
    x1, x2 = box[0] * matrix[0, 0] + matrix[0, 2], box[2] * matrix[0, 0] + matrix[0, 2]
    y1, y2 = box[1] * matrix[1, 1] + matrix[1, 2], box[3] * matrix[1, 1] + matrix[1, 2]
    return min(x2, size) - max(x1, 0) >= 0.5 and min(y2, size) - max(y1, 0) >= 0.5


def _coco_from_dict(dataset):
    coco = COCO()
    coco.dataset = {"info": {}, "licenses": [], **dataset}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def build_dataset(spec, split, imgsz=640, augment=False, hyp=None, rect=False, batch_size=16, cache=False,
                  stride=32, **kwargs):
    """The dataset of `split` ("train" or "val", or a sources.Split) of a DataSpec from `resolve_data`."""
    if isinstance(split, str):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        split = spec.train if split == "train" else spec.val
    return DetectionDataset(split, spec.names, imgsz, augment, hyp, rect, batch_size, cache, stride, **kwargs)
