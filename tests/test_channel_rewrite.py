"""Structural before/after tests of the channel rewrite (TVM's idiom: the pass output is
`tvm.ir.assert_structural_equal` to an expected module written in TVMScript).

Tiny graphs with known weights: conv -> bias -> relu -> conv, and conv -> relu -> flatten
-> dense. Weights are function parameters in TVMScript, bound to numpy arrays
(`helpers.bind_weights`), so every constant of the expected module is written out: the
shapes and the exact values the pass must produce.
"""

import numpy as np
import tvm
from helpers import bind_weights
from tvm.script import ir as I
from tvm.script import relax as R

from relay_passes import ChannelMasks, CompressConfig, KMeansChannelClustering, MaskPruning
from relay_passes.channel_graph import WeightRef
from relay_passes.channel_rewrite import Edit, apply_edits, rewrite
from relay_passes.config import RecoveryConfig


@I.ir_module
class ConvReluConv:
    @R.function
    def main(x: R.Tensor((1, 3, 6, 6), "float32"), w0: R.Tensor((4, 3, 3, 3), "float32"),
             b0: R.Tensor((1, 4, 1, 1), "float32"), w1: R.Tensor((2, 4, 1, 1), "float32")):
        with R.dataflow():
            a = R.nn.conv2d(x, w0)
            b = R.add(a, b0)
            c = R.nn.relu(b)
            gv = R.nn.conv2d(c, w1)
            R.output(gv)
        return gv


@I.ir_module
class ConvReluConvTwoChannels:
    """What pruning or merging the 4 hidden channels down to 2 must give."""

    @R.function
    def main(x: R.Tensor((1, 3, 6, 6), "float32"), w0: R.Tensor((2, 3, 3, 3), "float32"),
             b0: R.Tensor((1, 2, 1, 1), "float32"), w1: R.Tensor((2, 2, 1, 1), "float32")):
        with R.dataflow():
            a = R.nn.conv2d(x, w0)
            b = R.add(a, b0)
            c = R.nn.relu(b)
            gv = R.nn.conv2d(c, w1)
            R.output(gv)
        return gv


def _weights(seed=0):
    rng = np.random.default_rng(seed)
    return {"w0": rng.standard_normal((4, 3, 3, 3)).astype("float32"),
            "b0": rng.standard_normal((1, 4, 1, 1)).astype("float32"),
            "w1": rng.standard_normal((2, 4, 1, 1)).astype("float32")}


def test_mask_prune_keeps_the_masked_channels_on_every_side():
    """Keep channels 1 and 3: rows 1, 3 of the producer and the bias, columns 1, 3 of the
    consumer; the output conv (frozen: it makes the output) is untouched."""
    w = _weights()
    before = bind_weights(ConvReluConv, w)
    pruner = MaskPruning(options=RecoveryConfig(recovery="none"),
                         masks=ChannelMasks(conv0=np.array([False, True, False, True])))
    after = pruner(before)
    keep = [1, 3]
    expected = bind_weights(ConvReluConvTwoChannels, {
        "w0": w["w0"][keep], "b0": w["b0"][:, keep], "w1": w["w1"][:, keep]})
    tvm.ir.assert_structural_equal(after, expected)
    assert [(r.name, r.channels_before, r.channels_after) for r in pruner.reports] == [
        ("conv0", 4, 2), ("conv1", 2, 2)]


def test_magnitude_prune_keeps_the_largest_filters():
    """L1 criterion, ratio 0.5: filters scaled so channels 0 and 2 are the largest."""
    w = _weights(1)
    w["w0"] *= np.array([10.0, 0.1, 5.0, 0.2], np.float32)[:, None, None, None]
    after = MaskPruning(CompressConfig(ratio=0.5), RecoveryConfig(criterion="l1",
                                                                  recovery="none"))(
        bind_weights(ConvReluConv, w))
    keep = [0, 2]
    expected = bind_weights(ConvReluConvTwoChannels, {
        "w0": w["w0"][keep], "b0": w["b0"][:, keep], "w1": w["w1"][:, keep]})
    tvm.ir.assert_structural_equal(after, expected)


def test_kmeans_merges_duplicate_channels_into_one_and_sums_the_consumer():
    """Channels 2, 3 repeat channels 0, 1 (filter and bias): k-means at ratio 0.5 finds the
    two pairs; each pair keeps its (identical) filter, the consumer gets the sum of the
    pair's columns."""
    w = _weights(2)
    w["w0"][2:], w["b0"][:, 2:] = w["w0"][:2], w["b0"][:, :2]
    after = KMeansChannelClustering(CompressConfig(ratio=0.5, seed=0))(
        bind_weights(ConvReluConv, w))
    w1 = w["w1"].astype(np.float64)
    expected = bind_weights(ConvReluConvTwoChannels, {
        "w0": w["w0"][:2], "b0": w["b0"][:, :2],
        "w1": (w1[:, [0, 1]] + w1[:, [2, 3]]).astype("float32")})
    tvm.ir.assert_structural_equal(after, expected)


def test_kmeans_reference_replaces_channels_by_centroids_keeping_shapes():
    """``merge=False``: every channel becomes its cluster's mean, no shape changes."""
    w = _weights(3)
    w["w0"][2:] = w["w0"][:2] + 1e-3  # near-duplicates: clusters {0, 2} and {1, 3}
    w["b0"][:, 2:] = w["b0"][:, :2]
    after = KMeansChannelClustering(CompressConfig(ratio=0.5), merge=False)(
        bind_weights(ConvReluConv, w))
    centroid = ((w["w0"][:2].astype(np.float64) + w["w0"][2:]) / 2).astype("float32")
    expected = bind_weights(ConvReluConv, {
        "w0": np.concatenate([centroid, centroid]), "b0": w["b0"], "w1": w["w1"]})
    tvm.ir.assert_structural_equal(after, expected)


@I.ir_module
class ConvFlattenDense:
    @R.function
    def main(x: R.Tensor((1, 1, 4, 4), "float32"), w0: R.Tensor((3, 1, 3, 3), "float32"),
             w1: R.Tensor((12, 5), "float32")):
        with R.dataflow():
            a = R.nn.conv2d(x, w0)
            b = R.nn.relu(a)
            c = R.reshape(b, (1, 12))
            gv = R.matmul(c, w1)
            R.output(gv)
        return gv


@I.ir_module
class ConvFlattenDenseOneChannel:
    @R.function
    def main(x: R.Tensor((1, 1, 4, 4), "float32"), w0: R.Tensor((1, 1, 3, 3), "float32"),
             w1: R.Tensor((4, 5), "float32")):
        with R.dataflow():
            a = R.nn.conv2d(x, w0)
            b = R.nn.relu(a)
            c = R.reshape(b, (1, 4))
            gv = R.matmul(c, w1)
            R.output(gv)
        return gv


def test_flatten_then_dense_drops_the_channel_rows_and_resizes_the_reshape():
    """A channel of a 2x2 map spans 4 dense rows: keeping channel 1 keeps rows 4..7 and the
    flatten becomes (1, 4)."""
    rng = np.random.default_rng(4)
    w0 = rng.standard_normal((3, 1, 3, 3)).astype("float32")
    w1 = rng.standard_normal((12, 5)).astype("float32")
    after = MaskPruning(options=RecoveryConfig(recovery="none"),
                        masks=ChannelMasks(conv0=np.array([False, True, False])))(
        bind_weights(ConvFlattenDense, {"w0": w0, "w1": w1}))
    expected = bind_weights(ConvFlattenDenseOneChannel, {"w0": w0[[1]], "w1": w1[4:8]})
    tvm.ir.assert_structural_equal(after, expected)


def test_rewrite_with_explicit_edits_and_a_probe_output():
    """`rewrite` itself: a (2, 4) matrix on the producer rows, the bias and the consumer
    columns; ``outputs=(2,)`` also returns binding 2 (the relu) -- a probe."""
    w = _weights(5)
    matrix = np.array([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    edits = [Edit(WeightRef(0, 1, 0, 0, 4), matrix), Edit(WeightRef(1, 1, 1, 0, 4), matrix),
             Edit(WeightRef(3, 1, 1, 0, 4), matrix)]
    after = rewrite(bind_weights(ConvReluConv, w), edits, outputs=(2,))

    @I.ir_module
    class Probe:
        @R.function
        def main(x: R.Tensor((1, 3, 6, 6), "float32"), w0: R.Tensor((2, 3, 3, 3), "float32"),
                 b0: R.Tensor((1, 2, 1, 1), "float32"), w1: R.Tensor((2, 2, 1, 1), "float32")):
            with R.dataflow():
                a = R.nn.conv2d(x, w0)
                b = R.add(a, b0)
                c = R.nn.relu(b)
                gv = R.nn.conv2d(c, w1)
                R.output(c, gv)
            return (gv, c)

    def mix(array, axis):
        moved = np.moveaxis(array.astype(np.float64), axis, 0)
        return np.moveaxis(np.tensordot(matrix, moved, axes=(1, 0)), 0, axis).astype("float32")

    expected = bind_weights(Probe, {"w0": mix(w["w0"], 0), "b0": mix(w["b0"], 1),
                                    "w1": mix(w["w1"], 1)})
    tvm.ir.assert_structural_equal(after, expected)
    # two segments on one axis are applied from the highest offset down
    rows = np.arange(6.0).reshape(6, 1)
    two = [Edit(WeightRef(0, 1, 0, 0, 2), np.array([[1.0, 1.0]])),
           Edit(WeightRef(0, 1, 0, 3, 3), np.array([[0.0, 0.0, 1.0]]))]
    assert apply_edits(rows, two).ravel().tolist() == [1.0, 2.0, 5.0]


@I.ir_module
class ExpandDepthwiseProject:
    @R.function
    def main(x: R.Tensor((1, 2, 5, 5), "float32"), w0: R.Tensor((4, 2, 1, 1), "float32"),
             dw: R.Tensor((4, 1, 3, 3), "float32"), w1: R.Tensor((3, 4, 1, 1), "float32")):
        with R.dataflow():
            a = R.nn.conv2d(x, w0)
            b = R.nn.relu(a)
            c = R.nn.conv2d(b, dw, padding=(1, 1), groups=4)
            d = R.nn.relu(c)
            gv = R.nn.conv2d(d, w1)
            R.output(gv)
        return gv


@I.ir_module
class ExpandDepthwiseProjectTwoChannels:
    @R.function
    def main(x: R.Tensor((1, 2, 5, 5), "float32"), w0: R.Tensor((2, 2, 1, 1), "float32"),
             dw: R.Tensor((2, 1, 3, 3), "float32"), w1: R.Tensor((3, 2, 1, 1), "float32")):
        with R.dataflow():
            a = R.nn.conv2d(x, w0)
            b = R.nn.relu(a)
            c = R.nn.conv2d(b, dw, padding=(1, 1), groups=2)
            d = R.nn.relu(c)
            gv = R.nn.conv2d(d, w1)
            R.output(gv)
        return gv


def test_depthwise_filters_and_groups_follow_the_pruned_channels():
    """The depthwise conv between producer and consumer keeps the pruned channels' filters
    out too, and its ``groups`` becomes the new channel count."""
    rng = np.random.default_rng(6)
    w = {"w0": rng.standard_normal((4, 2, 1, 1)).astype("float32"),
         "dw": rng.standard_normal((4, 1, 3, 3)).astype("float32"),
         "w1": rng.standard_normal((3, 4, 1, 1)).astype("float32")}
    after = MaskPruning(options=RecoveryConfig(recovery="none"),
                        masks=ChannelMasks(conv0=np.array([True, False, True, False])))(
        bind_weights(ExpandDepthwiseProject, w))
    keep = [0, 2]
    expected = bind_weights(ExpandDepthwiseProjectTwoChannels, {
        "w0": w["w0"][keep], "dw": w["dw"][keep], "w1": w["w1"][:, keep]})
    tvm.ir.assert_structural_equal(after, expected)
