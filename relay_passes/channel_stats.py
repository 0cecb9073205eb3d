"""What recovery knows about a channel group: Gram matrices accumulated sample by sample.

For one group, the current network (pruned so far) and the original network are probed
on the same calibration samples, and two kinds of statistics are summed, separately over
the fit samples and the held-out samples:

* per *site* (the tensor a consumer reads, walked back through ops that act the same on
  every channel: spatial ``mean``, flatten, average pooling, dropout, ``astype``), the
  Gram of ``[Z, A, 1]`` over every pixel, where ``Z`` are the current network's C channels
  and ``A`` the original network's: the channel-level regression (compensation) and the
  redundancy criterion need nothing else;
* per consumer, the Gram of ``[X, 1, Y]`` over every output position, where ``X`` are the
  consumer's current input rows (im2col for a conv, all of them) and ``Y`` the original
  network's output of that layer (bias included, rows of the current output channels;
  for a layer followed by a ReLU or ReLU6, its `relaxed` target; for a layer added to a
  residual, plus what the residual lost, `residual`): consumer least squares and the
  held-out error of every candidate weight.

No N x H x W matrix is ever stored. Sites and bindings are positions in the dataflow
block, which a channel rewrite keeps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mdl_tvm.core.relax_utils import main_bindings, op_name
from relay_passes.activations import (
    ConsumerSpec,
    all_rows,
    consumer_columns,
    input_width,
    sample_rows,
    weight_matrix,
)

WALK_BACK = {"relax.mean", "relax.reshape", "relax.nn.avg_pool2d",
             "relax.nn.adaptive_avg_pool2d", "relax.nn.dropout", "relax.astype"}
SPLITS = ("fit", "held_out")


def data_input(bindings, position: dict, binding: int) -> int | None:
    """Binding number of the first argument of `binding` (None: a function parameter)."""
    return position.get(hash(bindings[binding].value.args[0]))


def site_of(mod, binding: int, func_name: str = "main") -> int:
    """Where consumer `binding` is regressed: its data input, walked back through ops that
    are linear and the same on every channel (see the module docstring)."""
    bindings, _ = main_bindings(mod, func_name)
    position = {hash(b.var): i for i, b in enumerate(bindings)}
    src = data_input(bindings, position, binding)
    while src is not None and op_name(bindings[src].value) in WALK_BACK:
        earlier = data_input(bindings, position, src)
        if earlier is None:
            break
        src = earlier
    if src is None:
        raise ValueError(f"consumer {bindings[binding].var.name} reads the graph input")
    return src


def pixels(x: np.ndarray, index=None) -> np.ndarray:
    """Channels `index` of `x` (channels on axis 1; None: all) as ``(pixels, channels)``
    float64 rows."""
    part = np.moveaxis(x if index is None else x[:, np.asarray(index)], 1, -1)
    return part.reshape(-1, part.shape[-1]).astype(np.float64)


@dataclass
class Gram:
    """A running ``J^T J`` and the number of rows of ``J``."""

    matrix: np.ndarray | None = None
    rows: int = 0

    def add(self, j: np.ndarray) -> None:
        update = j.T @ j
        self.matrix = update if self.matrix is None else self.matrix + update
        self.rows += len(j)

    def __add__(self, other: Gram) -> Gram:
        if self.matrix is None or other.matrix is None:
            return Gram(self.matrix if other.matrix is None else other.matrix,
                        self.rows + other.rows)
        return Gram(self.matrix + other.matrix, self.rows + other.rows)


@dataclass
class SiteStats:
    """Gram of ``[Z (C), A (C), 1]`` at one site, per split."""

    channels: int
    grams: dict = field(default_factory=lambda: {s: Gram() for s in SPLITS})

    def gram(self, split: str | None = None) -> Gram:
        """One split's Gram, or (None) both summed."""
        return self.grams[split] if split else self.grams["fit"] + self.grams["held_out"]

    def blocks(self, split: str | None = None):
        """``(ZᵀZ, ZᵀA, AᵀA, Zᵀ1, Aᵀ1, rows)`` of a split (None: all samples)."""
        g, c = self.gram(split), self.channels
        m = g.matrix
        return (m[:c, :c], m[:c, c : 2 * c], m[c : 2 * c, c : 2 * c], m[:c, 2 * c],
                m[c : 2 * c, 2 * c], g.rows)


@dataclass
class RowStats:
    """Gram of ``[X (inputs), 1, Y (outputs)]`` of one consumer, per split."""

    inputs: int
    outputs: int
    grams: dict = field(default_factory=lambda: {s: Gram() for s in SPLITS})

    def gram(self, split: str | None = None) -> Gram:
        return self.grams[split] if split else self.grams["fit"] + self.grams["held_out"]


@dataclass(frozen=True)
class RowPlan:
    """How to form one consumer's rows: its current spec, and the original layer that
    defines the target (weight as ``(outputs, inputs)``, bias, the current output rows)."""

    spec: ConsumerSpec
    source: int  # binding of its data input
    orig_spec: ConsumerSpec
    orig_weight: np.ndarray
    orig_bias: np.ndarray
    out_index: np.ndarray
    clamp: tuple | None = None  # (current weight (outputs, inputs), bias, low, high): see relaxed
    skip: int | None = None  # binding of the residual added to the output: see residual


@dataclass
class GroupStats:
    """Everything `collect` measured for one group."""

    sites: dict  # (site binding, channel positions) -> SiteStats
    rows: dict  # consumer binding -> RowStats
    sampled: dict  # consumer binding -> (M, D) sampled rows (activation / greedy criteria)
    split: tuple  # (fit indices, held-out indices)


def collect(current, original, samples, split, sites: dict, rows: dict[int, RowPlan],
            sampled: dict[int, tuple[ConsumerSpec, int]], positions: int, seed: int):
    """Run both probes on every sample and sum the statistics.

    Parameters
    ----------
    current, original : callable
        ``run(x) -> {binding: array}`` of the current and the original network.
    sites : dict
        ``{(site, channel positions): original positions}`` (where the original graph
        has the same channels).
    rows : dict
        ``{consumer binding: RowPlan}``.
    sampled : dict
        ``{consumer binding: (spec, source)}`` whose rows are sampled at `positions` pixels.
    """
    fit, held = split
    which = np.empty(len(samples), object)
    which[fit], which[held] = "fit", "held_out"
    site_stats = {key: SiteStats(len(key[1])) for key in sites}
    row_stats = {b: RowStats(input_width(p.spec), len(p.out_index)) for b, p in rows.items()}
    drawn: dict[int, list] = {b: [] for b in sampled}
    for s, x in enumerate(samples):
        cur, orig = current(x), original(x)
        for (site, index), orig_index in sites.items():
            z, a = pixels(cur[site], index), pixels(orig[site], orig_index)
            site_stats[(site, index)].grams[which[s]].add(
                np.hstack([z, a, np.ones((len(z), 1))]))
        for b, plan in rows.items():
            x_cur = all_rows(plan.spec, cur[plan.source]).astype(np.float64)
            x_orig = all_rows(plan.orig_spec, orig[plan.source]).astype(np.float64)
            y = x_orig @ plan.orig_weight[plan.out_index].T + plan.orig_bias[plan.out_index]
            if plan.clamp is not None:
                w_cur, b_cur, low, high = plan.clamp
                y = relaxed(y, x_cur @ w_cur.T + b_cur, low, high)  # current output rows
            if plan.skip is not None:
                y = y + residual(orig[plan.skip], cur[plan.skip], plan.out_index)
            row_stats[b].grams[which[s]].add(np.hstack([x_cur, np.ones((len(y), 1)), y]))
        if which[s] == "fit":
            for b, (spec, source) in sampled.items():
                drawn[b].append(sample_rows(spec, cur[source], s, positions, seed))
    return GroupStats(site_stats, row_stats,
                      {b: np.concatenate(r) for b, r in drawn.items() if r}, split)


def relaxed(y: np.ndarray, y_cur: np.ndarray, low: float, high: float) -> np.ndarray:
    """Targets of a layer whose output is clamped to ``[low, high]`` (ReLU, ReLU6).

    Where the original output is at or below `low`, any output at or below `low` gives the
    same activation, so the target there is the current output capped at `low` (the point
    of that set nearest to the current layer: one step of the alternating fit of the
    clamped output); the same above `high`. Elsewhere the original output."""
    return np.where(y <= low, np.minimum(y_cur, low),
                    np.where(y >= high, np.maximum(y_cur, high), y))


def residual(orig_skip: np.ndarray, cur_skip: np.ndarray, out_index: np.ndarray) -> np.ndarray:
    """What a layer whose output is added to a residual must add to its original output
    so that the *sum* matches the original network's: ``skip_orig − skip_cur`` as rows
    (pixels, kept output channels). The layer then absorbs the error the residual stream
    carries from upstream instead of passing it on (the multi-branch target of He et al.,
    "Channel Pruning for Accelerating Very Deep Neural Networks", ICCV 2017)."""
    return pixels(orig_skip)[:, out_index] - pixels(cur_skip)


def consumer_gram(weight: np.ndarray, spec: ConsumerSpec, ref) -> np.ndarray:
    """``Q = sum over taps (and spatial blocks) of W_tapᵀ W_tap`` on the consumer's input
    channels of `ref`: ``(length, length)``, weighting channel errors by what the consumer
    does with them."""
    w = weight_matrix(spec, weight.astype(np.float64))  # (outputs, inputs)
    blocks = w[:, consumer_columns(ref, spec)]
    return np.einsum("ocu,odu->cd", blocks, blocks)
