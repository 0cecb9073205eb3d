"""Arguments shared by the commands that take a model (``compile``, ``tune``).

One parser per option: a model is a zoo name or an ONNX file (``--input-shape``,
``--weights``), compression is ``--compress`` / ``--calibration`` / ``--masks``, precision
is ``--precision`` / ``--accumulate``.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from mdl_tvm import zoo
from relay_passes.compress_spec import make_compressor

PRECISIONS = ("fp32", "fp16", "fp16-full", "fp16-storage")


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,3,224,224"`` or ``"1x3x224x224"`` → ``(1, 3, 224, 224)``."""
    try:
        dims = tuple(int(d) for d in text.replace("x", ",").split(",") if d)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"shape must look like 1,3,224,224, got {text!r}") from None
    if not dims or any(d <= 0 for d in dims):
        raise argparse.ArgumentTypeError(f"shape must be positive integers, got {text!r}")
    return dims


def add_model_arguments(p: argparse.ArgumentParser, required: bool = True) -> None:
    """MODEL, its shape and weights, compression and precision options."""
    p.add_argument("model", nargs=None if required else "?", help="ONNX file or zoo model name")
    p.add_argument("--target", default="arm64", help="target profile (see `mdl-tvm targets`)")
    p.add_argument("--input-shape", type=parse_shape, help="e.g. 1,3,224,224")
    p.add_argument("--weights", help="state_dict (.pt) for a zoo model")
    p.add_argument("--compress", help="channel compression, e.g. kmeans:0.5, mask:0.5, "
                   "mask:0.5:greedy, or mask:2x (half the MACs, planned per layer group)")
    p.add_argument("--calibration", help=".npy inputs (N, ...) for least-squares recovery")
    p.add_argument("--masks", help="commit channel masks saved by an earlier run (.npz)")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="fp16 compute needs a +fullfp16 target (arm64-fp16, cortex-a55, "
                   "cortex-a76); fp16-storage (fp16 weights, fp32 compute) works everywhere")
    p.add_argument("--accumulate", choices=("fp16", "fp32"),
                   help="accumulator dtype for --precision fp16 / fp16-full (default fp16)")


def resolve_model(args) -> tuple[object, list | None]:
    """``(model, input_shapes)`` for a MODEL argument: a zoo name or an ONNX path."""
    if args.model in zoo.MODELS:
        shape = args.input_shape or zoo.INPUT_SHAPES[args.model]
        if len(shape) != len(zoo.INPUT_SHAPES[args.model]):
            raise ValueError(f"--input-shape {','.join(map(str, shape))} has rank {len(shape)}; "
                             f"{args.model} takes rank {len(zoo.INPUT_SHAPES[args.model])}, e.g. "
                             f"{','.join(map(str, zoo.INPUT_SHAPES[args.model]))}")
        model = zoo.build(args.model)
        if args.weights:
            import torch

            model.load_state_dict(torch.load(args.weights, weights_only=True))
        return model, [shape]
    if os.path.exists(args.model) or args.model.endswith(".onnx"):
        if args.weights:
            raise ValueError("--weights loads a state_dict into a zoo model; an ONNX file "
                             "carries its own weights (drop --weights)")
        return args.model, ([args.input_shape] if args.input_shape else None)
    raise ValueError(
        f"{args.model!r} is neither a file nor a zoo model; zoo models: {', '.join(zoo.MODELS)}"
    )


def compile_options(args) -> dict:
    """`mdl_tvm.compile` keywords of the graph options (precision, compression)."""
    calibration = None
    if args.calibration:
        try:
            calibration = np.load(args.calibration, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot read calibration inputs {args.calibration!r} ({err}); "
                             "give a .npy array (N, C, H, W)") from None
    compress = args.compress
    if args.masks:
        compress = make_compressor(compress, calibration, masks=args.masks)
        calibration = None
    return {"compress": compress, "calibration": calibration, "precision": args.precision,
            "accumulate": args.accumulate}
