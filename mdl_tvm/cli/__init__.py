"""The `mdl-tvm` command line.

    mdl-tvm compile MODEL --target arm64 -o out.so   # ONNX file or zoo name
    mdl-tvm info ARTIFACT.so
    mdl-tvm targets
    mdl-tvm demo                                     # the embedded default job
    mdl-tvm tune MODEL ...                           # MetaSchedule (schedules.tuning)
    mdl-tvm device ... / mdl-tvm tracker ...         # the emulated phone (deploy/)
    mdl-tvm app style|poem ...                       # the apps (apps/)

The benchmark is a client of the project, run from a source checkout: ``python -m bench``.
Heavy modules (the compiler, torch) are imported by the command that needs them, so
``mdl-tvm info`` and ``--help`` start fast.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

from apps import cli as apps_cli
from deploy import cli as deploy_cli
from mdl_tvm.cli import tune as tune_cli
from mdl_tvm.cli.args import add_model_arguments, compile_options, resolve_model
from mdl_tvm.core.artifact import read_metadata
from mdl_tvm.core.errors import MdlError, one_line
from mdl_tvm.core.targets import PROFILES


def _cmd_compile(args) -> int:
    from mdl_tvm.compiler.compiled import compile as compile_model

    model, shapes = resolve_model(args)
    compiled = compile_model(model, target=args.target, input_shapes=shapes,
                             tuning_db=args.tuning_db, **compile_options(args))
    path = compiled.export(args.output)
    if args.save_masks and compiled.masks is not None:
        print(f"wrote channel masks to {compiled.masks.save(args.save_masks)}")
    print(f"wrote {path} ({os.path.getsize(path):,} bytes) for target {args.target}")
    print_summary(compiled.summary())
    if args.tuning_db:
        print(f"  tuned       {len(compiled.tuned_functions)} function(s) from {args.tuning_db}")
    return 0


def print_summary(meta: dict) -> None:
    """Print an artifact's metadata (`mdl-tvm info`, `mdl-tvm compile`)."""
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
    for slow in meta.get("slow_paths", []):
        shapes = " ".join("x".join(map(str, s)) for s in slow["shapes"])
        print(f"  SLOW PATH   {slow['function']}: {slow['flops'] / 1e6:.1f} MFLOP on the "
              f"{slow['rule']} schedule (buffers {shapes}); no MobileDL kernel rule matches")


def _cmd_info(args) -> int:
    meta = read_metadata(args.artifact, verify=True)
    if args.json:
        print(json.dumps(meta, indent=2))
    else:
        print(f"{args.artifact}: {os.path.getsize(args.artifact):,} bytes")
        print_summary(meta)
    return 0


def _cmd_targets(args) -> int:
    width = max(len(n) for n in PROFILES)
    for name, profile in PROFILES.items():
        fp16 = "fp16" if profile.fp16_arith else "    "
        print(f"{name:<{width}}  {fp16}  {profile.description}")
    return 0


def compile_for_phone(model, inputs, target: str, precision: str, out_path) -> str:
    """`deploy.engines.CompileFn`: compile `model` with MobileDL and export the library."""
    import torch

    from mdl_tvm.compiler.compiled import compile as compile_model

    example = None if isinstance(model, str) else tuple(torch.from_numpy(a) for a in inputs)
    return compile_model(model, target, example_inputs=example, precision=precision).export(
        str(out_path))


def _cmd_demo(args) -> int:
    from mdl_tvm.demo import run_demo

    return run_demo(phone=not args.no_phone, epochs=args.epochs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mdl-tvm", description="MobileDL on TVM: compile networks for 64-bit ARM phones"
    )
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compile", help="compile an ONNX file or zoo model to a device library")
    add_model_arguments(p)
    p.add_argument("-o", "--output", required=True, help="output library path (.so)")
    p.add_argument("--save-masks", help="write the channel masks used to this .npz")
    p.add_argument("--tuning-db", help="tuning database directory (from `mdl-tvm tune`)")
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

    deploy_cli.register(sub, compile_for_phone)  # mdl-tvm device ... / tracker ...
    apps_cli.register(sub)  # mdl-tvm app style / app poem
    tune_cli.register(sub)  # mdl-tvm tune
    return parser


def _terminate(signum, frame):  # SIGTERM: unwind (atomic writes remove their temp files)
    raise SystemExit(128 + signum)


def main(argv=None) -> int:
    """Run ``mdl-tvm``; returns the exit code (2 for an error, with one line naming it and
    the fix on stderr; ``--debug`` shows the traceback instead)."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"mdl-tvm {args.command}: interrupted", file=sys.stderr)
        return 130
    except (MdlError, ValueError, TypeError, OSError, RuntimeError, MemoryError) as err:
        if args.debug:
            raise
        print(f"mdl-tvm {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
