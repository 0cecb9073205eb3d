"""Vectorisable exp / sigmoid / SiLU (`schedules.fast_math`): accurate, fused, no libm."""

import numpy as np
import pytest
import torch
from helpers import count_insns, disassemble, host_fn, relax_module, rules_used
from tvm import relax

import mdl_tvm
from mdl_tvm.compiler.compiled import start_state
from mdl_tvm.compiler.pipeline import run_pipeline

OPS = {"exp": (relax.op.exp, np.exp),
       "sigmoid": (relax.op.sigmoid, lambda x: 1 / (1 + np.exp(-x))),
       "silu": (relax.op.nn.silu, lambda x: x / (1 + np.exp(-x)))}


def test_fast_exp_matches_expf_over_the_float_range():
    x = np.concatenate([np.linspace(-87.0, 88.0, 6001), [0.0, -0.0, 1e-8, -1e-8, 0.5,
                                                         np.log(2) / 2]]).astype("float32")
    got = host_fn(relax_module(x.shape, lambda bb, v: relax.op.exp(v)))(x)
    want = np.exp(x.astype("float64"))
    assert np.max(np.abs(got - want) / want) < 5e-7
    tiny = np.array([-88.5, -100.0, -1e30], "float32")  # past expf's normal range: 0
    assert np.all(host_fn(relax_module(tiny.shape, lambda bb, v: relax.op.exp(v)))(tiny) < 2e-38)


@pytest.mark.parametrize("dtype, bound", [("float32", 1e-6), ("float16", 2e-3)])
@pytest.mark.parametrize("name", sorted(OPS))
def test_activations_match_numpy(name, dtype, bound):
    op, reference = OPS[name]
    x = (np.random.default_rng(0).standard_normal((3, 37)) * 6).astype(dtype)
    x[0, :4] = [-30, 30, 0, -11]  # saturated tails, zero; fp16 keeps e^11 finite
    if name == "exp":
        x = np.clip(x, -11, 11)
    got = host_fn(relax_module(x.shape, lambda bb, v: op(v), dtype))(x)
    want = reference(x.astype("float64"))
    assert got.dtype == dtype
    assert np.max(np.abs(got - want) / np.maximum(np.abs(want), 1e-3)) < bound


class ConvSiLU(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(8, 16, 3, padding=1)
        self.dw = torch.nn.Conv2d(16, 16, 3, padding=1, groups=16)

    def forward(self, x):
        y = torch.nn.functional.silu(self.conv(x))
        return torch.sigmoid(self.dw(y)) * y


def test_silu_and_sigmoid_fuse_into_convs_and_the_arm_code_calls_no_libm(tmp_path):
    """Before: ``llvm.exp`` on a vector became one ``expf`` call per lane."""
    torch.manual_seed(0)
    model = ConvSiLU().eval()
    x = np.random.default_rng(0).standard_normal((1, 8, 12, 12)).astype("float32")
    host = mdl_tvm.compile(model, "host", input_shapes=[x.shape])
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    assert np.max(np.abs(host.run(x)[0] - want)) < 1e-5 * np.max(np.abs(want))
    lowered = run_pipeline(start_state(model, "arm64", input_shapes=[x.shape])[0], until="build")
    assert not lowered.slow_paths
    rules = rules_used(lowered.mod)
    fused = {name: rule for name, rule in rules.items() if "sigmoid" in name}
    assert fused and all(rule not in (None, "fallback", "reduction") for rule in fused.values())
    arm = mdl_tvm.compile(model, "arm64", input_shapes=[x.shape])
    code = disassemble(arm.export(str(tmp_path / "silu.so")))
    assert count_insns(code, r"<expf(@plt)?>") == 0
    assert count_insns(code, r"frintm\s+v\d+\.4s") > 0  # the vector floor of fast_exp


def test_fp16_silu_and_sigmoid_stay_in_fp16_on_the_phone(tmp_path):
    """fp16 SiLU / sigmoid run in 8-lane fp16 arithmetic (``frintm v.8h``), not widened to
    two 4-lane fp32 halves; the tiny tail is kept (sigmoid(-11) = 1.7e-5, subnormal)."""
    torch.manual_seed(0)
    model = ConvSiLU().eval()
    shape = (1, 8, 72, 72)  # outputs past logits size: the output layer runs fp16 too
    arm = mdl_tvm.compile(model, "arm64-fp16", input_shapes=[shape], precision="fp16")
    code = disassemble(arm.export(str(tmp_path / "silu16.so")))
    assert count_insns(code, r"frintm\s+v\d+\.8h") > 0
    assert count_insns(code, r"frintm\s+v\d+\.4s") == 0
    tail = np.array([-11.0, -17.0, -30.0, 11.0], "float16")
    got = host_fn(relax_module(tail.shape, lambda bb, v: relax.op.sigmoid(v), "float16"))(tail)
    want = 1 / (1 + np.exp(-tail.astype("float64")))
    assert np.all(np.abs(got - want) <= 2e-3 * np.maximum(want, 1e-3))
