"""`mdl_tvm.compiler.concat_in_place`: the kernels feeding a concatenation write into it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from torch import nn
from tvm import relax
from tvm.relax import transform

import mdl_tvm
from mdl_tvm.compiler.compiled import start_state
from mdl_tvm.compiler.concat_in_place import concat_in_place, slice_offsets
from mdl_tvm.compiler.pipeline import run_pipeline
from mdl_tvm.core.numerics import relative_error
from mdl_tvm.core.relax_utils import op_name
from tests.helpers import seeded


class Fire(nn.Module):
    """SqueezeNet's fire module: squeeze 1x1, expand 1x1 and 3x3 (each with its ReLU),
    concatenated; `tap` also reads one expand branch after the concatenation."""

    def __init__(self, tap: bool = False):
        super().__init__()
        self.squeeze = nn.Conv2d(8, 4, 1)
        self.e1, self.e3 = nn.Conv2d(4, 16, 1), nn.Conv2d(4, 16, 3, padding=1)
        self.head = nn.Conv2d(32, 4, 1)
        self.tap = tap

    def forward(self, x):
        s = torch.relu(self.squeeze(x))
        a, b = torch.relu(self.e1(s)), torch.relu(self.e3(s))
        y = self.head(torch.cat([a, b], dim=1))
        return y + a[:, :4] if self.tap else y


def test_slice_offsets_channel_axis_and_refusals():
    # channels of a batch-1 NCHW tensor: contiguous slices at 64-byte-aligned offsets
    assert slice_offsets([(1, 16, 4, 4), (1, 8, 4, 4)], (1, 24, 4, 4), 4) == [0, 1024]
    assert slice_offsets([(1, 2, 4, 4), (1, 8, 4, 4)], (1, 10, 4, 4), 2) == [0, 64]
    # misaligned second slice (3 * 25 * 4 = 300 bytes), batch 2 (strided), shapes that
    # are no concatenation, no inputs
    assert slice_offsets([(1, 3, 5, 5), (1, 4, 5, 5)], (1, 7, 5, 5), 4) is None
    assert slice_offsets([(2, 16, 4, 4), (2, 16, 4, 4)], (2, 32, 4, 4), 4) is None
    assert slice_offsets([(1, 16, 4, 4), (1, 16, 4, 5)], (1, 32, 4, 4), 4) is None
    assert slice_offsets([], (1, 32, 4, 4), 4) is None
    # the leading axis: 2-D row blocks
    assert slice_offsets([(16, 4), (16, 4)], (32, 4), 4) == [0, 256]


def _after_call_tir_rewrite(model, shape):
    state = run_pipeline(start_state(model, "host", input_shapes=[shape])[0], until="build")
    with state.profile.tvm_target():
        return tvm.transform.Sequential([
            transform.LegalizeOps(), transform.ToNonDataflow(),
            transform.RemovePurityChecking(), transform.CallTIRRewrite()])(state.mod)


def _calls(func):
    names = []
    for block in func.body.blocks:
        for b in block.bindings:
            if isinstance(b.value, relax.Call):
                op = b.value.op
                names.append(op.name_hint if isinstance(op, relax.GlobalVar)
                             else op_name(b.value) or str(op))
    return names


def test_fire_module_concat_becomes_two_views():
    before = _after_call_tir_rewrite(seeded(Fire), (1, 8, 6, 6))
    report: dict = {}
    after = concat_in_place(report)(before)
    assert report["concats_in_place"] == 1
    old, new = _calls(before["main"]), _calls(after["main"])
    assert sum(n.startswith("concatenate") for n in old) == 1
    assert not any(n.startswith("concatenate") for n in new)
    # one view per branch; the second slice (16 * 36 * 4 bytes in) gets a zero byte_offset
    assert new.count("relax.memory.view") == 2
    assert new.count("relax.memory.ensure_zero_offset") == 1
    assert new.count("relax.builtin.alloc_tensor") == old.count("relax.builtin.alloc_tensor") - 2
    # the concatenation's buffer is allocated before the first branch kernel writes it
    first_view = new.index("relax.memory.view")
    assert new[first_view - 1] == "relax.builtin.alloc_tensor"


@pytest.mark.parametrize("tap,expected", [(False, 1), (True, 0)])
def test_built_models_match_torch_with_and_without_rewrite(tap, expected):
    """A branch also read after the concatenation keeps its own buffer (the rewrite is
    skipped); both builds match PyTorch, through ``main`` and ``main_zc``."""
    model = seeded(Fire, 0, tap)
    x = np.random.default_rng(0).standard_normal((1, 8, 6, 6)).astype("float32")
    state = run_pipeline(start_state(model, "host", input_shapes=[x.shape])[0])
    assert state.concats_in_place == expected
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    compiled = mdl_tvm.compile(model, "host", input_shapes=[x.shape])
    assert compiled.zero_copy["emitted"]
    plain = compiled.vm()["main"](tvm.runtime.tensor(x))  # not main_zc, which run() uses
    assert relative_error(plain[0].numpy(), want) < 1e-5
    assert relative_error(compiled.run(x)[0], want) < 1e-5
