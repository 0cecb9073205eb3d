"""Group-by-group channel compression with least-squares recovery: the shared driver.

The mask pruner and data-aware k-means both walk the coupled channel groups in graph
order. For each group the method's ``choose(evidence)`` returns a ``(k, C)`` matrix for the
producers (selection rows, or cluster averages) and one for the consumers (selection
rows, or 0/1 cluster membership); the driver commits them with `channel_rewrite`
(shapes shrink) and, with ``recovery="ls"``, refits every consumer of the group by ridge
least squares against the original network's outputs (`ls_recovery`). The graph is
re-analysed after each group so offsets always describe the current graph; groups keep
their names (``conv0``, ``dense1``, ...) because bindings keep their positions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mdl_tvm.core.relax_utils import bound_constants, main_bindings
from relay_passes.activations import (
    ConsumerSpec,
    Runner,
    as_samples,
    consumer_spec,
    from_matrix,
    model_input_shape,
    probe,
    sample_rows,
    weight_matrix,
)
from relay_passes.channel_graph import ChannelGroup, analyze
from relay_passes.channel_rewrite import Edit, rewrite
from relay_passes.config import CompressConfig, RecoveryConfig
from relay_passes.ls_recovery import NormalEquations, OriginalTargets, refit_weight


def graph_order(graph) -> list[ChannelGroup]:
    """The prunable groups, in the order their first producer appears in the graph."""
    groups = [g for g in graph.groups.values() if g.prunable]
    return sorted(groups, key=lambda g: min(r.binding for r in g.producers))


@dataclass
class Evidence:
    """What `choose` may look at for one group (current graph)."""

    group: ChannelGroup
    consts: dict  # (binding, arg) -> array
    rows: dict[int, np.ndarray]  # consumer binding -> (M, D) calibration rows (or empty)
    columns: dict[int, np.ndarray]  # consumer binding -> (C, unit) input columns per channel
    specs: dict[int, ConsumerSpec]


def channel_columns(ref, spec: ConsumerSpec) -> np.ndarray:
    """``(length, unit)`` input columns of each channel of consumer ref `ref`."""
    unit = int(np.prod(spec.weight_shape[2:])) if spec.kind == "conv2d" else ref.span
    starts = (ref.offset + np.arange(ref.length)) * unit
    return starts[:, None] + np.arange(unit)[None, :]


def consumer_inputs(mod, consumers: list[int], func_name: str = "main") -> dict:
    """``{consumer binding: binding number of its data input}`` (None: the graph input)."""
    from tvm import relax

    bindings, _ = main_bindings(mod, func_name)
    position = {hash(b.var): i for i, b in enumerate(bindings)}
    sources = {}
    for b in consumers:
        data = bindings[b].value.args[0]
        if not isinstance(data, relax.Var):
            raise ValueError(f"consumer {bindings[b].var.name} reads a non-variable input")
        sources[b] = position.get(hash(data))
    return sources


class LayerwiseDriver:
    """Walks the groups of `mod`; see the module docstring."""

    def __init__(self, mod, config: CompressConfig, options: RecoveryConfig, calibration,
                 func_name: str = "main", runner: Runner | None = None):
        self.mod, self.config, self.options, self.func = mod, config, options, func_name
        self.runner = runner
        self.samples = None
        if options.needs_data:
            samples = as_samples(calibration, model_input_shape(mod, func_name))
            self.samples = samples[: options.max_samples]
        self.targets = OriginalTargets()

    def _consumer_bindings(self, group) -> list[int]:
        return sorted({ref.binding for ref in group.consumers})

    def _specs(self, bindings) -> dict[int, ConsumerSpec]:
        return {b: consumer_spec(self.mod, b, self.func) for b in bindings}

    def _rows(self, mod, specs: dict[int, ConsumerSpec]) -> dict[int, np.ndarray]:
        """Calibration rows of each consumer in `mod` (stacked over samples)."""
        if not self.samples or not specs:
            return {}
        rows: dict[int, list] = {b: [] for b in specs}
        sources = consumer_inputs(mod, list(specs), self.func)
        probed = sorted({i for i in sources.values() if i is not None})
        values = (probe(mod, probed, self.samples, self.runner, self.func)
                  if probed else None)
        for s, x_in in enumerate(self.samples):
            found = dict(zip(probed, next(values), strict=True)) if probed else {}
            for b, src in sources.items():
                x = x_in if src is None else found[src]
                rows[b].append(sample_rows(specs[b], x, s, self.options.positions,
                                           self.config.seed))
        return {b: np.concatenate(r) for b, r in rows.items()}

    def _record_targets(self, groups) -> None:
        consts = bound_constants(self.mod, self.func)
        bindings = sorted({b for g in groups for b in self._consumer_bindings(g)})
        specs = self._specs(bindings)
        for b, rows in self._rows(self.mod, specs).items():
            w = weight_matrix(specs[b], consts[(b, 1)].astype(np.float64))
            self.targets.targets[b] = [(rows @ w.T).astype(np.float32)]

    def run(self, order: list[str], choose: Callable):
        """Compress groups `order` in turn; returns ``(mod, {name: (k, C) producer matrix})``."""
        graph = analyze(self.mod, self.func)
        if self.options.recovery == "ls":
            self._record_targets([graph.groups[n] for n in order])
        chosen = {}
        for name in order:
            graph = analyze(self.mod, self.func)
            group = graph.groups[name]
            specs = self._specs(self._consumer_bindings(group))
            rows = self._rows(self.mod, specs) if self.samples else {}
            columns = {ref.binding: channel_columns(ref, specs[ref.binding])
                       for ref in group.consumers}
            evidence = Evidence(group, bound_constants(self.mod, self.func), rows, columns,
                                specs)
            produce, consume, selection = choose(evidence)
            edits = [Edit(ref, produce) for ref in group.producers + group.params]
            edits += [Edit(ref, consume) for ref in group.consumers]
            self.mod = rewrite(self.mod, edits, set(group.depthwise),
                               set(graph.flatten_reshapes), self.func)
            for ref in group.producers:
                self.targets.map_outputs(ref.binding, produce)
            chosen[name] = produce
            if self.options.recovery == "ls":
                if not selection:  # merged channels carry new values: sample them again
                    rows = self._rows(self.mod, specs)
                else:
                    rows = {b: r[:, self._kept_columns(r.shape[1], group, b, specs[b],
                                                       produce)] for b, r in rows.items()}
                self._refit(rows, specs)
        return self.mod, chosen

    def _kept_columns(self, width, group, binding, spec, produce) -> np.ndarray:
        keep = np.ones(width, bool)
        dropped = ~produce.astype(bool).any(axis=0)
        for ref in group.consumers:
            if ref.binding == binding:
                keep[channel_columns(ref, spec)[dropped].ravel()] = False
        return np.flatnonzero(keep)

    def _refit(self, rows: dict[int, np.ndarray], specs) -> None:
        consts = bound_constants(self.mod, self.func)
        replace = {}
        for b, x in rows.items():
            equations = NormalEquations()
            equations.add(x, self.targets.target(b, 0))
            weight = consts[(b, 1)]
            matrix = refit_weight(equations, self.options.alpha)
            replace[(b, 1)] = from_matrix(specs[b], matrix, weight.shape).astype(weight.dtype)
        self.mod = rewrite(self.mod, [], func_name=self.func, replace=replace)
