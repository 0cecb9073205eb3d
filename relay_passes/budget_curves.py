"""What removing channels costs, group by group: the curves a MACs budget is planned on.

What it computes
----------------
`macs_budget.plan_kept` removes, across all groups, the next channel whose cost per MAC
saved is lowest. `removal_curves` measures that cost where the removal happens: the
relative error each removal leaves at the group's consumers after compensation from the
kept channels (the Optimal Brain Surgeon cost of `channel_masks.redundancy_path`), on the
original network and the calibration samples.

Errors at different layers are not worth the same at the output: the same relative error
at the consumers of the last stage's residual stream reaches the logits nearly whole,
while one inside an early block is partly damped by the layers after it. `output_scaled`
makes the curves comparable by a one-shot sensitivity analysis (per-layer sensitivity as
in Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017, here measured at the
point each group is planned to reach): plan once; prune each group *alone* to its planned
count (the path's channels) and recover it as the walk would, from a subset of the fit
samples; measure the model's held-out output error; scale the group's curve by that error
divided by the curve's cost at the same point. The budget is then planned again on the
scaled curves. About one walk step per group (ResNet-20, 12 groups: ~3 minutes).

Preconditions: those of `layerwise.LayerwiseDriver` with calibration samples.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from mdl_tvm.core.relax_utils import bound_constants
from relay_passes.activations import consumer_spec
from relay_passes.channel_graph import analyze
from relay_passes.channel_masks import redundancy_path
from relay_passes.channel_stats import collect, consumer_gram
from relay_passes.layerwise import LayerwiseDriver, site_key
from relay_passes.macs_budget import macs_model, plan_kept

SENSITIVITY_SAMPLES = 256  # fit samples a group's lone pruning is recovered from


@dataclass
class Curves:
    """Per group: the removal increments and the channels in removal order (original
    network, all calibration samples)."""

    increments: dict  # group -> (C - 1,) cost of the 1st, 2nd, ... removal
    removed: dict  # group -> channel indices in removal order


def removal_curves(driver: LayerwiseDriver, order: list[str]) -> Curves:
    """Each group's compensated removal cost, channel by channel, on the original network."""
    mod, func = driver.original, driver.func
    graph, consts = analyze(mod, func), bound_constants(mod, func)
    sites, keys = {}, {}  # keys: group -> the site key of each consumer ref
    for name in order:
        places = driver.places(mod, graph.groups[name])
        keys[name] = [site_key(places, ref) for ref in graph.groups[name].consumers]
        sites.update({key: key[1] for key in keys[name]})
    probe = driver.probe(mod, sorted({key[0] for key in sites}))  # both sides of the regression
    stats = collect(probe, probe, driver.samples, driver.split, sites, {}, {}, 1,
                    driver.config.seed)
    curves = Curves({}, {})
    for name in order:
        terms = []
        for ref, key in zip(graph.groups[name].consumers, keys[name], strict=True):
            aa = stats.sites[key].blocks()[2]
            q = consumer_gram(consts[(ref.binding, 1)], consumer_spec(mod, ref.binding, func),
                              ref)
            terms.append((aa, aa, aa, q))
        curves.removed[name], curves.increments[name] = redundancy_path(terms)
    return curves


def alone(driver: LayerwiseDriver, curves: Curves, name: str, kept: int):
    """The original network with group `name` alone pruned to `kept` channels along its
    removal path and recovered as the walk recovers a group (compensation, least squares,
    held-out decisions), from at most `SENSITIVITY_SAMPLES` of the driver's fit samples."""
    fit = [driver.samples[i] for i in driver.split[0][:SENSITIVITY_SAMPLES]]
    fit = fit if len(fit) >= driver.options.min_samples else driver.samples
    options = replace(driver.options, refit_sweeps=0, check_model=False,
                      output_sensitivity=False)
    sub = LayerwiseDriver(driver.original, driver.config, options, fit, driver.func,
                          driver.runner)
    keep = np.ones(len(curves.removed[name]) + 1, bool)
    keep[curves.removed[name][:len(keep) - kept]] = False
    return sub.run([name], lambda evidence: (keep, None, "sensitivity"))[0]


def output_scaled(driver: LayerwiseDriver, curves: Curves, target: float) -> dict:
    """``{group: increments}`` scaled by output sensitivity (see the module docstring) for
    a plan to `target` MACs; a group the first plan leaves whole, or whose channels come
    in blocks (a grouped conv's), takes the median scale. ``driver.sensitivity`` keeps
    ``{group: (kept, held-out output error, curve cost)}``."""
    model = macs_model(driver.original, driver.func)
    kept = plan_kept(curves.increments, model, target)
    scale = {}
    for name, k in kept.items():
        cost = float(np.sum(curves.increments[name][:model.channels[name] - k]))
        if k < model.channels[name] and cost > 0 and model.blocks[name] == 1:
            error = driver.held_out_error(alone(driver, curves, name, k))
            driver.sensitivity[name] = (k, error, cost)
            scale[name] = error / cost
    middle = float(np.median(list(scale.values()))) if scale else 1.0
    return {name: inc * scale.get(name, middle) for name, inc in curves.increments.items()}


def planning_curves(driver: LayerwiseDriver, order: list[str], speedup: float) -> dict:
    """``{group: increments}`` a MACs budget of ``total / speedup`` is planned on: the
    removal curves, scaled by output sensitivity when ``options.output_sensitivity``."""
    curves = removal_curves(driver, order)
    if not driver.options.output_sensitivity:
        return curves.increments
    model = macs_model(driver.original, driver.func)
    return output_scaled(driver, curves, model.total / speedup)
