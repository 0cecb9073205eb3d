"""Winograd convolution: the batched GEMM, the output transform and the fused epilogue.

Compute (`winograd_conv2d`, one ``call_te`` made by `schedules.legalize` after the input
transform `schedules.wino_input`)::

    M[e, k, t]    = sum_c U[e, k / kb, c, k % kb] * V[e, c, t]     batched GEMM, e < alpha^2
    S[k, i, e2, t] = A^T M  (over e1)                               output transform, columns
    O[k, i, j, t]  = S A    (over e2)                               output transform, rows
    Y[n, k, y, x]  = O[k, y % m, x % m, tile(n, y / m, x / m)]      unpack to NCHW

``U`` (constant, folded by numpy at compile time, `schedules.wino_math.transform_weight`)
is packed ``[alpha^2, K / kb, C, kb]``; ``V`` holds the transformed tiles of each channel
contiguously, so vectors run over tiles everywhere and no transform needs a transpose.

The TE definition is the reference the tests compare with; the rule replaces it.

Recognises
    a PrimFunc with a root block annotated ``mdl.rule = "winograd"`` (the GEMM, with the
    register tile and ``mdl.winograd = [m, nH, nW, by_channels]``), the output transform,
    the unpack (``mdl.rule = "winograd_out"``) and any element-wise blocks FuseOps appended
    (bias, residual add, ReLU).

Schedule
    replaces the function by `schedules.winograd_kernel.winograd_output_func` (same
    parameters): per ``kb`` output channels and block of ``nv * L`` tiles, the GEMM of every
    Winograd coordinate into a scratch block, then the output transform and the epilogue
    written tile row by tile row; or, when the algorithm choice put the vectors over output
    channels (few tiles, `schedules.algo`), by
    `schedules.winograd_channels.winograd_channels_func`.
"""

from __future__ import annotations

from tvm import s_tir, te, tirx

from schedules.common import Rule, annotated_block
from schedules.compute import RULE_KEY, TILE_KEY, VECTOR_KEY
from schedules.epilogue import UnsupportedEpilogue, extract_epilogue
from schedules.wino_math import matrices, pick, transform_rows
from schedules.winograd_channels import winograd_channels_func
from schedules.winograd_kernel import winograd_output_func

WINOGRAD_KEY = "mdl.winograd"


def winograd_conv2d(v, u, out_shape, tiles_hw, m: int, tile_vectors: int,
                    out_dtype: str = "float32", by_channels: bool = False):
    """GEMM + output transform + NCHW unpack of a Winograd F(m, 3) convolution.

    Parameters
    ----------
    v : te.Tensor
        Transformed input ``[alpha^2, C, T_padded]`` (`schedules.wino_input`).
    u : te.Tensor
        Transformed, packed weights ``[alpha^2, K_chunks, C, kb]``.
    out_shape : tuple of int
        ``(N, K, OH, OW)``.
    tiles_hw : tuple of int
        ``(nH, nW)`` tiles per image.
    m : int
        Output tile size.
    tile_vectors : int
        Vectors of tiles per GEMM register tile (recorded for the rule).
    out_dtype : str
    by_channels : bool
        Recorded for the rule: vectors over output channels
        (`schedules.winograd_channels`) rather than over tiles.

    Returns
    -------
    te.Tensor
        ``[N, K, OH, OW]``.
    """
    alpha = m + 2
    _, channels, tiles_padded = (int(d) for d in v.shape)
    _, chunks, _, kb = (int(d) for d in u.shape)
    n, k_out, oh, ow = out_shape
    n_h, n_w = tiles_hw
    at, _, _ = matrices(m, out_dtype)
    c = te.reduce_axis((0, channels), "c")
    gemm = te.compute(
        (alpha * alpha, chunks * kb, tiles_padded),
        lambda e, k, t: te.sum(u[e, k // kb, c, k % kb].astype(out_dtype)
                               * v[e, c, t].astype(out_dtype), axis=c),
        name="mdl_winograd_gemm",
        attrs={RULE_KEY: "winograd", TILE_KEY: kb, VECTOR_KEY: tile_vectors,
               WINOGRAD_KEY: [m, n_h, n_w, int(by_channels)]})
    cols = te.compute(
        (k_out, m, alpha, tiles_padded),
        lambda k, i, e2, t: pick(i, transform_rows(
            at, [gemm[e1 * alpha + e2, k, t] for e1 in range(alpha)], out_dtype)),
        name="mdl_winograd_out_cols")
    tiles = te.compute(
        (k_out, m, m, tiles_padded),
        lambda k, i, j, t: pick(j, transform_rows(
            at, [cols[k, i, e2, t] for e2 in range(alpha)], out_dtype)),
        name="mdl_winograd_out")
    return te.compute(
        (n, k_out, oh, ow),
        lambda b, k, y, x: tiles[k, y % m, x % m, (b * n_h + y // m) * n_w + x // m],
        name="mdl_winograd_unpack", attrs={RULE_KEY: "winograd_out"})


class WinogradConv(Rule):
    """Batched GEMM + output transform + fused epilogue (see module docstring)."""

    name = "winograd"

    def apply(self, func: tirx.PrimFunc, cfg) -> s_tir.Schedule | None:
        sch = s_tir.Schedule(func)
        found = annotated_block(sch, "winograd")
        if found is None:
            return None
        gemm = sch.get(found[0])
        ann = gemm.annotations
        m, n_h, n_w, by_channels = (int(x) for x in ann[WINOGRAD_KEY])
        reads = {len(r.source.ty.shape): r.source for r in gemm.reads}
        v, u = reads.get(3), reads.get(4)
        if v is None or u is None or not all(
                any(p.same_as(b) for p in func.params) for b in (v, u)):
            return None
        try:
            epilogue = extract_epilogue(func, "winograd_out")
        except UnsupportedEpilogue:
            return None
        dtype = str(gemm.writes[0].source.ty.dtype)
        out = annotated_block(sch, "winograd_out")
        out_shape = tuple(int(x) for x in sch.get(out[0]).writes[0].source.ty.shape)
        geometry = {"m": m, "vectors": int(ann[VECTOR_KEY]), "tiles_hw": (n_h, n_w),
                    "out_shape": out_shape, "dtype": dtype, "neon": cfg.neon_tiles}
        kernel = winograd_channels_func if by_channels else winograd_output_func
        new = kernel(func, v, u, geometry, epilogue, cfg.lanes(dtype),
                     parallel=cfg.num_cores > 1)
        new = new.without_attr("global_symbol")
        return s_tir.Schedule(new.with_attrs(dict(func.attrs)) if func.attrs else new)
