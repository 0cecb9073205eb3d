"""Tensor-expression definitions of the kernels the rules schedule.

Each kernel keeps the graph's NCHW activations and computes into a *blocked* intermediate
whose innermost axis is one register block of output channels (or of output pixels), padded
up to a whole block, so the scheduled inner loop never needs a remainder guard:

* `conv2d_packed`: ``conv[n, oc_chunk, oh, ow_padded, oc_block]`` (vectors over channels) or
  ``conv[n, oc_chunk, oh, oc_block, ow_padded]`` (vectors over output pixels, stride 1) from
  weights packed ``[oc_chunk, ic, kh, kw, oc_block]`` (`pack_conv_weight`, zero-filled past
  the last real channel), then an unpack block that copies the real channels back to NCHW.
  37 output channels become 5 chunks of 8, of which the unpack reads 37.
* `depthwise_conv2d`: ``dw[n, c, oh, ow_padded]`` from an input padded (and, for stride s > 1,
  then split into s column phases, so a stride-2 window still reads contiguous columns).
* `dense_packed`: ``out[m, n_chunk, n_block]`` from weights packed ``[n_chunk, k, n_block]``.

The blocked block carries the annotations ``mdl.rule`` (which rule schedules it),
``mdl.tile`` (the register tile chosen by `schedules.config`) and, for convolutions,
``mdl.vector`` (the vectorised axis). Weight packing is a separate
TE function applied to the weight alone, so `FoldConstant` evaluates it at compile time.
"""

from __future__ import annotations

from tvm import te, tirx

from schedules.config import ceil_div

RULE_KEY = "mdl.rule"
TILE_KEY = "mdl.tile"
VECTOR_KEY = "mdl.vector"
ROLE_KEY = "mdl.role"


def _zero(dtype):
    return tirx.const(0, dtype)


def pack_conv_weight(weight: te.Tensor, oc_block: int) -> te.Tensor:
    """Re-lay OIHW weights as ``[O / oc_block, I, KH, KW, oc_block]``, zero-padding O.

    Parameters
    ----------
    weight : te.Tensor
        Weights ``[O, I, KH, KW]``.
    oc_block : int
        Output channels per block.

    Returns
    -------
    te.Tensor
    """
    out_c, in_c, kh, kw = (int(v) for v in weight.shape)
    chunks = ceil_div(out_c, oc_block)

    def _value(o, i, y, x, b):
        oc = o * oc_block + b
        return tirx.if_then_else(oc < out_c, weight[tirx.min(oc, out_c - 1), i, y, x],
                                 _zero(weight.dtype))

    return te.compute((chunks, in_c, kh, kw, oc_block), _value, name="mdl_weight_pack")


def _pad_input(data, pad_top, pad_left, rows, cols):
    """``data`` [N, C, H, W] zero-padded to ``rows x cols`` with the image at (top, left)."""
    n, c, h, w = (int(v) for v in data.shape)
    if pad_top == 0 and pad_left == 0 and rows <= h and cols <= w:
        return data

    def _value(i, j, y, x):
        inside = tirx.all(y >= pad_top, y < pad_top + h, x >= pad_left, x < pad_left + w)
        return tirx.if_then_else(inside, data[i, j, y - pad_top, x - pad_left], _zero(data.dtype))

    return te.compute((n, c, rows, cols), _value, name="mdl_pad")


def conv2d_packed(data, weight_packed, out_channels, strides, padding, dilation, ow_tile,
                  out_dtype="float32", vector_axis="oc", groups=1):
    """NCHW convolution with packed weights; returns the NCHW output.

    Parameters
    ----------
    data : te.Tensor
        Input ``[N, IC, H, W]``.
    weight_packed : te.Tensor
        Weights from `pack_conv_weight`: ``[OC_chunks, IC, KH, KW, oc_block]``.
    out_channels : int
        Real output channels (``<= OC_chunks * oc_block``).
    strides, dilation : tuple of int
        ``(h, w)``.
    padding : tuple of int
        ``(top, left, bottom, right)``.
    ow_tile : int
        Output pixels per register block; the output width is padded to a multiple.
    out_dtype : str
    vector_axis : str
        ``"oc"``: blocked layout ``[n, oc_chunk, oh, ow, oc_block]`` (vectors over channels);
        ``"ow"``: ``[n, oc_chunk, oh, oc_block, ow]`` (vectors over output pixels).
    groups : int
        A grouped convolution: the packed weight's ``IC`` is one group's input channels
        and ``oc_block`` divides a group's outputs, so a chunk of outputs reads the input
        channels of its own group only (one kernel for every group).

    Returns
    -------
    te.Tensor
        ``[N, out_channels, OH, OW]``.
    """
    n, in_c, h, w = (int(v) for v in data.shape)
    chunks, _, kh, kw, oc_block = (int(v) for v in weight_packed.shape)
    (sh, sw), (dh, dw) = strides, dilation
    top, left, bottom, right = padding
    oh = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
    ow = (w + left + right - dw * (kw - 1) - 1) // sw + 1
    ow_padded = ceil_div(ow, ow_tile) * ow_tile
    rows = (oh - 1) * sh + dh * (kh - 1) + 1
    cols = (ow_padded - 1) * sw + dw * (kw - 1) + 1
    padded = _pad_input(data, top, left, rows, cols)
    group_in = int(weight_packed.shape[1])
    chunks_per_group = chunks // groups
    if group_in * groups != in_c or chunks_per_group * groups != chunks:
        raise ValueError(f"a {groups}-group conv of {in_c} inputs cannot read "
                         f"{group_in}-channel filters in {chunks} output chunks")
    rc = te.reduce_axis((0, group_in), "rc")
    ry = te.reduce_axis((0, kh), "ry")
    rx = te.reduce_axis((0, kw), "rx")

    def _channel(o):
        return rc if groups == 1 else o // chunks_per_group * group_in + rc

    def _dot(i, o, y, x, b):
        return te.sum(
            padded[i, _channel(o), y * sh + ry * dh, x * sw + rx * dw].astype(out_dtype)
            * weight_packed[o, rc, ry, rx, b].astype(out_dtype),
            axis=[rc, ry, rx],
        )

    attrs = {RULE_KEY: "conv2d", TILE_KEY: ow_tile, VECTOR_KEY: vector_axis}
    if vector_axis == "ow":
        blocked = te.compute((n, chunks, oh, oc_block, ow_padded),
                             lambda i, o, y, b, x: _dot(i, o, y, x, b),
                             name="mdl_conv2d_blocked", attrs=attrs)
        return te.compute(
            (n, out_channels, oh, ow),
            lambda i, c, y, x: blocked[i, c // oc_block, y, c % oc_block, x],
            name="mdl_conv2d_unpack",
        )
    blocked = te.compute((n, chunks, oh, ow_padded, oc_block), _dot,
                         name="mdl_conv2d_blocked", attrs=attrs)
    return te.compute(
        (n, out_channels, oh, ow),
        lambda i, c, y, x: blocked[i, c // oc_block, y, x, c % oc_block],
        name="mdl_conv2d_unpack",
    )


def depthwise_conv2d(data, weight, strides, padding, dilation, row_tile, out_dtype="float32"):
    """NCHW depthwise convolution (groups = IC, OC = IC * multiplier).

    Parameters
    ----------
    data : te.Tensor
        Input ``[N, C, H, W]``.
    weight : te.Tensor
        Weights ``[C * multiplier, 1, KH, KW]``.
    strides, dilation : tuple of int
    padding : tuple of int
        ``(top, left, bottom, right)``.
    row_tile : int
        Output pixels per vector block; the output width is padded to a multiple.
    out_dtype : str

    Returns
    -------
    te.Tensor
        ``[N, OC, OH, OW]``.
    """
    n, in_c, h, w = (int(v) for v in data.shape)
    out_c, _, kh, kw = (int(v) for v in weight.shape)
    mult = out_c // in_c
    (sh, sw), (dh, dw) = strides, dilation
    top, left, bottom, right = padding
    oh = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
    ow = (w + left + right - dw * (kw - 1) - 1) // sw + 1
    ow_padded = ceil_div(ow, row_tile) * row_tile
    rows = (oh - 1) * sh + dh * (kh - 1) + 1
    ry = te.reduce_axis((0, kh), "ry")
    rx = te.reduce_axis((0, kw), "rx")
    if sw == 1:
        cols = ow_padded + dw * (kw - 1)
        padded = _pad_input(data, top, left, rows, cols)

        def _tap(i, c, y, x):
            return padded[i, c // mult, y * sh + ry * dh, x + rx * dw]
    else:
        # Column phase split: x_in = j * sw + phase, so the window of output column x at
        # tap rx reads phase (rx * dw) % sw, column x + (rx * dw) // sw (unit stride in x).
        phase_cols = ow_padded + (dw * (kw - 1)) // sw
        padded = _pad_input(data, top, left, rows, phase_cols * sw)
        phases = te.compute((n, in_c, rows, sw, phase_cols),
                            lambda i, c, y, p, j: padded[i, c, y, j * sw + p],
                            name="mdl_phase_split", attrs={ROLE_KEY: "phase_split"})

        def _tap(i, c, y, x):
            return phases[i, c // mult, y * sh + ry * dh, (rx * dw) % sw, x + (rx * dw) // sw]

    blocked = te.compute(
        (n, out_c, oh, ow_padded),
        lambda i, c, y, x: te.sum(
            _tap(i, c, y, x).astype(out_dtype) * weight[c, 0, ry, rx].astype(out_dtype),
            axis=[ry, rx],
        ),
        name="mdl_depthwise_blocked",
        attrs={RULE_KEY: "depthwise", TILE_KEY: row_tile},
    )
    return te.compute((n, out_c, oh, ow), lambda i, c, y, x: blocked[i, c, y, x],
                      name="mdl_depthwise_crop")


def pack_dense_weight(weight: te.Tensor, n_block: int) -> te.Tensor:
    """Re-lay ``[K, N]`` weights as ``[N / n_block, K, n_block]``, zero-padding N."""
    k, cols = (int(v) for v in weight.shape)
    chunks = ceil_div(cols, n_block)

    def _value(j, r, b):
        col = j * n_block + b
        return tirx.if_then_else(col < cols, weight[r, tirx.min(col, cols - 1)],
                                 _zero(weight.dtype))

    return te.compute((chunks, k, n_block), _value, name="mdl_weight_pack")


def dense_packed(data, weight_packed, out_cols, m_tile, out_dtype="float32"):
    """``data [M, K] @ W [K, N]`` with `pack_dense_weight` weights; returns ``[M, N]``.

    Parameters
    ----------
    data : te.Tensor
        ``[M, K]``.
    weight_packed : te.Tensor
        ``[N_chunks, K, n_block]``.
    out_cols : int
        Real N.
    m_tile : int
        Rows per register block (recorded for the rule).
    out_dtype : str
    """
    rows, k = (int(v) for v in data.shape)
    chunks, _, n_block = (int(v) for v in weight_packed.shape)
    rk = te.reduce_axis((0, k), "rk")
    blocked = te.compute(
        (rows, chunks, n_block),
        lambda m, j, b: te.sum(
            data[m, rk].astype(out_dtype) * weight_packed[j, rk, b].astype(out_dtype), axis=rk
        ),
        name="mdl_dense_blocked",
        attrs={RULE_KEY: "dense", TILE_KEY: m_tile},
    )
    return te.compute((rows, out_cols), lambda m, c: blocked[m, c // n_block, c % n_block],
                      name="mdl_dense_unpack")
