"""MACs budget ("mask:2x"): the MACs model, the global plan, the spec, the passes."""

import numpy as np
import pytest
from helpers import Concat, Depthwise, Grouped, Residual, prepared, seeded
from torch import nn

from mdl_tvm.core.graph_stats import graph_stats
from relay_passes import (
    ChannelMasks,
    CompressConfig,
    MaskPruning,
    RecoveryConfig,
    analyze,
    parse_compress,
)
from relay_passes.channel_masks import redundancy_keep, redundancy_path
from relay_passes.kmeans_cluster import cluster_channels
from relay_passes.macs_budget import macs_model, plan_kept, uniform_kept


class Chain(nn.Module):
    """stem 3 -> 8 -> mid 8 -> 16 -> head 16 -> 4: two prunable groups of unequal cost."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 3, padding=1)
        self.c = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.c(self.b(self.a(x).relu()).relu())


@pytest.mark.parametrize("cls", [Chain, Residual, Depthwise, Concat, Grouped])
def test_macs_model_predicts_the_pruned_graph(cls):
    """The MACs counted from kept channels alone equal those of the rewritten graph."""
    mod = prepared(seeded(cls), (1, 3, 10, 10))
    model = macs_model(mod)
    assert model.total == graph_stats(mod).macs
    for ratio in (0.25, 0.5):
        pruned = MaskPruning(CompressConfig(ratio=ratio), RecoveryConfig(criterion="l1",
                                                                          recovery="none"))
        small = pruned(mod)
        kept = {r.name: r.channels_after for r in pruned.reports}
        assert model.macs(kept) == pytest.approx(graph_stats(small).macs)


def test_plan_spends_the_budget_where_removal_is_cheap():
    mod = prepared(seeded(Chain), (1, 3, 10, 10))
    model = macs_model(mod)
    names = sorted(model.channels)
    target = model.total / 2
    cheap_first = {names[0]: np.full(7, 1e-6), names[1]: np.full(15, 1.0)}
    kept = plan_kept(cheap_first, model, target)
    assert model.macs(kept) <= target
    assert kept[names[0]] == 1 or kept[names[1]] == model.channels[names[1]]
    swapped = plan_kept({names[0]: np.full(7, 1.0), names[1]: np.full(15, 1e-6)}, model, target)
    assert swapped[names[1]] < kept[names[1]] and swapped[names[0]] > kept[names[0]]
    even = uniform_kept(names, model, target)
    assert model.macs(even) <= target
    ratios = [1 - even[n] / model.channels[n] for n in names]
    assert abs(ratios[0] - ratios[1]) < 0.15
    with pytest.raises(ValueError, match="cannot be met"):
        plan_kept(cheap_first, model, 1.0)


def test_redundancy_path_orders_like_redundancy_keep(rng):
    a = rng.standard_normal((200, 6))
    a[:, 5] = 2 * a[:, 0]  # a copy: free to remove with compensation
    aa, q = a.T @ a, np.eye(6)
    removed, increments = redundancy_path([(aa, aa, aa, q)])
    assert len(removed) == 5 and removed[0] in (0, 5) and increments[0] < 1e-6
    assert np.all(increments[1:] > 1e-3)
    keep = redundancy_keep([(aa, aa, aa, q)], 3)
    assert keep.sum() == 3 and not keep[removed[:3]].any()


def test_speedup_spec_and_its_errors():
    method, config = parse_compress("mask:2x")
    assert method == "mask" and config.speedup == 2.0
    assert parse_compress("kmeans:3.5X")[1].speedup == 3.5
    for bad in ("mask:1x", "mask:0.5x", "mask:twox"):
        with pytest.raises(ValueError, match="Nx"):
            parse_compress(bad)
    with pytest.raises(ValueError, match="speedup must be a number > 1"):
        CompressConfig(speedup=True)


@pytest.mark.parametrize("data", [False, True])
def test_mask_pruning_meets_a_macs_target(rng, data):
    """With calibration the plan is compensation-aware; without, one common ratio."""
    mod = prepared(seeded(Residual), (1, 3, 10, 10))
    total = graph_stats(mod).macs
    calibration = rng.standard_normal((24, 3, 10, 10)).astype(np.float32) if data else None
    options = RecoveryConfig(recovery="ls" if data else "none")
    small = MaskPruning(CompressConfig(speedup=2.0), options, calibration=calibration)(mod)
    assert total / 3 <= graph_stats(small).macs <= total / 2  # 8-channel groups: coarse
    assert len(analyze(small).groups) == len(analyze(mod).groups)


def test_kmeans_without_data_meets_a_macs_target():
    mod = prepared(seeded(Chain), (1, 3, 10, 10))
    small, reports = cluster_channels(mod, CompressConfig(speedup=1.8))
    assert graph_stats(small).macs <= graph_stats(mod).macs / 1.8
    assert all(r.channels_after < r.channels_before
               for r in reports if r.note != "the model output")


def test_speedup_with_saved_masks_warns_and_commits_the_masks():
    mod = prepared(seeded(Chain), (1, 3, 10, 10))
    masks = ChannelMasks(conv0=np.arange(8) < 6, conv1=np.arange(16) < 12)
    pruner = MaskPruning(CompressConfig(speedup=4.0), RecoveryConfig(recovery="none"),
                         masks=masks)
    with pytest.warns(UserWarning, match=r"speedup=4 is ignored: the given masks"):
        pruner(mod)
    kept = {r.name: r.channels_after for r in pruner.reports}
    assert kept["conv0"] == 6 and kept["conv1"] == 12
