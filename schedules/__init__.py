"""Default CPU schedules: fast compiled models without tuning.

TVM 0.27's "zero" pipeline legalizes conv2d and matmul into naive loop nests and schedules
nothing. This package lowers them to weight-packed kernels and schedules every PrimFunc
with a small dlight-style rule set, sized by the target profile (vector lanes, registers,
cores):

==================  =========================================================================
rule                recognises / schedule
==================  =========================================================================
``conv2d``          packed NCHW conv (groups = 1) + fused epilogue: ow x oc register block,
                    vector over output channels (or output pixels for 1x1 / short
                    reductions), parallel over (n, oc chunk, oh)
``depthwise``       depthwise conv + epilogue: vector over output width, unrolled taps
``dense``           packed matmul + epilogue: m x n register block, vector over n
``reduction``       pooling, global pooling, sums, TVM-legalized convs: vector over the
                    output's inner axis where contiguous, parallel spatial loops
``fallback``        anything else: inline element-wise chains, fuse, vectorise, parallelise
==================  =========================================================================

Public API
----------
`lowering_pipeline(profile)`
    The pass `mdl_tvm.compiler.pipeline` runs in place of ``relax.get_pipeline("zero")``.
`apply_default_schedules(mod, profile)`
    Schedule every unscheduled PrimFunc of a fused module (marks ``tirx.is_scheduled``
    and ``mdl.schedule_rule``).
`legalize_map(cfg)`
    The ``customize_legalize_map`` that produces the packed kernels.

`schedules.database`
    Tuning databases on disk: opened safely, put in scope while lowering.

Tuning (MetaSchedule + XGBoost, seeded with these default schedules) is the subpackage
`schedules.tuning`, a layer above the compiler: ``schedules.tuning.tune(model, target,
trials=, db=, tracker=, key=)`` writes a database directory (``mdl-tvm tune``) that
``compile(..., tuning_db=DIR)`` applies. Nothing in the rules imports it.
"""

from mdl_tvm.core.lazy import lazy_exports

_EXPORTS = {
    **{name: "schedules.apply" for name in (
        "DEFAULT_RULES", "RULE_ATTR", "SCHEDULED_ATTR", "ApplyDefaultSchedules",
        "apply_default_schedules", "is_scheduled", "lowering_pipeline", "schedule_primfunc")},
    "MachineConfig": "schedules.config",
    "legalize_map": "schedules.legalize",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
