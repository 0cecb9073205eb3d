"""How a GEMM convolution's output is cut: segments of output rows (the parallel and im2col
unit), their tasks, and the block that ends a segment.

Pure functions of the shape (and of the cores that share the tasks), used by the cost
model (`schedules.algo`) and the kernel (`schedules.gemm_kernel`).
"""

from __future__ import annotations

from schedules.config import ceil_div

IM2COL_BYTES = 256 * 1024  # im2col bytes per segment the row choice aims to stay under
LAUNCH_COST = 60_000  # one more parallel loop's launch and join, both cores (~10 us)


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


def whole_segments(choices: list, chunks: int) -> list[tuple[int, int]]:
    """x86: each segment reads all the weights again from L2 / L3 (1152 -> 192 on 7 x 7,
    rows 1 / 7: 0.129 / 0.093 ms), so the tallest only, split by every divisor of the
    chunks (the caller weighs how evenly each count of tasks fills the cores: 5 chunks of
    64 channels on 2 cores run as 3). No choices: none."""
    if not choices:
        return []
    rows = max(r for _, r in choices)
    return [(g, rows) for g in range(1, chunks + 1) if chunks % g == 0]


def on_cores(cfg, cost: float, segs: int, shared: int, tasks: int) -> float:
    """The estimated `cost` spread over ``cfg.num_cores`` as the kernel runs it
    (`schedules.gemm_kernel`): `tasks` in one parallel loop, or, when `shared` (k-groups
    sharing a segment's im2col copy) is over 1, segment by segment a parallel copy then
    `shared` parallel tasks -- two thread-pool launches per segment (host, 2 threads,
    3 -> 32 3 x 3 stride 2 on 224 x 224, 7 segments: 214 us as 7 tasks, 349 us as 7 x 2
    launches of 2 tasks). With indexed FMAs (AArch64) `cost` itself: the phone is
    measured at one thread, where the split is not seen."""
    if cfg.indexed_fma:  # AArch64: measured only at one thread (the phone's counts)
        return cost
    if shared > 1:
        return cost * balance(shared, cfg.num_cores) + (2 * segs - 1) * LAUNCH_COST
    return cost * balance(tasks, cfg.num_cores)


def balance(tasks: int, cores: int) -> float:
    """How much longer `tasks` equal tasks take on `cores` than a perfect split: the
    runtime hands each core a contiguous ``ceil(tasks / cores)`` of them, so 5 tasks on 2
    cores run as 3 (1.2x). Measured, host 2 threads, 1152 -> 320 1x1 on 7 x 7: 5 tasks of
    64 channels scaled 1.56x over one thread, ONNX Runtime's even split 1.95x."""
    return ceil_div(tasks, cores) * cores / tasks
