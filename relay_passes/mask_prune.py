"""Mask-based channel pruning with data-driven recovery, committed into the graph.

What it rewrites
----------------
For every prunable group of coupled channels (`channel_graph.analyze`), in graph order:

1. *update* — a keep-mask of ``k = round(C * (1 - ratio))`` channels (the ratio of a MACs
   budget, `macs_budget`, when the config has a ``speedup``) is chosen by a
   criterion of `channel_masks` (filter magnitude, calibration activations, ThiNet's greedy
   reconstruction, ``redundancy``: the error left after compensation, or ``refit``: the
   error left after the consumers' least-squares refit), or taken from
   given masks; ``"auto"`` is ``refit`` with calibration data and least squares,
   ``redundancy`` with data and another recovery, ``l1`` without data;
2. *commit* — the masked channels are removed: selection rows on the producers and
   per-channel parameters, and on every consumer the weights `consumer_fit` chose on
   held-out samples (plain removal, compensation from the kept channels, with an
   intercept, or least squares toward the compensated weights), so shapes really shrink
   (conv filters, depthwise groups, dense rows after a flatten);
3. a group whose mask keeps every channel is left exactly as it is.

The masks are kept (``.masks``, savable) so a run can be reproduced; masks from a masked
fine-tuning in PyTorch (`mdl_tvm.compiler.finetune`) are committed by passing them in.

The method follows channel pruning (He et al., ICCV 2017) and ThiNet (Luo et al., ICCV
2017) — select, then reconstruct, layer by layer — with the reconstruction made well
posed by compensation (Neuron Merging, Kim et al., NeurIPS 2020) and a held-out gate; the
mask life cycle is that of ``torch.ao.pruning`` (prepare -> update -> commit).

Preconditions: those of `channel_graph` (one dataflow block, NCHW, constant weights) and,
for recovery or data-driven criteria, calibration inputs of the model's input shape.
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np

from relay_passes.activations import weight_matrix
from relay_passes.budget_curves import planning_curves
from relay_passes.channel_graph import analyze
from relay_passes.channel_layout import weight_rows
from relay_passes.channel_masks import (
    ChannelMasks,
    greedy_keep,
    keep_top,
    magnitude_scores,
    redundancy_keep,
    sampled_contributions,
)
from relay_passes.config import (
    DATA_CRITERIA,
    DEFAULT_CONFIG,
    DEFAULT_RECOVERY,
    CompressConfig,
    RecoveryConfig,
    kept_channels,
)
from relay_passes.layerwise import Evidence, LayerwiseDriver, graph_order
from relay_passes.macs_budget import planned_config
from relay_passes.refit_select import refit_keep
from relay_passes.reports import GroupReport, finish_reports, recovery_note, report_frozen
from relay_passes.shuffle_as_take import shuffle_as_take


def choose_mask(evidence: Evidence, k: int, criterion: str,
                seed: int) -> tuple[np.ndarray, str]:
    """``(keep mask, criterion used)`` of one group under `criterion` (pure numpy on the
    evidence; a group without the rows ``refit`` needs falls back to ``redundancy``)."""
    if criterion == "refit":
        terms = evidence.refit_terms()
        if terms is not None:
            return refit_keep(terms, k, evidence.group.blocks), criterion
        criterion = "redundancy"
    return _keep_mask(evidence, k, criterion, seed), criterion


def _keep_mask(evidence: Evidence, k: int, criterion: str, seed: int) -> np.ndarray:
    group = evidence.group
    blocks = group.blocks
    if criterion in ("l1", "l2"):
        rows = [weight_rows(evidence.consts, ref) for ref in group.producers]
        return keep_top(magnitude_scores(rows, 1 if criterion == "l1" else 2), k, blocks)
    if criterion == "activation":
        scores = 0.0
        for binding, cols in evidence.columns.items():
            x = np.abs(evidence.rows[binding])
            per_channel = np.array([x[:, c].mean() for c in cols])
            scores = scores + per_channel / max(per_channel.mean(), 1e-12)
        return keep_top(np.asarray(scores), k, blocks)
    if criterion == "redundancy":
        terms, posed = evidence.redundancy_terms()
        return redundancy_keep(terms, k, compensated=posed, blocks=blocks)
    parts = []
    for binding, cols in evidence.columns.items():
        spec = evidence.specs[binding]
        w = weight_matrix(spec, evidence.consts[(binding, 1)].astype(np.float64))
        contrib = sampled_contributions(evidence.rows[binding], w, cols, seed)
        parts.append(contrib / max(np.linalg.norm(contrib.sum(axis=0)), 1e-12))
    return greedy_keep(np.concatenate(parts, axis=1), k, blocks)


def prune_channels(mod, config: CompressConfig = DEFAULT_CONFIG,
                   options: RecoveryConfig = DEFAULT_RECOVERY, calibration=None,
                   masks: ChannelMasks | None = None, func_name: str = "main", runner=None):
    """Prune every prunable group; returns ``(new_mod, reports, masks, driver)``."""
    mod = shuffle_as_take(mod, func_name)
    graph = analyze(mod, func_name)
    config.check_names(graph.groups)
    if masks is not None:
        masks.check(graph.groups)
    criterion = options.criterion_for(calibration is not None)
    order = [g.name for g in graph_order(graph)
             if not config.skips(g.name) and (masks is None or g.name in masks)]
    chosen_masks = ChannelMasks()
    data_criterion = masks is None and criterion in DATA_CRITERIA
    driver = LayerwiseDriver(mod, config, replace(options, criterion=criterion), calibration,
                             func_name, runner,
                             needs_data=options.recovery != "none" or data_criterion)
    if config.speedup is not None and masks is not None:
        warnings.warn(f"speedup={config.speedup:g} is ignored: the given masks decide what "
                      "each group keeps (drop masks= to plan a new pruning)", stacklevel=3)
    elif config.speedup is not None:
        curves = (planning_curves(driver, order, config.speedup)
                  if driver.samples is not None else None)
        config = driver.config = planned_config(mod, config, order, curves, func_name)

    def choose(evidence: Evidence):
        name = evidence.group.name
        if masks is not None:
            mask = masks[name]
        else:
            k = kept_channels(evidence.group.channels, config.ratio_for(name),
                              evidence.group.blocks)
            mask, used = choose_mask(evidence, k, criterion, config.seed)
        chosen_masks[name] = mask
        return mask, None, "given mask" if masks is not None else used

    new_mod, _ = driver.run(order, choose)
    reports = report_frozen(graph, config)
    reports += [GroupReport(name, graph.groups[name].channels, int(m.sum()),
                            recovery_note(driver.notes[name], driver.choices.get(name),
                                          options.recovery))
                for name, m in chosen_masks.items()]
    return new_mod, finish_reports(reports, graph, mod, new_mod), chosen_masks, driver


class MaskPruning:
    """The pass: ``MaskPruning(config, options, calibration=X)(mod) -> mod``.

    Parameters
    ----------
    config : CompressConfig
        Ratio per group, overrides, skipped groups, seed.
    options : RecoveryConfig
        Mask criterion and recovery (``"ls"`` needs `calibration`).
    calibration : numpy.ndarray or iterable of arrays, optional
        Inputs ``(N, ...)`` used by data-driven criteria and least-squares recovery.
    masks : ChannelMasks, optional
        Commit these masks instead of choosing new ones (e.g. loaded from disk).
    runner : callable, optional
        Builds probe graphs for this machine (`activations.Runner`); ``mdl_tvm.compile``
        passes its own host build.

    After a call, ``.reports`` holds the per-group report, ``.masks`` the masks used,
    ``.choices`` each consumer's recovery decision and held-out errors, and
    ``.model_error`` the whole model's held-out output error with and without recovery,
    ``.refits`` each consumer's choice in the last refit sweep (``refit_sweeps``),
    ``.sensitivity`` each group's ``(kept, held-out output error, curve cost)`` of a MACs
    plan (``output_sensitivity``),
    ``.consume`` each consumer's consume matrices (``{group: {binding: [(k, C)]}}``, the
    start of `mdl_tvm.compiler.finetune.masked_finetune`).
    """

    def __init__(self, config: CompressConfig = DEFAULT_CONFIG,
                 options: RecoveryConfig = DEFAULT_RECOVERY, calibration=None,
                 masks: ChannelMasks | None = None, runner=None):
        if not isinstance(config, CompressConfig):
            raise TypeError(f"config must be a CompressConfig, got {type(config).__name__}")
        if not isinstance(options, RecoveryConfig):
            raise TypeError(f"options must be a RecoveryConfig, got {type(options).__name__}")
        if masks is not None and not isinstance(masks, ChannelMasks):
            masks = ChannelMasks(masks)
        self.config, self.options, self.calibration = config, options, calibration
        self.runner = runner
        self.given_masks, self.masks, self.reports = masks, ChannelMasks(), []
        self.choices, self.priors, self.model_error = {}, {}, None
        self.consume, self.refits, self.sensitivity = {}, {}, {}

    def __call__(self, mod):
        new_mod, self.reports, self.masks, driver = prune_channels(
            mod, self.config, self.options, self.calibration, self.given_masks,
            runner=self.runner)
        self.choices, self.priors = driver.choices, driver.priors
        self.consume, self.refits = driver.consume, driver.refits
        self.sensitivity = driver.sensitivity
        self.model_error = driver.model_error
        return new_mod

    def as_tvm_pass(self):
        import tvm

        return tvm.transform.module_pass(lambda mod, _ctx: self(mod), opt_level=0,
                                         name="MaskPruning")
