"""Relax legalization that lowers conv2d, depthwise conv2d and matmul to the packed kernels.

`legalize_map(cfg)` is a ``customize_legalize_map`` for `relax.transform.LegalizeOps`:

* ``relax.nn.conv2d`` NCHW/OIHW with groups = 1 → when `schedules.algo.choose_conv_algo`
  picks Winograd (3 x 3, stride 1, constant weights, where it saves instructions): the
  weights transformed by numpy (`schedules.wino_math.transform_weight`, a constant), the
  input transform (`schedules.wino_input`, its own pre-scheduled kernel) and
  `schedules.winograd.winograd_conv2d`; otherwise `compute.pack_conv_weight` (its own
  call, folded into a constant by `FoldConstant` when the weight is a constant) and
  `compute.conv2d_packed`;
* ``relax.nn.conv2d`` with groups = IC (depthwise, any multiplier) → `compute.depthwise_conv2d`;
* ``relax.matmul`` of a 2-D input by a 2-D weight → `compute.pack_dense_weight` +
  `compute.dense_packed`;
* ``relax.nn.max_pool2d`` NCHW with stride 1 or 2 → `schedules.pool_rule.max_pool_reference`
  (an opaque call the ``max_pool`` rule replaces by the hand-scheduled kernel).

Data and weights may differ in float dtype: fp16 weights with fp32 data (the
``fp16-storage`` precision) are packed in fp16 and widened inside the kernel's inner loop.
* ``relax.nn.conv2d`` with 1 < groups <= `MAX_SPLIT_GROUPS` (RegNet, ResNeXt, ShuffleNet)
  → one kernel for every group when a group's outputs fill whole output-channel blocks:
  the GEMM kernel (`conv2d_gemm` with ``groups``), or the packed direct one
  (`compute.conv2d_packed` with ``groups``) when no GEMM tile fits; otherwise one
  ordinary conv per group on the paths above, over channel slices, concatenated.

Anything else (other layouts, symbolic shapes, integer dtypes, batched matmuls) keeps
TVM's default legalization and is scheduled by the generic rules.
The register tiles come from `schedules.config`, so the weight layout matches the target.
"""

from __future__ import annotations

from functools import partial

import tvm

from mdl_tvm.core.relax_utils import static_shape
from schedules import compute, depthwise_kernel, fast_math
from schedules.algo import ConvAlgo, choose_conv_algo, tiles_padded
from schedules.config import (
    ConvGeometry,
    MachineConfig,
    choose_conv_tile,
    choose_dense_tile,
    choose_row_tile,
)
from schedules.depthwise_rows import depthwise_nchw
from schedules.gemm import conv2d_gemm
from schedules.pool_rule import max_pool_reference
from schedules.wino_input_rule import input_transform_reference
from schedules.wino_math import transform_weight
from schedules.winograd import winograd_conv2d

_FLOAT_DTYPES = ("float32", "float16")
# Grouped convolutions with at most this many groups run as that many ordinary convs.
MAX_SPLIT_GROUPS = 64


def _default(op_name: str, bb, call):
    return tvm.ir.Op.get(op_name).get_attr("FLegalize")(bb, call)


def _dtype(expr) -> str:
    return str(getattr(expr.ty, "dtype", ""))


def _out_dtype(call, fallback: str) -> str:
    out = call.attrs.out_dtype
    out = "" if out is None else str(out)
    return fallback if out in ("", "void") else out


def _conv2d(cfg: MachineConfig, bb, call):
    attrs = call.attrs
    data, weight = call.args
    dshape, wshape = static_shape(data), static_shape(weight)
    layouts_ok = (attrs.data_layout == "NCHW" and attrs.kernel_layout == "OIHW"
                  and attrs.out_layout in ("NCHW", ""))
    dtype = _dtype(data)
    if (not layouts_ok or dshape is None or wshape is None or len(dshape) != 4
            or dtype not in _FLOAT_DTYPES or _dtype(weight) not in _FLOAT_DTYPES):
        return _default("relax.nn.conv2d", bb, call)
    out_dtype = _out_dtype(call, dtype)
    strides = tuple(int(v) for v in attrs.strides)
    dilation = tuple(int(v) for v in attrs.dilation)
    padding = tuple(int(v) for v in attrs.padding)
    if len(padding) == 2:
        padding = padding * 2
    groups = int(attrs.groups)
    in_c, out_c = dshape[1], wshape[0]
    kh, kw = wshape[2], wshape[3]
    oh = (dshape[2] + padding[0] + padding[2] - dilation[0] * (kh - 1) - 1) // strides[0] + 1
    ow = (dshape[3] + padding[1] + padding[3] - dilation[1] * (kw - 1) - 1) // strides[1] + 1
    if oh <= 0 or ow <= 0:
        return _default("relax.nn.conv2d", bb, call)
    if groups == 1:
        geo = ConvGeometry(in_c, dshape[2], dshape[3], out_c, ow, (kh, kw), strides, dilation,
                           padding[0], padding[1])
        algo = choose_conv_algo(cfg, out_dtype, geo, oh, batch=dshape[0],
                                winograd=isinstance(weight, tvm.ir.Constant))
        if algo.kind == "winograd":
            return _winograd(cfg, bb, data, weight, algo, padding, (oh, ow), out_dtype)
        if algo.kind == "gemm":
            packed = bb.emit_te(compute.pack_conv_weight, weight, algo.k_block,
                                primfunc_name_hint="mdl_pack_conv_weight")
            return bb.call_te(conv2d_gemm, data, packed, out_c, strides, padding, dilation,
                              algo.tile_vectors, algo.rows, out_dtype, algo.k_groups, 1,
                              algo.by_channels, primfunc_name_hint="mdl_conv2d_gemm")
        tile = choose_conv_tile(cfg, out_dtype, geo, oh)
        packed = bb.emit_te(compute.pack_conv_weight, weight, tile.oc_block,
                            primfunc_name_hint="mdl_pack_conv_weight")
        return bb.call_te(compute.conv2d_packed, data, packed, out_c, strides, padding,
                          dilation, tile.ow_tile, out_dtype, tile.vector_axis,
                          primfunc_name_hint="mdl_conv2d")
    if groups == in_c and wshape[1] == 1 and out_c % in_c == 0:
        if out_c == in_c and depthwise_kernel.choose_row_lanes(
                cfg, out_dtype, dshape[2:], (oh, ow), (kh, kw), strides, padding, dilation):
            return bb.call_te(depthwise_nchw, data, weight, strides[0], out_dtype,
                              primfunc_name_hint="mdl_depthwise_conv2d_rows")
        row_tile = choose_row_tile(cfg, out_dtype, ow)
        return bb.call_te(compute.depthwise_conv2d, data, weight, strides, padding, dilation,
                          row_tile, out_dtype, primfunc_name_hint="mdl_depthwise_conv2d")
    if 1 < groups <= MAX_SPLIT_GROUPS and in_c % groups == 0 and out_c % groups == 0:
        return _grouped(cfg, bb, call, groups, strides, padding, dilation, (oh, ow), out_dtype)
    return _default("relax.nn.conv2d", bb, call)


def _grouped(cfg: MachineConfig, bb, call, groups: int, strides, padding, dilation, out_hw,
             out_dtype: str):
    """A grouped convolution as one packed GEMM kernel (`conv2d_gemm` with ``groups``: each
    register tile reduces over its own group's im2col rows) when a GEMM register tile
    divides a group's outputs; else as one packed direct kernel when the direct block
    does; else as `groups` ordinary convs (GEMM or Winograd) over channel slices,
    concatenated. The single kernel measured faster on both sides: RegNet-style at 224,
    host 2 threads 9.98 -> 7.25 ms, phone fp32 138.0 -> 137.3 M and fp16 77.7 -> 72.4 M
    instructions (a slice, an input transform and a GEMM per group, each a call with its
    own buffers, cost more at 7 x 7 and 14 x 14 than Winograd saves)."""
    from tvm import relax, topi

    data, weight = call.args
    n, in_c, h, w = static_shape(data)
    out_c, cg, kh, kw = static_shape(weight)
    kg = out_c // groups
    oh, ow = out_hw
    algo = choose_conv_algo(cfg, out_dtype, ConvGeometry(
        in_c, h, w, out_c, ow, (kh, kw), strides, dilation, padding[0], padding[1], groups),
        oh, batch=n)
    if algo.kind == "gemm":
        packed = bb.emit_te(compute.pack_conv_weight, weight, algo.k_block,
                            primfunc_name_hint="mdl_pack_conv_weight")
        return bb.call_te(conv2d_gemm, data, packed, out_c, strides, padding, dilation,
                          algo.tile_vectors, algo.rows, out_dtype, algo.k_groups, groups,
                          primfunc_name_hint="mdl_conv2d_grouped")
    tile = choose_conv_tile(cfg, out_dtype, ConvGeometry(
        cg, h, w, kg, ow, (kh, kw), strides, dilation, padding[0], padding[1]), oh)
    if kg % tile.oc_block == 0:
        packed = bb.emit_te(compute.pack_conv_weight, weight, tile.oc_block,
                            primfunc_name_hint="mdl_pack_conv_weight")
        return bb.call_te(compute.conv2d_packed, data, packed, out_c, strides, padding,
                          dilation, tile.ow_tile, out_dtype, tile.vector_axis, groups,
                          primfunc_name_hint="mdl_conv2d_grouped")
    outs = []
    for g in range(groups):
        part = bb.emit_te(topi.strided_slice, data, [0, g * cg, 0, 0],
                          [n, (g + 1) * cg, h, w], primfunc_name_hint="mdl_group_slice")
        if isinstance(weight, tvm.ir.Constant):
            wg = relax.const(weight.value.numpy()[g * kg:(g + 1) * kg])
        else:
            wg = bb.emit_te(topi.strided_slice, weight, [g * kg, 0, 0, 0],
                            [(g + 1) * kg, cg, kh, kw], primfunc_name_hint="mdl_group_slice")
        sub = bb.normalize(relax.op.nn.conv2d(
            part, wg, strides=strides, padding=padding, dilation=dilation,
            groups=1, data_layout="NCHW", kernel_layout="OIHW", out_dtype=out_dtype))
        outs.append(bb.emit(_conv2d(cfg, bb, sub)))
    return bb.call_te(topi.concatenate, outs, 1, primfunc_name_hint="mdl_group_concat")


def _winograd(cfg: MachineConfig, bb, data, weight, algo: ConvAlgo, padding, out_hw,
              out_dtype: str):
    """Input transform call + GEMM / output transform call with numpy-transformed weights."""
    from tvm import relax

    n, in_c = static_shape(data)[:2]
    wvalue = weight.value.numpy()
    m, lanes = algo.tile_size, cfg.lanes(out_dtype)
    (oh, ow), block = out_hw, algo.tile_vectors * lanes
    tiles_hw = (-(-oh // m), -(-ow // m))
    tiles = n * tiles_hw[0] * tiles_hw[1]
    padded = (tiles_padded(tiles, algo.tile_vectors, lanes) if algo.by_channels
              else -(-tiles // block) * block)
    u = transform_weight(wvalue, m, algo.k_block, out_dtype, store_dtype=str(wvalue.dtype))
    func = input_transform_reference(static_shape(data), _dtype(data), padding, m, out_dtype,
                                     padded)
    gvar = bb.add_func(func, "mdl_conv2d_winograd_input")
    v = bb.emit(relax.call_tir(gvar, [data], relax.TensorType(((m + 2) ** 2, in_c, padded),
                                                              out_dtype)))
    return bb.call_te(winograd_conv2d, v, relax.const(u), (n, wvalue.shape[0], oh, ow),
                      tiles_hw, m, algo.tile_vectors, out_dtype, algo.by_channels,
                      primfunc_name_hint="mdl_conv2d_winograd")


def _matmul(cfg: MachineConfig, bb, call):
    data, weight = call.args
    dshape, wshape = static_shape(data), static_shape(weight)
    dtype = _dtype(data)
    if (dshape is None or wshape is None or len(dshape) != 2 or len(wshape) != 2
            or dshape[1] != wshape[0] or dtype not in _FLOAT_DTYPES
            or _dtype(weight) not in _FLOAT_DTYPES):
        return _default("relax.matmul", bb, call)
    out_dtype = _out_dtype(call, dtype)
    n_block, m_tile = choose_dense_tile(cfg, out_dtype, dshape[0], wshape[1])
    packed = bb.emit_te(compute.pack_dense_weight, weight, n_block,
                        primfunc_name_hint="mdl_pack_dense_weight")
    return bb.call_te(compute.dense_packed, data, packed, wshape[1], m_tile, out_dtype,
                      primfunc_name_hint="mdl_dense")


def _max_pool2d(cfg: MachineConfig, bb, call):
    from tvm import relax

    attrs, data = call.attrs, call.args[0]
    shape, out_shape = static_shape(data), static_shape(call)
    dtype = _dtype(data)
    strides = tuple(int(v) for v in attrs.strides)
    if (attrs.layout != "NCHW" or attrs.out_layout not in ("NCHW", "") or shape is None
            or out_shape is None or len(shape) != 4 or dtype not in _FLOAT_DTYPES
            or strides[1] not in (1, 2) or any(int(v) != 1 for v in attrs.dilation)):
        return _default("relax.nn.max_pool2d", bb, call)
    padding = tuple(int(v) for v in attrs.padding)
    padding = padding * 2 if len(padding) == 2 else padding
    func = max_pool_reference(shape, dtype, tuple(int(v) for v in attrs.pool_size), strides,
                              padding, tuple(out_shape[2:]))
    gvar = bb.add_func(func, "mdl_max_pool2d")
    return relax.call_tir(gvar, [data], relax.TensorType(out_shape, dtype))


def legalize_map(cfg: MachineConfig) -> dict:
    """The ``customize_legalize_map`` for `relax.transform.LegalizeOps`.

    Parameters
    ----------
    cfg : MachineConfig
        Lane count and registers of the target; they fix the weight packing.

    Returns
    -------
    dict
        ``{"relax.nn.conv2d": fn, "relax.matmul": fn, "relax.nn.max_pool2d": fn}`` and
        the vectorisable exp / sigmoid / SiLU of `schedules.fast_math`.
    """
    return {"relax.nn.conv2d": partial(_conv2d, cfg), "relax.matmul": partial(_matmul, cfg),
            "relax.nn.max_pool2d": partial(_max_pool2d, cfg), **fast_math.LEGALIZE}
