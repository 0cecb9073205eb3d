"""Host latency when another process keeps one core busy: MobileDL with TVM's pinned
threads, MobileDL as it runs by default (unpinned), and ONNX Runtime, in the same workers.

    python bench/contention_bench.py                       # four models, quiet and busy
    python bench/contention_bench.py --models regnet --rounds 4

A phone always runs other processes. TVM pins each thread of its pool to one core
(``TVM_BIND_THREADS=1``, its default) and its main thread waits at the end of every parallel
kernel for every worker's static share; `mdl_tvm` leaves the threads unpinned
(`mdl_tvm.core.threads.default_affinity`). Per model and affinity, one worker process
compiles the model for the host and opens ONNX Runtime on the same input (same thread
count), then times alternating rounds (ours, ORT) of ``repeat / rounds`` runs, first on a
quiet machine, then with a spinning Python process pinned to the last allowed CPU (*busy*).
Each figure is the median of the round medians. Models: `mdl_tvm.zoo` (ResNet-18,
MobileNetV2, random weights) and `mdl_tvm.families` (RegNet-, SqueezeNet-style), all at
1x3x224x224. Writes ``bench/results/contention.{json,md,png}`` (``--out``: another
directory).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

if not __package__:  # run as `python bench/contention_bench.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common, runtimes  # noqa: E402
from mdl_tvm.core.numerics import median_ms, relative_error  # noqa: E402

MODELS = ("resnet18", "mobilenetv2", "regnet", "squeezenet")
AFFINITIES = {"pinned": "1", "unpinned": "0"}  # TVM_BIND_THREADS of the worker
LOADS = ("quiet", "busy")
PAUSE_S = 0.3  # as in families_bench: the other engine's threads stop spinning


def _model(name: str):
    import numpy as np

    from mdl_tvm import families, zoo

    if name in families.FAMILIES:
        shape, module = families.INPUT_SHAPE, families.build(name)
    else:
        shape, module = zoo.INPUT_SHAPES[name], zoo.build(name).eval()
    return module, np.random.default_rng(0).standard_normal(shape).astype("float32")


def busy_core() -> subprocess.Popen:
    """A Python process spinning on the last CPU this process may use (kill it after)."""
    cpu = max(os.sched_getaffinity(0))
    return subprocess.Popen(["taskset", "-c", str(cpu), sys.executable, "-c", "while 1: pass"])


def measure(name: str, affinity: str, args) -> dict:
    """One model, one affinity (set by `bench_model` in the worker's environment): both
    engines quiet, then both with one core busy."""
    import mdl_tvm

    module, x = _model(name)
    session = runtimes.ort_from_torch(module, [x], ["x"], args.threads)
    with warnings.catch_warnings(record=True):
        compiled = mdl_tvm.compile(module, "host", input_shapes=[x.shape])
    ort_out = session.run(None, {"x": x})[0]
    row = {"rel_error_vs_ort": relative_error(compiled.run(x)[0], ort_out)}
    engines = {"ours": lambda: compiled.run(x), "onnxruntime": lambda: session.run(None, {"x": x})}
    for fn in engines.values():
        for _ in range(args.warmup):
            fn()
    per_round = max(1, args.repeat // args.rounds)
    for load in LOADS:
        hog = busy_core() if load == "busy" else None
        try:
            time.sleep(PAUSE_S if hog is None else 1.0)
            rounds = {engine: [] for engine in engines}
            for _ in range(args.rounds):
                for engine, fn in engines.items():
                    time.sleep(PAUSE_S)
                    rounds[engine].append(median_ms(fn, per_round, warmup=1))
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()
        row[load] = {engine: float(sorted(ms)[len(ms) // 2]) for engine, ms in rounds.items()}
    return row


def bench_model(name: str, args) -> dict:
    out = {}
    for affinity, bind in AFFINITIES.items():
        env = {**os.environ, "TVM_BIND_THREADS": bind}
        out[affinity] = common.run_worker(
            __file__, "--measure", f"{name}:{affinity}",
            *common.forward(args, "repeat", "warmup", "threads", "rounds"),
            threads=args.threads, env=env, timeout=3600)
    return out


def _cells(row: dict, load: str) -> list[str]:
    pinned, unpinned = row["pinned"][load], row["unpinned"][load]
    ort = unpinned["onnxruntime"]
    return [f"{pinned['ours']:.2f}", f"{unpinned['ours']:.2f}", f"{ort:.2f}",
            f"{pinned['ours'] / ort:.2f}x", f"{unpinned['ours'] / ort:.2f}x"]


def markdown(result: dict) -> str:
    meta = result["meta"]
    lines = ["# Host latency with one core busy", "",
             f"`{meta['command']}` — {meta['cpu']}, {meta['cores']} cores, {result['threads']} "
             f"threads, {meta['date']}, {meta.get('wall_s', 0):.0f} s. Milliseconds per "
             "inference (median of round medians); *busy*: a spinning process pinned to one "
             "core. *Pinned* is TVM's own default (`TVM_BIND_THREADS=1`), *unpinned* "
             "MobileDL's; ORT from the unpinned worker (the pinned worker's ORT figures are "
             "in the JSON).", "",
             "| model | load | ours pinned | ours unpinned | ORT | pinned / ORT | "
             "unpinned / ORT |", "|---|---|---:|---:|---:|---:|---:|"]
    for name, row in result["models"].items():
        for load in LOADS:
            lines.append(f"| {name} | {load} | " + " | ".join(_cells(row, load)) + " |")
    return "\n".join(lines) + "\n"


def figure(result: dict):
    plt = common.pyplot()
    if plt is None:
        return None
    fig, axes = plt.subplots(1, len(LOADS), figsize=(10, 3.6), sharey=False)
    names = list(result["models"])
    for ax, load in zip(axes, LOADS, strict=True):
        for i, (label, key) in enumerate((("ours pinned", "pinned"),
                                          ("ours unpinned", "unpinned"))):
            vals = [result["models"][n][key][load]["ours"]
                    / result["models"][n]["unpinned"][load]["onnxruntime"] for n in names]
            ax.bar([j + 0.4 * i for j in range(len(names))], vals, width=0.4, label=label)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks([j + 0.2 for j in range(len(names))], names)
        if load == "busy":
            ax.set_yscale("log")  # pinned is 3-20x ORT there
        ax.set_title(f"{load}: ours / ONNX Runtime (lower is faster)")
        ax.legend()
    fig.tight_layout()
    return fig


def main(argv=None) -> int:
    """Command-line entry point (see the module docstring); returns the exit status."""
    parser = common.parser(__doc__, "python bench/contention_bench.py", models=MODELS,
                           repeat=30, warmup=3, threads=2)
    parser.add_argument("--rounds", type=int, default=6,
                        help="alternating timing rounds per engine and load")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = common.parse_args(parser, argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    if common.measure_mode(args, measure):
        return 0
    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("contention_bench needs two CPUs (one is kept busy)")
    start = time.perf_counter()
    result = {"threads": args.threads, "models": {}}
    for name in args.models:
        print(f"[contention] {name} ...", flush=True)
        result["models"][name] = bench_model(name, args)
    result["meta"] = common.run_meta(args, start)
    common.write_results("contention", result, markdown(result), figure(result), out=args.out)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
