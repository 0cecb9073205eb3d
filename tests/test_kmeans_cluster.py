"""Channel-oriented k-means clustering: structure before/after and merged == centroid-replaced."""

import warnings

import numpy as np
import pytest
import torch
from helpers import (
    Concat,
    ConvConv,
    ConvDense,
    Depthwise,
    Grouped,
    Residual,
    conv_shapes,
    host_fn,
    prepared,
    seeded,
)
from torch import nn

import mdl_tvm
from mdl_tvm.core.numerics import relative_error
from relay_passes import CompressConfig, KMeansChannelClustering, analyze, parse_compress

CASES = {
    "conv-conv": (ConvConv, (1, 3, 8, 8)),
    "conv-flatten-dense": (ConvDense, (1, 1, 8, 8)),
    "residual": (Residual, (1, 3, 8, 8)),
    "depthwise": (Depthwise, (1, 3, 8, 8)),
    "concat": (Concat, (1, 3, 8, 8)),
    "grouped": (Grouped, (1, 3, 8, 8)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_merged_graph_equals_centroid_replaced_graph(case):
    make, shape = CASES[case]
    mod = prepared(seeded(make), shape)
    x = np.random.default_rng(1).standard_normal(shape).astype("float32")
    config = CompressConfig(ratio=0.5, seed=3)
    replaced = KMeansChannelClustering(config, merge=False)(mod)
    merger = KMeansChannelClustering(config)
    merged = merger(mod)
    assert conv_shapes(replaced) == conv_shapes(mod)  # reference keeps every channel
    groups = {g.name: g.channels for g in analyze(mod).groups.values() if g.prunable}
    assert {r.name: (r.channels_before, r.channels_after) for r in merger.reports
            if r.name in groups} == {name: (c, round(c / 2)) for name, c in groups.items()}
    a, b = host_fn(replaced)(x), host_fn(merged)(x)
    assert relative_error(b, a) < 1e-5
    assert relative_error(b, host_fn(mod)(x)) > 1e-3  # clustering did change the function


def test_structure_after_clustering_conv_conv():
    mod = prepared(seeded(ConvConv), (1, 3, 8, 8))
    assert conv_shapes(mod) == [(6, 8, 3, 3), (8, 3, 3, 3)]
    merged = KMeansChannelClustering(CompressConfig(ratio=0.5))(mod)
    assert conv_shapes(merged) == [(4, 3, 3, 3), (6, 4, 3, 3)]  # 8 -> 4 channels, both sides


def test_depthwise_groups_follow_the_channels():
    merged = KMeansChannelClustering(CompressConfig(ratio=0.5))(
        prepared(seeded(Depthwise), (1, 3, 8, 8)))
    assert conv_shapes(merged) == [(4, 6, 1, 1), (6, 1, 3, 3), (6, 3, 1, 1)]
    assert merged.script().count("groups=6") == 1


def test_duplicate_filters_merge_without_changing_the_output():
    model = seeded(ConvConv)
    with torch.no_grad():  # 8 filters = 4 distinct ones, each twice
        model.a.weight[4:] = model.a.weight[:4]
        model.a.bias[4:] = model.a.bias[:4]
    mod = prepared(model, (1, 3, 8, 8))
    merger = KMeansChannelClustering(CompressConfig(ratio=0.5, per_layer={"conv1": 0.0}))
    merged = merger(mod)
    assert conv_shapes(merged) == [(4, 3, 3, 3), (6, 4, 3, 3)]
    x = np.random.default_rng(2).standard_normal((1, 3, 8, 8)).astype("float32")
    assert relative_error(host_fn(merged)(x), host_fn(mod)(x)) < 1e-5
    assert [(r.name, r.channels_after) for r in merger.reports][:2] == [("conv0", 4), ("conv1", 6)]


def test_residual_add_couples_the_branches():
    graph = analyze(prepared(seeded(Residual), (1, 3, 8, 8)))
    coupled = [g for g in graph.groups.values() if len(g.producers) == 2]
    assert len(coupled) == 1 and coupled[0].channels == 8
    assert sorted(g.name for g in graph.groups.values() if g.prunable) == ["conv0", "conv1"]
    assert graph.groups["conv3"].frozen == "the model output"


def test_unknown_op_leaves_group_untouched_with_warning():
    class Flip(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 3)

        def forward(self, x):
            return self.b(torch.flip(torch.relu(self.a(x)), [1]))

    mod = prepared(seeded(Flip), (1, 3, 10, 10))
    merger = KMeansChannelClustering(CompressConfig(ratio=0.5))
    with pytest.warns(UserWarning, match="conv0 left untouched.*flip"):
        merged = merger(mod)
    assert conv_shapes(merged) == conv_shapes(mod)


ZOO = [pytest.param("lenet5", (1, 1, 28, 28)),  # the cheap one: in the fast subset
       pytest.param("resnet18", (1, 3, 32, 32), marks=pytest.mark.slow),
       pytest.param("mobilenetv2", (1, 3, 32, 32), marks=pytest.mark.slow)]


@pytest.mark.parametrize("name, shape", ZOO)
def test_zoo_model_merged_equals_centroid_replaced(name, shape):
    """A whole zoo network through `compile(compress="kmeans:0.5")`: fewer than half the MACs
    of the network, and the same function as the centroid-replaced network (same shapes)."""
    from mdl_tvm import zoo

    small = mdl_tvm.compile(zoo.build(name), "host", input_shapes=[shape],
                            compress="kmeans:0.5")
    replaced = mdl_tvm.compile(zoo.build(name), "host", input_shapes=[shape],  # the reference:
                               graph_passes=[KMeansChannelClustering(merge=False)],  # TVM's
                               default_schedules=False)  # plain lowering builds faster
    assert small.stats.macs < 0.5 * replaced.stats.macs  # replaced: the original's shapes
    x = np.random.default_rng(0).standard_normal(shape).astype("float32")
    assert relative_error(small.run(x)[0], replaced.run(x)[0]) < 1e-4
    assert all(r["channels_after"] <= r["channels_before"] for r in small.compression)


@pytest.mark.parametrize("bad,error,message", [
    (dict(ratio=1.0), ValueError, r"\[0, 1\)"),
    (dict(ratio=-0.1), ValueError, r"\[0, 1\)"),
    (dict(ratio="half"), TypeError, "number"),
    (dict(per_layer={"conv0": 2}), ValueError, "per_layer"),
    (dict(skip="conv0"), TypeError, "tuple"),
])
def test_bad_config_errors(bad, error, message):
    with pytest.raises(error, match=message):
        CompressConfig(**bad)


def test_unknown_layer_name_lists_valid_ones():
    mod = prepared(seeded(ConvConv), (1, 3, 8, 8))
    with pytest.raises(ValueError, match="layer groups are: conv0, conv1"):
        KMeansChannelClustering(CompressConfig(per_layer={"conv9": 0.5}))(mod)
    with pytest.raises(ValueError, match="unknown compression method"):
        parse_compress("svd:0.5")
    with pytest.raises(ValueError, match="bad compress spec"):
        parse_compress("kmeans:1.5")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        method, config = parse_compress("kmeans:0.25")
    assert (method, config.ratio) == ("kmeans", 0.25)
