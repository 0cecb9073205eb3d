"""How a GEMM convolution's output is cut: segments of output rows (the parallel and im2col
unit), their tasks, and the block that ends a segment.

Pure functions of the shape, shared by the cost model (`schedules.algo`) and the kernel
(`schedules.gemm_kernel`).
"""

from __future__ import annotations

from schedules.config import ceil_div

IM2COL_BYTES = 256 * 1024  # im2col bytes per segment the row choice aims to stay under


def tail_tile(seg: int, nv: int, lanes: int) -> tuple | None:
    """``(vectors, lanes)`` of the block that ends a segment of `seg` pixels after its whole
    ``nv * L`` blocks -- fewer vectors, or half-width ones (``.4h`` / ``.2s`` on NEON, ``ymm``
    under ``zmm``) -- or None when a full block shifted back to the segment's end costs
    no more (no pixels left, or as many computed)."""
    left = seg % (nv * lanes)
    if not left or seg < nv * lanes:
        return None
    width = lanes // 2 if left <= lanes // 2 and lanes >= 4 else lanes
    tile = (ceil_div(left, width), width)
    return tile if tile[0] * tile[1] < nv * lanes else None


def task_choices(out_rows: int, ow: int, block: int, col_bytes: int, chunks: int,
                 wanted: int, budget: int = IM2COL_BYTES) -> list[tuple[int, int]]:
    """``(k_groups, rows)`` pairs: segments of at least one pixel block with the im2col
    buffer within budget; a direct GEMM (`col_bytes` 0) splits its tasks by every
    output-channel chunk, an im2col one by a divisor of the chunks up to `wanted` (the
    groups share one copy of the segment), so that small maps need not be cut into short
    segments whose last pixel block is mostly waste."""
    fits = [r for r in range(1, out_rows + 1) if r * ow >= block
            and (r == 1 or r * ow * col_bytes <= budget)]
    groups = [chunks] if not col_bytes else [
        g for g in range(1, min(chunks, wanted) + 1) if chunks % g == 0]
    return [(g, r) for g in groups for r in fits]


def whole_segments(choices: list, chunks: int, wanted: int) -> list[tuple[int, int]]:
    """x86: each segment reads all the weights again from L2 / L3 (1152 -> 192 on 7 x 7,
    rows 1 / 7: 0.129 / 0.093 ms), so the tallest only, split by chunks up to the first
    divisor giving `wanted` tasks (5 chunks on 2 cores: 5). No choices: none."""
    if not choices:
        return []
    rows = max(r for _, r in choices)
    enough = next((g for g in range(wanted, chunks + 1) if chunks % g == 0), chunks)
    return [(g, rows) for g in range(1, enough + 1) if chunks % g == 0]
