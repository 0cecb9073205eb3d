"""A MACs budget shared out over channel groups: how many channels each group keeps.

What it computes
----------------
A user asks for "2x fewer MACs", not for a ratio per layer. Pruning every group by the
same fraction spends the budget badly: in a residual net, the channels of the residual
stream feed every block of a stage, while a block's inner channels feed one conv and are
often redundant. Given, per group, the cost of removing its channels one by one (a
removal *curve*), `plan_kept` removes, across all groups, the next channel whose cost per
MAC saved is lowest, until the model's MACs reach the target (global greedy allocation,
as in global pruning by a common threshold, with the saliency made budget-aware as in
NetAdapt, Yang et al., ECCV 2018).

The curves used with calibration data are the Optimal Brain Surgeon costs of
`channel_masks.redundancy_path` on the original network: the relative error each removal
leaves at the group's consumers *after* compensation from the kept channels, so a channel
that other channels can stand in for is cheap wherever it sits. Without data,
`uniform_kept` finds the one ratio that meets the target.

`MacsModel` counts the MACs of every conv / matmul from the kept channel counts alone (a
layer's MACs scale with its kept output and input channels; a depthwise conv's with its
group's), so planning needs no rewrite. `planned_config` turns a ``speedup`` of a
`CompressConfig` into per-group ratios; the rest is pure numpy.

Preconditions: those of `channel_graph`.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, replace

from mdl_tvm.core.graph_stats import binding_costs
from mdl_tvm.core.relax_utils import bound_constants
from relay_passes.channel_graph import analyze
from relay_passes.config import CompressConfig, kept_channels


@dataclass(frozen=True)
class _Layer:
    macs: int
    out_group: str | None  # the group whose channels are this layer's outputs
    in_width: int  # input columns (conv: channels, matmul: rows)
    in_parts: tuple  # ((group, columns), ...) of the input read from groups (a depthwise
    # conv has none: it scales with its output group alone)


class MacsModel:
    """MACs of a model as a function of ``{group name: kept channels}``.

    Parameters
    ----------
    graph : ChannelGraph
        `channel_graph.analyze` of the model.
    costs : dict
        ``{binding: (weights, macs)}`` of `mdl_tvm.core.graph_stats.binding_costs`.
    specs : dict
        ``{binding: input width}`` of every conv / matmul that consumes a group (conv: its
        weight's input channels, matmul: its weight's rows).
    """

    def __init__(self, graph, costs: dict, specs: dict):
        self.channels = {name: g.channels for name, g in graph.groups.items()}
        self.blocks = {name: g.blocks for name, g in graph.groups.items()}
        out, parts = {}, {}
        for name, group in graph.groups.items():
            for ref in group.producers:
                out[ref.binding] = name
            for binding in group.depthwise:  # reads and writes the group's channels
                out[binding] = name
            for ref in group.consumers:
                parts.setdefault(ref.binding, []).append((name, ref.length * ref.span))
        self.layers = [
            _Layer(macs, out.get(b), int(specs.get(b, 1)), tuple(parts.get(b, ())))
            for b, (_, macs) in sorted(costs.items()) if macs > 0]
        self.total = sum(layer.macs for layer in self.layers)

    def macs(self, kept: dict) -> float:
        """MACs with `kept` channels per group (absent groups keep all)."""
        total = 0.0
        for layer in self.layers:
            frac = 1.0 if layer.out_group is None else self._frac(kept, layer.out_group)
            if layer.in_parts:
                width = layer.in_width - sum(columns for _, columns in layer.in_parts)
                width += sum(columns * self._frac(kept, name)
                             for name, columns in layer.in_parts)
                frac *= width / max(layer.in_width, 1)
            total += layer.macs * frac
        return total

    def _frac(self, kept: dict, name: str) -> float:
        return kept.get(name, self.channels[name]) / self.channels[name]


def plan_kept(curves: dict, model: MacsModel, target: float) -> dict[str, int]:
    """Kept channels per group so that ``model.macs(kept) <= target``, cheapest first.

    Parameters
    ----------
    curves : dict
        ``{group name: increments}``: the cost of removing the group's 1st, 2nd, ...
        channel (length ``C - 1``: a group keeps at least one channel).
    model : MacsModel
    target : float
        MACs wanted.

    Raises
    ------
    ValueError
        When removing every allowed channel still leaves more than `target` MACs.
    """
    kept = {name: model.channels[name] for name in curves}
    floor = model.macs({name: model.blocks[name] for name in curves})
    if floor > target:
        raise ValueError(f"a MACs target of {target:,.0f} cannot be met: with one channel per "
                         f"prunable group the model still has {floor:,.0f} MACs "
                         f"(of {model.total:,}); ask for a smaller reduction")
    current = model.macs(kept)
    heap, version = [], dict.fromkeys(curves, 0)

    def push(name):  # a grouped conv's outputs go one channel per group at a time
        step, size = model.channels[name] - kept[name], model.blocks[name]
        version[name] += 1
        if kept[name] > size and step + size <= len(curves[name]):
            fewer = dict(kept, **{name: kept[name] - size})
            saved = max(current - model.macs(fewer), 1e-9)
            cost = float(sum(curves[name][step:step + size]))
            heapq.heappush(heap, (cost / saved, name, version[name]))

    for name in curves:
        push(name)
    while current > target and heap:
        _, name, seen = heapq.heappop(heap)
        if seen != version[name]:
            continue  # superseded: its saving was recomputed since
        kept[name] -= model.blocks[name]
        current = model.macs(kept)
        for other in curves:  # the savings of neighbours change when a layer shrinks
            push(other)
    return kept


def uniform_kept(names, model: MacsModel, target: float) -> dict[str, int]:
    """The one removal ratio, the same for every group in `names`, that meets `target`
    (the data-free plan); raises ValueError when none does."""
    names = list(names)

    def kept_at(ratio):
        return {n: kept_channels(model.channels[n], ratio, model.blocks[n]) for n in names}

    if model.macs(kept_at(0.999)) > target:
        raise ValueError(f"a MACs target of {target:,.0f} cannot be met by pruning every "
                         f"group alike (the model has {model.total:,} MACs); ask for a "
                         "smaller reduction")
    lo, hi = 0.0, 0.999
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if model.macs(kept_at(mid)) <= target else (mid, hi)
    return kept_at(hi)


def ratios(kept: dict, channels: dict) -> dict[str, float]:
    """``{group: ratio}`` that `config.kept_channels` turns back into `kept` exactly."""
    return {name: (channels[name] - k) / channels[name] for name, k in kept.items()}


def macs_model(mod, func_name: str = "main") -> MacsModel:
    """The `MacsModel` of a Relax module."""
    graph = analyze(mod, func_name)
    consts = bound_constants(mod, func_name)
    widths = {}
    for group in graph.groups.values():
        for ref in group.consumers:
            weight = consts[(ref.binding, 1)]
            widths[ref.binding] = (weight.shape[1] * ref.groups if weight.ndim == 4
                                   else weight.shape[0])
    return MacsModel(graph, binding_costs(mod, func_name), widths)


def planned_config(mod, config: CompressConfig, names, curves: dict | None = None,
                   func_name: str = "main") -> CompressConfig:
    """`config` with ``per_layer`` ratios that meet its ``speedup`` (unchanged without one).

    With `curves` (``{group: increments}`` for every group in `names`) the budget goes
    where removal costs least (`plan_kept`); without, every group gets the same ratio."""
    if config.speedup is None:
        return config
    model = macs_model(mod, func_name)
    target = model.total / config.speedup
    kept = (plan_kept(curves, model, target) if curves is not None
            else uniform_kept(names, model, target))
    return replace(config, per_layer=ratios(kept, model.channels))
