"""``mdl-tvm device ...`` and ``mdl-tvm tracker ...``: the emulated phone from the shell.

    mdl-tvm device setup [--force] [--peers]
    mdl-tvm tracker start [--port P]          # then: tracker stop / tracker status
    mdl-tvm device start [--tracker HOST:PORT --key KEY | --port P] [--host ADDR]
    mdl-tvm device status | stop
    mdl-tvm device run ARTIFACT.so --input x.npy [--outputs-dir DIR] [--native]
    mdl-tvm device insns ARTIFACT.so [--input x.npy] [--runs N] [--cpu NAME] [--force] [--native]
    mdl-tvm device insns MODEL --engine mobiledl|ort|ncnn|ncnn-fp16|mnn|mnn-fp16|litert
    mdl-tvm device profile ARTIFACT.so [--native]
    mdl-tvm deploy-bundle ARTIFACT.so -o DIR        # `deploy.native.cli`

``--native`` runs the library with ``mdl_run`` (C++ on the TVM runtime alone, `deploy.native`)
instead of the Python runner (``device_runner.py``, the default; RPC and tuning use it too).

`register(subparsers)` adds these to the main ``mdl-tvm`` parser; every command's ``func``
takes the argparse namespace and returns an exit code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from deploy import device, procs, rpc_net
from deploy.cpus import DEFAULT_CPU, QEMU_CPUS, check_cpu
from deploy.emulator import count_instructions, run_on_emulator
from deploy.engines import ENGINES, CompileFn, count_model
from deploy.kernel_profile import profile_instructions
from deploy.native import cli as native_cli
from deploy.native.build import ARCHES, ensure_build
from mdl_tvm.core.artifact import read_metadata


def _print_state(name: str, state: dict | None) -> None:
    if not state:
        print(f"{name}: not started")
        return
    where = f"{state.get('host')}:{state.get('port')}"
    alive = "running" if state["alive"] else "DEAD (stale pid file)"
    extra = ""
    if state.get("tracker"):
        extra = f", key {state['key']!r} at tracker {state['tracker'][0]}:{state['tracker'][1]}"
    if state.get("cpu"):
        extra += f", cpu {state['cpu']}{' (counting)' if state.get('count') else ''}"
    print(f"{name}: {alive}, pid {state['pid']}, {where}{extra}, log {state.get('log')}")


def _cmd_setup(args) -> int:
    t0 = time.monotonic()
    env = device.setup(force=args.force, peers=args.peers)
    print(f"phone ready in {time.monotonic() - t0:.1f} s: {env.root}")
    print(f"  python: {env.python}\n  plugin: {env.plugin}")
    if args.peers:
        print(f"  peers:  {env.peers} (ONNX Runtime, NCNN, MNN, LiteRT for aarch64)")
    for arch in ARCHES:  # the native runtime: mdl_run, libmdl_runtime.so (deploy.native)
        build = ensure_build(arch, env, force=args.force, log=lambda m: print(f"[native] {m}"))
        print(f"  native ({arch}): {build.root}")
    return 0


def _cmd_device_start(args) -> int:
    if args.tracker and args.port:
        raise ValueError("give either --tracker (register there) or --port (standalone)")
    tracker = rpc_net.parse_addr(args.tracker) if args.tracker else None
    if tracker is None and not args.port:  # default: the tracker `tracker start` runs
        t = procs.status()["tracker"]
        if t and t["alive"]:
            tracker = (t["host"], t["port"])
    state = procs.start_phone(
        tracker=tracker,
        key=args.key,
        port=args.port,
        host=args.host,
        allow_remote=args.allow_remote,
        timeout=args.timeout,
        cpu=args.cpu,
        count=args.count,
    )
    _print_state("phone", dict(state, alive=True))
    return 0


def _cmd_device_stop(args) -> int:
    print("phone stopped" if procs.stop_phone() else "no phone was running")
    return 0


def _cmd_status(args) -> int:
    st = procs.status()
    if args.json:
        print(json.dumps(st, indent=2, default=str))
        return 0
    names = ["tracker", "phone"] if args.which == "all" else [args.which]
    for name in names:
        _print_state(name, st[name])
    summary = (st["tracker"] or {}).get("summary")
    if isinstance(summary, dict) and "tracker" in names:
        for key, q in sorted(summary["queue_info"].items()):
            print(f"  key {key!r}: {q['free']} free, {q['pending']} pending")
    return 0 if all(st[n] and st[n]["alive"] for n in names) else 1


def _cmd_tracker_start(args) -> int:
    host, port = procs.start_tracker(port=args.port, host=args.host, allow_remote=args.allow_remote)
    print(f"tracker running at {host}:{port}")
    return 0


def _cmd_tracker_stop(args) -> int:
    print("tracker stopped" if procs.stop_tracker() else "no tracker was running")
    return 0


def _load_inputs(paths: list[str] | None):
    if not paths:
        return None
    for p in paths:
        if not os.path.isfile(p):
            raise FileNotFoundError(f"no such input file: {p}")
    return [np.load(p) for p in paths]


def _library_inputs(args) -> list:
    """--input files, or seeded inputs made from the library's metadata."""
    if not os.path.isfile(args.artifact):
        raise FileNotFoundError(f"no such artifact: {args.artifact}")
    given = _load_inputs(args.input)
    if given is not None:
        return given
    rng = np.random.default_rng(0)
    return [rng.standard_normal(i["shape"]).astype(i["dtype"])
            for i in read_metadata(args.artifact)["inputs"]]


def _runner(args) -> str:
    return "native" if args.native else "python"


def _cmd_run(args) -> int:
    log: list = []
    outs = run_on_emulator(args.artifact, _library_inputs(args), repeat=args.repeat,
                           mode=args.mode, cpu=args.cpu, force=args.force,
                           runner=_runner(args), log=log)
    if args.native:  # the runner's own report: load time, ms per inference
        print(log[0].strip())
    if args.outputs_dir:
        os.makedirs(args.outputs_dir, exist_ok=True)
    for i, arr in enumerate(outs):
        line = f"out{i}: shape {tuple(arr.shape)} {arr.dtype}"
        if args.outputs_dir:
            path = os.path.join(args.outputs_dir, f"out{i}.npy")
            np.save(path, arr)
            line += f" -> {path}"
        print(line)
    return 0


def _cmd_insns(args, compile_model=None) -> int:
    if args.artifact.endswith(".so"):
        if args.engine not in ("mobiledl", None):
            raise ValueError(f"{args.artifact} is a MobileDL library; --engine {args.engine} "
                             "takes an ONNX file or a zoo model name")
        n = count_instructions(args.artifact, _library_inputs(args), runs=args.runs,
                               verify=args.verify, mode=args.mode, cpu=args.cpu,
                               force=args.force, runner=_runner(args))
        how = "native runner, main_zc" if args.native else f"python runner, {args.mode or 'plain'}"
        print(f"{n} aarch64 instructions per inference ({os.path.basename(args.artifact)}, "
              f"{how}, steady state over {args.runs} runs)")
        return 0
    if args.native:
        raise ValueError("--native runs a MobileDL library (.so); compile the model first "
                         "(mdl-tvm compile MODEL --target arm64 -o model.so)")
    engine = args.engine or "mobiledl"
    cpu = args.cpu or DEFAULT_CPU
    inputs = _load_inputs(args.input)
    result = count_model(args.artifact, engine, cpu=cpu, runs=args.runs, verify=args.verify,
                         inputs=tuple(inputs) if inputs else None, compile_model=compile_model)
    print(f"{result.instructions} aarch64 instructions per inference ({args.artifact}, "
          f"{engine}, {cpu}, 1 thread, N={args.runs}); relative error vs host fp32 "
          f"{result.rel_error:.2e}; model {result.model_bytes:,} bytes")
    return 0


def _cmd_profile(args) -> int:
    prof = profile_instructions(args.artifact, _library_inputs(args), runs=args.runs,
                                mode=args.mode, cpu=args.cpu, force=args.force,
                                runner=_runner(args))
    print(prof.markdown())
    return 0


def _help(parser: argparse.ArgumentParser):
    def show(args) -> int:
        parser.print_help(sys.stderr)
        return 2

    return show


def _bind_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a non-loopback --host (TVM RPC has NO authentication)",
    )


def register(subparsers, compile_model: CompileFn | None = None) -> None:
    """Add the ``device`` and ``tracker`` commands to an argparse subparsers object.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        From ``parser.add_subparsers(dest="command")`` of the main CLI.
    compile_model : callable, optional
        Builds a MobileDL library for ``device insns MODEL --engine mobiledl`` (the front
        end passes ``mdl_tvm.compile``; `deploy.engines.CompileFn`).
    """
    dev = subparsers.add_parser("device", help="the emulated arm64 phone (QEMU)")
    dev.set_defaults(func=_help(dev))
    dsub = dev.add_subparsers(dest="device_command")

    p = dsub.add_parser("setup", help="build the phone once (cached under ~/.cache/mdl_tvm)")
    p.add_argument("--force", action="store_true", help="rebuild even if the cache is complete")
    p.add_argument("--peers", action="store_true", help="also install ONNX Runtime, NCNN, MNN "
                   "and LiteRT for the phone (their aarch64 wheels, cached)")
    p.set_defaults(func=_cmd_setup)

    p = dsub.add_parser("start", help="start the phone's RPC server")
    p.add_argument(
        "--tracker",
        metavar="HOST:PORT",
        help="register with this tracker (default: the one `tracker start` runs)",
    )
    p.add_argument("--key", default="phone", help="device key at the tracker (default phone)")
    p.add_argument("--port", type=int, help="standalone server on this port (no tracker)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait (default 120)")
    p.add_argument("--cpu", type=check_cpu, default=DEFAULT_CPU,
                   help=f"QEMU CPU model of the phone (default {DEFAULT_CPU}; cortex-a72 for an "
                   f"ARMv8.0 phone such as sd835 / rpi4); one of {', '.join(QEMU_CPUS)}")
    p.add_argument("--count", action="store_true",
                   help="run under the instruction-marker plugin so that tuning can measure "
                   "candidates in instructions (mdl-tvm tune --cost instructions); slower")
    _bind_args(p)
    p.set_defaults(func=_cmd_device_start)

    p = dsub.add_parser("stop", help="stop the phone and its workers")
    p.set_defaults(func=_cmd_device_stop)

    p = dsub.add_parser("status", help="is the phone running?")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_status, which="phone")

    for name, fn, what in (
        ("run", _cmd_run, "run an arm64 .so under QEMU (no RPC)"),
        ("insns", _cmd_insns, "count aarch64 instructions per inference"),
        ("profile", _cmd_profile, "instructions per inference by kernel"),
    ):
        p = dsub.add_parser(name, help=what)
        if name == "insns":
            p.add_argument("artifact", metavar="MODEL",
                           help="a MobileDL library (.so), an ONNX file or a zoo model name")
            p.add_argument("--engine", choices=ENGINES,
                           help="engine for an ONNX / zoo MODEL (default mobiledl)")
        else:
            p.add_argument("artifact", metavar="ARTIFACT.so")
        p.add_argument("--input", action="extend", nargs="+", metavar="X.npy",
                       help="one .npy per model input, in order (default: seeded random)")
        p.add_argument("--cpu", type=check_cpu,
                       help="QEMU CPU model (default: the library's profile's core; "
                       f"{DEFAULT_CPU} for an ONNX / zoo MODEL)")
        p.add_argument("--force", action="store_true",
                       help="run even if the library needs features the CPU lacks")
        p.add_argument("--mode", choices=("plain", "copy-io", "zero-copy"),
                       help="Python runner's call path: main on tensors made once (plain, "
                       "the default), with per-run input/output copies (copy-io), or main_zc "
                       "on preset buffers (zero-copy)")
        p.add_argument("--native", action="store_true",
                       help="run with the native runner (mdl_run: C++ on the TVM runtime, "
                       "main_zc on preset buffers, no Python) instead of the Python one")
        if name == "run":
            p.add_argument("--repeat", type=int, default=1)
            p.add_argument("--outputs-dir", metavar="DIR", help="save out0.npy, out1.npy, ...")
        else:
            p.add_argument("--runs", type=int, default=10, help="N in (c(2N)-c(N))/N")
            if name == "insns":
                p.add_argument("--verify", action="store_true", help="count twice, check equal")
        p.set_defaults(func=(lambda a, f=fn: f(a, compile_model)) if name == "insns" else fn)

    native_cli.register(subparsers)  # mdl-tvm deploy-bundle

    tr = subparsers.add_parser("tracker", help="the TVM RPC tracker")
    tr.set_defaults(func=_help(tr))
    tsub = tr.add_subparsers(dest="tracker_command")
    p = tsub.add_parser("start", help="start the tracker (free port unless --port)")
    p.add_argument("--port", type=int)
    _bind_args(p)
    p.set_defaults(func=_cmd_tracker_start)
    p = tsub.add_parser("stop", help="stop the tracker")
    p.set_defaults(func=_cmd_tracker_stop)
    p = tsub.add_parser("status", help="tracker state and its device queues")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_status, which="tracker")
