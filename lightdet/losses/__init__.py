"""Losses: the IoU family for box regression (`iou.py`) and the YOLOv5 training loss (`yolo.py`)."""
from .iou import WIoULoss, iou_loss, paired_iou
from .yolo import YOLOLoss

__all__ = ["WIoULoss", "YOLOLoss", "iou_loss", "paired_iou"]
