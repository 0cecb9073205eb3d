"""Least-squares recovery: refit a consumer layer so the pruned network matches the original.

What it rewrites
----------------
After a channel group is pruned (or merged), each layer that reads it — a conv2d or a
matmul — gets new weights ``W'`` solving the ridge problem

    min_W'  || X_pruned W'^T - X_orig W^T M^T ||^2  +  lam ||W'||^2

where ``X_orig`` are the consumer's input rows in the *original* network, ``X_pruned`` the
rows at the same samples and pixels in the network pruned so far (so errors made upstream
are compensated, not piled up), ``W`` the original weight, and ``M`` maps the consumer's
original output channels to its current ones (identity rows after a selection, averages
after k-means merging). ``lam = alpha * trace(X^T X) / D`` scales the ridge to the data.
The solution is closed form (normal equations, numpy); outputs are matched before the
bias, which is left as it is.

The idea is the reconstruction step of channel pruning by He et al. (ICCV 2017) and of
ThiNet (Luo et al., ICCV 2017), taken layer by layer in the graph's order.

Preconditions: those of `activations`; calibration inputs that resemble real inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from relay_passes.activations import ConsumerSpec, sample_rows, weight_matrix


@dataclass
class NormalEquations:
    """Running ``X^T X`` and ``X^T Y`` of a least-squares problem."""

    gram: np.ndarray | None = None
    cross: np.ndarray | None = None
    rows: int = 0

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        if self.gram is None:
            self.gram, self.cross = x.T @ x, x.T @ y
        else:
            self.gram += x.T @ x
            self.cross += x.T @ y
        self.rows += len(x)


def ridge_solve(gram: np.ndarray, cross: np.ndarray, alpha: float) -> np.ndarray:
    """Solve ``(G + lam I) B = C`` with ``lam = alpha * trace(G) / D``; returns ``B``."""
    d = gram.shape[0]
    lam = alpha * float(np.trace(gram)) / max(d, 1)
    system = gram + (lam + 1e-12) * np.eye(d)
    try:
        return np.linalg.solve(system, cross)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(system, cross, rcond=None)[0]


def refit_weight(equations: NormalEquations, alpha: float) -> np.ndarray:
    """The ``(outputs, inputs)`` weight matrix that best maps rows to targets."""
    return ridge_solve(equations.gram, equations.cross, alpha).T


@dataclass
class OriginalTargets:
    """Each consumer's output in the original network, at the sampled pixels.

    ``targets[binding][sample]`` is ``(rows, outputs)``; ``out_maps[binding]`` is the
    matrix ``M`` from original to current output channels (None: unchanged).
    """

    targets: dict[int, list[np.ndarray]] = field(default_factory=dict)
    out_maps: dict[int, np.ndarray] = field(default_factory=dict)

    def record(self, spec: ConsumerSpec, weight: np.ndarray, x: np.ndarray, sample: int,
               positions: int, seed: int) -> None:
        rows = sample_rows(spec, x, sample, positions, seed)
        y = rows @ weight_matrix(spec, weight.astype(np.float64)).T
        self.targets.setdefault(spec.binding, []).append(y.astype(np.float32))

    def target(self, binding: int, sample: int) -> np.ndarray:
        y = self.targets[binding][sample].astype(np.float64)
        m = self.out_maps.get(binding)
        return y if m is None else y @ m.T

    def map_outputs(self, binding: int, matrix: np.ndarray) -> None:
        """Record that `binding`'s output channels became ``matrix @ outputs``."""
        old = self.out_maps.get(binding)
        self.out_maps[binding] = matrix if old is None else matrix @ old
