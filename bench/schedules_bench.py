"""Host latency of the default schedules against TVM's unscheduled pipeline, ONNX Runtime
and PyTorch eager, on the zoo models.

    python bench/schedules_bench.py                       # lenet5 alexnet resnet18 mobilenetv2
    python bench/schedules_bench.py --models resnet18 --repeat 30 --threads 2
    python bench/schedules_bench.py --models lenet5 --repeat 5 --skip-before --out /tmp/s

Every runtime gets the same thread count (``TVM_NUM_THREADS``, ONNX Runtime's
``intra_op_num_threads``, ``torch.set_num_threads``) and is measured alone, in its own
process, one after the other: a few warm-up runs, then the median of ``--repeat`` runs.
The unscheduled TVM build (``BuildOptions(default_schedules=False)``: TVM's own "zero"
pipeline) takes seconds per inference on the big models, so its run count is capped by
``--before-budget`` seconds (at least 3 runs); the JSON records how many runs each number
is the median of.

Writes ``bench/results/schedules.json`` and ``bench/results/schedules.md`` (``--out``:
another directory).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

if not __package__:  # run as `python bench/schedules_bench.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common, runtimes  # noqa: E402
from mdl_tvm.core.numerics import median_ms, relative_error  # noqa: E402

DEFAULT_MODELS = ("lenet5", "alexnet", "resnet18", "mobilenetv2")


def measure(name: str, runtime: str, args) -> dict:
    """Time one runtime on one zoo model (run in its own process by `bench_model`)."""
    import numpy as np
    import torch

    from mdl_tvm import zoo

    torch.set_num_threads(args.threads)
    shape = zoo.INPUT_SHAPES[name]
    model = zoo.build(name)
    x = np.random.default_rng(0).standard_normal(shape).astype("float32")
    xt = torch.from_numpy(x)
    if runtime == "torch":
        with torch.no_grad():
            return {"torch_ms": median_ms(lambda: model(xt), args.repeat, args.warmup)}
    if runtime == "onnxruntime":
        session = runtimes.ort_from_torch(model, [x], ["x"], args.threads)
        return {"onnxruntime_ms": median_ms(lambda: session.run(None, {"x": x}), args.repeat,
                                            args.warmup)}

    import tvm
    from tvm import relax

    import mdl_tvm
    from mdl_tvm.compiler.importers import import_model
    from mdl_tvm.compiler.pipeline import BuildOptions, BuildState, run_pipeline

    if runtime == "tvm_after":
        start = time.perf_counter()
        compiled = mdl_tvm.compile(model, "host", input_shapes=[shape])
        row = {"compile_s": round(time.perf_counter() - start, 2),
               "gflop": round(2 * compiled.stats.macs / 1e9, 4)}
        with torch.no_grad():
            expected = model(xt).numpy()
        (actual,) = compiled.run(x)
        row["rel_error_vs_torch"] = relative_error(actual, expected)
        row["tvm_after_ms"] = compiled.benchmark(x, repeat=args.repeat, warmup=args.warmup)[
            "median_ms"]
        return row
    mod, _, _ = import_model(model, [shape], None, "float32")
    state = BuildState(mod=mod, profile=mdl_tvm.get_profile("host"),
                       options=BuildOptions(default_schedules=False))
    main = relax.VirtualMachine(run_pipeline(state).executable, tvm.cpu())["main"]
    arg = tvm.runtime.tensor(x)
    start = time.perf_counter()
    main(arg)  # warm-up, also sizes the run count
    first = time.perf_counter() - start
    repeat = max(3, min(args.repeat, int(args.before_budget / max(first, 1e-6))))
    return {"tvm_before_ms": median_ms(lambda: main(arg), repeat, 0), "tvm_before_runs": repeat}


def bench_model(name: str, args) -> dict:
    """Measure every runtime on `name`, each in a fresh process (no thread pools left
    spinning from another runtime), one after the other."""
    runtimes = ["tvm_after", "onnxruntime", "torch"]
    if not args.skip_before:
        runtimes.append("tvm_before")
    row: dict = {"input_shape": None}
    for runtime in runtimes:
        row.update(common.run_worker(__file__, "--measure", f"{name}:{runtime}",
                                     *common.forward(args, "repeat", "warmup", "threads",
                                                     "before_budget"),
                                     threads=args.threads))
    from mdl_tvm import zoo

    row["input_shape"] = list(zoo.INPUT_SHAPES[name])
    row["tvm_after_gflops"] = round(row["gflop"] / (row["tvm_after_ms"] / 1e3), 1)
    if "tvm_before_ms" in row:
        row["speedup_vs_before"] = round(row["tvm_before_ms"] / row["tvm_after_ms"], 1)
    row["vs_onnxruntime"] = round(row["tvm_after_ms"] / row["onnxruntime_ms"], 2)
    row["runs"] = args.repeat
    return row


def markdown(result: dict) -> str:
    """The latency table, with the peak estimate."""
    host = result["host"]
    lines = [
        "# Default schedules: host latency (median ms)",
        "",
        f"{host.get('model', host['machine'])}, {result['threads']} threads, "
        f"load average {result['loadavg_before']} → {result['loadavg_after']}.",
        "",
        "| model | TVM before (no schedules) | TVM after | ONNX Runtime | PyTorch eager "
        "| after / ORT | speed-up | GFLOP/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in result["models"].items():
        before = row.get("tvm_before_ms")
        before_txt = f"{before:.3f} ({row['tvm_before_runs']} runs)" if before else "—"
        speed = f"{row['speedup_vs_before']}x" if before else "—"
        lines.append(
            f"| {name} {'x'.join(map(str, row['input_shape']))} | {before_txt} "
            f"| {row['tvm_after_ms']:.3f} | {row['onnxruntime_ms']:.3f} | {row['torch_ms']:.3f} "
            f"| {row['vs_onnxruntime']} | {speed} | {row['tvm_after_gflops']} |"
        )
    peak = result.get("peak_gflops")
    if peak:
        lines += ["", f"Estimated peak: {peak} GFLOP/s ({result['peak_formula']})."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    """Command-line entry point (see the module docstring); returns the exit status."""
    parser = common.parser(__doc__, "python bench/schedules_bench.py", models=DEFAULT_MODELS,
                           repeat=30, warmup=5, threads=2)
    parser.add_argument("--before-budget", type=float, default=30.0,
                        help="seconds of timed runs for the unscheduled build")
    parser.add_argument("--skip-before", action="store_true")
    parser.add_argument("--clock-ghz", type=float, default=None,
                        help="clock for the peak estimate (default: /proc/cpuinfo's MHz)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # worker: "model:runtime"
    args = common.parse_args(parser, argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    if common.measure_mode(args, measure):
        return 0
    from mdl_tvm.core.targets import get_profile

    profile = get_profile("host")
    host = common.cpu_info()
    result = {"host": host, "threads": args.threads, "loadavg_before": common.loadavg(),
              "command": args.command, "models": {}}
    for name in args.models:
        print(f"[schedules_bench] {name} ...", flush=True)
        result["models"][name] = bench_model(name, args)
        print(json.dumps(result["models"][name]), flush=True)
    result["loadavg_after"] = common.loadavg()
    ghz = args.clock_ghz or (host["mhz"] / 1e3 if host.get("mhz") else None)
    if ghz:
        lanes = profile.fp32_lanes()
        result["peak_gflops"] = round(args.threads * 2 * lanes * 2 * ghz, 1)
        result["peak_formula"] = (f"{args.threads} cores x 2 FMA units x {lanes} lanes x 2 flops "
                                  f"x {ghz:.2f} GHz")
    common.write_results("schedules", result, markdown(result), out=args.out)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
