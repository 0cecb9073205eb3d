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
    """
    from tvm import relax

    import schedules

    with state.profile.tvm_target():
        if state.options.get("default_schedules", True):
            state.mod = schedules.lowering_pipeline(state.profile)(state.mod)
        else:
            state.mod = relax.get_pipeline("zero")(state.mod)
    return state


def _build(state: BuildState) -> BuildState:
    from tvm import relax

    state.executable = relax.build(state.mod, state.profile.tvm_target())
    return state


STAGES: list[Stage] = [
    Stage("prepare", _prepare),
    Stage("graph_passes", _graph_passes),
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
