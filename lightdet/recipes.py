"""Training recipes: the defaults that `train.py` fills in for every flag the command line leaves unset.

A recipe depends on the dataset (the built-in `shapes` sets train briefly on a CPU, user datasets with
YOLOv5's recipe), on the backbone (on `shapes`: its image size, batch and time budget) and on the head
(RT-DETR brings its own optimiser settings). A flag given on the command line always wins.
"""
from .heads.rtdetr import RTDETR_RECIPE

# Defaults per dataset; a flag on the command line always wins. YOLOv5's long recipe (SGD, accumulation to
# batch 64, three warm-up epochs) makes too few updates in a few CPU minutes, so the built-in set trains with
# AdamW, no accumulation and a short warm-up instead, from images cached in RAM (decoding is a large share of
# the CPU time at these sizes). Its learning rate lies between the two best of a sweep and is gentler on the
# attention backbones than the best one alone (README).
RECIPES = {
    "shapes": dict(img=256, batch=16, epochs=None, time=10.0, optimizer="AdamW", lr=2e-3, nominal_batch=16,
                   warmup_iters=100, schedule="cosine", val_every=0, close_mosaic=1, cache=True, gr_ramp=0.0),
    "yolov5": dict(img=640, batch=16, epochs=100, time=None, optimizer="SGD", lr=0.01, nominal_batch=64,
                   warmup_iters=None, schedule="linear", val_every=1, close_mosaic=0, cache=False, gr_ramp=0.0),
}
RECIPES["shapes-hard"] = {**RECIPES["shapes"], "img": 320}   # the hard set's images are 320 px
# On the built-in `shapes` set a run gets a time budget (`time`, minutes): train.py measures the training speed
# at the start and fits its epochs and LR schedule into it. Learning is slow for the first few epochs, so the
# depthwise-heavy backbones, slow at 256 px, train on smaller images, where they run much faster and get the
# epochs they need. MobileViT and RepViT need more epochs than 10 minutes give on the 2-core development CPU,
# so they get 15 (README). MobileViT also trains at batch 8: its epoch takes as long as at 16 on that CPU, and
# twice the updates lifted its run from mAP50 0.414 to 0.481.
SHAPES_PER_BACKBONE = {
    "cspdarknet": dict(),
    "efficientvit": dict(),
    "mobilevit": dict(img=192, time=15.0, batch=8, nominal_batch=8),
    "mobilenetv3": dict(img=192),
    "emo": dict(img=192),
    "repvit": dict(img=160, time=15.0),
}
WARMUP_EPOCHS = 3          # YOLOv5: max(3 epochs, 100 iterations) unless the recipe says otherwise
# What the head changes. RT-DETR trains with its own optimiser settings (heads/rtdetr.py: AdamW at 1e-4, the
# backbone at a tenth, a constant rate after warm-up, gradients clipped at 0.1); on a user dataset its image
# size, epochs, warm-up and mosaic schedule too (on `shapes` the short run keeps the set's). The settings that
# are not flags come from HEAD_RECIPES.
HEAD_RECIPES = {
    "anchor": dict(backbone_lr_scale=1.0, momentum=0.937, final_lr_scale=0.01, grad_clip_norm=10.0),
    "rtdetr": {key: RTDETR_RECIPE[key] for key in
               ("backbone_lr_scale", "momentum", "final_lr_scale", "grad_clip_norm")},
}
HEAD_FLAG_DEFAULTS = {"anchor": {},
                      "rtdetr": {**{key: RTDETR_RECIPE[key] for key in ("optimizer", "lr", "schedule")},
                                 "gr_ramp": 0.0}}   # no objectness to ramp


def recipe_default(key):
    """'default: shapes 160-256 by backbone, shapes-hard 320, others 640': a flag's default from the recipes."""
    by_backbone = sorted({row.get(key, RECIPES["shapes"][key]) for row in SHAPES_PER_BACKBONE.values()},
                         key=lambda value: (value is not None, value))
    values = {"shapes": by_backbone[0] if len(by_backbone) == 1 else f"{by_backbone[0]}-{by_backbone[-1]} by backbone",
              "shapes-hard": RECIPES["shapes-hard"][key], "others": RECIPES["yolov5"][key]}
    values = {name: "none" if value is None else value for name, value in values.items()}
    if len({str(v) for v in values.values()}) == 1:
        return f"default: {values['others']}"
    return "default: " + ", ".join(f"{name} {value}" for name, value in values.items())


def recipe_for(data, backbone, head):
    """The flag defaults for a run on `data` with `backbone` and `head`."""
    recipe = dict(RECIPES.get(data, RECIPES["yolov5"]))
    if data == "shapes":
        recipe.update(SHAPES_PER_BACKBONE.get(backbone.split("_")[0], {}))
    elif head == "rtdetr":
        recipe.update({key: RTDETR_RECIPE[key] for key in ("img", "epochs", "close_mosaic", "warmup_iters")})
    recipe.update(HEAD_FLAG_DEFAULTS[head])
    return recipe
