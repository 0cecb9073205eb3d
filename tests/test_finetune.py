"""Masked fine-tuning (DNS): mask updates with splice-back, and an exact commit into Relax."""

import copy

import numpy as np
import pytest
import torch
from helpers import Residual, seeded
from test_compensation import SHAPE, DependentNet

import mdl_tvm
from mdl_tvm import zoo
from mdl_tvm.compiler.finetune import (
    FinetuneConfig,
    _prunable_layers,
    _update_mask,
    masked_finetune,
)
from mdl_tvm.core.numerics import relative_error
from relay_passes import CompressConfig, KMeansChannelClustering, MaskPruning, RecoveryConfig


def test_update_mask_splices_back_only_past_the_margin():
    mask = np.array([True, True, False, False])
    # channel 2 beats kept channel 1 by less than the margin: masks stay
    assert _update_mask(mask, np.array([5.0, 1.0, 1.05, 0.0]), 2, 1.1).tolist() == mask.tolist()
    # by more than the margin: it is spliced back, channel 1 pruned
    assert _update_mask(mask, np.array([5.0, 1.0, 1.5, 0.0]), 2, 1.1).tolist() == [
        True, False, True, False]


def test_bad_config():
    with pytest.raises(ValueError, match=r"ratio must be in \[0, 1\)"):
        FinetuneConfig(ratio=1.0)
    with pytest.raises(ValueError, match="epochs > 0"):
        FinetuneConfig(epochs=0)
    with pytest.raises(TypeError, match="FinetuneConfig"):
        masked_finetune(zoo.build("lenet5"), {"ratio": 0.5})


def test_groups_are_the_channel_graphs_names_matched_to_torch_layers():
    """The fine-tuner masks the layers the compressors will prune, under the channel
    graph's names: LeNet-5's four hidden layers in order; in a residual block the two
    convs the add couples share one group (BatchNorm-folded rows still match)."""
    lenet = zoo.build("lenet5")
    groups = _prunable_layers(lenet, torch.zeros(1, 1, 28, 28))
    layers = [m for m in lenet.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert [name for name, _ in groups] == ["conv0", "conv1", "dense0", "dense1"]
    assert [ms for _, ms in groups] == [[m] for m in layers[:4]]  # not the output layer
    net = seeded(Residual)
    groups = dict(_prunable_layers(net, torch.zeros(1, 3, 8, 8)))
    assert groups == {"conv0": [net.stem, net.body[3]], "conv1": [net.body[0]]}


@pytest.mark.training
def test_masked_finetune_commits_exactly_into_the_graph():
    torch.manual_seed(0)
    model = copy.deepcopy(zoo.build("lenet5"))
    model, masks = masked_finetune(model, FinetuneConfig(ratio=0.5, epochs=0.5, limit=2000,
                                                         interval=5), log=lambda s: None)
    assert {k: int(v.sum()) for k, v in masks.items()} == {
        "conv0": 3, "conv1": 8, "dense0": 60, "dense1": 42}
    pruner = MaskPruning(options=RecoveryConfig(recovery="none"), masks=masks)
    compiled = mdl_tvm.compile(model, "host", input_shapes=[(1, 1, 28, 28)], compress=pruner)
    x = np.random.default_rng(0).standard_normal((4, 1, 28, 28)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    out = np.concatenate([compiled.run(xi[None])[0] for xi in x])
    assert relative_error(out, ref) < 1e-5
    assert [r["channels_after"] for r in compiled.compression][:4] == [3, 8, 60, 42]


@pytest.mark.training
def test_kmeans_merge_starts_masked_finetune_from_the_merged_network():
    """`KMeansChannelClustering` with calibration exposes ``.masks`` (each cluster's kept
    representative) and ``.consume``: fine-tuning with a learning rate of zero from them
    and committing the masks computes what the k-means build computes."""
    rng = np.random.default_rng(0)
    model = DependentNet().eval()
    calibration = rng.standard_normal((64, *SHAPE[1:])).astype(np.float32)
    merge = KMeansChannelClustering(CompressConfig(ratio=0.5), calibration=calibration,
                                    options=RecoveryConfig(recovery="ls"))
    merged = mdl_tvm.compile(model, "host", input_shapes=[SHAPE], compress=merge)
    assert {k: int(v.sum()) for k, v in merge.masks.items()} == {
        r["name"]: r["channels_after"]
        for r in merged.compression if r["channels_after"] < r["channels_before"]}
    tuned, masks = masked_finetune(copy.deepcopy(model), FinetuneConfig(
        epochs=0.01, lr=0.0, limit=512, update_masks=False), log=lambda s: None,
        masks=merge.masks, consume=merge.consume)
    commit = MaskPruning(options=RecoveryConfig(recovery="none"), masks=masks)
    compiled = mdl_tvm.compile(tuned, "host", input_shapes=[SHAPE], compress=commit)
    assert compiled.stats.macs == merged.stats.macs
    x = rng.standard_normal((4, *SHAPE)).astype(np.float32)
    out = np.concatenate([compiled.run(xi)[0] for xi in x])
    ref = np.concatenate([merged.run(xi)[0] for xi in x])
    assert relative_error(out, ref) < 1e-4
