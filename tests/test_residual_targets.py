"""Residual targets (issue #18): a layer whose output is added to a residual is fitted to
the sum, so it absorbs the error the residual stream carries from upstream (He et al.,
ICCV 2017, multi-branch networks)."""

import numpy as np
import pytest
from helpers import prepared
from test_relaxed_targets import ChainNet, _convs

from mdl_tvm.core.relax_utils import main_bindings
from relay_passes import CompressConfig, MaskPruning, RecoveryConfig
from relay_passes.activations import residual_after
from relay_passes.channel_stats import residual


def test_residual_after_finds_the_other_operand_of_the_add_only():
    mod = prepared(ChainNet().eval(), (1, 1, 8, 8))
    a, b, c, e, d = _convs(mod)
    skip = residual_after(mod, e)
    bindings, _ = main_bindings(mod)
    assert skip is not None and skip < e  # z, the ReLU of conv c
    assert getattr(bindings[skip].value.op, "name", "") == "relax.nn.relu"
    assert [residual_after(mod, x) for x in (a, b, c, d)] == [None] * 4


def test_residual_rows_add_what_the_kept_channels_of_the_residual_lost():
    rng = np.random.default_rng(0)
    orig = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    cur = orig[:, [0, 2, 3]] + 0.5  # channel 1 removed, the rest off by 0.5
    rows = residual(orig, cur, np.array([0, 2, 3]))
    assert rows.shape == (18, 3)  # pixels (n, h, w) x kept channels
    np.testing.assert_allclose(rows, -0.5, atol=1e-6)


def test_pruner_with_residual_targets_lowers_the_model_error_after_a_sweep():
    """ChainNet's conv e is added to z, whose kept channels carry the error of the pruned
    convs before it: fitted to the sum, e cancels part of it. Without a sweep the dense
    after the add was fitted before e changed; one sweep refits it (3.8e-5 -> 3.7e-5)."""
    rng = np.random.default_rng(1)
    mod = prepared(ChainNet().eval(), (1, 1, 8, 8))
    calibration = rng.standard_normal((64, 1, 8, 8)).astype(np.float32)
    e = _convs(mod)[3]
    runs = {}
    for flag in (False, True):
        pruner = MaskPruning(CompressConfig(ratio=0.5),
                             RecoveryConfig(refit_sweeps=1, residual_targets=flag),
                             calibration=calibration)
        pruner(mod)
        choices = {k: v for group in pruner.choices.values() for k, v in group.items()}
        runs[flag] = (choices[e][1], pruner.model_error["recovered"])
    assert runs[True][0] != runs[False][0]  # e's candidates were scored on other targets
    assert runs[True][1] < runs[False][1]


def test_residual_targets_must_be_a_bool():
    with pytest.raises(TypeError, match="residual_targets must be True or False"):
        RecoveryConfig(residual_targets=1)
