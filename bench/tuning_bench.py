"""MetaSchedule tuning: tuned vs untuned (default schedules) latency, tuning cost.

    python bench/tuning_bench.py                      # lenet5 resnet18 mobilenetv2 + phone
    python bench/tuning_bench.py --models lenet5 --trials lenet5=32 --no-phone
    python bench/tuning_bench.py --models lenet5 --trials lenet5=8 --no-phone --out /tmp/t

Host: each model is tuned from an empty database on this machine (`schedules.tuning.driver`,
LocalRunner, XGBoost cost model, default schedules seeded first) with the trial budget
given; then, in a fresh process, the default build and the build with the database are
timed in the same run, alternating blocks of runs, and their medians compared.

Phone: a small fp16 session end to end on the emulated arm64 phone (arm64-fp16 profile,
LeNet-5 with ``precision="fp16"``): tracker + phone on loopback, tuning over RPC, compile
with the database, then latency over RPC and instructions per inference (QEMU plugin,
`bench.phone_build.build_on_phone`) for the default and the tuned library. These timings are an
emulator's (QEMU user mode on x86), not a phone's; the instruction counts are exact.

Writes ``bench/results/tuning.json``, ``tuning.md`` and ``tuning.png`` (``--out``: another
directory).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

if not __package__:  # run as `python bench/tuning_bench.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common  # noqa: E402
from bench.phone_build import build_on_phone  # noqa: E402
from mdl_tvm.core.numerics import relative_error  # noqa: E402

DEFAULT_TRIALS = {"lenet5": 32, "resnet18": 96, "mobilenetv2": 64}
PHONE_TRIALS = 16


def _report_json(report) -> dict:
    """A tuning report as JSON, with its trials per minute."""
    out = report.to_json()
    out["trials_per_minute"] = round(report.trials / (report.wall_seconds / 60), 2)
    return out


def tune_host(name: str, trials: int, db: Path, threads: int) -> dict:
    """Tune zoo model `name` on the host from an empty database."""
    from mdl_tvm import zoo
    from schedules.tuning.driver import tune

    return _report_json(tune(zoo.build(name), "host", trials=trials, db=db, model_name=name,
                             input_shapes=[zoo.INPUT_SHAPES[name]],
                             config=common.tuning_config(threads)))


def measure_host(name: str, db: str, args) -> dict:
    """Median latency of the default and the tuned build, alternating ``args.blocks`` blocks
    of ``args.repeat`` runs in all."""
    repeat, blocks = args.repeat, args.blocks
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
    err = relative_error(tuned.run(x)[0], ref)
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

    from deploy import procs
    from deploy.remote import RemoteDevice
    from mdl_tvm import zoo
    from schedules.tuning.driver import tune

    net, shape = zoo.build("lenet5"), zoo.INPUT_SHAPES["lenet5"]
    x = np.random.default_rng(0).standard_normal(shape).astype("float32")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tracker = procs.start_tracker(rundir=tmp / "run")
        try:
            procs.start_phone(tracker=tracker, key="bench-phone", rundir=tmp / "run")
            report = tune(net, "arm64-fp16", trials=trials, db=tmp / "db", tracker=tracker,
                          key="bench-phone", model_name="lenet5-fp16",
                          config=common.tuning_config(threads), input_shapes=[shape],
                          precision="fp16")
            builds = {label: build_on_phone(net, "arm64-fp16", [x], tmp, label, runs=10,
                                                   precision="fp16", tuning_db=db)
                      for label, db in (("default", None), ("tuned", tmp / "db"))}
            ms = {"default": [], "tuned": []}
            with RemoteDevice.connect(tracker, key="bench-phone") as dev:
                loaded = {k: dev.load(b.library) for k, b in builds.items()}
                outs = {k: m.run([x])[0] for k, m in loaded.items()}
                for _ in range(3):
                    for label, m in loaded.items():
                        ms[label].append(m.time([x], number=10, repeat=repeat))
        finally:
            procs.stop_phone(rundir=tmp / "run")
            procs.stop_tracker(rundir=tmp / "run")
    out = _report_json(report)
    insns = {k: b.instructions for k, b in builds.items()}
    d, t = float(np.median(ms["default"])), float(np.median(ms["tuned"]))
    out.update(emulator_default_ms=round(d, 3), emulator_tuned_ms=round(t, 3),
               default_insns=insns["default"], tuned_insns=insns["tuned"],
               insn_ratio=round(insns["tuned"] / insns["default"], 3),
               max_abs_diff_tuned_vs_default=float(np.abs(outs["tuned"] - outs["default"]).max()))
    return out


def markdown(result: dict) -> str:
    """The host table and, when measured, the phone session's table."""
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
        "Tuning wall time includes the whole-model check (`schedules/tuning/verify.py`): a task "
        "whose "
        "tuned kernel beat its default kernel is kept only if the whole model gets faster "
        "with it, so the tuned build is never slower than the default one as measured. "
        "`kernel won` counts tasks whose best record beat the seeded default schedule in "
        "isolation; `kept` those the model check applied.",
        "",
        f"Command: `{result['command']}`"]
    return "\n".join(lines) + "\n"


def plot(result: dict):
    """Untuned / tuned latency per model on the host (None without matplotlib)."""
    if (plt := common.pyplot()) is None:
        return None
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
    return fig


def main(argv=None) -> int:
    """Command-line entry point (see the module docstring); returns the exit status."""
    parser = common.parser(__doc__, "python bench/tuning_bench.py", models=tuple(DEFAULT_TRIALS),
                           repeat=60, threads=2)
    parser.add_argument("--trials", default="", help="per model budgets, e.g. lenet5=32")
    parser.add_argument("--phone-trials", type=int, default=PHONE_TRIALS)
    parser.add_argument("--no-phone", action="store_true")
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # worker: "model:db"
    args = common.parse_args(parser, argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    if common.measure_mode(args, measure_host):
        return 0
    budgets = dict(DEFAULT_TRIALS)
    budgets.update({k: int(v) for k, v in (p.split("=") for p in args.trials.split(",") if p)})
    result = {"cpu": common.cpu_model(), "threads": args.threads,
              "loadavg_before": common.loadavg(), "host": {}, "command": args.command}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            db = Path(tmp) / name
            start = time.monotonic()
            row = tune_host(name, budgets[name], db, args.threads)
            row["budget"] = budgets[name]
            row.update(common.run_worker(__file__, "--measure", f"{name}:{db}",
                                         *common.forward(args, "repeat", "blocks", "threads"),
                                         threads=args.threads))
            row["bench_seconds"] = round(time.monotonic() - start, 1)
            result["host"][name] = row
            print(f"{name}: {row['default_ms']:.3f} ms -> {row['tuned_ms']:.3f} ms "
                  f"({row['trials']} trials, {row['wall_seconds']:.0f} s)", flush=True)
    if not args.no_phone:
        result["phone"] = phone_session(args.phone_trials, 3, args.threads)
    result["loadavg_after"] = common.loadavg()
    common.write_results("tuning", result, markdown(result), plot(result), out=args.out,
                         dpi=120)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
