"""The hand-written NEON register-tile micro-kernels (`schedules.neon_tile`): which tiles get
one, the loop they assemble to, and convolutions that use them on the emulated phone against
PyTorch on odd geometries (Winograd with a part block of tiles, stride-2 and 7 x 7 GEMMs,
channels not a multiple of the vector), fp32 and fp16."""

import numpy as np
import pytest
import torch
from helpers import count_insns, disassemble

import mdl_tvm
from mdl_tvm.core.numerics import relative_error
from schedules.neon_tile import tile_fits, tile_kernel


@pytest.mark.parametrize(("tile", "fits"), [
    ((8, 3, 2, "float32", 4), True),    # the 8 x 12 fp32 tile: 24 + 3 + 2 registers
    ((12, 2, 3, "float32", 4), True),   # channel vectors: 12 tiles by lane x 2 vectors
    ((8, 4, 2, "float32", 4), False),   # 32 accumulators leave no register for operands
    ((8, 3, 1, "float16", 8), True),
    ((8, 3, 1, "float16", 4), False),   # fp16 computed in fp32 lanes: mixed, TIR path
    ((8, 3, 2, "float64", 2), False),
    ((12, 2, 2, "float32", 4), False),  # 2 vectors hold 8 of the 12 weights
    ((4, 5, 1, "float32", 4), True),    # 5 data vectors: loaded as 4 + 1
])
def test_tile_fits_registers_and_dtypes(tile, fits):
    assert tile_fits(*tile) is fits


@pytest.mark.parametrize("red", [1, 2, 5, 8, 64])
def test_kernel_has_one_fma_per_weight_and_vector_per_step(red):
    name, ir = tile_kernel(8, 3, 2, red, "float32")
    assert name in ir and "alwaysinline" in ir
    asm = ir.split('asm sideeffect "')[1].split('"')[0].split("\\0A")
    groups, rest = divmod(red - 1, 4)
    steps = 1 + rest + 4 * (groups > 0)  # written out; the loop runs `groups` times
    assert sum(line.startswith("fmul") for line in asm) == 24
    assert sum(line.startswith("fmla") for line in asm) == 24 * (steps - 1)
    assert sum(line.startswith("ld1 ") for line in asm) == 2 * steps
    assert (f"mov x12, #{groups}" in asm) is (groups > 0)
    # the 24 accumulators v5..v28 stored in order, four registers per st1
    stores = [line for line in asm if line.startswith("st1")]
    assert stores[0].startswith("st1 {v5.4s, v6.4s, v7.4s, v8.4s}") and len(stores) == 6


def test_wide_tiles_load_in_chunks_of_four_registers():
    _, ir = tile_kernel(4, 5, 1, 3, "float32")
    asm = ir.split('asm sideeffect "')[1].split('"')[0].split("\\0A")
    # 64 bytes post-increment, then the last register to the next step (stride - 64)
    assert "sub x13, $3, #64" in asm
    assert asm.count("ld1 {v1.4s, v2.4s, v3.4s, v4.4s}, [x9], #64") == 3
    assert asm.count("ld1 {v5.4s}, [x9], x13") == 3


def test_kernel_rejects_what_it_cannot_build():
    with pytest.raises(ValueError, match="float32 or float16"):
        tile_kernel(8, 3, 2, 4, "float64")
    with pytest.raises(ValueError, match=">= 1 steps"):
        tile_kernel(8, 3, 2, 0, "float32")


class _OddNet(torch.nn.Module):
    """Winograd on 11 -> 13 channels of a 18 x 14 map (a part block of tiles), a stride-2
    GEMM, a 1 x 1 conv read in place and 3 x 3 / 1 x 1 convs on a 7 x 7 map (channel
    vectors), with residual adds and ReLUs in the epilogues; a 5 x 5 conv to 3 channels (one
    weight block wider than the outputs: only 3 of its 4 channels reduced)."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(11, 13, 3, 1, 1)
        self.b = torch.nn.Conv2d(13, 24, 3, 2, 1)
        self.c = torch.nn.Conv2d(24, 24, 1)
        self.d = torch.nn.Conv2d(24, 40, 3, 2, 1)
        self.e = torch.nn.Conv2d(40, 40, 3, 1, 1)
        self.f = torch.nn.Conv2d(40, 36, 1)
        self.g = torch.nn.Conv2d(13, 3, 5, 1, 2)

    def forward(self, x):
        a = torch.relu(self.a(x))
        y = torch.relu(self.b(a))
        y = torch.relu(self.c(y) + y)
        y = torch.relu(self.d(y))
        y = torch.relu(self.e(y) + y)
        return torch.cat([self.f(y).flatten(1), self.g(a).flatten(1)], 1)


@pytest.mark.phone
@pytest.mark.slow  # two builds and two runs under QEMU: about 60 s
@pytest.mark.parametrize(("target", "precision", "tol"), [
    ("arm64", "fp32", 1e-5), ("arm64-fp16", "fp16", 2e-2)])
def test_convolutions_with_micro_kernels_match_pytorch_on_the_phone(
        phone_env, tmp_path, target, precision, tol):
    from deploy.emulator import run_on_emulator

    torch.manual_seed(0)
    model = _OddNet().eval()
    x = np.random.default_rng(3).standard_normal((1, 11, 28, 26)).astype("float32")
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    built = mdl_tvm.compile(model, target, example_inputs=(torch.from_numpy(x),),
                            precision=precision)
    so = built.export(str(tmp_path / f"odd-{precision}.so"))
    code = disassemble(so)
    arrangement = "4s" if precision == "fp32" else "8h"
    loads = count_insns(code, rf"\tld1\t\{{v\d+\.{arrangement}-v\d+\.{arrangement}\}}, "
                              r"\[x\d+\], x\d+")
    assert loads > 0, "no NEON micro-kernel in the library"
    (actual,) = run_on_emulator(so, [x], env=phone_env)
    assert actual.shape == expected.shape
    assert relative_error(actual, expected) < tol
