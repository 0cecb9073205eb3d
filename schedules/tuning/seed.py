"""Seeding: the default schedule of each task goes into the database first, measured.

Before a task is tuned, its default schedule (the first rule of `DEFAULT_RULES` that
applies, exactly what `compile` builds without a database) is built and timed with the
same builder and runner as the candidates, and committed as an ordinary tuning record:
its trace (the rule's schedule primitives, replayable on the workload) and its measured
seconds. So

* compiling with the database picks, per function, the faster of the default schedule
  and every tuned candidate (MetaSchedule's database returns the best record): a tuned
  build is never slower than the default one, up to measurement noise;
* the evolutionary search starts from it: MetaSchedule puts the database's best records
  into its initial population.

A task no rule schedules, or whose default schedule fails to build or run, is not
seeded; its tuned records then compete only with each other.
"""

from __future__ import annotations

import logging

from schedules.apply import DEFAULT_RULES, _config

log = logging.getLogger(__name__)


def default_schedule(mod, profile, rules=DEFAULT_RULES):
    """The default schedule of a workload and the rule that made it.

    Parameters
    ----------
    mod : tvm.IRModule
        The workload (unscheduled function as ``main``).
    profile : TargetProfile or MachineConfig
    rules : sequence of schedules.common.Rule

    Returns
    -------
    (tvm.s_tir.Schedule, str) or (None, None)
        A traced schedule (``sch.trace`` replays it on `mod`) and the rule's name.
    """
    cfg = _config(profile)
    func = mod["main"]
    for rule in rules:
        try:
            sch = rule.apply(func, cfg)
        except Exception as err:  # noqa: BLE001 - as schedule_primfunc: try the next rule
            log.debug("rule %s failed: %s", rule.name, err)
            continue
        if sch is not None:
            return sch, rule.name
    return None, None


def measure_schedule(sch, target, builder, runner) -> tuple[list[float] | None, str | None]:
    """Build and time one schedule with a MetaSchedule builder and runner.

    Returns
    -------
    (list of float or None, str or None)
        Seconds per measurement, or None and the error message.
    """
    import tvm
    from tvm.s_tir import meta_schedule as ms

    main = sch.mod["main"].with_attr("tirx.is_scheduled", True)
    mod = tvm.IRModule({"main": main})
    built = builder.build([ms.builder.BuilderInput(mod, target)])[0]
    if built.error_msg:
        return None, f"build failed: {built.error_msg}"
    try:
        args = ms.arg_info.ArgInfo.from_entry_func(mod, remove_preproc=True)
        result = runner.run([ms.runner.RunnerInput(built.artifact_path, _device(target),
                                                   args)])[0].result()
    finally:
        _remove_artifact(built.artifact_path)
    if result.error_msg:
        return None, f"run failed: {result.error_msg}"
    return [float(s) for s in result.run_secs], None


def replays(sch, mod) -> bool:
    """True when ``sch.trace`` applied to `mod` rebuilds ``sch.mod``.

    False for the rules that replace the function by a hand-written kernel (``gemm_conv``,
    ``winograd``, ``depthwise_rows``, ``max_pool``): their schedule has an empty trace, and
    replaying it gives the unscheduled reference compute, not the kernel.
    """
    import tvm
    from tvm import s_tir

    replay = s_tir.Schedule(mod)
    sch.trace.apply_to_schedule(replay, remove_postproc=False)
    try:
        tvm.ir.assert_structural_equal(replay.mod["main"], sch.mod["main"])
    except ValueError:
        return False
    return True


def seed(db, task, profile, target, builder, runner) -> tuple[float | None, str, bool]:
    """Measure `task`'s default schedule and commit it to `db` as a tuning record.

    Parameters
    ----------
    db : tvm.s_tir.meta_schedule.database.Database
    task : schedules.tuning.tasks.Task
    profile : TargetProfile
    target : tvm.target.Target
    builder, runner : MetaSchedule builder and runner

    Returns
    -------
    (float or None, str, bool)
        Mean seconds of the default schedule (None when not seeded), the rule's name or
        the reason it was not seeded, and whether a record was committed: a default
        schedule whose trace does not replay it (`replays`) is measured but not committed
        -- its record would apply the unscheduled reference -- and the driver compares the
        candidates with the manifest's ``default_us`` instead.
    """
    from tvm.s_tir import meta_schedule as ms

    sch, rule = default_schedule(task.mod, profile)
    if sch is None:
        return None, "no default rule applies", False
    secs, error = measure_schedule(sch, target, builder, runner)
    if secs is None:
        log.warning("default schedule of %s not seeded: %s", task.name, error)
        return None, error, False
    if not replays(sch, task.mod):
        return sum(secs) / len(secs), rule, False
    workload = db.commit_workload(task.mod)
    args = ms.arg_info.ArgInfo.from_entry_func(task.mod, remove_preproc=True)
    run_secs = [_float_imm(s) for s in secs]
    db.commit_tuning_record(ms.database.TuningRecord(sch.trace, workload, run_secs, target,
                                                     args))
    return sum(secs) / len(secs), rule, True


def _float_imm(value: float):
    from tvm import tirx

    return tirx.FloatImm("float32", value)


def _device(target) -> str:
    return "cuda" if target.kind.name == "cuda" else "cpu"


def _remove_artifact(path) -> None:
    import os
    import shutil

    if path:
        shutil.rmtree(os.path.dirname(str(path)), ignore_errors=True)
