"""The backbone registry: variant name -> constructor, and each family's default variant under the family name.

Every backbone returns [P3, P4, P5] (strides 8, 16, 32) and exposes `out_channels` (docs/design.md). Adding a
family is one file in this folder, its constructors in `VARIANTS` and its default in `DEFAULT_VARIANT`.
"""
import importlib
from dataclasses import dataclass, field

import torch

from .cspdarknet import cspdarknet_l, cspdarknet_m, cspdarknet_n, cspdarknet_s, cspdarknet_x
from .efficientvit import efficientvit_b0, efficientvit_b1, efficientvit_b2, efficientvit_b3
from .emo import emo_1m, emo_2m, emo_5m, emo_6m
from .mobilenetv3 import mobilenetv3_large, mobilenetv3_small
from .mobilevit import mobilevit_s, mobilevit_xs, mobilevit_xxs
from .repvit import repvit_m0_9, repvit_m1_0, repvit_m1_1, repvit_m1_5, repvit_m2_3

# Every variant, by the name of its constructor.
VARIANTS = {build.__name__: build for build in (
    cspdarknet_n, cspdarknet_s, cspdarknet_m, cspdarknet_l, cspdarknet_x,
    efficientvit_b0, efficientvit_b1, efficientvit_b2, efficientvit_b3,
    emo_1m, emo_2m, emo_5m, emo_6m,
    mobilenetv3_large, mobilenetv3_small,
    mobilevit_xxs, mobilevit_xs, mobilevit_s,
    repvit_m0_9, repvit_m1_0, repvit_m1_1, repvit_m1_5, repvit_m2_3,
)}
# What the plain family name builds. build_model("cspdarknet", scale=s) builds the variant of its own scale.
DEFAULT_VARIANT = {
    "cspdarknet": "cspdarknet_n",
    "efficientvit": "efficientvit_b0",
    "emo": "emo_1m",
    "mobilenetv3": "mobilenetv3_large",
    "mobilevit": "mobilevit_xxs",
    "repvit": "repvit_m0_9",
}
BACKBONES = {**{family: VARIANTS[name] for family, name in DEFAULT_VARIANT.items()}, **VARIANTS}


def build_backbone(name, **kwargs):
    """Build a registered backbone by name; an unknown name raises a KeyError listing the valid ones."""
    if name not in BACKBONES:
        raise KeyError(f"unknown backbone {name!r}; valid names: {', '.join(sorted(BACKBONES))}")
    return BACKBONES[name](**kwargs)


# Containers that published checkpoints wrap their weights in (timm/torchvision: plain; RepViT: "model";
# EMO: "net"/"net_E"; many trainers: "state_dict").
CHECKPOINT_CONTAINERS = ("state_dict", "model", "net_E", "net")


@dataclass
class LoadReport:
    """What `load_pretrained` matched: key lists, each sorted."""
    matched: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    unexpected: list = field(default_factory=list)
    mismatched: list = field(default_factory=list)   # "key: checkpoint shape vs model shape"

    def __str__(self):
        return (f"matched {len(self.matched)}, missing {len(self.missing)}, unexpected {len(self.unexpected)}, "
                f"shape-mismatched {len(self.mismatched)}")


def load_pretrained(backbone, path_or_state_dict):
    """Load a reference checkpoint (timm naming; the official naming for EMO) into a lightdet backbone.

    The family's `convert_state_dict` renames the keys (and drops classifier-only ones). Any key still
    missing, unexpected or of the wrong shape raises a ValueError that lists it; nothing is loaded then.
    Returns a `LoadReport`.
    """
    state_dict = path_or_state_dict
    if not isinstance(state_dict, dict):
        state_dict = torch.load(state_dict, map_location="cpu", weights_only=True)
    for container in CHECKPOINT_CONTAINERS:
        if isinstance(state_dict.get(container), dict):
            state_dict = state_dict[container]
            break
    family = importlib.import_module(type(backbone).__module__)
    if not hasattr(family, "convert_state_dict"):
        raise ValueError(f"{type(backbone).__name__} has no reference checkpoint converter ({family.__name__})")
    converted = family.convert_state_dict(state_dict)

    own = backbone.state_dict()
    report = LoadReport(
        missing=sorted(set(own) - set(converted)),
        unexpected=sorted(set(converted) - set(own)),
    )
    for key in sorted(set(own) & set(converted)):
        if own[key].shape == converted[key].shape:
            report.matched.append(key)
        else:
            report.mismatched.append(f"{key}: {tuple(converted[key].shape)} vs {tuple(own[key].shape)}")
    if report.missing or report.unexpected or report.mismatched:
        problems = "\n".join(
            f"  {kind}: {', '.join(keys[:20])}{' ...' if len(keys) > 20 else ''}"
            for kind, keys in (("missing", report.missing), ("unexpected", report.unexpected),
                               ("shape-mismatched", report.mismatched)) if keys)
        raise ValueError(f"cannot load weights into {type(backbone).__name__} ({report}):\n{problems}")
    backbone.load_state_dict({k: v.to(own[k].dtype) for k, v in converted.items()})
    return report
