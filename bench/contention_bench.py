"""Host latency when another process takes a core: MobileDL with TVM's pinned threads,
with TVM's pool unpinned, with MobileDL's parallel launcher (the exported library, as
deployed), and ONNX Runtime, in the same workers.

    python bench/contention_bench.py                       # four models, quiet and busy
    python bench/contention_bench.py --models regnet --rounds 4

A phone always runs other processes. TVM pins each thread of its pool to one core
(``TVM_BIND_THREADS=1``, its default) and its main thread waits at the end of every parallel
kernel for every worker's static share; `mdl_tvm` leaves the threads unpinned
(`mdl_tvm.core.threads.default_affinity`). Per model and affinity, one worker process
compiles the model for the host and opens ONNX Runtime on the same input (same thread
count), then times alternating rounds (in-memory build on TVM's pool, exported library on
`mdl_tvm.core.parallel`, ORT) of ``repeat / rounds`` runs: on a quiet machine, with a
spinning Python process pinned to the last allowed CPU (*busy*), and with that process
spinning 3 ms in every 10 (*bursts*: a core taken for a few milliseconds at a time, as a
phone's background work or a neighbour on a shared host does). Each figure is the median of
the round medians. Models: `mdl_tvm.zoo` (ResNet-18,
MobileNetV2, random weights) and `mdl_tvm.families` (RegNet-, SqueezeNet-style), all at
1x3x224x224. Writes ``bench/results/contention.{json,md,png}`` (``--out``: another
directory).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

if not __package__:  # run as `python bench/contention_bench.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common, runtimes  # noqa: E402
from mdl_tvm.core.numerics import median_ms, relative_error  # noqa: E402

MODELS = ("resnet18", "mobilenetv2", "regnet", "squeezenet")
AFFINITIES = {"pinned": "1", "unpinned": "0"}  # TVM_BIND_THREADS of the worker
LOADS = ("quiet", "busy", "bursts")
BURST_MS = (3, 7)  # on, off
PAUSE_S = 0.3  # as in families_bench: the other engine's threads stop spinning


def _model(name: str):
    import numpy as np

    from mdl_tvm import families, zoo

    if name in families.FAMILIES:
        shape, module = families.INPUT_SHAPE, families.build(name)
    else:
        shape, module = zoo.INPUT_SHAPES[name], zoo.build(name).eval()
    return module, np.random.default_rng(0).standard_normal(shape).astype("float32")


def busy_core(bursts: bool = False) -> subprocess.Popen:
    """A Python process spinning on the last CPU this process may use, all the time or
    (`bursts`) ``BURST_MS[0]`` ms in every ``sum(BURST_MS)``; kill it after."""
    cpu = max(os.sched_getaffinity(0))
    on, off = (BURST_MS[0] / 1e3, BURST_MS[1] / 1e3) if bursts else (1e9, 0)
    code = ("import time\nwhile 1:\n    t = time.perf_counter()\n"
            f"    while time.perf_counter() - t < {on}: pass\n    time.sleep({off})")
    return subprocess.Popen(["taskset", "-c", str(cpu), sys.executable, "-c", code])


def measure(name: str, affinity: str, args) -> dict:
    """One model, one affinity (set by `bench_model` in the worker's environment): both
    engines quiet, then both with one core busy."""
    import mdl_tvm
    from deploy.host_model import load as load_library

    module, x = _model(name)
    session = runtimes.ort_from_torch(module, [x], ["x"], args.threads)
    with warnings.catch_warnings(record=True):
        compiled = mdl_tvm.compile(module, "host", input_shapes=[x.shape])
    with tempfile.TemporaryDirectory() as tmp:  # loaded: kernels on mdl_tvm.core.parallel
        library = load_library(compiled.export(os.path.join(tmp, f"{name}.so")))
    ort_out = session.run(None, {"x": x})[0]
    row = {"rel_error_vs_ort": relative_error(compiled.run(x)[0], ort_out),
           "launcher_rel_error_vs_ort": relative_error(library.run(x)[0], ort_out)}
    engines = {"ours": lambda: compiled.run(x), "launcher": lambda: library.run(x),
               "onnxruntime": lambda: session.run(None, {"x": x})}
    for fn in engines.values():
        for _ in range(args.warmup):
            fn()
    per_round = max(1, args.repeat // args.rounds)
    for load in LOADS:
        hog = busy_core(bursts=load == "bursts") if load != "quiet" else None
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
    ort, launcher = unpinned["onnxruntime"], unpinned.get("launcher")
    cells = [f"{pinned['ours']:.2f}", f"{unpinned['ours']:.2f}",
             f"{launcher:.2f}" if launcher else "–", f"{ort:.2f}",
             f"{pinned['ours'] / ort:.2f}x", f"{unpinned['ours'] / ort:.2f}x"]
    return cells + [f"{launcher / ort:.2f}x" if launcher else "–"]


def markdown(result: dict) -> str:
    meta = result["meta"]
    lines = ["# Host latency with one core busy", "",
             f"`{meta['command']}` — {meta['cpu']}, {meta['cores']} cores, {result['threads']} "
             f"threads, {meta['date']}, {meta.get('wall_s', 0):.0f} s. Milliseconds per "
             "inference (median of round medians); *busy*: a spinning process pinned to one "
             f"core; *bursts*: it spins {BURST_MS[0]} ms in every {sum(BURST_MS)}. *Pinned* "
             "is TVM's pool with its own default (`TVM_BIND_THREADS=1`), *unpinned* TVM's pool "
             "as MobileDL sets it, *launcher* the exported library on MobileDL's parallel "
             "launcher (`mdl_tvm.core.parallel`); launcher and ORT from the unpinned worker "
             "(the pinned worker's figures are in the JSON).", "",
             "| model | load | ours pinned | ours unpinned | ours launcher | ORT | pinned / ORT "
             "| unpinned / ORT | launcher / ORT |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in result["models"].items():
        for load in LOADS:
            lines.append(f"| {name} | {load} | " + " | ".join(_cells(row, load)) + " |")
    return "\n".join(lines) + "\n"


def figure(result: dict):
    plt = common.pyplot()
    if plt is None:
        return None
    fig, axes = plt.subplots(1, len(LOADS), figsize=(15, 3.6), sharey=False)
    names = list(result["models"])
    for ax, load in zip(axes, LOADS, strict=True):
        for i, (label, key, engine) in enumerate((("ours pinned", "pinned", "ours"),
                                                  ("ours unpinned", "unpinned", "ours"),
                                                  ("ours launcher", "unpinned", "launcher"))):
            vals = [result["models"][n][key][load].get(engine, 0)
                    / result["models"][n]["unpinned"][load]["onnxruntime"] for n in names]
            ax.bar([j + 0.27 * i for j in range(len(names))], vals, width=0.27, label=label)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks([j + 0.27 for j in range(len(names))], names)
        if load != "quiet":
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
