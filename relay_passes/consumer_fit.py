"""One consumer's new weights after its input channels shrink: the held-out decision.

Candidates, from simplest to most complex, for a consumer of a group that keeps channels K:

1. ``removal``        the kept columns of the current weight, nothing else;
2. ``compensation``   the removed channels regressed on the kept ones and folded in
                      (`compensation`);
3. ``+intercept``     the same with an intercept, folded into the consumer's bias;
4. ``ls(alpha)``      consumer least squares toward the best of 1-3, only where the rows
                      outnumber the unknowns by ``kappa`` (`ls_recovery`).

Each is fitted on the fit samples and measured on the held-out samples: the relative
error of the consumer's output against the original network's, from the row Gram of
`channel_stats` (or, for consumers too wide for one, the channel-level error). The
simplest candidate is kept unless a more complex one lowers the held-out error by more than
``improvement``; the winner is then refitted on all samples. So a consumer is never worse
than plain removal on held-out data. Pure numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from relay_passes.activations import (
    ConsumerSpec,
    consumer_columns,
    from_matrix,
    output_width,
    weight_matrix,
)
from relay_passes.channel_rewrite import Edit, apply_edits
from relay_passes.channel_stats import RowStats, consumer_gram
from relay_passes.compensation import channel_error, compensate, intercept_shift, selection
from relay_passes.config import RecoveryConfig
from relay_passes.ls_recovery import output_error, ridge_toward, well_posed

EXACT = 1e-12  # relative squared error below which a candidate counts as exact


@dataclass
class ConsumerInput:
    """What the decision needs about one consumer binding of the group."""

    spec: ConsumerSpec  # current (before the commit)
    weight: np.ndarray  # current weight
    bias: np.ndarray | None  # current bias, flat (None: the layer has none)
    refs: list  # its WeightRefs in this group
    sites: list  # SiteStats of each ref (None: no data)
    rows: RowStats | None
    out_rows: np.ndarray  # output rows kept (all, unless the layer is in the group too)
    out_edits: list  # row edits of the commit on this weight (producer in the group too)


@dataclass
class ConsumerResult:
    weight: np.ndarray
    bias: np.ndarray | None
    choice: str
    errors: dict
    mixes: list  # the (k, C) consume matrix of each ref (least squares: of its base)


def kept_columns(item: ConsumerInput, keep: np.ndarray) -> np.ndarray:
    """The current column of `weight_matrix` each column after the commit reads, in the
    new order (kept channel j takes the place of the ref's channel j)."""
    width = weight_matrix(item.spec, item.weight).shape[1]
    source, alive, k = np.arange(width), np.ones(width, bool), int(keep.sum())
    for ref in item.refs:
        cols = consumer_columns(ref, item.spec)
        source[cols[:k].ravel()] = cols[keep].ravel()
        alive[cols[k:].ravel()] = False
    return source[alive]


def _build(item: ConsumerInput, mixes: list, shift: np.ndarray | None):
    """Weight and bias after the commit with consume matrix ``mixes[i]`` on ref i."""
    edits = item.out_edits + [Edit(ref, m) for ref, m in zip(item.refs, mixes, strict=True)]
    weight = apply_edits(item.weight.astype(np.float64), edits)
    bias = None if item.bias is None else item.bias.astype(np.float64)
    if bias is not None and shift is not None:
        bias = bias + shift
    return weight, None if bias is None else bias[item.out_rows]


def _mixes(item, keep, prior, options, split, name) -> list:
    """The consume matrix of each ref under candidate `name` (fitted on `split`)."""
    if name == "removal":
        return [selection(keep)] * len(item.refs)
    return [compensate(site, keep, prior, options.mu, name == "+intercept", split,
                       ref.groups)[0]
            for ref, site in zip(item.refs, item.sites, strict=True)]


def _fitted(item, keep, prior, options, split, intercept):
    """Compensated weight and bias fitted on `split` (None: all samples)."""
    mixes, shift = [], np.zeros(output_width(item.spec, item.weight))
    for ref, site in zip(item.refs, item.sites, strict=True):
        g, d = compensate(site, keep, prior, options.mu, intercept, split, ref.groups)
        mixes.append(g)
        shift = shift + intercept_shift(item.weight, item.spec, ref, d)
    return _build(item, mixes, shift if intercept else None)


class _Rows:
    """Gram blocks of one consumer's rows restricted to the surviving columns."""

    def __init__(self, stats: RowStats, cols, out_rows, with_bias: bool):
        self.ix = np.r_[cols, [stats.inputs]] if with_bias else np.asarray(cols)
        self.iy = stats.inputs + 1 + np.asarray(out_rows)
        self.stats = stats

    def blocks(self, split):
        m = self.stats.gram(split).matrix
        return m[np.ix_(self.ix, self.ix)], m[np.ix_(self.ix, self.iy)], m[np.ix_(self.iy,
                                                                                     self.iy)]

    def rows(self, split):
        return self.stats.gram(split).rows


def _vector(spec, weight, bias):
    v = weight_matrix(spec, weight).T
    return v if bias is None else np.vstack([v, bias[None]])


def _unvector(spec, v, like, has_bias):
    w = v[:-1] if has_bias else v
    return from_matrix(spec, w.T, like), (v[-1] if has_bias else None)


def decide(item: ConsumerInput, keep: np.ndarray, prior: np.ndarray,
           options: RecoveryConfig) -> ConsumerResult:
    """The consumer's weight and bias after the commit (see the module docstring)."""
    k = int(keep.sum())
    has_bias = item.bias is not None
    candidates = {"removal": lambda split: _build(item, [selection(keep)] * len(item.refs),
                                                  None)}
    data = options.recovery != "none" and all(s is not None for s in item.sites)
    if data and all(well_posed(s.gram("fit").rows, k + 1, options.kappa) for s in item.sites):
        candidates["compensation"] = lambda split: _fitted(item, keep, prior, options, split,
                                                           False)
        if options.intercept and has_bias:
            candidates["+intercept"] = lambda split: _fitted(item, keep, prior, options,
                                                             split, True)
    fitted = {name: make("fit") for name, make in candidates.items()}
    like = next(iter(fitted.values()))[0].shape
    post = replace(item.spec, weight_shape=like)
    rows, bases = None, {}  # bases: least-squares candidate -> the candidate it starts from
    if data and item.rows is not None:
        rows = _Rows(item.rows, kept_columns(item, keep), item.out_rows, has_bias)
        ho = rows.blocks("held_out")
        errors = {n: output_error(*ho, _vector(post, w, b)) for n, (w, b) in fitted.items()}
        base = min(errors, key=errors.get)
        unknowns = len(rows.ix)
        # least squares would fill in the zeros of a grouped conv's block-diagonal weight
        if (options.recovery == "ls" and item.spec.groups == 1
                and well_posed(rows.rows("fit"), unknowns, options.kappa)):
            xx, xy, _ = rows.blocks("fit")
            v0 = _vector(post, *fitted[base])
            for alpha in sorted(options.alphas, reverse=True):
                name = f"ls({alpha:g})"
                fitted[name] = _unvector(post, ridge_toward(xx, xy, v0, alpha), like, has_bias)
                errors[name] = output_error(*ho, _vector(post, *fitted[name]))
                candidates[name] = _ls_refit(item, post, rows, candidates[base], alpha, like,
                                             has_bias)
                bases[name] = base
    elif data:
        errors = {n: _channel_error(item, keep, prior, options, n) for n in fitted}
    else:
        errors = {"removal": float("nan")}
    choice = "removal"
    for name in fitted:  # in order of complexity; an exact fit is not improved on
        if errors[name] < errors[choice] * (1 - options.improvement) - EXACT:
            choice = name
    weight, bias = candidates[choice](None) if choice != "removal" else fitted["removal"]
    mixes = _mixes(item, keep, prior, options, None, bases.get(choice, choice))
    return ConsumerResult(weight, bias, choice, errors, mixes)


def _ls_refit(item, post, rows, base_make, alpha, like, has_bias):
    def make(split):
        v0 = _vector(post, *base_make(split))
        xx, xy, _ = rows.blocks(split)
        return _unvector(post, ridge_toward(xx, xy, v0, alpha), like, has_bias)
    return make


def _channel_error(item, keep, prior, options, name) -> float:
    """Held-out channel-level error of a candidate (consumers without row statistics)."""
    total = 0.0
    for ref, site in zip(item.refs, item.sites, strict=True):
        q = consumer_gram(item.weight[item.out_rows] if item.spec.kind == "conv2d"
                          else item.weight[:, item.out_rows], item.spec, ref)
        if name == "removal":
            g, d = selection(keep), np.zeros(len(keep))
        else:
            g, d = compensate(site, keep, prior, options.mu, name == "+intercept", "fit",
                              ref.groups)
        total += channel_error(site, keep, g, d, q, "held_out")
    return total / len(item.refs)
