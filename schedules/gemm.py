"""Rule for the packed GEMM convolution (any groups) with its fused epilogue.

Compute (`conv2d_gemm`, made by `schedules.legalize`): the NCHW convolution written
directly, ``out[n, k, y, x] = sum_(c, ky, kx) data[n, c, y * sh + ky * dh - top, ...]
* w[k / kb, c, ky, kx, k % kb]`` (zero outside the image; with groups, ``c`` runs over
``k``'s group's inputs) over weights packed by
`schedules.compute.pack_conv_weight`; the block carries ``mdl.rule = "gemm_conv"``, the
register tile (``mdl.tile`` = kb output channels, ``mdl.vector`` = vectors of pixels) and
the geometry (``mdl.conv``). Unscheduled, it is the reference the tests compare with.

Recognises
    a PrimFunc with that anchor block followed by element-wise blocks (bias, residual add,
    activation, casts) that `schedules.epilogue.extract_epilogue` can apply.

Schedule
    replaces the function by `schedules.gemm_kernel.gemm_conv_func` (the same parameters):
    im2col per segment of output rows where needed, a ``kb x nv`` register tile of vector
    accumulators over flattened output pixels, or a ``P x nv`` one over output channels
    (`schedules.gemm_channels`, when the choice says ``by_channels``), the epilogue applied
    to the accumulators.
"""

from __future__ import annotations

from tvm import s_tir, te, tirx

from schedules.common import Rule, annotated_block
from schedules.compute import RULE_KEY, TILE_KEY, VECTOR_KEY
from schedules.epilogue import UnsupportedEpilogue, extract_epilogue
from schedules.gemm_kernel import gemm_conv_func

CONV_KEY = "mdl.conv"


def conv2d_gemm(data, weight_packed, out_channels: int, strides, padding, dilation,
                tile_vectors: int, rows: int, out_dtype: str = "float32", k_groups: int = 1,
                groups: int = 1, by_channels: bool = False):
    """NCHW convolution over packed weights, annotated for `GemmConv`.

    Parameters
    ----------
    data : te.Tensor
        ``[N, C, H, W]``.
    weight_packed : te.Tensor
        ``[K / kb, C, KH, KW, kb]`` (`schedules.compute.pack_conv_weight`).
    out_channels : int
    strides, dilation : tuple of int
    padding : tuple of int
        ``(top, left, bottom, right)``.
    tile_vectors : int
        Vectors of pixels per register tile (`by_channels`: pixels per block).
    rows : int
        Output rows per segment (the kernel's parallel and im2col unit).
    out_dtype : str
    k_groups : int
        Parallel tasks per segment, each with ``1 / k_groups`` of the output-channel chunks
        (a divisor of them).
    groups : int
        Channel groups: output channel ``k`` reads inputs ``k / (K / groups) * C / groups``
        onwards (``C / groups`` of them; the packed weights' second axis); ``kb`` divides
        ``K / groups``.
    by_channels : bool
        Output channels as the vector (`schedules.gemm_channels`; one group, ``kb`` a
        multiple of the lanes dividing `out_channels`).

    Returns
    -------
    te.Tensor
        ``[N, out_channels, OH, OW]``.
    """
    n, c, h, w = (int(v) for v in data.shape)
    _, cg, kh, kw, kb = (int(v) for v in weight_packed.shape)
    if c != cg * groups or out_channels % groups or (groups > 1 and out_channels // groups % kb):
        raise ValueError(f"{groups} groups do not fit {c} inputs, {out_channels} outputs "
                         f"and weights packed {tuple(weight_packed.shape)}")
    kg = out_channels // groups
    (sh, sw), (dh, dw) = strides, dilation
    top, left, bottom, right = padding
    oh = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
    ow = (w + left + right - dw * (kw - 1) - 1) // sw + 1
    rc = te.reduce_axis((0, cg), "rc")
    ry = te.reduce_axis((0, kh), "ry")
    rx = te.reduce_axis((0, kw), "rx")

    def _value(b, k, y, x):
        iy, ix = y * sh + ry * dh - top, x * sw + rx * dw - left
        inside = tirx.all(iy >= 0, iy < h, ix >= 0, ix < w)
        ch = rc if groups == 1 else k // kg * cg + rc
        pixel = data[b, ch, tirx.max(tirx.min(iy, h - 1), 0), tirx.max(tirx.min(ix, w - 1), 0)]
        pixel = tirx.if_then_else(inside, pixel.astype(out_dtype), tirx.const(0, out_dtype))
        return te.sum(pixel * weight_packed[k // kb, rc, ry, rx, k % kb].astype(out_dtype),
                      axis=[rc, ry, rx])

    attrs = {RULE_KEY: "gemm_conv", TILE_KEY: kb, VECTOR_KEY: tile_vectors,
             CONV_KEY: [sh, sw, top, left, bottom, right, dh, dw, rows, k_groups, groups,
                        int(by_channels)]}
    return te.compute((n, out_channels, oh, ow), _value, name="mdl_gemm_conv", attrs=attrs)


class GemmConv(Rule):
    """Packed GEMM convolution with fused epilogue (see module docstring)."""

    name = "gemm_conv"

    def apply(self, func: tirx.PrimFunc, cfg) -> s_tir.Schedule | None:
        sch = s_tir.Schedule(func)
        found = annotated_block(sch, "gemm_conv")
        if found is None:
            return None
        block = sch.get(found[0])
        ann = block.annotations
        sh, sw, top, left, bottom, right, dh, dw, rows, k_groups, groups, by_channels = (
            int(v) for v in ann[CONV_KEY])
        reads = {len(r.source.ty.shape): r.source for r in block.reads}
        data, weight = reads.get(4), reads.get(5)
        if data is None or weight is None or not all(
                any(p.same_as(b) for p in func.params) for b in (data, weight)):
            return None
        try:
            epilogue = extract_epilogue(func, "gemm_conv")
        except UnsupportedEpilogue:
            return None
        out_shape = tuple(int(v) for v in block.writes[0].source.ty.shape)
        dtype = str(block.writes[0].source.ty.dtype)
        geometry = {"strides": (sh, sw), "padding": (top, left, bottom, right),
                    "dilation": (dh, dw), "out_shape": out_shape,
                    "vectors": int(ann[VECTOR_KEY]), "rows": rows, "dtype": dtype,
                    "k_groups": k_groups, "by_lane": cfg.indexed_fma, "groups": groups,
                    "by_channels": bool(by_channels), "neon": cfg.neon_tiles}
        new = gemm_conv_func(func, data, weight, geometry, epilogue, cfg.lanes(dtype),
                             parallel=cfg.num_cores > 1)
        new = new.without_attr("global_symbol")
        return s_tir.Schedule(new.with_attrs(dict(func.attrs)) if func.attrs else new)
