"""lightdet: a readable YOLOv5 detector with faithful lightweight backbones."""
from .model import Detector, build_model

__version__ = "0.1.0"
__all__ = ["Detector", "build_model", "__version__"]
