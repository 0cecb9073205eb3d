"""Host latency of the default schedules against TVM's unscheduled pipeline, ONNX Runtime
and PyTorch eager, on the zoo models.

    python bench/schedules_bench.py                       # lenet5 alexnet resnet18 mobilenetv2
    python bench/schedules_bench.py --models resnet18 --repeat 30 --threads 2

Every runtime gets the same thread count (``TVM_NUM_THREADS``, ONNX Runtime's
``intra_op_num_threads``, ``torch.set_num_threads``) and is measured alone, in its own
process, one after the other: a few warm-up runs, then the median of ``--repeat`` runs.
The unscheduled TVM build (``options["default_schedules"] = False``: TVM's own "zero"
pipeline) takes seconds per inference on the big models, so its run count is capped by
``--before-budget`` seconds (at least 3 runs); the JSON records how many runs each number
is the median of.

Writes ``bench/results/schedules.json`` and ``bench/results/schedules.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_MODELS = ("lenet5", "alexnet", "resnet18", "mobilenetv2")


def _median_ms(fn, repeat: int, warmup: int) -> tuple[float, int]:
    import numpy as np

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times)), repeat


def _cpu_info() -> dict:
    info = {"machine": platform.machine(), "cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and "model" not in info:
                    info["model"] = line.split(":", 1)[1].strip()
                if line.startswith("cpu MHz") and "mhz" not in info:
                    info["mhz"] = float(line.split(":", 1)[1])
    except OSError:
        pass
    return info


def _loadavg() -> float | None:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except OSError:
        return None


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
            ms, _ = _median_ms(lambda: model(xt), args.repeat, args.warmup)
        return {"torch_ms": ms}
    if runtime == "onnxruntime":
        import onnxruntime as ort

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, f"{name}.onnx")
            torch.onnx.export(model, (xt,), path, dynamo=False, input_names=["x"])
            options = ort.SessionOptions()
            options.intra_op_num_threads = args.threads
            options.inter_op_num_threads = 1
            session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        ms, _ = _median_ms(lambda: session.run(None, {"x": x}), args.repeat, args.warmup)
        return {"onnxruntime_ms": ms}

    import tvm
    from tvm import relax

    import mdl_tvm
    from mdl_tvm.importers import import_model
    from mdl_tvm.pipeline import BuildState, run_pipeline

    if runtime == "tvm_after":
        start = time.perf_counter()
        compiled = mdl_tvm.compile(model, "host", input_shapes=[shape])
        row = {"compile_s": round(time.perf_counter() - start, 2),
               "gflop": round(2 * compiled.stats.macs / 1e9, 4)}
        with torch.no_grad():
            expected = model(xt).numpy()
        (actual,) = compiled.run(x)
        row["rel_error_vs_torch"] = float(np.abs(actual - expected).max()
                                          / np.abs(expected).max())
        row["tvm_after_ms"] = compiled.benchmark(x, repeat=args.repeat, warmup=args.warmup)[
            "median_ms"]
        return row
    mod, _, _ = import_model(model, [shape], None, "float32")
    state = BuildState(mod=mod, profile=mdl_tvm.targets.get_profile("host"),
                       options={"default_schedules": False})
    main = relax.VirtualMachine(run_pipeline(state).executable, tvm.cpu())["main"]
    arg = tvm.runtime.tensor(x)
    start = time.perf_counter()
    main(arg)  # warm-up, also sizes the run count
    first = time.perf_counter() - start
    repeat = max(3, min(args.repeat, int(args.before_budget / max(first, 1e-6))))
    ms, runs = _median_ms(lambda: main(arg), repeat, 0)
    return {"tvm_before_ms": ms, "tvm_before_runs": runs}


def bench_model(name: str, args) -> dict:
    """Measure every runtime on `name`, each in a fresh process (no thread pools left
    spinning from another runtime), one after the other."""
    runtimes = ["tvm_after", "onnxruntime", "torch"]
    if not args.skip_before:
        runtimes.append("tvm_before")
    row: dict = {"input_shape": None}
    for runtime in runtimes:
        cmd = [sys.executable, __file__, "--measure", f"{name}:{runtime}",
               "--repeat", str(args.repeat), "--warmup", str(args.warmup),
               "--threads", str(args.threads), "--before-budget", str(args.before_budget)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                             env={**os.environ, "TVM_NUM_THREADS": str(args.threads)})
        row.update(json.loads(out.stdout.strip().splitlines()[-1]))
    from mdl_tvm import zoo

    row["input_shape"] = list(zoo.INPUT_SHAPES[name])
    row["tvm_after_gflops"] = round(row["gflop"] / (row["tvm_after_ms"] / 1e3), 1)
    if "tvm_before_ms" in row:
        row["speedup_vs_before"] = round(row["tvm_before_ms"] / row["tvm_after_ms"], 1)
    row["vs_onnxruntime"] = round(row["tvm_after_ms"] / row["onnxruntime_ms"], 2)
    row["runs"] = args.repeat
    return row


def _markdown(result: dict) -> str:
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--before-budget", type=float, default=30.0,
                        help="seconds of timed runs for the unscheduled build")
    parser.add_argument("--skip-before", action="store_true")
    parser.add_argument("--clock-ghz", type=float, default=None,
                        help="clock for the peak estimate (default: /proc/cpuinfo's MHz)")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # worker: "model:runtime"
    args = parser.parse_args(argv)

    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    if args.measure:
        name, runtime = args.measure.split(":")
        print(json.dumps(measure(name, runtime, args)))
        return 0
    from mdl_tvm.targets import get_profile

    profile = get_profile("host")
    host = _cpu_info()
    result = {"host": host, "threads": args.threads, "loadavg_before": _loadavg(),
              "models": {}}
    for name in args.models.split(","):
        print(f"[schedules_bench] {name} ...", flush=True)
        result["models"][name] = bench_model(name, args)
        print(json.dumps(result["models"][name]), flush=True)
    result["loadavg_after"] = _loadavg()
    ghz = args.clock_ghz or (host["mhz"] / 1e3 if host.get("mhz") else None)
    if ghz:
        lanes = profile.fp32_lanes()
        result["peak_gflops"] = round(args.threads * 2 * lanes * 2 * ghz, 1)
        result["peak_formula"] = (f"{args.threads} cores x 2 FMA units x {lanes} lanes x 2 flops "
                                  f"x {ghz:.2f} GHz")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "schedules.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "schedules.md").write_text(_markdown(result))
    print(_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
