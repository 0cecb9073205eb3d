"""Well-posed recovery (issue #18): the dependent-channel net and calibration errors.

The net: conv 1->8 -> relu -> maxpool -> conv 8->8 -> relu -> maxpool -> flatten -> dense.
Filters (and biases) 4..7 of each conv are exact positive multiples of filters 0..3, so
after ReLU and max-pooling the pruned channels are multiples of kept ones and an exact
recovery exists. The consumer after the flatten has 392 inputs, more than the 64
calibration samples: the case where a least-squares refit toward zero generalised badly.
"""

import numpy as np
import pytest
import torch
from helpers import prepared
from torch import nn

import mdl_tvm
from relay_passes import CompressConfig, MaskPruning, RecoveryConfig
from relay_passes.calibration import as_samples, require_samples, split_samples

SCALES = torch.tensor([2.0, 0.5, 1.5, 3.0])


class DependentNet(nn.Module):
    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.a = nn.Conv2d(1, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.d = nn.Linear(8 * 7 * 7, 10)
        with torch.no_grad():
            for conv, std in ((self.a, 1 / 3), (self.b, 1 / 8.5)):
                w = torch.randn(conv.weight.shape, generator=g) * std
                b = torch.randn(8, generator=g) * 0.1
                w[4:] = w[:4] * SCALES[:, None, None, None]
                b[4:] = b[:4] * SCALES
                conv.weight.copy_(w)
                conv.bias.copy_(b)
            self.d.weight.copy_(torch.randn(self.d.weight.shape, generator=g) / 20)
            self.d.bias.zero_()

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.a(x)), 2)
        x = torch.max_pool2d(torch.relu(self.b(x)), 2)
        return self.d(x.flatten(1))


SHAPE = (1, 1, 28, 28)


@pytest.fixture(scope="module")
def dependent():
    """The net, 64 calibration inputs and 8 fresh inputs with the net's outputs."""
    rng = np.random.default_rng(0)
    model = DependentNet().eval()
    calibration = rng.standard_normal((64, 1, 28, 28)).astype(np.float32)
    fresh = rng.standard_normal((8, *SHAPE)).astype(np.float32)
    with torch.no_grad():
        ref = [model(torch.from_numpy(x)).numpy() for x in fresh]
    return model, calibration, fresh, ref


def fresh_error(compiled, fresh, ref) -> float:
    """Largest relative output error (max-abs / max-abs) over the fresh inputs."""
    return max(float(np.abs(compiled.run(x)[0] - r).max() / np.abs(r).max())
               for x, r in zip(fresh, ref, strict=True))


@pytest.mark.parametrize("spec", ["mask:0.5", "kmeans:0.5"])
def test_dependent_channels_are_recovered_exactly_from_64_inputs(dependent, spec):
    model, calibration, fresh, ref = dependent
    compiled = mdl_tvm.compile(model, "host", input_shapes=[SHAPE], compress=spec,
                               calibration=calibration)
    assert compiled.stats.macs < 0.5 * mdl_tvm.compile(
        model, "host", input_shapes=[SHAPE]).stats.macs  # half the channels are gone
    assert fresh_error(compiled, fresh, ref) < 1e-3


def test_a_compressed_model_compiles_for_another_target_without_compressing_again(dependent):
    """`CompiledModel.for_target`: the compressed Relax module, built for another profile,
    with the compression record; built for the host again it computes the same outputs."""
    import tvm

    model, calibration, fresh, ref = dependent
    host = mdl_tvm.compile(model, "host", input_shapes=[SHAPE], compress="mask:0.5",
                           calibration=calibration)
    phone = host.for_target("arm64-fp16", precision="fp16")
    assert phone.profile.name == "arm64-fp16" and phone.precision["mode"] == "fp16"
    assert phone.compression == host.compression != [] and phone.stats.macs == host.stats.macs
    tvm.ir.assert_structural_equal(phone.graph_module, host.graph_module)
    again = host.for_target("host")
    for x in fresh:
        np.testing.assert_array_equal(again.run(x)[0], host.run(x)[0])


@pytest.mark.parametrize("spec", ["mask:0.0", "mask:0.01"])
def test_removing_nothing_leaves_the_output_unchanged(dependent, spec):
    """With data recovery on, a ratio that keeps all 8 channels (0.01 rounds to 8 of 8)
    skips every group: the build computes exactly what the uncompressed one does."""
    model, calibration, fresh, ref = dependent
    plain = mdl_tvm.compile(model, "host", input_shapes=[SHAPE])
    same = mdl_tvm.compile(model, "host", input_shapes=[SHAPE], compress=spec,
                           calibration=calibration)
    assert same.stats.macs == plain.stats.macs
    for x in fresh:
        np.testing.assert_array_equal(same.run(x)[0], plain.run(x)[0])


def test_calibration_errors_name_the_fix():
    shape = (1, 1, 4, 4)
    good = np.zeros((10, 1, 4, 4), np.float32) + np.arange(16, dtype=np.float32).reshape(4, 4)
    assert len(as_samples(good, shape)) == 10
    with pytest.raises(ValueError, match=r"sample 0 has shape \(1, 1, 5, 5\).*\(N, 1, 4, 4\)"):
        as_samples(np.zeros((3, 1, 5, 5), np.float32), shape)
    nan = good.copy()
    nan[7, 0, 2, 3] = np.nan
    with pytest.raises(ValueError, match=r"sample 7 .*index \(0, 0, 2, 3\).*non-finite"):
        as_samples(nan, shape)
    inf = good.copy()
    inf[2, 0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="sample 2 .*inf"):
        as_samples(inf, shape)
    with pytest.raises(TypeError, match="float32"):
        as_samples(np.zeros((3, 1, 4, 4), np.uint8), shape)
    with pytest.raises(ValueError, match="calibration=ARRAY of shape"):
        as_samples(None, shape)
    with pytest.raises(ValueError, match="at least 8 calibration samples, got 5; pass at least"):
        require_samples(5, 8, "recovery")
    with pytest.warns(UserWarning, match="3 calibration sample.*constant"):
        as_samples(np.zeros((3, 1, 4, 4), np.float32), shape)
    fit, held = split_samples(64, 0.25, 4, seed=0)
    assert len(held) == 16 and sorted(np.r_[fit, held].tolist()) == list(range(64))


def test_too_few_calibration_samples_through_the_pass(dependent):
    model, calibration, _, _ = dependent
    with pytest.raises(ValueError, match="at least 8 calibration samples, got 5"):
        mdl_tvm.compile(model, "host", input_shapes=[SHAPE], compress="mask:0.5",
                        calibration=calibration[:5])
    with pytest.raises(ValueError, match="non-finite"):
        bad = calibration[:16].copy()
        bad[3, 0, 1, 1] = np.nan
        mdl_tvm.compile(model, "host", input_shapes=[SHAPE], compress="mask:0.5",
                        calibration=bad)


def test_recovery_options_are_checked():
    with pytest.raises(ValueError, match="unknown recovery 'magic'; choose one of"):
        RecoveryConfig(recovery="magic")
    with pytest.raises(ValueError, match="kappa must be >= 1"):
        RecoveryConfig(kappa=0.5)
    with pytest.raises(TypeError, match="RecoveryConfig"):
        MaskPruning(options={"recovery": "ls"})


class ResidualNet(nn.Module):
    """stem -> one residual block -> pool -> dense, seeded random weights."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(),
                                   nn.Conv2d(12, 8, 3, padding=1))
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(x + self.block(x))
        return self.head(x.mean((2, 3)))


def test_refit_sweep_refits_every_consumer_and_lowers_the_held_out_error():
    """Each consumer is fitted once in the walk, before the groups after it are pruned (here
    the dense, fitted before the block's inner channels go); a sweep refits all of them on
    the finished network (issue #18)."""
    rng = np.random.default_rng(1)
    mod = prepared(ResidualNet(), (1, 1, 12, 12))
    calibration = rng.standard_normal((64, 1, 12, 12)).astype(np.float32)
    errors, refits = [], []
    for sweeps in (0, 1):
        pruner = MaskPruning(CompressConfig(ratio=0.5), RecoveryConfig(refit_sweeps=sweeps),
                             calibration=calibration)
        pruner(mod)
        errors.append(pruner.model_error["recovered"])
        refits.append(pruner.refits)
    assert refits[0] == {} and len(refits[1]) == 3  # the block's two convs and the dense
    assert set(refits[1].values()) - {"kept"}  # at least one consumer took a refit
    assert errors[1] < errors[0]
    with pytest.raises(ValueError, match="refit_sweeps must be an int >= 0"):
        RecoveryConfig(refit_sweeps=-1)
