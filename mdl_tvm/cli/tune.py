"""``mdl-tvm tune``: MetaSchedule tuning from the shell.

    mdl-tvm tune MODEL --target arm64-fp16 --tracker 127.0.0.1:9190 --key phone \\
        --trials 128 --db DIR
    mdl-tvm tune lenet5 --target host --trials 32          # measured on this machine
    mdl-tvm compile MODEL --target arm64-fp16 --tuning-db DIR -o model.so

MODEL is a zoo name or an ONNX path. Give the graph options (``--compress``,
``--precision`` ...) you will compile with: tasks come from that graph. A progress line
(task, trials, best latency so far, failures) goes to stderr, the summary table to stdout.
Rerunning the same command resumes: tasks tuned to budget are skipped.
"""

from __future__ import annotations

import json

from mdl_tvm.cli.args import add_model_arguments, compile_options, resolve_model
from mdl_tvm.core.io import atomic_write
from mdl_tvm.core.targets import get_profile


def _cmd_tune(args) -> int:
    if args.repair:
        if args.model:
            raise ValueError("--repair DIR takes no MODEL")
        from schedules.database import repair

        result = repair(args.repair)
        if result["backup"] is None:
            print(f"{args.repair}: no damaged line; nothing changed")
        else:
            print(f"{args.repair}: dropped {result['dropped']} damaged line(s), kept "
                  f"{result['kept_records']} record(s); the old tables are in {result['backup']}")
        return 0
    if not args.model:
        raise ValueError("give a MODEL to tune (or --repair DIR)")
    from schedules.tuning.driver import TuningConfig, tune
    from schedules.tuning.measure import (
        DEVICE_MEASURE,
        HOST_MEASURE,
        INSN_MEASURE,
        MeasureConfig,
    )
    from schedules.tuning.progress import DeviceLostError

    profile = get_profile(args.target)
    cost = args.cost or ("seconds" if profile.is_host else "instructions")
    if profile.is_host and cost == "instructions":
        raise ValueError("--cost instructions counts on the emulated phone; give an arm64 "
                         "--target (e.g. arm64-fp16)")
    base = (HOST_MEASURE if profile.is_host
            else INSN_MEASURE if cost == "instructions" else DEVICE_MEASURE)
    measure = MeasureConfig(
        builder_workers=args.builder_workers, builder_timeout=args.builder_timeout,
        number=base.number, repeat=base.repeat, min_repeat_ms=base.min_repeat_ms,
        session_timeout=args.session_timeout, runner_workers=args.workers, cost=cost)
    config = TuningConfig(per_task=args.trials_per_task, min_trials=args.min_trials,
                          trials_per_iter=args.trials_per_iter, measure=measure)
    model, shapes = resolve_model(args)
    options = dict(input_shapes=shapes, **compile_options(args))
    try:
        report = tune(model, profile, trials=args.trials, db=args.db, tracker=args.tracker,
                      key=args.key, config=config, progress=not args.quiet,
                      model_name=args.model, **options)
    except DeviceLostError as err:
        if err.report is not None:
            print(err.report.table())
        raise
    print(report.table())
    if args.json:
        atomic_write(args.json, json.dumps(report.to_json(), indent=1))
    graph = "".join(f" --{k} {v}" for k, v in (("precision", args.precision),
                    ("accumulate", args.accumulate), ("compress", args.compress),
                    ("masks", args.masks)) if v and not (k == "precision" and v == "fp32"))
    print(f"compile with: mdl-tvm compile {args.model} --target {profile.name}{graph} "
          f"--tuning-db {report.db} -o OUT.so")
    return 0


def register(sub) -> None:
    """Add ``tune`` to the ``mdl-tvm`` subcommands."""
    p = sub.add_parser("tune", help="tune a model's kernels with MetaSchedule (on this "
                       "machine or on phones through an RPC tracker)")
    add_model_arguments(p, required=False)
    p.add_argument("--repair", metavar="DIR", help="rewrite tuning database DIR without its "
                   "damaged lines (the old tables are kept in DIR/backup-*) and exit")
    p.add_argument("--tracker", help="RPC tracker HOST:PORT (device targets)")
    p.add_argument("--key", help="device key the phones registered under")
    p.add_argument("--trials", type=int, default=64,
                   help="trials for the whole model, shared by task FLOPs (default 64)")
    p.add_argument("--trials-per-task", type=int,
                   help="give every task this many trials instead")
    p.add_argument("--min-trials", type=int, default=8,
                   help="a task with a smaller share keeps its default schedule")
    p.add_argument("--trials-per-iter", type=int, default=16,
                   help="candidates per search round (default 16)")
    p.add_argument("--db", help="database directory (default ~/.cache/mdl_tvm/tuning/TARGET)")
    p.add_argument("--workers", type=int,
                   help="parallel device sessions (default: devices under the key)")
    p.add_argument("--builder-workers", type=int, default=1)
    p.add_argument("--builder-timeout", type=float, default=300.0,
                   help="seconds per candidate build (default 300)")
    p.add_argument("--session-timeout", type=float, default=120.0,
                   help="seconds per device measurement session (default 120)")
    p.add_argument("--cost", choices=("instructions", "seconds"),
                   help="what a candidate is measured in: instructions retired on the emulated "
                   "phone (default for arm64 targets; a phone started with --count, or a private "
                   "one when --tracker is not given) or wall-clock seconds (host default)")
    p.add_argument("--json", help="also write the report as JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.set_defaults(func=_cmd_tune)

