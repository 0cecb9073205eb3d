"""Masked fine-tuning (DNS): mask updates with splice-back, and an exact commit into Relax."""

import copy

import numpy as np
import pytest
import torch
from conftest import relative_error

import mdl_tvm
from mdl_tvm import zoo
from mdl_tvm.finetune import FinetuneConfig, _update_mask, masked_finetune
from relay_passes import MaskPruning, RecoveryConfig


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
    with pytest.raises(TypeError, match="FinetuneConfig"):
        masked_finetune(zoo.build("lenet5"), {"ratio": 0.5})


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
