"""Losses: the IoU family for box regression (`iou.py`), the YOLOv5 training loss (`yolo.py`) and RT-DETR's
set loss (`detr.py`); `build_loss` picks the one a detector's head trains with."""
from .detr import RTDETRLoss
from .iou import WIoULoss, iou_loss, paired_iou
from .yolo import YOLOLoss

__all__ = ["RTDETRLoss", "WIoULoss", "YOLOLoss", "build_loss", "iou_loss", "paired_iou"]


def build_loss(model, num_classes, imgsz=640, box_loss="ciou", hyp=None):
    """The training loss of `model` (a `lightdet.model.Detector`): RT-DETR's set loss for the "rtdetr" head,
    else YOLOv5's loss on the anchor head's anchors and strides at training size `imgsz`, with the IoU loss
    `box_loss` and YOLOv5 hyperparameters `hyp` (`yolo.HYP_DEFAULTS` where missing). Put it on the model's
    device: the YOLOv5 loss keeps its anchors in buffers."""
    if model.config["head"] == "rtdetr":
        return RTDETRLoss(num_classes)
    return YOLOLoss(model.head.anchors.tolist(), model.head.strides, num_classes, box_loss=box_loss,
                    imgsz=imgsz, hyp=hyp)
