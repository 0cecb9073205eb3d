"""Mask pruning + least-squares recovery: numpy parts, committed shapes, recovery, masks on disk."""

import numpy as np
import pytest
import torch
from helpers import (
    ConvDense,
    Depthwise,
    Residual,
    conv_shapes,
    host_fn,
    host_outs,
    masked_reference,
    prepared,
    seeded,
)
from torch import nn

import mdl_tvm
from mdl_tvm.core.numerics import relative_error
from relay_passes import ChannelMasks, CompressConfig, MaskPruning, RecoveryConfig, analyze
from relay_passes.activations import ConsumerSpec, sample_rows, weight_matrix
from relay_passes.channel_masks import greedy_keep, keep_top
from relay_passes.ls_recovery import ridge_toward


def test_sample_rows_reproduce_the_convolution(rng):
    x = rng.standard_normal((1, 3, 9, 8)).astype(np.float32)
    w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    spec = ConsumerSpec(0, "conv2d", w.shape, strides=(2, 1), padding=(1, 0, 1, 2),
                        dilation=(1, 2))
    rows = sample_rows(spec, x, sample=0, positions=1000, seed=0)  # every output pixel
    ref = torch.nn.functional.conv2d(torch.from_numpy(np.pad(x, ((0, 0), (0, 0), (1, 1), (0, 2)))),
                                     torch.from_numpy(w), stride=(2, 1), dilation=(1, 2)).numpy()
    out = rows @ weight_matrix(spec, w).T
    assert out.shape == (ref.shape[2] * ref.shape[3], 5)
    np.testing.assert_allclose(out, ref[0].reshape(5, -1).T, rtol=1e-4, atol=1e-4)


def test_ridge_toward_a_prior_recovers_a_linear_map_and_keeps_an_exact_prior(rng):
    """Residual form: well-posed data give the map whatever the prior; when the prior
    already fits (Y = X prior), the answer is the prior, even with fewer rows than unknowns
    (the ridge pulls toward the prior, not toward zero)."""
    x = rng.standard_normal((400, 12))
    b = rng.standard_normal((12, 3))
    assert np.abs(ridge_toward(x.T @ x, x.T @ (x @ b), np.zeros((12, 3)), 1e-12) - b).max() < 1e-8
    few = x[:5]  # 5 rows, 12 unknowns
    assert np.abs(ridge_toward(few.T @ few, few.T @ (few @ b), b, 1e-3) - b).max() < 1e-12


def test_keep_top_and_greedy_selection():
    assert keep_top(np.array([0.1, 3.0, 2.0, 0.5]), 2).tolist() == [False, True, True, False]
    contributions = np.array([[1.0, 0.0], [-1.0, 0.0], [5.0, 5.0], [3.0, 3.0]])
    # channels 0 and 1 cancel: removing both changes nothing, so greedy keeps 2 and 3
    assert greedy_keep(contributions, 2).tolist() == [False, False, True, True]


class Redundant(nn.Module):
    """conv a's channels 4..7 are positive multiples of channels 0..3: exact after ReLU."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 5, 3)
        with torch.no_grad():
            self.a.weight[4:] = self.a.weight[:4] * torch.tensor([2.0, 0.5, 1.5, 3.0])[:, None,
                                                                                     None, None]
            self.a.bias[4:] = self.a.bias[:4] * torch.tensor([2.0, 0.5, 1.5, 3.0])

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_least_squares_is_exact_when_pruned_channels_are_combinations_of_kept(rng):
    mod = prepared(seeded(Redundant), (1, 3, 10, 10))
    calib = rng.standard_normal((40, 3, 10, 10)).astype(np.float32)
    masks = ChannelMasks(conv0=np.arange(8) < 4)
    x = rng.standard_normal((1, 3, 10, 10)).astype(np.float32)
    recovered = MaskPruning(options=RecoveryConfig(recovery="ls"), masks=masks,
                            calibration=calib)(mod)
    plain = MaskPruning(options=RecoveryConfig(recovery="none"), masks=masks)(mod)
    assert conv_shapes(recovered) == [(4, 3, 3, 3), (5, 4, 3, 3)]
    expected = host_fn(mod)(x)
    assert relative_error(host_fn(recovered)(x), expected) < 1e-4
    assert relative_error(host_fn(plain)(x), expected) > 0.05


@pytest.mark.parametrize("make, shape, expect", [
    (ConvDense, (1, 1, 8, 8), [(4, 1, 3, 3)]),
    (Residual, (1, 3, 8, 8), [(4, 3, 3, 3), (4, 4, 1, 1), (4, 4, 3, 3), (4, 4, 3, 3)]),
    (Depthwise, (1, 3, 8, 8), [(4, 6, 1, 1), (6, 1, 3, 3), (6, 3, 1, 1)]),
])
def test_commit_shrinks_coupled_groups(make, shape, expect, rng):
    """Committing the masks removes the channels and computes what the original network
    computes with those channels zeroed (no recovery)."""
    mod = prepared(seeded(make), shape)
    pruner = MaskPruning(CompressConfig(ratio=0.5), RecoveryConfig(recovery="none"))
    new = pruner(mod)
    assert conv_shapes(new) == expect
    before = {g.name: g.channels for g in analyze(mod).groups.values() if g.prunable}
    assert {k: int(m.sum()) for k, m in pruner.masks.items()} == {
        k: max(1, round(c / 2)) for k, c in before.items()}
    assert {r.name: (r.channels_before, r.channels_after) for r in pruner.reports
            if r.channels_after != r.channels_before} == {
        k: (c, max(1, round(c / 2))) for k, c in before.items()}
    x = rng.standard_normal(shape).astype(np.float32)
    zeroed = masked_reference(mod, pruner.masks)
    assert conv_shapes(zeroed) == conv_shapes(mod)
    out, ref = host_fn(new)(x), host_fn(zeroed)(x)
    assert relative_error(out, ref) < 1e-5
    assert relative_error(out, host_fn(mod)(x)) > 1e-2  # the pruned channels did matter


def test_masks_round_trip_and_reproduce_the_model(tmp_path, rng):
    mod = prepared(seeded(Residual), (1, 3, 8, 8))
    first = MaskPruning(CompressConfig(ratio=0.5, seed=3), RecoveryConfig(criterion="l2",
                                                                          recovery="none"))
    pruned = first(mod)
    path = first.masks.save(str(tmp_path / "masks.npz"))
    loaded = ChannelMasks.load(path)
    assert {k: v.tolist() for k, v in loaded.items()} == {k: v.tolist()
                                                          for k, v in first.masks.items()}
    again = MaskPruning(options=RecoveryConfig(recovery="none"), masks=loaded)(mod)
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(host_fn(again)(x), host_fn(pruned)(x))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["masks.npz"]  # no temporary files


def test_bad_inputs_get_clear_errors(tmp_path, rng):
    mod = prepared(seeded(Residual), (1, 3, 8, 8))
    with pytest.raises(ValueError, match="calibration"):
        MaskPruning(options=RecoveryConfig(recovery="ls"))(mod)
    with pytest.raises(ValueError, match=r"shape \(1, 3, 5, 5\)"):
        MaskPruning(calibration=np.zeros((4, 3, 5, 5), np.float32))(mod)
    with pytest.raises(ValueError, match="unknown mask criterion 'median'"):
        RecoveryConfig(criterion="median")
    with pytest.raises(ValueError, match="another model"):
        MaskPruning(masks=ChannelMasks(conv0=np.ones(5, bool)))(mod)
    with pytest.raises(ValueError, match="unknown channel group 'conv9'"):
        MaskPruning(masks=ChannelMasks(conv9=np.ones(5, bool)))(mod)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a MobileDL channel-mask file"):
        ChannelMasks.load(str(bad))
    with pytest.raises(ValueError, match="only used by compression"):
        mdl_tvm.compile(mod, "host", calibration=np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(ValueError, match="'greedy' needs calibration"):
        mdl_tvm.compile(mod, "host", compress="mask:0.5:greedy")


@pytest.fixture(scope="module")
def trained_lenet():
    """Trained LeNet-5, 300 calibration and 300 test images, and the uncompressed build's
    logits on the test images (compiled once for every spec)."""
    from mdl_tvm.data import load_fashion_mnist
    from mdl_tvm.train import trained_model

    x_calib, _ = load_fashion_mnist("train", limit=300)
    x_test, y_test = load_fashion_mnist("test", limit=300)
    model = trained_model("lenet5")
    base = mdl_tvm.compile(model, "host", input_shapes=[(1, 1, 28, 28)])
    ref = np.concatenate([base.run(x[None])[0] for x in x_test])
    return model, x_calib, x_test, y_test, base.stats.macs, ref


KMEANS_REGRESSION = pytest.mark.xfail(
    strict=True, reason="known regression (#18): k-means with calibration now keeps one real "
    "channel per cluster with Neuron Merging's scale (exact on dependent channels); on the "
    "trained LeNet-5 at 50 % it ends at 0.81 top-1, 9 points under the base, past the 8-point "
    "bound the centroid version met")


@pytest.mark.training
@pytest.mark.parametrize("spec", ["mask:0.5", "mask:0.5:greedy",
                                  pytest.param("kmeans:0.5", marks=KMEANS_REGRESSION)])
def test_recovery_lowers_the_error_on_a_trained_model(trained_lenet, spec):
    model, x_calib, x_test, y_test, base_macs, ref = trained_lenet
    base_hits = float((ref.argmax(1) == y_test).mean())
    assert base_hits > 0.8  # a trained LeNet-5 (10 classes): about 0.87
    errors, hits = {}, {}
    for calibration in (None, x_calib):
        if calibration is None and spec.endswith("greedy"):
            continue
        compiled = mdl_tvm.compile(model, "host", input_shapes=[(1, 1, 28, 28)],
                                   compress=spec, calibration=calibration)
        out = np.concatenate([compiled.run(x[None])[0] for x in x_test])
        key = "ls" if calibration is not None else "none"
        errors[key] = relative_error(out, ref)
        hits[key] = float((out.argmax(1) == y_test).mean())
        assert compiled.stats.macs < base_macs * 0.6
        assert [r["channels_after"] for r in compiled.compression][:4] == [3, 8, 60, 42]
    if "none" in errors:
        assert errors["ls"] < errors["none"]
        assert hits["ls"] > hits["none"]
    assert hits["ls"] > base_hits - 0.08


@pytest.fixture(scope="module", params=[Residual, Depthwise], ids=["Residual", "Depthwise"])
def small_net(request):
    """A small network, its calibration and test inputs, and its outputs on the test inputs
    (the reference is compiled once per network, not once per sample)."""
    shape = (1, 3, 8, 8)
    mod = prepared(seeded(request.param, 1), shape)
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((64,) + shape[1:]).astype(np.float32)
    x = rng.standard_normal((8,) + shape[1:]).astype(np.float32)
    return mod, calib, x, host_outs(mod, x)


@pytest.mark.parametrize("method", ["mask", "kmeans"])
def test_recovery_through_residual_and_depthwise_groups(small_net, method):
    """Least squares refits the consumers of coupled (residual) and depthwise groups: the
    error on held-out inputs is lower than without it. Each build is compiled once and run
    on all 8 inputs."""
    mod, calib, x, ref = small_net
    halves = {g.name: g.channels // 2 for g in analyze(mod).groups.values() if g.prunable}
    errors = []  # least squares minimises the mean squared error: compare that
    for calibration in (None, calib):
        compiled = mdl_tvm.compile(mod, "host", compress=f"{method}:0.5",
                                   calibration=calibration)
        assert {r["name"]: r["channels_after"] for r in compiled.compression
                if r["channels_after"] != r["channels_before"]} == halves
        out = np.concatenate([compiled.run(xi[None])[0] for xi in x])
        errors.append(np.linalg.norm(out - ref) / np.linalg.norm(ref))
    assert 0.05 < errors[0] and errors[1] < 0.9 * errors[0], errors


ZOO = [pytest.param("resnet18", marks=pytest.mark.slow),
       pytest.param("mobilenetv2", marks=pytest.mark.slow)]


@pytest.mark.parametrize("name", ZOO)
def test_zoo_models_prune_and_run(name):
    """`compile(compress="mask:0.5")` on a zoo network: less than half the MACs and weights,
    and the function of the network with the pruned channels zeroed."""
    from mdl_tvm import zoo

    shape = (1, 3, 32, 32)
    small = mdl_tvm.compile(zoo.build(name), "host", input_shapes=[shape], compress="mask:0.5")
    mod = prepared(zoo.build(name), shape)
    zeroed = mdl_tvm.compile(masked_reference(mod, small.masks), "host")  # original shapes
    assert small.stats.macs < 0.5 * zeroed.stats.macs
    assert small.stats.weight_bytes < 0.5 * zeroed.stats.weight_bytes
    x = np.random.default_rng(0).standard_normal(shape).astype("float32")
    assert relative_error(small.run(x)[0], zeroed.run(x)[0]) < 1e-4
    assert all(r["weights_after"] <= r["weights_before"] for r in small.compression)


def test_lenet_prunes_to_the_zeroed_network():
    """The cheap version of the zoo test above (fast subset): LeNet-5, exact channel counts."""
    from mdl_tvm import zoo

    shape = (1, 1, 28, 28)
    small = mdl_tvm.compile(zoo.build("lenet5"), "host", input_shapes=[shape],
                            compress="mask:0.5")
    assert {k: int(m.sum()) for k, m in small.masks.items()} == {
        "conv0": 3, "conv1": 8, "dense0": 60, "dense1": 42}
    zeroed = mdl_tvm.compile(masked_reference(prepared(zoo.build("lenet5"), shape),
                                              small.masks), "host")
    x = np.random.default_rng(0).standard_normal(shape).astype("float32")
    assert relative_error(small.run(x)[0], zeroed.run(x)[0]) < 1e-5
    assert small.stats.weight_bytes == 4 * (3 * 25 + 3 + 8 * 3 * 25 + 8 + 8 * 25 * 60 + 60
                                            + 60 * 42 + 42 + 42 * 10 + 10)
