"""Channel-oriented k-means clustering: structure before/after and merged == centroid-replaced."""

import warnings

import numpy as np
import pytest
import torch
from conftest import relative_error
from torch import nn

import mdl_tvm
from mdl_tvm.importers import import_model
from mdl_tvm.pipeline import STAGES, BuildState, run_pipeline
from relay_passes import CompressConfig, KMeansChannelClustering, analyze, parse_compress


def prepared(model, shape):
    """The Relax graph the compile pipeline hands to graph passes."""
    torch.manual_seed(0)
    mod, _, _ = import_model(model.eval(), [shape])
    return run_pipeline(BuildState(mod, mdl_tvm.get_profile("host")), STAGES[:1]).mod


def host_out(mod, x):
    return mdl_tvm.compile(mod, "host").run(x)[0]


def conv_shapes(mod):
    from relay_passes.kmeans_cluster import bound_constants

    return sorted(a.shape for a in bound_constants(mod).values() if a.ndim == 4 and a.shape[0] > 1)


class ConvConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 6, 3)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


class ConvDense(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 8, 3), nn.Linear(8 * 6 * 6, 5)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = torch.relu(self.stem(x))
        return self.head(torch.relu(self.body(y) + y))


class Depthwise(nn.Module):
    def __init__(self):
        super().__init__()
        self.expand = nn.Conv2d(3, 12, 1)
        self.dw = nn.Conv2d(12, 12, 3, padding=1, groups=12)
        self.project = nn.Conv2d(12, 4, 1)

    def forward(self, x):
        return self.project(torch.relu(self.dw(torch.relu(self.expand(x)))))


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(3, 10, 1)
        self.head = nn.Conv2d(16, 4, 3)

    def forward(self, x):
        return self.head(torch.relu(torch.cat([self.a(x), self.b(x)], dim=1)))


CASES = {
    "conv-conv": (ConvConv, (1, 3, 8, 8)),
    "conv-flatten-dense": (ConvDense, (1, 1, 8, 8)),
    "residual": (Residual, (1, 3, 8, 8)),
    "depthwise": (Depthwise, (1, 3, 8, 8)),
    "concat": (Concat, (1, 3, 8, 8)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_merged_graph_equals_centroid_replaced_graph(case):
    make, shape = CASES[case]
    mod = prepared(make(), shape)
    x = np.random.default_rng(1).standard_normal(shape).astype("float32")
    config = CompressConfig(ratio=0.5, seed=3)
    replaced = KMeansChannelClustering(config, merge=False)(mod)
    merger = KMeansChannelClustering(config)
    merged = merger(mod)
    assert conv_shapes(replaced) == conv_shapes(mod)  # reference keeps every channel
    shrunk = [r for r in merger.reports if r.channels_after < r.channels_before]
    assert shrunk, merger.reports
    a, b = host_out(replaced, x), host_out(merged, x)
    assert relative_error(b, a) < 1e-5
    assert relative_error(b, host_out(mod, x)) > 1e-4  # clustering did change the function


def test_structure_after_clustering_conv_conv():
    mod = prepared(ConvConv(), (1, 3, 8, 8))
    assert conv_shapes(mod) == [(6, 8, 3, 3), (8, 3, 3, 3)]
    merged = KMeansChannelClustering(CompressConfig(ratio=0.5))(mod)
    assert conv_shapes(merged) == [(4, 3, 3, 3), (6, 4, 3, 3)]  # 8 -> 4 channels, both sides


def test_depthwise_groups_follow_the_channels():
    merged = KMeansChannelClustering(CompressConfig(ratio=0.5))(prepared(Depthwise(), (1, 3, 8, 8)))
    assert (6, 1, 3, 3) in conv_shapes(merged)
    assert "groups=6" in merged.script()


def test_duplicate_filters_merge_without_changing_the_output():
    model = ConvConv()
    with torch.no_grad():  # 8 filters = 4 distinct ones, each twice
        model.a.weight[4:] = model.a.weight[:4]
        model.a.bias[4:] = model.a.bias[:4]
    mod = prepared(model, (1, 3, 8, 8))
    merger = KMeansChannelClustering(CompressConfig(ratio=0.5, per_layer={"conv1": 0.0}))
    merged = merger(mod)
    x = np.random.default_rng(2).standard_normal((1, 3, 8, 8)).astype("float32")
    assert relative_error(host_out(merged, x), host_out(mod, x)) < 1e-5
    assert [(r.name, r.channels_after) for r in merger.reports][:2] == [("conv0", 4), ("conv1", 6)]


def test_residual_add_couples_the_branches():
    graph = analyze(prepared(Residual(), (1, 3, 8, 8)))
    coupled = [g for g in graph.groups.values() if len(g.producers) == 2]
    assert len(coupled) == 1 and coupled[0].channels == 8
    assert graph.groups["conv3"].frozen == "the model output"


def test_unknown_op_leaves_group_untouched_with_warning():
    class Flip(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 3)

        def forward(self, x):
            return self.b(torch.flip(torch.relu(self.a(x)), [1]))

    mod = prepared(Flip(), (1, 3, 10, 10))
    merger = KMeansChannelClustering(CompressConfig(ratio=0.5))
    with pytest.warns(UserWarning, match="conv0 left untouched.*flip"):
        merged = merger(mod)
    assert conv_shapes(merged) == conv_shapes(mod)


def test_zoo_models_compress_and_run():
    from mdl_tvm import zoo

    for name in ("lenet5", "resnet18", "mobilenetv2"):
        shape = (1, 3, 32, 32) if name != "lenet5" else (1, 1, 28, 28)
        full = mdl_tvm.compile(zoo.build(name), "host", input_shapes=[shape])
        small = mdl_tvm.compile(zoo.build(name), "host", input_shapes=[shape],
                                compress="kmeans:0.5")
        assert small.stats.macs < 0.5 * full.stats.macs
        x = np.random.default_rng(0).standard_normal(shape).astype("float32")
        assert np.isfinite(small.run(x)[0]).all()


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
    mod = prepared(ConvConv(), (1, 3, 8, 8))
    with pytest.raises(ValueError, match="layer groups are: conv0, conv1"):
        KMeansChannelClustering(CompressConfig(per_layer={"conv9": 0.5}))(mod)
    with pytest.raises(ValueError, match="unknown compression method"):
        parse_compress("svd:0.5")
    with pytest.raises(ValueError, match="bad compress spec"):
        parse_compress("kmeans:1.5")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert parse_compress("kmeans:0.25")[1].ratio == 0.25
