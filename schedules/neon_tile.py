"""Hand-written AArch64 register-tile micro-kernels, inlined into the TIR kernels.

The reduction of a register tile (`schedules.register_tile`) is ``acc[kk, v] += W[r, kk] *
X[r, v]`` over steps ``r``: per step ``nv`` vectors of ``X`` and ``kb`` by-lane weights, ``kb *
nv`` FMAs. Built from TIR, LLVM loads a step's three ``X`` vectors with ``ldp`` + ``ldr`` and
its weights with ``ldp``, and adds address arithmetic: 114 instructions per 4 steps of an
8 x 12 fp32 tile (96 FMAs). NCNN's and MNN's micro-kernels load each operand of a step with
one ``ld1`` of 2 to 4 consecutive registers and post-increment the pointer -- an instruction
LLVM only emits from intrinsics that return register tuples, which TIR cannot express.

`tile_kernel` writes that loop as inline assembly in a small LLVM IR function; the kernels
import it with TVM's ``pragma_import_llvm`` and call it (``call_extern``), and LLVM inlines it:
per step ``ld1 {X}, [x], stride`` + ``ld1 {W}, [w], stride`` + the FMAs (the first step
``fmul``, so no zero-fill), 4 steps per loop iteration, then the accumulators stored to
``acc`` with ``st1``. 8 x 12 fp32: 106 instructions per 4 steps.

Registers: ``W`` in ``v0 ..`` (below ``v16``, as fp16 by-lane FMAs require), ``X`` next, the
accumulators after them -- ``w_vectors + nv + kb * nv <= 32``.

Preconditions (checked by `tile_fits`; the caller falls back to TIR otherwise): AArch64 with
NEON (fp16 with FEAT_FP16), one dtype for ``X``, ``W`` and ``acc``, whole vectors (``W``
loaded as ``w_vectors`` full vectors, which may pass ``kb``).
"""

from __future__ import annotations

_SUFFIX = {"float32": ("4s", "s", 4), "float16": ("8h", "h", 8)}
NUM_REGS = 32
UNROLL = 4


def tile_fits(kb: int, nv: int, w_vectors: int, dtype: str, lanes: int) -> bool:
    """Whether `tile_kernel` has a kernel for this tile."""
    spec = _SUFFIX.get(str(dtype))
    return (spec is not None and spec[2] == lanes and kb >= 1 and nv >= 1
            and 1 <= w_vectors <= 4 and w_vectors * lanes >= kb
            and w_vectors + nv + kb * nv <= NUM_REGS)


def _regs(first: int, count: int, arrangement: str) -> str:
    return "{" + ", ".join(f"v{first + i}.{arrangement}" for i in range(count)) + "}"


def _step(kb: int, nv: int, w_vectors: int, dtype: str, first: bool) -> list[str]:
    arr, elem, lanes = _SUFFIX[dtype]
    x0, acc0 = w_vectors, w_vectors + nv
    # X in loads of at most 4 registers: whole 64-byte chunks, the last one advancing
    # to the next step (x13 = stride less the chunks before it)
    lines = [f"ld1 {_regs(x0 + i, 4, arr)}, [x9], #64" for i in range(0, nv - 1 - (nv - 1) % 4, 4)]
    lines += [f"ld1 {_regs(x0 + nv - 1 - (nv - 1) % 4, (nv - 1) % 4 + 1, arr)}, [x9], "
              + ("x13" if nv > 4 else "$3"), f"ld1 {_regs(0, w_vectors, arr)}, [x10], $4"]
    op = "fmul" if first else "fmla"
    for kk in range(kb):
        for v in range(nv):
            lines.append(f"{op} v{acc0 + kk * nv + v}.{arr}, v{x0 + v}.{arr}, "
                         f"v{kk // lanes}.{elem}[{kk % lanes}]")
    return lines


def _stores(count: int, first: int, arr: str) -> list[str]:
    lines = []
    for i in range(0, count, 4):
        n = min(4, count - i)
        lines.append(f"st1 {_regs(first + i, n, arr)}, [x11], #{16 * n}")
    return lines


def tile_kernel(kb: int, nv: int, w_vectors: int, red: int, dtype: str) -> tuple[str, str]:
    """``(name, LLVM IR)`` of the micro-kernel for one tile and reduction length.

    The function is ``i32 name(ptr acc, ptr x, ptr w, i64 x_stride, i64 w_stride)`` (strides
    in bytes between steps); it overwrites ``acc[(kk * nv + v) * L + lane]``.

    Parameters
    ----------
    kb, nv : int
        By-lane weights and vectors of ``X`` per step.
    w_vectors : int
        Vectors the step's weights are loaded as.
    red : int
        Reduction steps (at least 1).
    dtype : str
        ``"float32"`` or ``"float16"``.

    Returns
    -------
    tuple of str
    """
    if red < 1 or str(dtype) not in _SUFFIX:
        raise ValueError(f"a NEON tile needs >= 1 steps and dtype float32 or float16, not "
                         f"{red} steps of {dtype}")
    dtype = str(dtype)
    arr = _SUFFIX[dtype][0]
    groups, rest = divmod(red - 1, UNROLL)
    lines = ["mov x9, $1", "mov x10, $2"]
    if nv > 4:
        lines.append(f"sub x13, $3, #{64 * ((nv - 1) // 4)}")
    lines += _step(kb, nv, w_vectors, dtype, True)
    for _ in range(rest):
        lines += _step(kb, nv, w_vectors, dtype, False)
    if groups:
        lines += [f"mov x12, #{groups}", "1:"]
        for _ in range(UNROLL):
            lines += _step(kb, nv, w_vectors, dtype, False)
        lines += ["subs x12, x12, #1", "b.ne 1b"]
    lines += ["mov x11, $0"] + _stores(kb * nv, w_vectors + nv, arr)
    used = w_vectors + nv + kb * nv
    clobbers = ",".join([f"~{{x{r}}}" for r in (9, 10, 11, 12, 13)]
                        + [f"~{{q{r}}}" for r in range(used)] + ["~{memory}", "~{cc}"])
    name = f"mdl_neon_tile_{kb}x{nv}w{w_vectors}_{dtype}_r{red}"
    text = "\\0A".join(lines)
    ir = (f"define linkonce_odr i32 @{name}(ptr %acc, ptr %x, ptr %w, i64 %xs, i64 %ws) #0 {{\n"
          f"entry:\n  call void asm sideeffect \"{text}\", \"r,r,r,r,r,{clobbers}\""
          "(ptr %acc, ptr %x, ptr %w, i64 %xs, i64 %ws)\n  ret i32 0\n}\n"
          "attributes #0 = { alwaysinline nounwind }\n")
    return name, ir
