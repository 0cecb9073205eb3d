"""The compile pipeline: one readable list of named stages.

    import → prepare (fold BN, decompose, fold constants) → graph passes → precision
           → lower (legalize, fuse, schedule) → build

Each stage is a function ``stage(state) -> state`` over a small mutable `BuildState`.
Later features plug in by adding a stage to `STAGES` (compression, fp16, tuning database,
zero-copy outputs) rather than by editing `compile`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .precision import precision_stage
from .targets import TargetProfile


@dataclass
class BuildState:
    """What flows through the stages."""

    mod: object  # tvm.IRModule
    profile: TargetProfile
    options: dict = field(default_factory=dict)
    executable: object = None  # tvm.relax.VMExecutable after `build`
    high_level_mod: object = None  # the graph after graph passes, before lowering
    timings: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[BuildState], BuildState]


def _prepare(state: BuildState) -> BuildState:
    """Make the graph inference-only with weights as folded constants."""
    import tvm
    from tvm import relax

    passes = [
        relax.transform.FoldBatchnormToConv2D(),
        relax.transform.DecomposeOpsForInference(),
        relax.transform.FoldConstant(),
        relax.transform.CanonicalizeBindings(),
        relax.transform.DeadCodeElimination(["main"]),
    ]
    state.mod = tvm.transform.Sequential(passes)(state.mod)
    return state


def _graph_passes(state: BuildState) -> BuildState:
    """User graph passes (compression) given as ``options["graph_passes"]``."""
    for graph_pass in state.options.get("graph_passes", ()):
        state.mod = graph_pass(state.mod)
    state.high_level_mod = state.mod
    return state


def _lower(state: BuildState) -> BuildState:
    """Legalize to TIR, fuse, and apply schedules (no tuning).

    `schedules.lowering_pipeline` is the "zero" pipeline (LegalizeOps, AnnotateTIROpPattern,
    FoldConstant, FuseOps, FuseTIR, a current tuning database) with conv2d / matmul lowered
    to weight-packed kernels and every PrimFunc given a default schedule for the profile.
    ``options["default_schedules"] = False`` restores TVM's plain "zero" pipeline.
    ``options["tuning_db"]`` (a directory or MetaSchedule database) is put in scope, so
    tuned functions take their best record (for a directory: the tasks its whole-model check
    kept, `schedules.database.selected`); ``options["tuned_functions"]`` names them.
    """
    from tvm import relax

    import schedules
    from schedules import database

    with state.profile.tvm_target(), database.applied(state.options.get("tuning_db"),
                                                      state.profile):
        if state.options.get("default_schedules", True):
            state.mod = schedules.lowering_pipeline(state.profile)(state.mod)
        else:
            state.mod = relax.get_pipeline("zero")(state.mod)
    state.options["tuned_functions"] = database.tuned_functions(state.mod)
    return state


def _build(state: BuildState) -> BuildState:
    """Build the VM executable. Unless ``options["zero_copy"]`` is False, the library also
    gets ``main_zc`` (destination-passing outputs, planned workspace) for
    `deploy.zero_copy`; ``options["zero_copy_report"]`` says whether and why not."""
    from tvm import relax

    from .zero_copy_pass import zero_copy_build_pipeline

    report: dict = {}
    pipe = (zero_copy_build_pipeline(report) if state.options.get("zero_copy", True)
            else "default")
    state.executable = relax.build(state.mod, state.profile.tvm_target(), relax_pipeline=pipe)
    state.options["zero_copy_report"] = report
    return state


STAGES: list[Stage] = [
    Stage("prepare", _prepare),
    Stage("graph_passes", _graph_passes),
    Stage("precision", precision_stage),  # fp32 / fp16 / fp16-storage (mdl_tvm/precision.py)
    Stage("lower", _lower),
    Stage("build", _build),
]


def run_pipeline(state: BuildState, stages: list[Stage] | None = None) -> BuildState:
    """Run `stages` (default `STAGES`) in order, recording each one's wall time."""
    for stage in stages or STAGES:
        start = time.perf_counter()
        state = stage.run(state)
        state.timings[stage.name] = time.perf_counter() - start
    return state
