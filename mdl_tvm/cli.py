"""The `mdl-tvm` command line.

    mdl-tvm compile MODEL --target arm64 -o out.so   # ONNX file or zoo name
    mdl-tvm info ARTIFACT.so
    mdl-tvm targets
    mdl-tvm demo                                     # the embedded default job
    mdl-tvm device ... / mdl-tvm tracker ...         # the emulated phone (deploy/)
    mdl-tvm bench [--quick] ...                      # benchmark against peers (bench/)
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .errors import MdlError


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(d) for d in text.replace("x", ",").split(",") if d)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"shape must look like 1,3,224,224, got {text!r}"
        ) from None


def _resolve_model(args):
    """``(model, input_shapes)`` for a MODEL argument: a zoo name or an ONNX path
    (``--input-shape``, ``--weights`` apply); shared by ``compile`` and ``tune``."""
    from . import zoo

    if args.model in zoo.MODELS:
        shape = args.input_shape or zoo.INPUT_SHAPES[args.model]
        model = zoo.build(args.model)
        if args.weights:
            import torch

            model.load_state_dict(torch.load(args.weights, weights_only=True))
        shapes = [shape]
    elif os.path.exists(args.model) or args.model.endswith(".onnx"):
        model = args.model
        shapes = [args.input_shape] if args.input_shape else None
    else:
        raise ValueError(
            f"{args.model!r} is neither a file nor a zoo model; zoo models: "
            f"{', '.join(zoo.MODELS)}"
        )
    return model, shapes


def _cmd_compile(args) -> int:
    from .compiled import compile as compile_model

    model, shapes = _resolve_model(args)
    compiled = compile_model(model, target=args.target, input_shapes=shapes,
                             tuning_db=args.tuning_db,
                             precision=args.precision, accumulate=args.accumulate,
                             **_compression_args(args))
    path = compiled.export(args.output)
    if getattr(args, "save_masks", None) and compiled.masks is not None:
        print(f"wrote channel masks to {compiled.masks.save(args.save_masks)}")
    print(f"wrote {path} ({os.path.getsize(path):,} bytes) for target {args.target}")
    _print_summary(compiled.summary())
    if args.tuning_db:
        print(f"  tuned       {len(compiled.tuned_functions)} function(s) from {args.tuning_db}")
    return 0


def _compression_args(args) -> dict:
    """``compress`` / ``calibration`` keywords from --compress, --calibration, --masks."""
    import numpy as np

    calibration = None
    if getattr(args, "calibration", None):
        try:
            calibration = np.load(args.calibration, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot read calibration inputs {args.calibration!r} ({err}); "
                             "give a .npy array (N, C, H, W)") from None
    compress = getattr(args, "compress", None)
    if getattr(args, "masks", None):
        import relay_passes as rp

        options = rp.RecoveryConfig(recovery="ls" if calibration is not None else "none")
        compress = rp.MaskPruning(options=options, masks=rp.ChannelMasks.load(args.masks))
    return {"compress": compress, "calibration": calibration}


def _print_summary(meta: dict) -> None:
    stats = meta["stats"]
    print(f"  target      {meta['target']} ({meta['mtriple']}"
          f"{' ' + meta['mcpu'] if meta.get('mcpu') else ''})")
    for spec in meta["inputs"]:
        print(f"  input       {spec['name']} {tuple(spec['shape'])} {spec['dtype']}")
    for i, spec in enumerate(meta["outputs"]):
        print(f"  output {i}    {tuple(spec['shape'])} {spec['dtype']}")
    print(f"  weights     {stats['weight_bytes']:,} bytes in {stats['num_weights']} tensors")
    precision = meta.get("precision", {"mode": "fp32"})
    extra = f", accumulate {precision['accumulate']}" if "accumulate" in precision else ""
    print(f"  precision   {precision['mode']}{extra}")
    print(f"  MACs        {stats['macs']:,}")
    ops = ", ".join(f"{k} {v}" for k, v in stats["op_counts"].items())
    print(f"  ops         {ops}")


def _cmd_info(args) -> int:
    from .artifact import read_metadata

    meta = read_metadata(args.artifact)
    if args.json:
        print(json.dumps(meta, indent=2))
    else:
        print(f"{args.artifact}: {os.path.getsize(args.artifact):,} bytes")
        _print_summary(meta)
    return 0


def _cmd_targets(args) -> int:
    from .targets import PROFILES

    width = max(len(n) for n in PROFILES)
    for name, profile in PROFILES.items():
        fp16 = "fp16" if profile.fp16_arith else "    "
        print(f"{name:<{width}}  {fp16}  {profile.description}")
    return 0


def _cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(phone=not args.no_phone, epochs=args.epochs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mdl-tvm", description="MobileDL on TVM: compile networks for 64-bit ARM phones"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compile", help="compile an ONNX file or zoo model to a device library")
    p.add_argument("model", help="ONNX file or zoo model name")
    p.add_argument("--target", default="arm64", help="target profile (see `mdl-tvm targets`)")
    p.add_argument("-o", "--output", required=True, help="output library path (.so)")
    p.add_argument("--input-shape", type=_parse_shape, help="e.g. 1,3,224,224")
    p.add_argument("--weights", help="state_dict (.pt) for a zoo model")
    p.add_argument("--compress", help="channel compression, e.g. kmeans:0.5, mask:0.5, "
                   "mask:0.5:greedy")
    p.add_argument("--calibration", help=".npy inputs (N, ...) for least-squares recovery")
    p.add_argument("--masks", help="commit channel masks saved by an earlier run (.npz)")
    p.add_argument("--save-masks", help="write the channel masks used to this .npz")
    p.add_argument("--tuning-db", help="tuning database directory (from `mdl-tvm tune`)")
    p.add_argument("--precision", default="fp32",
                   choices=("fp32", "fp16", "fp16-full", "fp16-storage"),
                   help="fp16 compute needs a +fullfp16 target (arm64-fp16, cortex-a55, "
                   "cortex-a76); fp16-storage (fp16 weights, fp32 compute) works everywhere")
    p.add_argument("--accumulate", choices=("fp16", "fp32"),
                   help="accumulator dtype for --precision fp16 / fp16-full (default fp16)")
    p.set_defaults(func=_cmd_compile)

    p = sub.add_parser("info", help="show what an exported library holds")
    p.add_argument("artifact")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("targets", help="list target profiles")
    p.set_defaults(func=_cmd_targets)

    p = sub.add_parser("demo", help="train, compile and run a CNN end to end (no arguments)")
    p.add_argument("--no-phone", action="store_true", help="skip the emulated arm64 phone")
    p.add_argument("--epochs", type=int, default=2)
    p.set_defaults(func=_cmd_demo)

    try:
        from deploy import cli as deploy_cli
    except ImportError:
        deploy_cli = None
    if deploy_cli is not None and hasattr(deploy_cli, "register"):
        deploy_cli.register(sub)
    try:
        from apps import cli as apps_cli  # mdl-tvm app style / app poem
    except ImportError:
        apps_cli = None
    if apps_cli is not None:
        apps_cli.register(sub)
    from schedules import cli as tune_cli  # mdl-tvm tune

    tune_cli.register(sub)
    # listed for --help; main() forwards `mdl-tvm bench ARGS` before argparse sees ARGS
    sub.add_parser("bench", add_help=False,
                   help="benchmark against peers (python -m bench; a source checkout)")
    return parser


def _cmd_bench(argv: list) -> int:
    """Forward ``mdl-tvm bench ...`` to ``python -m bench``'s main (repo's bench/ folder)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    if not (root / "bench" / "__main__.py").is_file():
        raise FileNotFoundError(f"mdl-tvm bench needs a source checkout; no bench/ in {root}")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from bench.__main__ import main as bench_main

    return bench_main(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        try:
            return _cmd_bench(argv[1:])
        except (MdlError, ValueError, TypeError, FileNotFoundError) as err:
            print(f"mdl-tvm bench: error: {err}", file=sys.stderr)
            return 2
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (MdlError, ValueError, TypeError, FileNotFoundError) as err:
        print(f"mdl-tvm {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
