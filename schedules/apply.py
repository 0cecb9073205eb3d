"""Apply the rule set to every unscheduled PrimFunc of a module, and the lowering pipeline.

`apply_default_schedules(mod, profile)` tries the rules in order (packed conv2d,
depthwise, packed dense, reductions, fallback) on each PrimFunc that is not marked
``tirx.is_scheduled`` (or the older ``tir.is_scheduled``); the first rule that returns a
schedule wins, and the function is marked ``tirx.is_scheduled`` plus ``mdl.schedule_rule``
(the rule's name). A rule that raises is skipped, so a function no rule can handle stays
as TVM legalized it: correct, just slow.

`lowering_pipeline(profile)` is the "zero" pipeline with the packed legalization and the
schedules in it: LegalizeOps (with `schedules.legalize.legalize_map`) → AnnotateTIROpPattern
→ FoldConstant (packs constant weights at compile time) → FuseOps → FuseTIR → a tuning
database's records when one is current → `apply_default_schedules`.
"""

from __future__ import annotations

import logging

import tvm
from tvm import tirx

from schedules.config import MachineConfig
from schedules.conv2d import Conv2DPacked
from schedules.dense import DensePacked
from schedules.depthwise import DepthwiseConv2D
from schedules.depthwise_rows import DepthwiseRows
from schedules.gemm import GemmConv
from schedules.generic import Fallback, Reduction
from schedules.legalize import legalize_map
from schedules.pool_rule import MaxPool
from schedules.wino_input_rule import WinogradInput
from schedules.winograd import WinogradConv

log = logging.getLogger(__name__)

SCHEDULED_ATTR = "tirx.is_scheduled"
RULE_ATTR = "mdl.schedule_rule"
_SCHEDULED_KEYS = (SCHEDULED_ATTR, "tir.is_scheduled")

DEFAULT_RULES = (WinogradInput(), WinogradConv(), GemmConv(), DepthwiseRows(), MaxPool(),
                 Conv2DPacked(), DepthwiseConv2D(), DensePacked(), Reduction(), Fallback())


def is_scheduled(func) -> bool:
    """True when `func` carries a truthy ``tirx.is_scheduled`` / ``tir.is_scheduled``."""
    attrs = func.attrs
    if attrs is None:
        return False
    return any(key in attrs and bool(attrs[key]) for key in _SCHEDULED_KEYS)


def _config(profile) -> MachineConfig:
    return profile if isinstance(profile, MachineConfig) else MachineConfig.from_profile(profile)


def schedule_primfunc(func: tirx.PrimFunc, profile, rules=DEFAULT_RULES):
    """Schedule one PrimFunc with the first rule that applies.

    Parameters
    ----------
    func : tirx.PrimFunc
    profile : TargetProfile or MachineConfig
    rules : sequence of schedules.common.Rule

    Returns
    -------
    (tirx.PrimFunc, str or None)
        The scheduled, marked function and the rule's name; `func` itself and None when
        no rule applied.
    """
    cfg = _config(profile)
    for rule in rules:
        try:
            sch = rule.apply(func, cfg)
        except Exception as err:  # noqa: BLE001 - the next rule (or no schedule) is safe
            log.debug("schedule rule %s failed: %s", rule.name, err, exc_info=True)
            continue
        if sch is None:
            continue
        scheduled = sch.mod["main"].with_attr(SCHEDULED_ATTR, True)
        return scheduled.with_attr(RULE_ATTR, rule.name), rule.name
    return func, None


def apply_default_schedules(mod: tvm.IRModule, profile, rules=DEFAULT_RULES) -> tvm.IRModule:
    """Schedule every unscheduled PrimFunc of `mod` for `profile`.

    Parameters
    ----------
    mod : tvm.IRModule
        A legalized, fused module (after FuseTIR).
    profile : TargetProfile or MachineConfig
        Vector width, register count and cores come from here.
    rules : sequence of schedules.common.Rule, optional
        Rules in priority order (default `DEFAULT_RULES`).

    Returns
    -------
    tvm.IRModule
        A new module; scheduled functions carry ``tirx.is_scheduled`` and
        ``mdl.schedule_rule``.
    """
    updates = {}
    for gvar, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc) or is_scheduled(func):
            continue
        scheduled, rule = schedule_primfunc(func, profile, rules)
        if rule is not None:
            updates[gvar] = scheduled
    if not updates:
        return mod
    mod = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    for gvar, func in updates.items():
        mod[gvar] = func
    return mod


def ApplyDefaultSchedules(profile, rules=DEFAULT_RULES):  # noqa: N802 - TVM pass naming
    """`apply_default_schedules` as a TVM module pass."""

    @tvm.transform.module_pass(opt_level=0, name="MDLApplyDefaultSchedules")
    def _pass(mod, _ctx):
        return apply_default_schedules(mod, profile, rules)

    return _pass


def _apply_tuning_database(mod: tvm.IRModule) -> tvm.IRModule:
    """Apply the current MetaSchedule database (if any) and mark what it replaced."""
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    if ms.Database.current() is None:
        return mod
    tuned = relax.transform.MetaScheduleApplyDatabase()(mod)
    for gvar, func in tuned.functions_items():
        if isinstance(func, tirx.PrimFunc) and not func.same_as(mod[gvar]):
            tuned[gvar] = func.with_attr(SCHEDULED_ATTR, True).with_attr(RULE_ATTR, "database")
    return tuned


def lowering_pipeline(profile, rules=DEFAULT_RULES) -> tvm.transform.Pass:
    """The "zero" pipeline with packed legalization and default schedules.

    Run it inside ``with profile.tvm_target():``, like ``relax.get_pipeline("zero")``.

    Parameters
    ----------
    profile : TargetProfile or MachineConfig
    rules : sequence of schedules.common.Rule, optional

    Returns
    -------
    tvm.transform.Pass
    """
    from tvm import relax

    cfg = _config(profile)

    @tvm.transform.module_pass(opt_level=0, name="MDLLowering")
    def _pipeline(mod, _ctx):
        mod = tvm.transform.Sequential([
            relax.transform.LegalizeOps(legalize_map(cfg)),
            relax.transform.AnnotateTIROpPattern(),
            relax.transform.FoldConstant(),
            relax.transform.FuseOps(),
            relax.transform.FuseTIR(),
        ])(mod)
        mod = _apply_tuning_database(mod)
        return apply_default_schedules(mod, cfg, rules)

    return _pipeline
