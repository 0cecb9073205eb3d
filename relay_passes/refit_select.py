"""Channel selection by the error left after the consumers' least-squares refit (pure numpy).

What it computes
----------------
The ``redundancy`` criterion scores a removal by the error left after *channel-level*
compensation (each removed map regressed on the kept maps, pixel by pixel). Recovery then
refits every consumer by least squares on all its input columns (a 3x3 conv: the nine taps
of every kept channel, and its bias), which can do more: it also uses the neighbouring
pixels of the kept channels. This criterion scores removals by what that refit leaves.

For one consumer with input rows ``X`` (im2col, a ones column for the bias), targets
``Y`` (the original network's outputs, `channel_stats`) and ``H = XᵀX``, the refit
weights are ``W = H⁻¹XᵀY``. Forcing the columns ``J`` of channel j to zero and refitting
the rest raises the error by

    ΔE_j = tr(W_Jᵀ (H⁻¹_JJ)⁻¹ W_J)

and updates ``W ← W − H⁻¹_{:J} (H⁻¹_JJ)⁻¹ W_J``, ``H⁻¹ ← H⁻¹ − H⁻¹_{:J} (H⁻¹_JJ)⁻¹ H⁻¹_{J:}``
(the group Optimal Brain Surgeon step; Hassibi & Stork 1993, applied to structured
post-training pruning as in Frantar & Alistarh, "Optimal Brain Compression", NeurIPS 2022).
Each consumer's ΔE is divided by its ``||Y||²`` and the consumers of a group summed, so
channels are removed one at a time, cheapest first, with exact downdates in between.

Preconditions: every consumer of the group has row statistics (least squares is on and
its input is at most ``max_unknowns`` wide) with at least `MIN_ROWS_PER_UNKNOWN` fit rows
per unknown; the mask pruner falls back to ``redundancy`` for a group where one does not
(a dense layer after a flatten, fed by a few dozen calibration samples). The criterion only
ranks channels, so it asks for fewer rows than the refit itself (``kappa``): a dense layer
after global pooling with 256 calibration images (192 fit rows, 65 unknowns) keeps it.
"""

from __future__ import annotations

import numpy as np

from relay_passes.channel_masks import block_ids, open_blocks

RIDGE = 1e-6  # of the mean diagonal of H: numerical only (rows outnumber unknowns)
MIN_ROWS_PER_UNKNOWN = 2.0


class _Consumer:
    """One consumer's refit state: ``H⁻¹``, the refit weights and each channel's columns."""

    def __init__(self, gram: np.ndarray, cross: np.ndarray, norm: float, cols: np.ndarray):
        d = len(gram)
        scale = max(float(np.trace(gram)) / d, 1e-300)
        self.hinv = np.linalg.inv(gram + RIDGE * scale * np.eye(d))
        self.w = self.hinv @ cross  # (D, O)
        self.cols, self.norm = cols, max(norm, 1e-300)

    def costs(self, alive: np.ndarray) -> np.ndarray:
        """ΔE / ||Y||² of removing each channel in `alive` (indices) next."""
        j = self.cols[alive]  # (n, u)
        block = self.hinv[j[:, :, None], j[:, None, :]]  # (n, u, u)
        wj = self.w[j]  # (n, u, O)
        solved = np.linalg.solve(block, wj)
        return np.einsum("nuo,nuo->n", wj, solved) / self.norm

    def remove(self, channel: int) -> None:
        j = self.cols[channel]
        pivot = np.linalg.inv(self.hinv[np.ix_(j, j)])
        col = self.hinv[:, j] @ pivot  # (D, u)
        self.w -= col @ self.w[j]
        self.hinv -= col @ self.hinv[j]


def refit_path(terms, steps: int | None = None, blocks: int = 1) -> tuple[list[int], np.ndarray]:
    """``(removed, increments)``: channels in removal order and the relative refit error
    each removal adds (`steps` removals; None: all but one channel per block).

    `terms` holds one ``(H, XᵀY, ||Y||², columns)`` per consumer: the Gram of its input rows
    (bias column included), their cross product with the targets, the targets' squared
    norm, and the ``(C, u)`` input columns of each of the group's C channels."""
    count = len(terms[0][3])
    ids = block_ids(count, blocks)
    steps = count - blocks if steps is None else steps
    floor = (count - steps) // blocks
    state = [_Consumer(*term) for term in terms]
    keep, removed, increments = np.ones(count, bool), [], []
    for _ in range(steps):
        alive = np.flatnonzero(keep)
        cost = sum(c.costs(alive) for c in state)
        cost[~open_blocks(keep, ids, floor)[alive]] = np.inf
        pick = int(alive[int(np.argmin(cost))])
        for c in state:
            c.remove(pick)
        keep[pick] = False
        removed.append(pick)
        increments.append(float(cost.min()))
    return removed, np.asarray(increments)


def refit_keep(terms, k: int, blocks: int = 1) -> np.ndarray:
    """Keep-mask of `k` channels by `refit_path`."""
    count = len(terms[0][3])
    keep = np.ones(count, bool)
    keep[refit_path(terms, count - k, blocks)[0]] = False
    return keep
