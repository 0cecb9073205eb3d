"""Channel compression through ShuffleNet's channel split and shuffle (issue #22, item 3).

A ShuffleNetV2 unit splits its input in two halves and interleaves its output, so one
layer's channels go different ways. `shuffle_as_take` makes the shuffle a gather, the
analysis cuts each group into classes of channels that travel together
(`channel_classes`), and the rewrite recomputes every split and gather. The checks that
could fail: exactness where an exact compression exists (duplicated channels for k-means,
dead channels for masks), through interleaved consumer rows.
"""

import numpy as np
import pytest
import torch
from helpers import host_fn, prepared, relax_module

from mdl_tvm import families
from mdl_tvm.core.numerics import relative_error
from mdl_tvm.core.relax_utils import bound_constants
from relay_passes import CompressConfig, KMeansChannelClustering, MaskPruning, RecoveryConfig
from relay_passes.channel_classes import Move, moved_attrs
from relay_passes.channel_graph import analyze
from relay_passes.channel_layout import WeightRef, channel_rows
from relay_passes.channel_rewrite import Edit, apply_edit, rewrite
from relay_passes.config import kept_channels
from relay_passes.shuffle_as_take import shuffle_as_take, shuffle_permutation

SHAPE = families.TINY_SHAPE


def test_shuffle_as_take_is_the_same_permutation():
    from tvm import relax

    def shuffle(bb, x):
        y = bb.emit(relax.op.reshape(x, (1, 2, 3, 2, 2)))
        y = bb.emit(relax.op.permute_dims(y, [0, 2, 1, 3, 4]))
        return relax.op.reshape(y, (1, 6, 2, 2))

    perm = shuffle_permutation(6, 2)
    expected = relax_module((1, 6, 2, 2), lambda bb, x: relax.op.take(
        x, relax.const(perm.astype("int64")), axis=1))
    import tvm

    tvm.ir.assert_structural_equal(shuffle_as_take(relax_module((1, 6, 2, 2), shuffle)),
                                   expected)
    x = torch.arange(6.0).reshape(1, 6, 1, 1)
    assert families.channel_shuffle(x).flatten().tolist() == perm.tolist()


def test_moved_attrs_keep_each_class_first_channels():
    a, b = ("A", 0), ("B", 0)
    ids = (a, ("A", 1), b, ("B", 1), None, ("A", 2))
    moves = {3: Move("take", ids, (5, 0, 2, 4, 1, 3)), 7: Move("split", ids, (2, 4))}
    new = moved_attrs(moves, {"A": 2, "B": 1})  # A keeps channels 0, 1; B keeps 0
    assert new[3] == (0, 2, 3, 1)  # input positions 0, 1, 2, 4 survive, renumbered
    assert new[7] == (2, 3)
    with pytest.raises(ValueError, match="empties an output of the split"):
        moved_attrs({7: Move("split", ids, (1, 2))}, {"A": 1})  # [A1] alone would go


def test_an_edit_on_scattered_rows_puts_new_channel_j_at_row_j():
    array = np.arange(6.0)[:, None] * np.ones((1, 2))
    ref = WeightRef(0, 1, 0, 0, 3, rows=(4, 1, 2))
    out = apply_edit(array, Edit(ref, np.array([[0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])))
    # channels of the ref: rows 4, 1, 2; new channel 0 = old channel 2 (row 2) goes to
    # row 4, new channel 1 = rows 4 + 1 goes to row 1, row 2 is deleted
    assert out[:, 0].tolist() == [0.0, 5.0, 3.0, 2.0, 5.0]
    contiguous = WeightRef(0, 1, 0, 1, 3)
    scattered = WeightRef(0, 1, 0, 0, 3, rows=(1, 2, 3))
    m = np.random.default_rng(0).normal(size=(2, 3))
    np.testing.assert_array_equal(apply_edit(array, Edit(contiguous, m)),
                                  apply_edit(array, Edit(scattered, m)))


@pytest.fixture(scope="module")
def shufflenet():
    return shuffle_as_take(prepared(families.build("shufflenetv2", tiny=True), SHAPE))


def test_the_split_channels_become_classes(shufflenet):
    graph = analyze(shufflenet)
    prunable = {n for n, g in graph.groups.items() if g.prunable}
    assert set(graph.groups) - prunable == {"dense0"}  # only the model output stays
    classes = {n for n in prunable if ">" in n}
    # the first unit's two branches are each cut by the next split (read by the second
    # unit's branch or passed on to the next stage)
    assert {"conv1>conv4", "conv1>conv6+conv7", "conv3>conv4", "conv3>conv6+conv7"} <= classes
    kinds = sorted(m.kind for m in graph.moves.values())
    assert kinds == ["split", "take", "take", "take"]
    for name in classes:
        group = graph.groups[name]
        assert all(r.length == group.channels for r in group.producers + group.consumers)
    assert any(r.rows is not None for n in classes for r in graph.groups[n].consumers)


def _with_rows(mod, change):
    """`mod` with `change(moved_rows, ref)` applied to every producer / parameter ref of
    every prunable group (rows: the ref's ``(length, span, ...)`` view)."""
    graph, consts = analyze(mod), bound_constants(mod)
    new = {}
    for group in graph.groups.values():
        if not group.prunable:
            continue
        for ref in group.producers + group.params:
            key = (ref.binding, ref.arg)
            array = new.setdefault(key, consts[key].copy())
            moved = np.moveaxis(array, ref.axis, 0)
            rows = channel_rows(ref).reshape(ref.length, ref.span)
            change(moved, rows)
    return rewrite(mod, [], replace=new), graph


def _pair(moved, rows):
    """Channel 2i + 1 of a ref repeats channel 2i (an exact k-means merge exists)."""
    for i in range(1, len(rows), 2):
        moved[rows[i]] = moved[rows[i - 1]]


def test_kmeans_merges_duplicated_channels_exactly_through_the_shuffles(shufflenet):
    mod, graph = _with_rows(shufflenet, _pair)
    small = KMeansChannelClustering(CompressConfig(ratio=0.5))(mod)
    after = analyze(small)
    for name, group in graph.groups.items():
        if group.prunable:
            assert after.groups[name].channels == group.channels // 2, name
    x = np.random.default_rng(0).normal(size=SHAPE).astype("float32")
    assert relative_error(host_fn(small)(x), host_fn(mod)(x)) < 1e-5


def test_mask_pruning_removes_dead_channels_exactly_through_the_shuffles(shufflenet):
    def kill(moved, rows):  # the odd channels of every class are zero all the way
        moved[rows[1::2].ravel()] = 0.0

    mod, graph = _with_rows(shufflenet, kill)
    pruner = MaskPruning(CompressConfig(ratio=0.5), RecoveryConfig(criterion="l1",
                                                                   recovery="none"))
    small = pruner(mod)
    for name, group in graph.groups.items():
        if group.prunable:
            keep = pruner.masks[name]
            assert keep.tolist() == [i % 2 == 0 for i in range(group.channels)], name
    x = np.random.default_rng(1).normal(size=SHAPE).astype("float32")
    assert relative_error(host_fn(small)(x), host_fn(mod)(x)) < 1e-5


@pytest.mark.slow
def test_kmeans_with_data_stays_exact_through_the_shuffles(shufflenet):
    """The data-aware path (group-by-group driver, site statistics at scattered channel
    positions, consumer refits) on the same duplicated channels: still exact."""
    mod, _ = _with_rows(shufflenet, _pair)
    # 32 samples: enough rows (4x4 maps) for every consumer's regression to be posed
    calibration = np.random.default_rng(2).normal(size=(32, *SHAPE[1:])).astype("float32")
    pruner = KMeansChannelClustering(CompressConfig(ratio=0.5), calibration=calibration)
    small = pruner(mod)
    assert pruner.model_error["kept"] == "recovered"  # not the data-free fallback
    assert all(choice == "compensation" for group in pruner.choices.values()
               for choice, _ in group.values())
    x = np.random.default_rng(3).normal(size=SHAPE).astype("float32")
    assert relative_error(host_fn(small)(x), host_fn(mod)(x)) < 1e-5


def test_a_layer_name_in_the_config_applies_to_its_classes(shufflenet):
    config = CompressConfig(ratio=0.5, per_layer={"conv3": 0.25}, skip=("conv1",))
    pruner = KMeansChannelClustering(config)
    pruner(shufflenet)
    kept = {r.name: (r.channels_before, r.channels_after) for r in pruner.reports}
    assert kept["conv1>conv4"] == kept["conv1>conv6+conv7"] == (12, 12)  # skipped
    assert kept["conv3>conv4"] == kept["conv3>conv6+conv7"] == (12, 9)  # a quarter goes
    with pytest.raises(ValueError, match="unknown layer name"):
        KMeansChannelClustering(CompressConfig(skip=("conv99",)))(shufflenet)


@pytest.mark.parametrize("indices, tracked", [((2, 0, 1, 3), True), ((0, 0, 1, 2), False),
                                              ((0, 1, 2, 9), False)])
def test_a_gather_of_channels_is_followed_only_when_it_is_a_selection(indices, tracked):
    """A take that repeats a channel, or reads past the end, freezes what flows in
    (no crash, no wrong rewrite); a permutation is followed."""
    from tvm import relax

    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(4, 2, 1, 1)).astype("float32")
    w2 = rng.normal(size=(3, 4, 1, 1)).astype("float32")

    def body(bb, x):
        y = bb.emit(relax.op.nn.conv2d(x, relax.const(w1)))
        y = bb.emit(relax.op.take(y, relax.const(np.array(indices, "int64")), axis=1,
                                  mode="clip"))
        y = bb.emit(relax.op.nn.conv2d(y, relax.const(w2)))
        return relax.op.nn.relu(y)

    group = analyze(relax_module((1, 2, 4, 4), body)).groups["conv0"]
    assert (group.frozen is None) == tracked
    if not tracked:
        assert "take of channels" in group.frozen


class Ghost(torch.nn.Module):
    """GhostNet's module: a primary 1x1 conv, a cheap depthwise conv of its output, both
    concatenated and sliced to the output width (``out[:, :oup]``)."""

    def __init__(self, cut):
        super().__init__()
        self.primary = torch.nn.Conv2d(3, 8, 1)
        self.cheap = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.cut, self.head = cut, torch.nn.Conv2d(len(range(16)[cut]), 6, 3, padding=1)
        self.fc = torch.nn.Linear(6, 4)

    def forward(self, x):
        x1 = torch.relu(self.primary(x))
        out = torch.cat([x1, torch.relu(self.cheap(x1))], 1)[:, self.cut]
        return self.fc(torch.relu(self.head(out)).mean((2, 3)))


@pytest.mark.parametrize("cut", [slice(0, 12), slice(2, None), slice(3, -3)])
def test_kmeans_through_a_channel_slice_is_exact_on_duplicated_channels(cut):
    torch.manual_seed(0)
    mod = prepared(Ghost(cut).eval(), (1, 3, 8, 8))
    graph = analyze(mod)
    assert any(m.kind == "strided_slice" for m in graph.moves.values())
    assert all(g.prunable for n, g in graph.groups.items() if n.startswith("conv0"))

    mod, graph = _with_rows(mod, _pair)
    small = KMeansChannelClustering(CompressConfig(ratio=0.5))(mod)
    classes = [g.channels for n, g in graph.groups.items() if n.startswith("conv0")]
    if cut == slice(3, -3):  # 0-2 read through the cheap conv only, 5-7 directly only
        assert sorted(classes) == [2, 3, 3]
    assert sum(g.channels for n, g in analyze(small).groups.items()
               if n.startswith("conv0")) == sum(kept_channels(c, 0.5) for c in classes) < 8
    x = np.random.default_rng(0).normal(size=(1, 3, 8, 8)).astype("float32")
    assert relative_error(host_fn(small)(x), host_fn(mod)(x)) < 1e-5


def test_an_onnx_shufflenet_compiles_and_compresses_through_its_slices(tmp_path):
    """TorchScript's ONNX export computes the halves of ``chunk`` and the shuffle's view from
    ``Shape`` nodes; folded before the import (`onnx_fold`), the graph has static shapes,
    matches PyTorch, and k-means follows its channel slices and shuffles."""
    import mdl_tvm

    model = families.build("shufflenetv2", tiny=True)
    x = torch.randn(*SHAPE, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "shufflenet.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False)
    base = mdl_tvm.compile(str(path), "host")
    want = model(x).detach().numpy()
    assert relative_error(np.asarray(base.run(x.numpy())[0]), want) < 1e-5
    small = mdl_tvm.compile(str(path), "host", compress="kmeans:0.5")
    assert small.stats.macs / base.stats.macs < 0.4  # 0.376: every class halved
    assert [r["name"] for r in small.compression
            if r["channels_after"] == r["channels_before"]] == ["dense0"]
