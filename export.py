"""Export a trained detector to ONNX and check the file in ONNX Runtime against PyTorch.

    pip install -e ".[export]"                                          # onnx + onnxruntime, once
    python export.py --weights runs/train/exp/weights/best.pt           # -> runs/train/exp/weights/best.onnx
    python export.py --weights best.pt --img 640 --dynamic --simplify   # any batch and size (multiples of 32)
    python eval.py --weights best.onnx                                  # the same mAP as best.pt
    python predict.py --weights best.onnx --source images/

The file holds the fused model in eval mode with the decoded (B, N, 5 + classes) output (--raw: the three raw
head maps) and the class names, stride and image size in its metadata. See lightdet/export.py.
"""
import argparse
import sys

import torch

from lightdet.export import DEFAULT_OPSET, export_onnx
from lightdet.runtime import MissingExtra


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Export a lightdet checkpoint to ONNX.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--weights", required=True, help="a lightdet checkpoint; the .onnx file is written beside it")
    p.add_argument("--img", type=int, nargs="+", default=[640], help="image size: one side, or height width")
    p.add_argument("--batch", type=int, default=1, help="batch size (the example batch with --dynamic)")
    p.add_argument("--dynamic", action="store_true", help="dynamic batch, height and width")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset version")
    p.add_argument("--simplify", action="store_true", help="fold constants, drop redundant nodes (ONNX Runtime)")
    p.add_argument("--raw", action="store_true", help="output the raw head maps instead of decoded detections")
    args = p.parse_args(argv)
    if len(args.img) > 2:
        p.error(f"--img takes one size or height and width, got {len(args.img)} values")
    return args


def main(argv=None):
    args = parse_args(argv)
    imgsz = args.img[0] if len(args.img) == 1 else tuple(args.img)
    try:
        path, checks = export_onnx(args.weights, imgsz, args.batch, args.dynamic, args.opset, args.simplify,
                                   args.raw)
    except MissingExtra as error:
        print(error)
        sys.exit(1)
    except (FileNotFoundError, ValueError, torch.onnx.errors.OnnxExporterError) as error:
        raise SystemExit(f"error: {error}") from None
    for shape, parts in checks:
        print(f"ONNX Runtime vs PyTorch at {'×'.join(map(str, shape))}: "
              + ", ".join(f"{label} max |diff| {diff:.2g} (tolerance {tol:.2g})" for label, diff, tol in parts))
    print(f"saved {path} ({path.stat().st_size / 1e6:.1f} MB, opset {args.opset}"
          f"{', dynamic batch and size' if args.dynamic else ''})")
    return path, checks


if __name__ == "__main__":
    main()
