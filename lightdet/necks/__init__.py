"""Neck options, by the names `build_model(neck_block=..., neck_attention=...)` and train.py's flags take.

`NECK_BLOCKS`: the CSP block of the PAN's four merge stages (YOLOv5's C3 by default, YOLOv8's C2f, the iRMB
article's C2f_iRMB). `NECK_ATTENTIONS`: a block applied to each of the PAN's three outputs (the article's iRMB).
"""
from ..layers import C2f, C3
from .irmb import C2f_iRMB, iRMB

NECK_BLOCKS = {"c3": C3, "c2f": C2f, "c2f_irmb": C2f_iRMB}
NECK_ATTENTIONS = {"irmb": iRMB}
# Every combination as (neck_block, neck_attention), YOLOv5's own first.
NECK_OPTIONS = [(block, attention) for block in NECK_BLOCKS for attention in (None, *NECK_ATTENTIONS)]
