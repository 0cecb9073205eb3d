"""Channel-level compensation: removed channels regressed on kept ones, folded into consumers.

What it computes
----------------
For one consumer of a channel group with kept channels K (k of C), on the tensor the
consumer reads (its *site*, `channel_stats`), the original network's C channel maps ``A``
are regressed on the current network's kept maps ``Z`` over every pixel of every
calibration sample, toward a prior ``G0``::

    A ≈ Gᵀ Z + d,     G = G0 + Δ,     (ZᵀZ + μI) Δ = Zᵀ(A − G0ᵀ Z)      (residual form)

``G`` is ``(k, C)``, ``d`` an optional intercept per channel, ``μ = mu * tr(ZᵀZ) / k``.
Rows are N x H x W pixels and unknowns k per channel, so the system is well posed even for
one sample. The prior is the selection ``S_K`` for mask pruning and Neuron Merging's scaled
membership for k-means; when nothing was removed and nothing upstream changed, ``A = G0ᵀZ``
and ``G = G0`` exactly. The consumer then reads ``W Gᵀ`` on the kept channels (the same
`channel_rewrite` edit as any channel edit, applied on every tap and every spatial block
after a flatten) and its bias gains ``sum over taps of W d``.

This is the data-driven form of Neuron Merging (Kim et al., NeurIPS 2020); for a 1x1 or
dense consumer it equals the Optimal Brain Surgeon update ``W_K += W_R H_RK H_KK⁻¹`` with
the coefficients tied across outputs, taps and spatial blocks (Frantar & Alistarh, Optimal
Brain Compression, NeurIPS 2022), which is what keeps the unknowns few.

Preconditions: `channel_stats.SiteStats` of the consumer's site; pure numpy.
"""

from __future__ import annotations

import numpy as np

from relay_passes.activations import ConsumerSpec, consumer_columns, weight_matrix
from relay_passes.channel_masks import block_ids
from relay_passes.channel_stats import SiteStats
from relay_passes.ls_recovery import ridge_toward


def augmented(stats: SiteStats, keep: np.ndarray, split: str | None = None):
    """``(ẐᵀẐ, ẐᵀA, AᵀA)`` with ``Ẑ = [Z_K, 1]`` on one split (None: all samples)."""
    zz, za, aa, z1, a1, n = stats.blocks(split)
    kept = np.flatnonzero(keep)
    gram = np.block([[zz[np.ix_(kept, kept)], z1[kept, None]], [z1[None, kept], n]])
    cross = np.vstack([za[kept], a1[None]])
    return gram, cross, aa


def compensate(stats: SiteStats, keep: np.ndarray, prior: np.ndarray, mu: float,
               intercept: bool, split: str | None = None,
               blocks: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``(G, d)``: ``(k, C)`` coefficients and ``(C,)`` intercept (zeros without one).

    With `blocks` (a grouped conv's input), each channel is regressed on the kept channels
    of its own block only: ``G`` is block diagonal."""
    if blocks > 1:
        ids = block_ids(len(keep), blocks)
        g, d = np.zeros(prior.shape), np.zeros(prior.shape[1])
        for b in range(blocks):
            rows, cols = ids[keep] == b, ids == b
            gb, db = compensate(stats, keep & cols, prior[rows], mu, intercept, split)
            g[np.ix_(rows, cols)], d[cols] = gb[:, cols], db[cols]
        return g, d
    gram, cross, _ = augmented(stats, keep, split)
    k = int(keep.sum())
    if not intercept:
        return ridge_toward(gram[:k, :k], cross[:k], prior, mu), np.zeros(prior.shape[1])
    penalty = np.r_[np.ones(k), 0.0]  # the intercept is not shrunk
    solution = ridge_toward(gram, cross, np.vstack([prior, np.zeros((1, prior.shape[1]))]),
                            mu, penalty=penalty)
    return solution[:k], solution[k]


def channel_error(stats: SiteStats, keep: np.ndarray, g: np.ndarray, d: np.ndarray,
                  weights: np.ndarray, split: str) -> float:
    """``tr(Q E) / tr(Q AᵀA)``: the relative error a consumer with channel weights
    ``Q = weights`` (`channel_stats.consumer_gram`) sees when it reads ``Gᵀ Z + d`` instead
    of ``A``; taps are treated as independent (the fallback when no row statistics exist)."""
    gram, cross, aa = augmented(stats, keep, split)
    full = np.vstack([g, d[None]])
    residual = aa - full.T @ cross - cross.T @ full + full.T @ gram @ full
    return float(np.trace(weights @ residual) / max(np.trace(weights @ aa), 1e-300))


def intercept_shift(weight: np.ndarray, spec: ConsumerSpec, ref, d: np.ndarray) -> np.ndarray:
    """``(outputs,)``: what the consumer's bias gains when its input channels of `ref`
    carry a constant `d` more (every tap, every block)."""
    w = weight_matrix(spec, weight.astype(np.float64))
    blocks = w[:, consumer_columns(ref, spec)]
    return blocks.sum(axis=2) @ d


def selection(keep: np.ndarray) -> np.ndarray:
    """``(k, C)`` rows of the identity for the kept channels (the mask prior ``S_K``)."""
    return np.eye(len(keep))[np.flatnonzero(keep)]
