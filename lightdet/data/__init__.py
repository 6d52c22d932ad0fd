"""Datasets: YOLO txt, COCO json and the built-in synthetic `shapes`; YOLOv5's augmentations; the loader.

    spec = resolve_data("shapes")                      # or a YOLO folder, an image list, instances_*.json
    train_set = build_dataset(spec, "train", imgsz=640, augment=True)
    loader = build_dataloader(train_set, batch_size=16, workers=2, shuffle=True)
    images, targets, paths, shape_infos = next(iter(loader))   # uint8 (B, 3, H, W), (M, 6)

    val_set = build_dataset(spec, "val", imgsz=640, augment=False, rect=True, batch_size=32)
    coco, image_ids, category_ids = val_set.coco_ground_truth()   # for pycocotools evaluation

Scans report on the `lightdet.data` logger (one summary line per split, problems with their file:line).
"""
from .augment import HYP_DEFAULTS
from .dataset import DetectionDataset, build_dataset
from .loader import build_dataloader, collate
from .shapes import CLASSES as SHAPES_CLASSES
from .shapes import ensure_shapes, generate_shapes
from .labels import DatasetError
from .sources import DataSpec, Split, resolve_data

__all__ = ["resolve_data", "build_dataset", "build_dataloader", "collate", "DataSpec", "Split", "DatasetError",
           "DetectionDataset", "HYP_DEFAULTS", "ensure_shapes", "generate_shapes", "SHAPES_CLASSES"]
