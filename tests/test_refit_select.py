"""Channel selection by the error left after the consumers' least-squares refit (#18)."""

import numpy as np
from helpers import prepared
from test_relaxed_targets import ChainNet

from mdl_tvm.core.graph_stats import graph_stats
from relay_passes import CompressConfig, MaskPruning, RecoveryConfig
from relay_passes.refit_select import refit_keep, refit_path

C, U, OUT = 6, 3, 4  # channels, columns per channel (taps), outputs


def _consumer(rng, rows=400):
    """Rows ``[X, 1]`` of a consumer whose channel 1 is nearly a copy of channel 0, and
    noisy targets ``Y`` of a random layer."""
    x = rng.standard_normal((rows, C * U))
    x[:, U:2 * U] = 0.9 * x[:, :U] + 0.05 * rng.standard_normal((rows, U))
    x = np.hstack([x, np.ones((rows, 1))])
    y = x @ rng.standard_normal((C * U + 1, OUT)) + 0.3 * rng.standard_normal((rows, OUT))
    return x, y, np.arange(C * U).reshape(C, U)


def _refit_error(x, y, cols, kept) -> float:
    """Relative error of the least-squares refit on the kept channels' columns and bias."""
    idx = np.r_[cols[kept].ravel(), [x.shape[1] - 1]]
    w = np.linalg.lstsq(x[:, idx], y, rcond=None)[0]
    return float(((x[:, idx] @ w - y) ** 2).sum() / (y ** 2).sum())


def test_refit_path_increments_are_the_exact_refit_errors(rng):
    x, y, cols = _consumer(rng)
    removed, increments = refit_path([(x.T @ x, x.T @ y, float((y ** 2).sum()), cols)], 4)
    kept, before = list(range(C)), _refit_error(x, y, cols, np.arange(C))
    first = [_refit_error(x, y, cols, np.delete(np.arange(C), j)) - before for j in range(C)]
    assert removed[0] == int(np.argmin(first)) and removed[0] in (0, 1)  # a near copy
    for channel, step in zip(removed, increments, strict=True):
        kept.remove(channel)
        after = _refit_error(x, y, cols, np.array(kept))
        np.testing.assert_allclose(step, after - before, rtol=1e-4, atol=1e-6)  # the ridge
        before = after


def test_refit_keep_sums_consumers_and_keeps_blocks_even(rng):
    x, y, cols = _consumer(rng)
    term = (x.T @ x, x.T @ y, float((y ** 2).sum()), cols)
    keep = refit_keep([term, term], 4, blocks=2)
    assert keep.sum() == 4 and keep[:3].sum() == keep[3:].sum() == 2
    assert refit_keep([term], 6).all()


def test_mask_pruning_with_the_refit_criterion_meets_a_macs_target():
    rng = np.random.default_rng(0)
    mod = prepared(ChainNet().eval(), (1, 1, 8, 8))
    calibration = rng.standard_normal((48, 1, 8, 8)).astype(np.float32)
    chosen = {}
    for criterion in ("redundancy", "refit"):
        pruner = MaskPruning(CompressConfig(speedup=2.0), RecoveryConfig(criterion=criterion),
                             calibration=calibration)
        small = pruner(mod)
        assert graph_stats(small).macs <= graph_stats(mod).macs / 2
        assert pruner.model_error["recovered"] < pruner.model_error["data_free"]
        chosen[criterion] = pruner.masks
        notes = [r.note for r in pruner.reports if r.channels_after < r.channels_before]
        assert notes and all(n.startswith(criterion) for n in notes)
    # the same plan (channel counts), other channels
    assert {n: m.sum() for n, m in chosen["refit"].items()} == {
        n: m.sum() for n, m in chosen["redundancy"].items()}
    assert any((chosen["refit"][n] != m).any() for n, m in chosen["redundancy"].items())


def test_auto_criterion_is_refit_with_data_and_least_squares():
    assert RecoveryConfig().criterion_for(True) == "refit"
    assert RecoveryConfig(recovery="compensation").criterion_for(True) == "redundancy"
    assert RecoveryConfig().criterion_for(False) == "l1"


def test_refit_falls_back_to_redundancy_where_a_consumer_has_too_few_rows():
    """ChainNet with 8 calibration inputs: the dense after the flatten gets 6 fit rows for
    its many unknowns, so its group is chosen (and reported) by redundancy."""
    rng = np.random.default_rng(0)
    mod = prepared(ChainNet().eval(), (1, 1, 8, 8))
    calibration = rng.standard_normal((8, 1, 8, 8)).astype(np.float32)
    pruner = MaskPruning(CompressConfig(ratio=0.5), RecoveryConfig(min_holdout=2),
                         calibration=calibration)
    pruner(mod)
    notes = {r.name: r.note for r in pruner.reports if r.channels_after < r.channels_before}
    assert any(n.startswith("redundancy") for n in notes.values())
    assert any(n.startswith("refit") for n in notes.values())
