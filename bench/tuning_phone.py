"""Tuning by instructions on the emulated phone: MobileNetV2 / ResNet-18, fp32 and fp16.

    flock /tmp/mdl_qemu.lock env TVM_NUM_THREADS=1 PYTHONPATH=. \\
        python bench/tuning_phone.py --models mobilenetv2 --precisions fp16 --trials 32
    python bench/tuning_phone.py                      # both models, fp16 then fp32, 32 trials

For each model and precision (``fp16``: ``--target arm64-fp16 --precision fp16``, counted on
QEMU's cortex-a76; ``fp32``: ``--target arm64``, cortex-a72), from an empty database:

1. the tasks MetaSchedule extracts from `compile`'s own graph, and for each the default rule
   that schedules it (`schedules.tuning.seed.default_schedule`);
2. `schedules.tuning.driver.tune` with ``cost="instructions"`` (`measure.INSN_MEASURE`, a
   private counting phone, default schedules seeded first, XGBoost, whole-model check);
3. the default build and the build with the database, each profiled on the phone
   (`deploy.kernel_profile.profile_instructions`, N / 2N, 1 thread): instructions per
   inference in all and per kernel, so every task's share of the model is measured.

Rows already in ``OUT/tuning_phone.json`` for other configurations are kept (run one
configuration at a time and they accumulate). Writes ``tuning_phone.json`` and ``.md``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

if not __package__:  # run as `python bench/tuning_phone.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common  # noqa: E402

TARGETS = {"fp16": ("arm64-fp16", {"precision": "fp16"}), "fp32": ("arm64", {})}
HAND_WRITTEN = ("winograd", "winograd_input", "gemm_conv", "depthwise_rows", "max_pool")


def task_rules(net, target: str, shape, options: dict) -> dict:
    """``{task name: default rule}`` for every task MetaSchedule extracts."""
    from mdl_tvm.core.targets import get_profile
    from schedules.tuning.seed import default_schedule
    from schedules.tuning.tasks import extract

    profile = get_profile(target)
    return {t.name: default_schedule(t.mod, profile)[1] or "none"
            for t in extract(net, target, input_shapes=[shape], **options)}


def profile_build(net, target: str, x, options: dict, path: Path, db=None) -> dict:
    """Compile (with tuning database `db`), export and profile on the phone."""
    import mdl_tvm
    from deploy.emulator import run_on_emulator
    from deploy.kernel_profile import profile_instructions
    from mdl_tvm.core.targets import get_profile

    start = time.monotonic()
    model = mdl_tvm.compile(net, target, input_shapes=[x.shape], tuning_db=db, **options)
    model.export(str(path))
    cpu = get_profile(target).qemu_cpu
    prof = profile_instructions(str(path), [x], runs=2, cpu=cpu)
    (out,) = run_on_emulator(str(path), [x], cpu=cpu)
    return {"instructions": int(prof.total), "kernels": dict(prof.kernels),
            "tuned_functions": list(model.tuned_functions), "output": out,
            "seconds": round(time.monotonic() - start, 1)}


def share(kernels: dict, name: str, total: int) -> float:
    """Fraction of the model's instructions spent in kernel `name`."""
    return kernels.get(name, 0) / total if total else 0.0


def run_config(name: str, precision: str, args, work: Path) -> dict:
    """Tune one model at one precision and count default and tuned builds."""
    import numpy as np
    import torch

    from deploy.kernel_profile import RUNTIME
    from mdl_tvm import zoo
    from mdl_tvm.core.numerics import relative_error
    from schedules.tuning.driver import TuningConfig, tune
    from schedules.tuning.measure import INSN_MEASURE

    target, options = TARGETS[precision]
    net, shape = zoo.build(name), zoo.INPUT_SHAPES[name]
    x = np.random.default_rng(0).standard_normal(shape).astype("float32")
    reference = net(torch.from_numpy(x)).detach().numpy()
    db = work / f"{name}-{precision}{''.join('-' + r for r in args.rules or ())}-db"
    start = time.monotonic()
    rules = task_rules(net, target, shape, options)
    config = TuningConfig(trials_per_iter=args.trials_per_iter, min_trials=args.min_trials,
                          search_threads=args.search_threads, measure=INSN_MEASURE)
    only = set(args.rules or ())
    with common.qemu_lock(args.lock), only_rules(rules, only):
        report = tune(net, target, trials=args.trials, db=db, model_name=name, progress=True,
                      config=config, input_shapes=[shape], **options)
    with common.qemu_lock(args.lock):
        default = profile_build(net, target, x, options, work / f"{name}-{precision}-def.so")
    with common.qemu_lock(args.lock):
        tuned = profile_build(net, target, x, options, work / f"{name}-{precision}-tun.so", db)
    out = report.to_json()
    total = default["instructions"]
    tasks = []
    for t in out["tasks"]:
        rule = rules.get(t["name"], "?")
        tasks.append({
            "name": t["name"], "rule": rule, "calls": t["weight"], "budget": t["budget"],
            "trials": t["trials_before"] + t["trials_new"], "failed": t["failed"],
            "default_insns": t["default_us"] and round(t["default_us"] * 1e3),
            "best_insns": t["best_us"] and round(t["best_us"] * 1e3),
            "use": t["use"], "share": round(share(default["kernels"], t["name"], total), 4)})
    tuned_tasks = [t for t in tasks if t["budget"]]
    return {
        "model": name, "precision": precision, "target": target, "shape": list(shape),
        "trials_budget": args.trials, "trials": out["trials"], "failed": out["failed"],
        "trials_resumed": sum(t["trials_before"] for t in out["tasks"]),
        "tasks_extracted": len(tasks), "tasks_tuned": len(tuned_tasks),
        "kernel_won": sum(1 for t in tuned_tasks if t["best_insns"] and t["default_insns"]
                          and t["best_insns"] < t["default_insns"]),
        "kept": out["verified"].get("kept", []), "verified": out["verified"],
        "default_insns": total, "tuned_insns": tuned["instructions"],
        "rel_error_default_vs_pytorch": relative_error(default["output"], reference),
        "rel_error_tuned_vs_default": relative_error(tuned["output"], default["output"]),
        "tuned_functions": tuned["tuned_functions"],
        "share_tuned_tasks": round(sum(t["share"] for t in tuned_tasks), 4),
        "share_hand_written": round(sum(t["share"] for t in tasks
                                        if t["rule"] in HAND_WRITTEN), 4),
        "share_runtime": round(share(default["kernels"], RUNTIME, total), 4),
        "rules": {r: sum(1 for t in tasks if t["rule"] == r) for r in sorted(set(rules.values()))},
        "tuning_seconds": round(out["wall_seconds"], 1),
        "trials_per_minute": round(out["trials"] / max(out["wall_seconds"], 1e-9) * 60, 2),
        "wall_seconds": round(time.monotonic() - start, 1), "tasks": tasks,
        "default_kernels": default["kernels"], "db": str(db)}


@contextlib.contextmanager
def only_rules(rules: dict, only: set):
    """Give trials only to tasks whose default rule is in `only` (all tasks when empty),
    shared among them by `tasks.plan_budgets` as usual."""
    from schedules.tuning import driver

    if not only:
        yield
        return
    plan = driver.plan_budgets

    def subset(tasks, trials, **kw):
        picked = [i for i, t in enumerate(tasks) if rules.get(t.name) in only]
        budgets = [0] * len(tasks)
        for i, n in zip(picked, plan([tasks[i] for i in picked], trials, **kw), strict=True):
            budgets[i] = n
        return budgets

    driver.plan_budgets = subset
    try:
        yield
    finally:
        driver.plan_budgets = plan


def _k(value) -> str:
    return "-" if not value else f"{value / 1e3:,.0f}"


def _trials(row: dict) -> str:
    resumed = row.get("trials_resumed")
    return f"{row['trials']} + {resumed} resumed" if resumed else str(row["trials"])


def _err(value) -> str:
    return "not checked" if value is None else f"{value:.1e}"


def _only(row: dict) -> str:
    rules = row.get("only_rules")
    return f" (only {', '.join(rules)})" if rules else ""


def markdown(result: dict) -> str:
    """Summary table, then per configuration the tasks that got trials."""
    rows = result["rows"]
    lines = [
        "# MetaSchedule tuning by instructions on the emulated phone",
        "",
        "Cost: instructions retired on QEMU user mode (fp16: `arm64-fp16`, cortex-a76; fp32: "
        "`arm64`, cortex-a72), 1 thread, N / 2N method; default schedules seeded first, "
        "XGBoost, whole-model check. Whole-model counts are the default build and the build "
        "with the database (`compile(..., tuning_db=DIR)`), profiled on the phone.",
        "",
        "| model | prec | tasks extracted | tuned | kernel won | kept | trials (failed) "
        "| trials/min | tuning wall | default Minsn | tuned Minsn | tuned / default "
        "| share of tuned tasks | rel. error tuned vs default |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows.values():
        lines.append(
            f"| {r['model']} | {r['precision']}{_only(r)} | {r['tasks_extracted']} "
            f"| {r['tasks_tuned']} "
            f"| {r['kernel_won']} | {len(r['kept'])} | {_trials(r)} ({r['failed']}) "
            f"| {r['trials_per_minute'] if r['trials'] else '- (resumed)'} "
            f"| {r['tuning_seconds'] / 60:.1f} min "
            f"| {r['default_insns'] / 1e6:,.2f} | {r['tuned_insns'] / 1e6:,.2f} "
            f"| {r['tuned_insns'] / r['default_insns']:.4f} | {r['share_tuned_tasks']:.1%} "
            f"| {_err(r.get('rel_error_tuned_vs_default'))} |")
    for r in rows.values():
        lines += [
            "", f"## {r['model']} {r['precision']}{_only(r)}: tasks with trials", "",
            f"Default rules of the {r['tasks_extracted']} tasks: "
            + ", ".join(f"{k} {v}" for k, v in r["rules"].items())
            + f". Hand-written kernels ({', '.join(HAND_WRITTEN)}) take "
            f"{sum(t['share'] for t in r['tasks'] if t['rule'] in HAND_WRITTEN):.1%} of the "
            f"model's instructions, the VM/runtime "
            f"{r['share_runtime']:.1%}.", "",
            "| task | default rule | calls | share of model | trials (failed) "
            "| default kinsn/call | best kinsn/call | best / default | applied |",
            "|---|---|---:|---:|---:|---:|---:|---:|---|"]
        for t in r["tasks"]:
            if not t["budget"]:
                continue
            ratio = (f"{t['best_insns'] / t['default_insns']:.3f}"
                     if t["best_insns"] and t["default_insns"] else "-")
            lines.append(f"| `{t['name']}` | {t['rule']} | {t['calls']} | {t['share']:.1%} "
                         f"| {t['trials']} ({t['failed']}) | {_k(t['default_insns'])} "
                         f"| {_k(t['best_insns'])} | {ratio} | {t['use'] or '-'} |")
    lines += ["", "`kernel won`: tasks whose best candidate retired fewer instructions than the "
              "seeded default kernel in isolation; `kept`: tasks the whole-model check applied. "
              "`best / default` 1.000 means no candidate beat the default (the seed is the "
              "best record).", "", "Commands:", ""]
    lines += [f"- `{c}`" for c in result["commands"]]
    return "\n".join(lines) + "\n"


def previous(out: Path) -> dict:
    """The results written so far (rows of other configurations are kept)."""
    path = out / "tuning_phone.json"
    result = json.loads(path.read_text()) if path.exists() else {}
    result.setdefault("rows", {})
    result.setdefault("commands", [])
    return result


def main(argv=None) -> int:
    """Command-line entry point (see the module docstring); returns the exit status."""
    parser = common.parser(__doc__, "python bench/tuning_phone.py",
                           models=("mobilenetv2", "resnet18"))
    parser.add_argument("--precisions", nargs="+", default=["fp16", "fp32"],
                        choices=tuple(TARGETS))
    parser.add_argument("--trials", type=int, default=32, help="trials per model (default 32)")
    parser.add_argument("--min-trials", type=int, default=8)
    parser.add_argument("--trials-per-iter", type=int, default=8)
    parser.add_argument("--search-threads", type=int, default=1)
    parser.add_argument("--rules", nargs="+", help="tune only tasks with these default rules "
                        "(e.g. depthwise reduction dense fallback); the row is MODEL/PREC/rules")
    parser.add_argument("--render", action="store_true", help="rewrite the .md from the .json")
    parser.add_argument("--lock", help="flock this file around each QEMU-heavy step")
    parser.add_argument("--work", help="keep databases and libraries here (default: temporary)")
    args = common.parse_args(parser, argv)
    os.environ.setdefault("TVM_NUM_THREADS", "1")
    out = Path(args.out)
    if args.render:
        common.write_results("tuning_phone", previous(out), markdown(previous(out)), out=out)
        return 0
    with tempfile.TemporaryDirectory(prefix="mdl-tuning-phone-") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        for precision in args.precisions:
            for name in args.models:
                row = run_config(name, precision, args, work)
                row["command"] = args.command
                result = previous(out)  # re-read: other runs may have added rows meanwhile
                suffix = "/" + "+".join(args.rules) if args.rules else ""
                row["only_rules"] = args.rules or []
                result["rows"][f"{name}/{precision}{suffix}"] = row
                if args.command not in result["commands"]:
                    result["commands"].append(args.command)
                result.update(cpu=common.cpu_model(), loadavg=common.loadavg())
                common.write_results("tuning_phone", result, markdown(result), out=out)
                print(f"{name} {precision}: {row['default_insns']:,} -> "
                      f"{row['tuned_insns']:,} insns, {row['trials']} trials, "
                      f"kept {row['kept']}", flush=True)
    print(markdown(previous(out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
