"""Per-kernel instruction profiles on the emulated phone (`deploy.kernel_profile`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.emulator import count_instructions
from deploy.kernel_profile import RUNTIME, KernelProfile, attribute, find_base, kernel_name
from mdl_tvm.core.errors import DeviceError

# A made-up library: wrapper + body of two kernels, code words 0x1000 + offset / 4.
SYMBOLS = [(0x100, 0x40, "__tvm_ffi_conv"), (0x140, 0x40, "__tvm_ffi_pool"),
           (0x200, 0x80, "conv_compute_"), (0x280, 0x40, "pool_compute_")]
CODE = b"".join((0x1000 + i).to_bytes(4, "little") for i in range(0x2C0 // 4))
BASE = 0x7F00_0000


def _ran(base: int, offsets_counts: dict) -> tuple[dict, dict]:
    counts = {base + off: n for off, n in offsets_counts.items()}
    words = {base + off: 0x1000 + off // 4 for off in offsets_counts}
    return counts, words


def test_find_base_matches_the_library_code_not_a_lookalike():
    """A dense region of other code where every address ran 3 times fits the "wrapper and
    body ran equally often" signature at many bases; only the real one has the library's
    instruction words."""
    counts, words = _ran(BASE, {0x100: 3, 0x104: 3, 0x140: 3, 0x200: 3, 0x204: 90,
                                0x280: 3, 0x284: 30})
    for addr in range(0x1000, 0x9000, 4):  # the look-alike: e.g. the interpreter
        counts[addr], words[addr] = 3, 0xD503201F
    assert find_base(counts, words, SYMBOLS, CODE) == BASE
    with pytest.raises(DeviceError, match="no kernel"):
        find_base({0x10: 1}, {0x10: 0}, SYMBOLS, CODE)


def test_attribute_charges_addresses_to_kernels_and_the_rest_to_the_runtime():
    per_address = {BASE + 0x100: 1, BASE + 0x204: 90, BASE + 0x2B0: 5,  # after pool body
                   BASE + 0x284: 30, 0x1234: 70}
    rows = attribute(per_address, SYMBOLS, BASE)
    assert rows == {"conv": 91, "pool": 35, RUNTIME: 70}
    # the last kernel's parallel-loop body past its symbol: the kernel's up to the code's end
    past = {BASE + 0x2C8: 4, BASE + 0x310: 2}
    assert attribute(past, SYMBOLS, BASE) == {RUNTIME: 6}
    assert attribute(past, SYMBOLS, BASE, end=0x300) == {"pool": 4, RUNTIME: 2}
    assert kernel_name("__tvm_ffi_fused_conv2d_relu") == "fused_conv2d_relu"
    assert kernel_name("fused_conv2d_relu_compute_") == "fused_conv2d_relu"
    table = KernelProfile({"conv": 91, RUNTIME: 70}, 161).markdown(
        KernelProfile({"conv": 182, RUNTIME: 70}, 252), names=("fp16", "fp32"))
    assert "| `conv` | 182 | 91 | 0.50x |" in table and "| total | 252 | 161 |" in table


@pytest.mark.phone
def test_profile_of_a_real_library_adds_up_to_the_instruction_count(phone_env, arm64_model):
    from deploy.kernel_profile import _symbols, profile_instructions

    so_path, x, _ = arm64_model
    prof = profile_instructions(so_path, [x], runs=3, env=phone_env)
    assert prof.total == count_instructions(so_path, [x], runs=3, env=phone_env)
    assert sum(prof.kernels.values()) == prof.total  # every instruction charged once
    values = list(prof.kernels.values())
    assert values == sorted(values, reverse=True)  # largest first
    kernels = [k for k in prof.kernels if not k.startswith("(")]
    library = {kernel_name(name) for _, _, name in _symbols(Path(so_path))}
    assert kernels and set(kernels) <= library, (kernels, library)  # the library's functions
    assert any("conv2d" in k for k in kernels) and prof.kernels[RUNTIME] > 0
    assert sum(prof.kernels[k] for k in kernels) > 0.2 * prof.total
