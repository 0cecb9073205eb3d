"""Tuning tasks from the compile pipeline's own graph, and how trials are shared out.

`extract(model, target, **compile_options)` runs `mdl_tvm.compile`'s stages up to
``lower`` (import, prepare, compression, precision: `mdl_tvm.compiler.pipeline.STAGES`, whatever
they are), then the lowering pipeline without schedule rules (legalize with the packed
kernels, annotate, fold, fuse) -- MetaSchedule skips functions that are already scheduled
-- and lets MetaSchedule collect the distinct PrimFuncs. Compile with the same options
builds exactly these functions, so every record applies.

`plan_budgets(tasks, trials)` shares a trial budget out in proportion to each task's
work (FLOPs x occurrences); a task whose share is below `min_trials` keeps its default
schedule and its share goes to the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mdl_tvm.compiler.compiled import start_state
from mdl_tvm.compiler.pipeline import run_pipeline
from schedules.apply import lowering_pipeline


@dataclass(frozen=True)
class Task:
    """One distinct PrimFunc of the model.

    Attributes
    ----------
    name : str
        MetaSchedule's task name (the fused function's name).
    mod : tvm.IRModule
        The workload: the unscheduled function as ``main``.
    weight : int
        How often the model calls it.
    flops : float
        Estimated floating-point operations of one call.
    """

    name: str
    mod: object
    weight: int
    flops: float

    @property
    def cost(self) -> float:
        """FLOPs over all calls (at least 1, so element-wise tasks rank last)."""
        return max(self.flops, 1.0) * self.weight


def graph_before_lowering(model, target, **compile_options):
    """Run `mdl_tvm.compile`'s stages before ``lower`` and return the final state.

    Parameters
    ----------
    model, target, **compile_options
        As for `mdl_tvm.compile` (``input_shapes``, ``compress``, ``precision`` ...).

    Returns
    -------
    mdl_tvm.compiler.pipeline.BuildState
    """
    state = start_state(model, target, **compile_options)[0]
    return run_pipeline(state, until="lower")


def extract(model, target, **compile_options) -> list[Task]:
    """The tuning tasks of `model` compiled for `target`, heaviest first.

    Parameters
    ----------
    model : torch.nn.Module, str, onnx.ModelProto or tvm.IRModule
        As for `mdl_tvm.compile`.
    target : str or TargetProfile
    **compile_options
        `mdl_tvm.compile`'s graph options: ``input_shapes``, ``example_inputs``,
        ``input_dtype``, ``compress``, ``calibration``, ``graph_passes``, ``precision``,
        ``accumulate``. Tune with the options you will compile with.

    Returns
    -------
    list of Task
    """
    return tasks_of(graph_before_lowering(model, target, **compile_options))


def tasks_of(state) -> list[Task]:
    """The tuning tasks of a `graph_before_lowering` state, heaviest first."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.analysis import estimate_tir_flops


    profile = state.profile
    target_obj = profile.tvm_target()
    if ms.database.Database.current() is not None:
        raise RuntimeError("extract tasks outside a `with database:` scope")
    with target_obj:
        lowered = lowering_pipeline(profile, rules=())(state.mod)
    tasks = []
    for task in ms.relax_integration.extract_tasks(lowered, target_obj):
        mod = task.dispatched[0]
        try:
            flops = float(estimate_tir_flops(mod))
        except Exception:  # noqa: BLE001 - an estimate only ranks the tasks
            flops = 0.0
        tasks.append(Task(task.task_name, mod, int(task.weight), flops))
    tasks.sort(key=lambda t: (-t.cost, t.name))
    return tasks


def plan_budgets(tasks: list[Task], trials: int, *, min_trials: int = 8,
                 per_task: int | None = None) -> list[int]:
    """Trials for each task (same order as `tasks`).

    Parameters
    ----------
    tasks : list of Task
    trials : int
        Total trials for the model.
    min_trials : int
        A task gets 0 trials (keeps its default schedule) rather than fewer than this.
    per_task : int, optional
        Give every task exactly this many instead (``trials`` is then ignored).

    Returns
    -------
    list of int
    """
    if per_task is not None:
        if per_task < 0:
            raise ValueError(f"per_task must be >= 0, got {per_task}")
        return [int(per_task)] * len(tasks)
    if trials < 0:
        raise ValueError(f"trials must be >= 0, got {trials}")
    if min_trials < 1:
        raise ValueError(f"min_trials must be >= 1, got {min_trials}")
    active = sorted(range(len(tasks)), key=lambda i: -tasks[i].cost)
    while active:
        total_cost = sum(tasks[i].cost for i in active)
        share = {i: trials * tasks[i].cost / total_cost for i in active}
        if share[active[-1]] >= min_trials or len(active) == 1:
            break
        active.pop()  # the lightest task keeps its default schedule
    budgets = [0] * len(tasks)
    if not active or trials < min_trials:
        if active and trials > 0:
            budgets[active[0]] = trials
        return budgets
    floors = {i: math.floor(share[i]) for i in active}
    left = trials - sum(floors.values())
    for i in sorted(active, key=lambda i: floors[i] - share[i])[:left]:
        floors[i] += 1
    for i, n in floors.items():
        budgets[i] = n
    return budgets
