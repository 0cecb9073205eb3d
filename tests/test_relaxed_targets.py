"""Relaxed targets (issue #18): a layer followed by a ReLU or ReLU6 is fitted to its
clamped output. Where the original output is clamped, any value clamped the same way gives
the same activation, so the target there is the current output clamped (one step of the
alternating fit); elsewhere it is the original output."""

import numpy as np
import pytest
import torch
from helpers import prepared
from torch import nn

from mdl_tvm.core.relax_utils import main_bindings
from relay_passes import CompressConfig, MaskPruning, RecoveryConfig
from relay_passes.activations import clamp_after
from relay_passes.channel_stats import relaxed


class ChainNet(nn.Module):
    """conv a -> ReLU6 -> conv b -> ReLU -> conv c -> ReLU -> z; z + conv e(z) -> ReLU ->
    mean -> dense d."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.a = nn.Conv2d(1, 12, 3, padding=1)
        self.b = nn.Conv2d(12, 12, 3, padding=1)
        self.c = nn.Conv2d(12, 12, 3, padding=1)
        self.e = nn.Conv2d(12, 12, 3, padding=1)
        self.d = nn.Linear(12, 10)

    def forward(self, x):
        z = torch.relu(self.c(torch.relu(self.b(torch.clamp(self.a(x), 0, 6)))))
        return self.d(torch.relu(z + self.e(z)).mean((2, 3)))


def _convs(mod) -> list[int]:
    bindings, _ = main_bindings(mod)
    return [i for i, b in enumerate(bindings)
            if getattr(getattr(b.value, "op", None), "name", "") in ("relax.nn.conv2d",
                                                                    "relax.matmul")]


def test_relaxed_target_frees_only_the_clamped_values():
    y = np.array([[-2.0, 0.5, 7.0, 3.0, -1.0, 6.0]])
    y_cur = np.array([[-3.0, 0.1, 9.0, 3.5, 0.4, 5.0]])
    np.testing.assert_array_equal(relaxed(y, y_cur, 0.0, 6.0),
                                  [[-3.0, 0.5, 9.0, 3.0, 0.0, 6.0]])
    assert relaxed(y, y_cur, 0.0, np.inf)[0, 2] == 7.0  # ReLU: no upper clamp


def test_clamp_after_finds_relu_and_relu6_only_where_they_are_the_sole_user():
    mod = prepared(ChainNet().eval(), (1, 1, 8, 8))
    a, b, c, e, d = _convs(mod)
    assert clamp_after(mod, a) == (0.0, 6.0)  # ReLU6 (a clip)
    assert clamp_after(mod, b) == clamp_after(mod, c) == (0.0, np.inf)
    assert clamp_after(mod, e) is None  # a residual add comes first
    assert clamp_after(mod, d) is None  # the model output


def test_pruner_fits_relaxed_targets_where_the_network_before_has_changed():
    """The same pruning with and without relaxed targets. The walk meets conv b while the
    network before it is still the original (current output = original: nothing to relax,
    the same errors); conv c after group a is pruned, so its targets are relaxed and its
    candidates' held-out errors differ. The model output error is lower (6.1e-5 -> 5.6e-5)."""
    rng = np.random.default_rng(0)
    mod = prepared(ChainNet().eval(), (1, 1, 8, 8))
    calibration = rng.standard_normal((48, 1, 8, 8)).astype(np.float32)
    _, b, c, _, _ = _convs(mod)
    runs = {}
    for relax in (False, True):
        pruner = MaskPruning(CompressConfig(ratio=0.5), RecoveryConfig(relaxed_targets=relax),
                             calibration=calibration)
        pruner(mod)
        runs[relax] = ({k: v for group in pruner.choices.values() for k, v in group.items()},
                       pruner.model_error["recovered"])
    plain, relax = runs[False][0], runs[True][0]
    assert b in plain and c in plain
    assert relax[b][1] == plain[b][1]
    assert relax[c][1]["removal"] != plain[c][1]["removal"]
    assert runs[True][1] < runs[False][1]


def test_relaxed_targets_must_be_a_bool():
    with pytest.raises(TypeError, match="relaxed_targets must be True or False"):
        RecoveryConfig(relaxed_targets="yes")
