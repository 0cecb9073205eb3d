"""Consumer least squares toward a prior weight, from Gram matrices (pure numpy).

What it computes
----------------
For one consumer with current input rows ``X`` (a ones column added when it has a bias)
and the original network's outputs ``Y`` at the same places, the ridge problem

    min_V  ||X V − Y||²  +  λ ||V − V0||²,        λ = alpha * tr(XᵀX) / D

is solved in *residual form*, ``V = V0 + (XᵀX + λI)⁻¹ Xᵀ(Y − X V0)``: the ridge pulls toward
the prior ``V0`` (the compensated weight), never toward zero, so the part of ``V0`` that the
calibration rows do not see is kept, and when ``Y = X V0`` already the solution is ``V0``
exactly. It is only used where the rows outnumber the unknowns by a safe factor
(`well_posed`); `output_error` measures any candidate on held-out rows from their Gram.

The reconstruction step of channel pruning (He et al., ICCV 2017) and ThiNet (Luo et al.,
ICCV 2017), regularised toward the compensated weights instead of toward zero.
"""

from __future__ import annotations

import numpy as np


def ridge_toward(gram: np.ndarray, cross: np.ndarray, prior: np.ndarray, alpha: float,
                 penalty: np.ndarray | None = None) -> np.ndarray:
    """``argmin_B ||X B − Y||² + λ ||P (B − prior)||²`` from ``gram = XᵀX``, ``cross = XᵀY``.

    ``λ = alpha`` times the mean diagonal of ``XᵀX`` over the shrunk unknowns; `penalty`
    (0/1 per unknown, default all 1) chooses them. Returns ``prior`` plus the
    residual-form correction."""
    d = gram.shape[0]
    penalty = np.ones(d) if penalty is None else np.asarray(penalty, np.float64)
    diag = np.diag(gram)
    scale = float(diag[penalty > 0].mean() if (penalty > 0).any() else diag.mean())
    scale = max(scale, 1e-300)
    system = gram + np.diag(alpha * scale * penalty + 1e-12 * scale * (1 - penalty))
    rhs = cross - gram @ prior
    try:
        delta = np.linalg.solve(system, rhs)
    except np.linalg.LinAlgError:
        delta = np.linalg.lstsq(system, rhs, rcond=None)[0]
    return prior + delta


def output_error(xx: np.ndarray, xy: np.ndarray, yy: np.ndarray, v: np.ndarray) -> float:
    """``||X V − Y||² / ||Y||²`` from the Gram blocks ``XᵀX``, ``XᵀY``, ``YᵀY``."""
    total = float(np.trace(yy))
    err = float(np.sum(v * (xx @ v)) - 2 * np.sum(v * xy)) + total
    return max(err, 0.0) / max(total, 1e-300)


def well_posed(rows: int, unknowns: int, kappa: float) -> bool:
    """Least squares only where ``rows >= kappa * unknowns``."""
    return rows >= kappa * unknowns
