"""MetaSchedule tuning: tuned vs untuned (default schedules) latency, tuning cost.

    python bench/tuning_bench.py                      # lenet5 resnet18 mobilenetv2 + phone
    python bench/tuning_bench.py --models lenet5 --trials lenet5=32 --no-phone

Host: each model is tuned from an empty database on this machine (`schedules.tuning.tune`,
LocalRunner, XGBoost cost model, default schedules seeded first) with the trial budget
given; then, in a fresh process, the default build and the build with the database are
timed in the same run, alternating blocks of runs, and their medians compared.

Phone: a small fp16 session end to end on the emulated arm64 phone (arm64-fp16 profile,
LeNet-5 with ``precision="fp16"``): tracker + phone on loopback, tuning over RPC, compile
with the database, then latency over RPC and instructions per inference (QEMU plugin) for
the default and the tuned library. These timings are an emulator's (QEMU user mode on
x86), not a phone's; the instruction counts are exact.

Writes ``bench/results/tuning.json``, ``tuning.md`` and ``tuning.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_TRIALS = {"lenet5": 32, "resnet18": 96, "mobilenetv2": 64}
PHONE_TRIALS = 16


def _config(threads: int):
    from schedules.tuning import TuningConfig

    return TuningConfig(search_threads=threads, trials_per_iter=16, min_trials=8)


def tune_host(name: str, trials: int, db: Path, threads: int) -> dict:
    """Tune zoo model `name` on the host from an empty database."""
    from mdl_tvm import zoo
    from schedules.tuning import tune

    report = tune(zoo.build(name), "host", trials=trials, db=db, model_name=name,
                  input_shapes=[zoo.INPUT_SHAPES[name]], config=_config(threads))
    out = report.to_json()
    out["trials_per_minute"] = round(report.trials / (report.wall_seconds / 60), 2)
    return out


def measure_host(name: str, db: str, repeat: int, blocks: int) -> dict:
    """Median latency of the default and the tuned build, alternating blocks of runs."""
    import numpy as np
    import torch

    import mdl_tvm
    from mdl_tvm import zoo

    shape = zoo.INPUT_SHAPES[name]
    net = zoo.build(name)
    x = np.random.default_rng(0).standard_normal(shape).astype("float32")
    default = mdl_tvm.compile(net, "host", input_shapes=[shape])
    tuned = mdl_tvm.compile(net, "host", input_shapes=[shape], tuning_db=db)
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    err = float(np.abs(tuned.run(x)[0] - ref).max() / np.abs(ref).max())
    times = {"default": [], "tuned": []}
    per_block = max(1, repeat // blocks)
    for _ in range(blocks):
        for label, model in (("default", default), ("tuned", tuned)):
            res = model.benchmark(x, repeat=per_block, warmup=2)
            times[label].append(res["median_ms"])
    d, t = float(np.median(times["default"])), float(np.median(times["tuned"]))
    return {"default_ms": round(d, 4), "tuned_ms": round(t, 4), "speedup": round(d / t, 3),
            "runs": per_block * blocks, "rel_error_vs_torch": err,
            "tuned_functions": len(tuned.tuned_functions)}


def phone_session(trials: int, repeat: int, threads: int) -> dict:
    """fp16 LeNet-5 tuned over RPC on the emulated phone, then default vs tuned."""
    import numpy as np

    import mdl_tvm
    from deploy import emulator, procs
    from deploy.remote import RemoteDevice
    from mdl_tvm import zoo
    from schedules.tuning import tune

    net, shape = zoo.build("lenet5"), zoo.INPUT_SHAPES["lenet5"]
    opts = dict(input_shapes=[shape], precision="fp16")
    x = np.random.default_rng(0).standard_normal(shape).astype("float32")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tracker = procs.start_tracker(rundir=tmp / "run")
        try:
            procs.start_phone(tracker=tracker, key="bench-phone", rundir=tmp / "run")
            report = tune(net, "arm64-fp16", trials=trials, db=tmp / "db", tracker=tracker,
                          key="bench-phone", model_name="lenet5-fp16",
                          config=_config(threads), **opts)
            libs = {}
            for label, db in (("default", None), ("tuned", tmp / "db")):
                model = mdl_tvm.compile(net, "arm64-fp16", tuning_db=db, **opts)
                libs[label] = model.export(str(tmp / f"{label}.so"))
            ms = {"default": [], "tuned": []}
            with RemoteDevice.connect(tracker, key="bench-phone") as dev:
                loaded = {k: dev.load(v) for k, v in libs.items()}
                outs = {k: m.run([x])[0] for k, m in loaded.items()}
                for _ in range(3):
                    for label, m in loaded.items():
                        ms[label].append(m.time([x], number=10, repeat=repeat))
            insns = {k: emulator.count_instructions(v, [x], runs=10) for k, v in libs.items()}
        finally:
            procs.stop_phone(rundir=tmp / "run")
            procs.stop_tracker(rundir=tmp / "run")
    out = report.to_json()
    out["trials_per_minute"] = round(report.trials / (report.wall_seconds / 60), 2)
    d, t = float(np.median(ms["default"])), float(np.median(ms["tuned"]))
    out.update(emulator_default_ms=round(d, 3), emulator_tuned_ms=round(t, 3),
               default_insns=insns["default"], tuned_insns=insns["tuned"],
               insn_ratio=round(insns["tuned"] / insns["default"], 3),
               max_abs_diff_tuned_vs_default=float(np.abs(outs["tuned"] - outs["default"]).max()))
    return out


def _markdown(result: dict) -> str:
    lines = [
        "# MetaSchedule tuning (seeded with the default schedules)",
        "",
        f"Host: {result['cpu']}, {result['threads']} threads (TVM_NUM_THREADS), same-run medians "
        "of alternating blocks; tuning on the host with LocalRunner, XGBoost cost model, "
        f"load average {result['loadavg_before']} → {result['loadavg_after']}.",
        "",
        "| model | trials (budget) | failed | tasks tuned / kernel won / kept "
        "| tuning wall | trials/min | untuned (default schedules) | tuned | speed-up |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in result["host"].items():
        tuned = sum(1 for t in row["tasks"] if t["trials_new"])
        won = sum(1 for t in row["tasks"] if t["speedup"] and t["speedup"] > 1)
        kept = len(row["verified"].get("kept", []))
        lines.append(
            f"| {name} | {row['trials']} ({row['budget']}) | {row['failed']} "
            f"| {tuned}/{won}/{kept} of {len(row['tasks'])} "
            f"| {row['wall_seconds'] / 60:.1f} min "
            f"| {row['trials_per_minute']} | {row['default_ms']:.3f} ms | {row['tuned_ms']:.3f} ms "
            f"| {row['speedup']:.2f}x |")
    phone = result.get("phone")
    if phone:
        lines += [
            "",
            "## Emulated phone: fp16 LeNet-5 on arm64-fp16, tuned over RPC",
            "",
            "Timings are QEMU user-mode emulation on this x86 host, not a phone's; the point is "
            "the flow (tracker, RPC runner, cross-compiled candidates, database, compile). "
            "Instructions per inference are exact (QEMU TCG plugin).",
            "",
            "| trials | failed | kernels won / kept | tuning wall | trials/min "
            "| default: emulator ms / insns | tuned: emulator ms / insns | insns ratio |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| {phone['trials']} | {phone['failed']} "
            f"| {sum(1 for t in phone['tasks'] if t['speedup'] and t['speedup'] > 1)}/"
            f"{len(phone['verified'].get('kept', []))} | {phone['wall_seconds'] / 60:.1f} min "
            f"| {phone['trials_per_minute']} | {phone['emulator_default_ms']} / "
            f"{phone['default_insns']:,} | {phone['emulator_tuned_ms']} / "
            f"{phone['tuned_insns']:,} | {phone['insn_ratio']} |",
        ]
    lines += [
        "",
        "Tuning wall time includes the whole-model check (`schedules/verify.py`): a task whose "
        "tuned kernel beat its default kernel is kept only if the whole model gets faster "
        "with it, so the tuned build is never slower than the default one as measured. "
        "`kernel won` counts tasks whose best record beat the seeded default schedule in "
        "isolation; `kept` those the model check applied.",
        "",
        f"Command: `{result['command']}`"]
    return "\n".join(lines) + "\n"


def _plot(result: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    names = list(result["host"])
    ratio = [result["host"][n]["speedup"] for n in names]
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(names, ratio, color="tab:blue")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_ylabel("untuned / tuned latency")
    ax.set_title("MetaSchedule tuning on the host")
    for i, n in enumerate(names):
        ax.annotate(f"{result['host'][n]['trials']} trials", (i, ratio[i]), ha="center",
                    va="bottom", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _loadavg():
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except OSError:
        return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEFAULT_TRIALS))
    parser.add_argument("--trials", default="", help="per model budgets, e.g. lenet5=32")
    parser.add_argument("--phone-trials", type=int, default=PHONE_TRIALS)
    parser.add_argument("--no-phone", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=60)
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)  # worker: model db
    args = parser.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    if args.measure:
        print(json.dumps(measure_host(*args.measure, args.repeat, args.blocks)))
        return 0
    budgets = dict(DEFAULT_TRIALS)
    budgets.update({k: int(v) for k, v in (p.split("=") for p in args.trials.split(",") if p)})
    from bench.schedules_bench import _cpu_info

    result = {"cpu": _cpu_info().get("model", "unknown CPU"), "threads": args.threads,
              "loadavg_before": _loadavg(), "host": {},
              "command": "python bench/tuning_bench.py " + " ".join(argv or sys.argv[1:])}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            db = Path(tmp) / name
            start = time.monotonic()
            row = tune_host(name, budgets[name], db, args.threads)
            row["budget"] = budgets[name]
            out = subprocess.run([sys.executable, __file__, "--measure", name, str(db),
                                  "--repeat", str(args.repeat), "--blocks", str(args.blocks),
                                  "--threads", str(args.threads)],
                                 capture_output=True, text=True, check=True)
            row.update(json.loads(out.stdout.strip().splitlines()[-1]))
            row["bench_seconds"] = round(time.monotonic() - start, 1)
            result["host"][name] = row
            print(f"{name}: {row['default_ms']:.3f} ms -> {row['tuned_ms']:.3f} ms "
                  f"({row['trials']} trials, {row['wall_seconds']:.0f} s)", flush=True)
    if not args.no_phone:
        result["phone"] = phone_session(args.phone_trials, 3, args.threads)
    result["loadavg_after"] = _loadavg()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tuning.json").write_text(json.dumps(result, indent=1))
    (out / "tuning.md").write_text(_markdown(result))
    _plot(result, out / "tuning.png")
    print(_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
