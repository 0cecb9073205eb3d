"""`fold_constants`: the weight arithmetic of an imported model in numpy, with exactly the
module TVM's own `FoldConstant` makes (before / after, structurally equal, data included)."""

import numpy as np
import pytest
import torch
import tvm
from helpers import seeded
from torch import nn
from tvm import relax

from mdl_tvm.compiler.fold_constants import fold_constants
from mdl_tvm.compiler.importers import import_model
from mdl_tvm.core.relax_utils import bound_constants


class BnNet(nn.Module):
    """conv-BN-ReLU6, depthwise conv-BN, a transposed dense layer and a constant ``exp``
    (an op the numpy folder leaves to FoldConstant)."""

    def __init__(self):
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.b, self.bn_b = nn.Conv2d(8, 8, 3, groups=8, bias=False), nn.BatchNorm2d(8)
        self.w = nn.Parameter(torch.randn(8, 5))
        for bn in (self.bn_a, self.bn_b):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)

    def forward(self, x):
        x = self.bn_b(self.b(torch.clamp(self.bn_a(self.a(x)), 0, 6)))
        return x.mean((2, 3)) @ (self.w * torch.exp(self.w.t()).sum())


def _inference(mod):
    return tvm.transform.Sequential([relax.transform.FoldBatchnormToConv2D(),
                                     relax.transform.DecomposeOpsForInference()])(mod)


def _tidy(mod):
    return tvm.transform.Sequential([relax.transform.FoldConstant(),
                                     relax.transform.CanonicalizeBindings(),
                                     relax.transform.DeadCodeElimination(["main"])])(mod)


@pytest.fixture(scope="module")
def imported():
    return _inference(import_model(seeded(BnNet).eval(), input_shapes=[(1, 3, 8, 8)])[0])


def test_same_module_as_tvm_fold_constant(imported):
    expected = _tidy(imported)
    got = _tidy(fold_constants(imported))
    tvm.ir.assert_structural_equal(got, expected, map_free_vars=True)
    for key, value in bound_constants(expected).items():  # bit for bit
        assert np.array_equal(bound_constants(got)[key], value)


def test_folds_the_bn_arithmetic_and_leaves_unknown_ops(imported):
    folded = fold_constants(imported)
    ops = [b.value.op.name for block in folded["main"].body.blocks for b in block.bindings
           if isinstance(getattr(b.value, "op", None), tvm.ir.Op)]
    assert "relax.sqrt" not in ops and "relax.divide" not in ops  # BN's scale: folded
    assert "relax.exp" in ops  # not ours to fold: FoldConstant's
    assert ops.count("relax.nn.conv2d") == 2


def test_nothing_to_fold_returns_the_module(imported):
    tidy = _tidy(imported)
    assert fold_constants(tidy).same_as(tidy)
