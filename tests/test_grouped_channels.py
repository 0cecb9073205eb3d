"""Channel compression through grouped convs (issue #22, item 3): a grouped conv's inputs
and outputs keep the same number of channels in every group, so it stays a grouped conv,
and what its input side reads is only mixed within a group.

The net: conv 1->8 -> relu -> grouped conv 8->16 (4 groups of 2 in, 4 out) -> relu ->
conv 1x1 16->8 -> relu -> global mean -> dense 8->10. Filter (and bias) 1 of each pair of
the first conv is a positive multiple of filter 0 (so of the same group); in each group of
the grouped conv, filters 2, 3 are positive multiples of 0, 1; the 1x1 conv's filters 4..7
are multiples of 0..3. After ReLU the removable channels are multiples of kept ones: an
exact recovery exists, and it lies inside each group.
"""

import warnings

import numpy as np
import pytest
import torch
from helpers import conv_shapes, prepared
from torch import nn

import mdl_tvm
from mdl_tvm.compiler.finetune import _column_norms, consumer_layers
from mdl_tvm.core.graph_stats import graph_stats
from relay_passes import ChannelMasks, CompressConfig, MaskPruning, RecoveryConfig, analyze
from relay_passes.channel_masks import greedy_keep, keep_top, redundancy_keep
from relay_passes.config import kept_channels
from relay_passes.kmeans_cluster import KMeansChannelClustering, kmeans_labels
from relay_passes.macs_budget import macs_model, plan_kept

SHAPE = (1, 1, 12, 12)


class GroupedNet(nn.Module):
    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.a = nn.Conv2d(1, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 16, 3, padding=1, groups=4)
        self.c = nn.Conv2d(16, 8, 1)
        self.d = nn.Linear(8, 10)
        with torch.no_grad():
            for m in (self.a, self.b, self.c, self.d):
                scale = m.weight[0].numel() ** -0.5
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * scale)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            self.a.weight[1::2] = self.a.weight[::2] * 3.0
            self.a.bias[1::2] = self.a.bias[::2] * 3.0
            w, b = self.b.weight.view(4, 4, 2, 3, 3), self.b.bias.view(4, 4)
            w[:, 2:] = w[:, :2] * torch.tensor([2.0, 0.5])[None, :, None, None, None]
            b[:, 2:] = b[:, :2] * torch.tensor([2.0, 0.5])[None, :]
            self.c.weight[4:] = self.c.weight[:4] * 1.5
            self.c.bias[4:] = self.c.bias[:4] * 1.5

    def forward(self, x):
        x = torch.relu(self.c(torch.relu(self.b(torch.relu(self.a(x))))))
        return self.d(x.mean((2, 3)))


@pytest.fixture(scope="module")
def grouped():
    rng = np.random.default_rng(0)
    model = GroupedNet().eval()
    calibration = rng.standard_normal((64, *SHAPE[1:])).astype(np.float32)
    fresh = rng.standard_normal((4, *SHAPE)).astype(np.float32)
    with torch.no_grad():
        ref = [model(torch.from_numpy(x)).numpy() for x in fresh]
    return model, calibration, fresh, ref


def test_grouped_conv_inputs_and_outputs_form_blocks():
    graph = analyze(prepared(GroupedNet(), SHAPE))
    feed, out = sorted((g for g in graph.groups.values() if g.blocks > 1),
                       key=lambda g: g.channels)
    assert (out.blocks, out.channels, out.prunable) == (4, 16, True)
    assert (feed.blocks, feed.channels, feed.prunable) == (4, 8, True)
    (reader,) = feed.consumers
    assert (reader.groups, reader.offset, reader.length) == (4, 0, 8)
    assert reader.binding == out.producers[0].binding


@pytest.mark.parametrize("spec", ["mask:0.5", "kmeans:0.5"])
def test_grouped_conv_outputs_are_recovered_exactly_in_step(grouped, spec):
    model, calibration, fresh, ref = grouped
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = mdl_tvm.compile(model, "host", input_shapes=[SHAPE], compress=spec,
                                   calibration=calibration)
    assert not [w for w in caught if "untouched" in str(w.message)]
    assert sorted((r["channels_before"], r["channels_after"]) for r in compiled.compression
                  if r["channels_before"] != 10) == [(8, 4), (8, 4), (16, 8)]  # not the output
    err = max(float(np.abs(compiled.run(x)[0] - r).max() / np.abs(r).max())
              for x, r in zip(fresh, ref, strict=True))
    assert err < 1e-3


@pytest.mark.parametrize(("pass_", "shapes"), [
    (MaskPruning(CompressConfig(ratio=0.5), RecoveryConfig(criterion="l1", recovery="none")),
     [(4, 1, 3, 3), (4, 8, 1, 1), (8, 1, 3, 3)]),
    (KMeansChannelClustering(CompressConfig(ratio=0.75)),
     [(2, 4, 1, 1), (4, 1, 3, 3), (4, 1, 3, 3)])])
def test_without_data_the_grouped_conv_keeps_its_groups(pass_, shapes):
    """The grouped conv's inputs 8 -> 4 (one per group), outputs 16 -> 8 or 4 (at least
    one per group); it stays a 4-group conv and the MACs model counts the rewritten graph
    exactly."""
    mod = prepared(GroupedNet(), SHAPE)
    small = pass_(mod)
    kept = {r.name: r.channels_after for r in pass_.reports}
    assert conv_shapes(small) == shapes
    assert "groups=4" in small.script()
    assert macs_model(mod).macs(kept) == pytest.approx(graph_stats(small).macs)


def test_selection_keeps_equal_counts_per_block(rng):
    assert kept_channels(16, 0.5, 4) == 8 and kept_channels(16, 0.3, 4) == 12
    assert kept_channels(16, 0.99, 4) == 4  # at least one per group
    scores = rng.standard_normal(12)
    for mask in (keep_top(scores, 6, 3), greedy_keep(rng.standard_normal((12, 5)), 6, 3)):
        assert mask.reshape(3, 4).sum(axis=1).tolist() == [2, 2, 2]
    assert keep_top(scores, 6).tolist() == keep_top(scores, 6, 1).tolist()
    z = rng.standard_normal((200, 12))
    h = z.T @ z
    mask = redundancy_keep([(h, h, h, np.eye(12))], 6, blocks=3)
    assert mask.reshape(3, 4).sum(axis=1).tolist() == [2, 2, 2]
    # duplicate rows: k-means finds fewer clusters than asked; each block still gets its k
    features = np.repeat(rng.standard_normal((2, 3)), 4, axis=0)
    labels = kmeans_labels(features, 4, 0, blocks=2)
    assert [len(set(labels[:4])), len(set(labels[4:]))] == [2, 2]
    assert labels.tolist() == sorted(labels.tolist()[:4]) + sorted(labels.tolist()[4:])


def test_unequal_masks_and_plans_respect_blocks():
    mod = prepared(GroupedNet(), SHAPE)
    graph = analyze(mod)
    blocked = [n for n, g in graph.groups.items() if g.blocks > 1]
    (name,) = [n for n in blocked if graph.groups[n].channels == 16]
    uneven = np.ones(16, bool)
    uneven[:3] = False
    with pytest.raises(ValueError, match=r"keeps \[1, 4, 4, 4\] channels in the 4 groups"):
        ChannelMasks({name: uneven}).check(graph.groups)
    model = macs_model(mod)
    curves = {n: np.linspace(1e-3, 1, model.channels[n] - 1) for n in model.channels
              if graph.groups[n].prunable}
    kept = plan_kept(curves, model, model.total / 2)
    assert all(kept[n] % 4 == 0 and kept[n] < graph.groups[n].channels for n in blocked)


def test_masked_finetuning_reads_grouped_convs_per_group():
    """The fine-tuning side (`consumer_layers`): the grouped conv is found as the torch
    layer that reads the first conv's channels, and its per-channel column norms come from
    each group's own weights."""
    model = GroupedNet().eval()
    groups = {name: (c, layers, blocks) for name, c, layers, blocks in
              consumer_layers(model, torch.zeros(1, 1, 28, 28))}
    (channels, (layer,), blocks), = [v for v in groups.values() if v[0] == 8
                                     and v[1][0].module is model.b]
    assert (channels, blocks, layer.groups) == (8, 4, 4)
    w = model.b.weight.detach().numpy().reshape(4, 4, 2, 9)
    expected = np.sqrt((w ** 2).sum(axis=(1, 3))).ravel()  # channel 2g + i: group g, input i
    np.testing.assert_allclose(_column_norms(layer), expected, rtol=1e-6)
