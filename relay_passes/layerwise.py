"""Group-by-group channel compression with data-driven recovery: the shared driver.

The mask pruner and k-means both walk the coupled channel groups in graph order. For each
group:

1. *measure* — the current network (pruned so far) and the original one are probed on the
   calibration samples; `channel_stats` sums, per fit / held-out split, the pixel Gram at
   every consumer's site and the row Gram of every consumer (`collect`);
2. *choose* — the method's ``choose(evidence)`` returns the keep mask (k of C channels, real
   channels for both methods) and the prior ``G0`` of each consumer's consume matrix
   (``None``: the selection ``S_K``);
3. *commit* — producers and per-channel parameters keep rows K; every consumer gets its own
   weights from `consumer_fit.decide` (removal, compensation, + intercept, least squares,
   whichever is best on held-out samples), so shapes shrink and each layer is never worse
   than plain removal on held-out data. With ``residual_targets`` (default), a consumer
   whose output is added to a residual is fitted to the sum (it absorbs what the residual
   stream lost upstream); with ``relaxed_targets``, a consumer followed by a ReLU or ReLU6
   is fitted to its clamped output: values the activation throws away are free.

A group that keeps every channel is skipped: removing nothing changes nothing. With
``refit_sweeps``, every consumer is then refitted once more per sweep, in graph order, on the
finished network's inputs (the walk fitted it before the groups after it were pruned), with
the same held-out decision and the current weights as the simplest candidate. At the end
(``check_model``) the whole recovered model is compared with the same selection without
data recovery on the held-out samples, and the latter is kept if recovery made the model's
output worse. The graph is re-analysed after each group; groups keep their names and
bindings their positions, so the original network's probe serves every group.

Preconditions: those of `channel_graph`; calibration inputs of the model's input shape.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mdl_tvm.core.relax_utils import bound_constants, main_bindings
from relay_passes.activations import (
    ConsumerSpec,
    Runner,
    bias_of,
    clamp_after,
    consumer_columns,
    consumer_spec,
    default_runner,
    input_width,
    model_input_shape,
    output_width,
    residual_after,
    weight_matrix,
)
from relay_passes.calibration import as_samples, require_samples, split_samples
from relay_passes.channel_classes import moved_attrs
from relay_passes.channel_graph import analyze
from relay_passes.channel_layout import ChannelGroup, channel_positions
from relay_passes.channel_rewrite import Edit, apply_edits, rewrite
from relay_passes.channel_stats import (
    GroupStats,
    RowPlan,
    collect,
    consumer_gram,
    data_input,
    site_of,
)
from relay_passes.compensation import selection
from relay_passes.config import CompressConfig, RecoveryConfig
from relay_passes.consumer_fit import ConsumerInput, decide
from relay_passes.ls_recovery import well_posed
from relay_passes.refit_select import MIN_ROWS_PER_UNKNOWN

__all__ = ["Evidence", "LayerwiseDriver", "graph_order", "site_key"]
OUTPUT = -1  # key of the model output in a probe's values


def site_key(places: dict, ref) -> tuple:
    """``(site binding, channel positions)``: where `collect` measures consumer ref `ref`
    (`places`: `LayerwiseDriver.places`)."""
    return places[ref.binding][0], tuple(channel_positions(ref).tolist())


def graph_order(graph) -> list[ChannelGroup]:
    """The prunable groups, in the order their first producer appears in the graph."""
    groups = [g for g in graph.groups.values() if g.prunable]
    return sorted(groups, key=lambda g: min(r.binding for r in g.producers))


@dataclass
class Evidence:
    """What `choose` may look at for one group (current graph, before its commit)."""

    group: ChannelGroup
    consts: dict  # (binding, arg) -> array
    specs: dict[int, ConsumerSpec]
    stats: GroupStats | None  # None without calibration data
    site_keys: list  # per consumer ref: its key in stats.sites
    kappa: float = 4.0

    @property
    def rows(self) -> dict:
        """``{consumer binding: (M, D) sampled rows}`` (activation / greedy criteria)."""
        return self.stats.sampled if self.stats else {}

    @property
    def columns(self) -> dict:
        return {ref.binding: consumer_columns(ref, self.specs[ref.binding])
                for ref in self.group.consumers}

    def redundancy_terms(self):
        """``([(H, X, AA, Q)] per consumer ref, well_posed)`` for `redundancy_keep`."""
        terms, posed = [], True
        for ref, key in zip(self.group.consumers, self.site_keys, strict=True):
            zz, za, aa, _, _, rows = self.stats.sites[key].blocks("fit")
            q = consumer_gram(self.consts[(ref.binding, 1)], self.specs[ref.binding], ref)
            terms.append((zz, za, aa, q))
            posed &= well_posed(rows, self.group.channels, self.kappa)
        return terms, posed

    def refit_terms(self):
        """``[(H, XᵀY, ||Y||², columns)]`` per consumer binding for `refit_select` (its
        row statistics on the fit samples), or None when a consumer has none or fewer
        than `MIN_ROWS_PER_UNKNOWN` rows per unknown (its refit costs would be noise)."""
        if self.stats is None:
            return None
        terms = []
        for b in sorted({ref.binding for ref in self.group.consumers}):
            stats = self.stats.rows.get(b)
            if stats is None:
                return None
            m, d = stats.gram("fit").matrix, stats.inputs + 1
            if not well_posed(stats.gram("fit").rows, d, MIN_ROWS_PER_UNKNOWN):
                return None
            cols = np.hstack([consumer_columns(ref, self.specs[b])
                              for ref in self.group.consumers if ref.binding == b])
            terms.append((m[:d, :d], m[:d, d:], float(np.trace(m[d:, d:])), cols))
        return terms


def _layer(mod, b: int, spec: ConsumerSpec, func_name: str):
    """``(weight as (outputs, inputs), flat bias)`` of consumer `b` in `mod`, in float64
    (a zero bias when the layer has none)."""
    consts, loc = bound_constants(mod, func_name), bias_of(mod, b, func_name)
    w = weight_matrix(spec, consts[(b, 1)].astype(np.float64))
    return w, consts[loc].reshape(-1).astype(np.float64) if loc else np.zeros(len(w))


class LayerwiseDriver:
    """Walks the groups of `mod`; see the module docstring."""

    def __init__(self, mod, config: CompressConfig, options: RecoveryConfig, calibration,
                 func_name: str = "main", runner: Runner | None = None,
                 needs_data: bool | None = None):
        self.mod, self.original, self.config, self.options = mod, mod, config, options
        self.func, self.runner = func_name, runner or default_runner
        self.samples, self.split = None, None
        if options.needs_data if needs_data is None else needs_data:
            samples = as_samples(calibration, model_input_shape(mod, func_name))
            self.samples = samples[: options.max_samples]
            require_samples(len(self.samples), options.min_samples,
                            "data-driven channel selection and recovery")
            self.split = split_samples(len(self.samples), options.holdout,
                                       options.min_holdout, config.seed)
        self.out_index: dict[int, np.ndarray] = {}
        self.notes: dict[str, str] = {}
        self.choices: dict[str, dict] = {}  # group -> {consumer binding: (choice, errors)}
        self.priors: dict[str, tuple] = {}  # group -> (keep, prior)
        self.consume: dict[str, dict] = {}  # group -> {consumer binding: [(k, C) per ref]}
        self.model_error: dict | None = None
        self.refits: dict[int, str] = {}  # consumer binding -> last sweep's choice or "kept"
        self._held_out_outputs: list | None = None
        self.sensitivity: dict[str, tuple] = {}  # group -> (kept, output error, curve cost)

    # -- probes ------------------------------------------------------------------------
    def probe(self, mod, bindings: list[int]):
        """``run(x) -> {binding: value, OUTPUT: model output}`` of `mod` built by the runner;
        the same sample twice in a row (`collect`'s two sides on one network) runs once."""
        run = self.runner(rewrite(mod, [], func_name=self.func, outputs=tuple(bindings)))
        last = {}

        def values(x):
            if last.get("x") is not x:
                outs = run(x)
                found = dict(zip(bindings, outs[len(outs) - len(bindings):], strict=True))
                found[OUTPUT] = outs[0]
                last.update(x=x, found=found)
            return last["found"]
        return values

    def places(self, mod, group) -> dict[int, tuple[int, int]]:
        """``{consumer binding: (site, data input)}``."""
        bindings, _ = main_bindings(mod, self.func)
        position = {hash(b.var): i for i, b in enumerate(bindings)}
        return {ref.binding: (site_of(mod, ref.binding, self.func),
                              data_input(bindings, position, ref.binding))
                for ref in group.consumers}

    def _row_plan(self, b: int, spec: ConsumerSpec, source: int) -> RowPlan | None:
        if self.options.recovery == "none" or input_width(spec) > self.options.max_unknowns:
            return None
        orig_spec = consumer_spec(self.original, b, self.func)
        w, bias = _layer(self.original, b, orig_spec, self.func)
        index = self.out_index.get(b, np.arange(len(w)))
        clamp = clamp_after(self.original, b, self.func) if self.options.relaxed_targets else None
        if clamp is not None:  # the current layer, whose output the relaxed targets need
            clamp = (*_layer(self.mod, b, spec, self.func), *clamp)
        return RowPlan(spec, source, orig_spec, w, bias, index, clamp, self._skip(b))

    def _skip(self, b: int) -> int | None:
        """The residual added to consumer `b`'s output, when its target includes it."""
        return (residual_after(self.original, b, self.func)
                if self.options.residual_targets else None)

    def _measure(self, group, specs, original, only: int | None = None):
        """``(GroupStats, site key per consumer ref)`` of `group` (`only`: of that consumer
        binding's refs alone)."""
        places = self.places(self.mod, group)
        orig_group = analyze(self.original, self.func).groups[group.name]
        sites, keys = {}, []
        for ref, orig_ref in zip(group.consumers, orig_group.consumers, strict=True):
            if only is not None and ref.binding != only:
                continue
            key = site_key(places, ref)
            sites[key] = site_key(places, orig_ref)[1]  # the same channels, originally
            keys.append(key)
        places = {b: p for b, p in places.items() if only is None or b == only}
        rows = {b: plan for b, (_, src) in places.items()
                if (plan := self._row_plan(b, specs[b], src)) is not None}
        criterion = self.options.criterion
        sampled = ({b: (specs[b], src) for b, (_, src) in places.items()}
                   if criterion in ("activation", "greedy") else {})
        wanted = sorted({i for pair in places.values() for i in pair}
                        | {p.skip for p in rows.values() if p.skip is not None})
        # nothing committed yet: the current network is the original, whose probe has these
        current = original if self.mod is self.original else self.probe(self.mod, wanted)
        stats = collect(current, original, self.samples, self.split, sites, rows, sampled,
                        self.options.positions, self.config.seed)
        return stats, keys

    # -- the walk ----------------------------------------------------------------------
    def run(self, order: list[str], choose: Callable):
        """Compress groups `order` in turn; returns ``(mod, {name: keep mask})``.

        ``choose(evidence) -> (keep, prior, note)``: a boolean keep mask, the ``(k, C)``
        prior of the consume matrices (None: ``S_K``) and a note for the report.
        """
        original = None
        if self.samples is not None:
            graph0 = analyze(self.original, self.func)
            wanted = set()
            for name in order:
                for b, pair in self.places(self.original, graph0.groups[name]).items():
                    wanted |= set(pair) | ({self._skip(b)} - {None})
            wanted = sorted(wanted)
            original = self.probe(self.original, wanted)
        chosen = {}
        for name in order:
            graph = analyze(self.mod, self.func)
            group = graph.groups[name]
            specs = {ref.binding: consumer_spec(self.mod, ref.binding, self.func)
                     for ref in group.consumers}
            stats, keys = (self._measure(group, specs, original) if original
                           else (None, []))
            evidence = Evidence(group, bound_constants(self.mod, self.func), specs, stats, keys,
                                self.options.kappa)
            keep, prior, note = choose(evidence)
            keep = np.asarray(keep, bool)
            chosen[name] = keep
            self.notes[name] = note
            if keep.all():
                continue  # removing nothing changes nothing
            prior = selection(keep) if prior is None else prior
            self.priors[name] = (keep, prior)
            self._commit(group, graph, keep, prior, stats, keys, specs)
        if self.samples is not None and self.priors:
            for _ in range(self.options.refit_sweeps):
                self._refit(order, original)
            if self.options.check_model:
                self._check_model(original)
        return self.mod, chosen

    def _refit(self, order: list[str], original) -> None:
        """One sweep: every consumer of the groups in `order`, in graph order, refitted on
        the current network (see the module docstring); its choice goes to ``refits``."""
        graph0 = analyze(self.original, self.func)
        for b, name in sorted({(ref.binding, group_name) for group_name in order
                               for ref in graph0.groups[group_name].consumers}):
            group = analyze(self.mod, self.func).groups[name]
            spec = consumer_spec(self.mod, b, self.func)
            stats, keys = self._measure(group, {b: spec}, original, only=b)
            consts = bound_constants(self.mod, self.func)
            weight, loc = consts[(b, 1)], bias_of(self.mod, b, self.func)
            keep = np.ones(group.channels, bool)
            item = ConsumerInput(
                spec, weight, consts[loc].reshape(-1) if loc else None,
                [r for r in group.consumers if r.binding == b],
                [stats.sites[key] for key in keys], stats.rows.get(b),
                np.arange(output_width(spec, weight)), [])
            result = decide(item, keep, selection(keep), self.options)
            if result.choice == "removal":  # nothing removed: the current weights
                self.refits[b] = "kept"
                continue
            self.refits[b] = result.choice
            replace = {(b, 1): result.weight.astype(weight.dtype)}
            if loc is not None:
                replace[loc] = result.bias.reshape(consts[loc].shape).astype(consts[loc].dtype)
            self.mod = rewrite(self.mod, [], func_name=self.func, replace=replace)

    def _commit(self, group, graph, keep, prior, stats, keys, specs) -> None:
        consts = bound_constants(self.mod, self.func)
        edits: dict[tuple, list] = {}
        for ref in group.producers + group.params:
            edits.setdefault((ref.binding, ref.arg), []).append(Edit(ref, selection(keep)))
        replace, choices = {}, {}
        for b in sorted({ref.binding for ref in group.consumers}):
            refs = [r for r in group.consumers if r.binding == b]
            sites = [stats.sites[keys[group.consumers.index(r)]] if stats else None
                     for r in refs]
            loc = bias_of(self.mod, b, self.func)
            out_edits = edits.pop((b, 1), [])
            edits.pop(loc, None)
            width = output_width(specs[b], consts[(b, 1)])
            item = ConsumerInput(
                specs[b], consts[(b, 1)], consts[loc].reshape(-1) if loc else None, refs,
                sites, stats.rows.get(b) if stats else None,
                np.flatnonzero(keep) if out_edits else np.arange(width), out_edits)
            result = decide(item, keep, prior, self.options)
            replace[(b, 1)] = result.weight
            if loc is not None:
                shape = list(consts[loc].shape)
                shape[shape.index(width) if width in shape else -1] = len(result.bias)
                replace[loc] = result.bias.reshape(shape)
            choices[b] = (result.choice, result.errors)
            self.consume.setdefault(group.name, {})[b] = result.mixes
        for key, key_edits in edits.items():
            replace[key] = apply_edits(consts[key], key_edits)
        self.mod = rewrite(self.mod, [], set(group.depthwise), set(graph.flatten_reshapes),
                           self.func, replace=replace,
                           moves=moved_attrs(graph.moves, {group.name: int(keep.sum())}))
        for ref in group.producers:  # kept channel j takes the place of channel j
            width = consts[(ref.binding, ref.arg)].shape[ref.axis]
            rows = self.out_index.get(ref.binding, np.arange(width))
            pos = channel_positions(ref)
            moved = rows.copy()
            moved[pos[:keep.sum()]] = rows[pos[keep]]
            self.out_index[ref.binding] = np.delete(moved, pos[keep.sum():])
        self.choices[group.name] = choices

    def held_out_error(self, mod, original=None) -> float:
        """Mean relative squared output error of `mod` against the original network on
        the held-out calibration samples (`original`: a probe of it already built)."""
        if self._held_out_outputs is None:  # the original's, built and run once
            base = original or self.probe(self.original, [])
            self._held_out_outputs = [base(self.samples[s])[OUTPUT] for s in self.split[1]]
        run, err = self.runner(mod), 0.0
        for s, want in zip(self.split[1], self._held_out_outputs, strict=True):
            err += float(np.sum((run(self.samples[s])[0] - want) ** 2)) / max(
                float(np.sum(want ** 2)), 1e-300)
        return err / len(self.split[1])

    def _check_model(self, original) -> None:
        """Keep the data-free result if recovery made the whole model worse (held out)."""
        graph = analyze(self.original, self.func)
        edits = []
        for name, (keep, prior) in self.priors.items():
            group = graph.groups[name]
            edits += [Edit(ref, selection(keep)) for ref in group.producers + group.params]
            edits += [Edit(ref, prior) for ref in group.consumers]
        plain = rewrite(self.original, edits, {b for n in self.priors
                                               for b in graph.groups[n].depthwise},
                        set(graph.flatten_reshapes), self.func,
                        moves=moved_attrs(graph.moves, {n: int(keep.sum()) for n, (keep, _)
                                                        in self.priors.items()}))
        err = np.array([self.held_out_error(m, original) for m in (self.mod, plain)])
        self.model_error = {"recovered": err[0], "data_free": err[1],
                            "held_out_samples": len(self.split[1])}
        if err[0] > err[1]:
            warnings.warn(f"recovery raised the held-out output error ({err[0]:.3g} vs "
                          f"{err[1]:.3g} without it); keeping the result without data "
                          "recovery", stacklevel=3)
            self.mod, self.model_error["kept"] = plain, "data_free"
        else:
            self.model_error["kept"] = "recovered"
