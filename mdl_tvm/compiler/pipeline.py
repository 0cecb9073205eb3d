"""The compile pipeline: one readable list of named stages.

    import → prepare (fold BN, decompose, fold constants in numpy, fold the BN left over,
              average pools before 1x1 convs)
           → graph passes → precision → lower (legalize, fuse, schedule) → build

Each stage is a function ``stage(state) -> state`` over a `BuildState`: the frozen
`BuildOptions` a caller chose, the module as it is transformed, and what the stages report.
``run_pipeline(state, start="lower")`` / ``until="lower"`` run part of it (tuning builds
variants of the graph before lowering).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mdl_tvm.compiler.build_pipeline import relax_build_pipeline
from mdl_tvm.compiler.fold_constants import fold_constants
from mdl_tvm.compiler.fold_scale_shift import fold_scale_shift
from mdl_tvm.compiler.pool_before_pointwise import pool_before_pointwise
from mdl_tvm.compiler.precision import PrecisionConfig, precision_stage
from mdl_tvm.core.targets import TargetProfile
from schedules import database
from schedules.apply import lowering_pipeline
from schedules.coverage import slow_paths


@dataclass(frozen=True)
class BuildOptions:
    """What a caller chose for one build.

    Attributes
    ----------
    graph_passes : tuple of callables
        Relax module passes run after preparation (compression first).
    precision : PrecisionConfig
    tuning_db : str, os.PathLike or MetaSchedule database, optional
        Tuning records put in scope while lowering.
    default_schedules : bool
        False builds with TVM's plain "zero" pipeline (no `schedules` rules).
    zero_copy : bool
        Also emit ``main_zc`` (`mdl_tvm.compiler.zero_copy_pass`).
    """

    graph_passes: tuple = ()
    precision: PrecisionConfig = PrecisionConfig()
    tuning_db: object = None
    default_schedules: bool = True
    zero_copy: bool = True

    def __post_init__(self):
        if not isinstance(self.default_schedules, bool):
            raise TypeError(f"default_schedules must be True or False, not "
                            f"{self.default_schedules!r}")
        if not isinstance(self.zero_copy, bool):
            raise TypeError(f"zero_copy must be True or False, not {self.zero_copy!r}")


@dataclass
class BuildState:
    """What flows through the stages."""

    mod: object  # tvm.IRModule
    profile: TargetProfile
    options: BuildOptions = BuildOptions()
    graph_mod: object = None  # the graph after graph passes (compression), before precision
    high_level_mod: object = None  # the graph after graph passes and precision
    executable: object = None  # relax.VMExecutable after `build`
    tuned_functions: list = field(default_factory=list)  # took a tuning record
    slow_paths: list = field(default_factory=list)  # heavy kernels no kernel rule scheduled
    zero_copy_report: dict = field(default_factory=dict)  # main_zc emitted, or why not
    concats_in_place: int = 0  # concatenations whose inputs write into its output
    timings: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[BuildState], BuildState]


def _prepare(state: BuildState) -> BuildState:
    """Make the graph inference-only with weights as folded constants."""
    import tvm
    from tvm import relax

    inference = tvm.transform.Sequential([relax.transform.FoldBatchnormToConv2D(),
                                          relax.transform.DecomposeOpsForInference()])
    tidy = tvm.transform.Sequential([relax.transform.FoldConstant(),  # inlines, folds the rest
                                     relax.transform.CanonicalizeBindings(),
                                     relax.transform.DeadCodeElimination(["main"])])
    state.mod = tidy(fold_constants(inference(state.mod)))  # the weight arithmetic in numpy
    state.mod = fold_scale_shift(state.mod)  # a BN that FoldBatchnormToConv2D left
    state.mod = pool_before_pointwise(state.mod)  # DenseNet's transition: 1/4 of the MACs
    return state


def _graph_passes(state: BuildState) -> BuildState:
    """User graph passes (compression) of ``options.graph_passes``."""
    for graph_pass in state.options.graph_passes:
        state.mod = graph_pass(state.mod)
    state.graph_mod = state.high_level_mod = state.mod
    return state


def _lower(state: BuildState) -> BuildState:
    """Legalize to TIR, fuse, and apply schedules (no tuning).

    `schedules.lowering_pipeline` is the "zero" pipeline (LegalizeOps, AnnotateTIROpPattern,
    FoldConstant, FuseOps, FuseTIR, a current tuning database) with conv2d / matmul lowered
    to weight-packed kernels and every PrimFunc given a default schedule for the profile.
    ``options.default_schedules = False`` restores TVM's plain "zero" pipeline.
    ``options.tuning_db`` (a directory or MetaSchedule database) is put in scope, so tuned
    functions take their best record (for a directory: the tasks its whole-model check
    kept, `schedules.database.selected`); ``state.tuned_functions`` names them.
    """
    from tvm import relax

    with state.profile.tvm_target(), database.applied(state.options.tuning_db, state.profile):
        if state.options.default_schedules:
            state.mod = lowering_pipeline(state.profile)(state.mod)
        else:
            state.mod = relax.get_pipeline("zero")(state.mod)
    state.tuned_functions = database.tuned_functions(state.mod)
    if state.options.default_schedules:
        state.slow_paths = slow_paths(state.mod)
    return state


def _build(state: BuildState) -> BuildState:
    """Build the VM executable (`mdl_tvm.compiler.build_pipeline`: concatenations in
    place). Unless ``options.zero_copy`` is False, the library also gets ``main_zc``
    (destination-passing outputs, planned workspace) for `deploy.zero_copy`;
    ``state.zero_copy_report`` says whether and why not."""
    from tvm import relax

    report: dict = {}
    pipe = relax_build_pipeline(report, zero_copy=state.options.zero_copy)
    state.executable = relax.build(state.mod, state.profile.tvm_target(), relax_pipeline=pipe)
    state.zero_copy_report = report.get("zero_copy", {})
    state.concats_in_place = report.get("concats_in_place", 0)
    return state


STAGES: tuple[Stage, ...] = (
    Stage("prepare", _prepare),
    Stage("graph_passes", _graph_passes),
    Stage("precision", precision_stage),  # fp32 / fp16 / fp16-storage (compiler/precision.py)
    Stage("lower", _lower),
    Stage("build", _build),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


def _index(name: str | None, default: int) -> int:
    if name is None:
        return default
    if name not in STAGE_NAMES:
        raise ValueError(f"unknown stage {name!r}; stages: {', '.join(STAGE_NAMES)}")
    return STAGE_NAMES.index(name)


def run_pipeline(state: BuildState, *, start: str | None = None,
                 until: str | None = None) -> BuildState:
    """Run the stages from `start` (included) up to `until` (excluded), in order,
    recording each one's wall time in ``state.timings``.

    Parameters
    ----------
    state : BuildState
    start, until : str, optional
        Stage names (`STAGE_NAMES`); by default all stages run.
    """
    first, stop = _index(start, 0), _index(until, len(STAGES))
    for stage in STAGES[first:stop]:
        began = time.perf_counter()
        state = stage.run(state)
        state.timings[stage.name] = time.perf_counter() - began
    return state
