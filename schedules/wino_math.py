"""Winograd F(m x m, 3 x 3) arithmetic: transform matrices, the compile-time weight
transform, and the generator of the transforms' vector expressions.

Matrices come from the Cook-Toom construction over ``m + 1`` finite points and infinity:
``Y = A^T [(G g G^T) * (B^T d B)] A`` computes an ``m x m`` output tile of a 3 x 3
correlation from an ``alpha x alpha`` input tile (``alpha = m + 2``). The point sets are
the peers' (NCNN, MNN) choices: F(2,3) {0, +-1}; F(4,3) {0, +-1, +-2} in fp32 (fewest
operations) and {0, +-sqrt2, +-sqrt2/2} in fp16 (NCNN's set: about half the transform
error of the integer points); F(6,3) {0, +-1, +-2, +-1/2}.

`transform_rows` turns one 1-D transform (``Mt @ xs``) into TIR expressions over
vectors: zero coefficients are skipped, +-1 become adds and subtracts, and two output rows
``i, j`` of the form ``E + O`` and ``E - O`` (even / odd parts with disjoint terms) share
``E`` and ``O``, as the peers' hand-written transforms do.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from tvm import tirx

_SQRT2 = float(np.sqrt(2.0))
# Finite interpolation points per (m, dtype class); infinity is always added.
POINTS = {
    (2, "fp32"): (0.0, 1.0, -1.0),
    (2, "fp16"): (0.0, 1.0, -1.0),
    (4, "fp32"): (0.0, 1.0, -1.0, 2.0, -2.0),
    (4, "fp16"): (0.0, _SQRT2, -_SQRT2, 1 / _SQRT2, -1 / _SQRT2),
    (6, "fp32"): (0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5),
    (6, "fp16"): (0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5),
}
TILE_SIZES = (2, 4, 6)
_ZERO = 1e-12


def _precision(dtype: str) -> str:
    return "fp16" if str(dtype) == "float16" else "fp32"


@cache
def matrices(m: int, dtype: str = "float32") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(A^T, G, B^T)`` of F(m, 3) for computations in `dtype`, in float64.

    Parameters
    ----------
    m : int
        Output tile size, one of `TILE_SIZES`.
    dtype : str
        ``"float32"`` or ``"float16"`` (selects the point set, see the module docstring).

    Returns
    -------
    tuple of numpy.ndarray
        ``A^T`` (m x alpha), ``G`` (alpha x 3), ``B^T`` (alpha x alpha).
    """
    if m not in TILE_SIZES:
        raise ValueError(f"unsupported Winograd tile size {m}; choose one of {TILE_SIZES}")
    points = np.asarray(POINTS[(m, _precision(dtype))], dtype=np.float64)
    alpha = m + 2
    at = np.zeros((m, alpha))
    g = np.zeros((alpha, 3))
    for j, p in enumerate(points):
        at[:, j] = p ** np.arange(m)
        g[j] = p ** np.arange(3) / np.prod([p - q for q in points if q != p])
    at[m - 1, alpha - 1] = 1.0
    g[alpha - 1, 2] = 1.0
    # B^T is the unique solution of sum_j A^T[i, j] G[j, k] B^T[j, l] = [l == i + k].
    rows, rhs = [], []
    for i in range(m):
        for k in range(3):
            for col in range(alpha):
                coef = np.zeros((alpha, alpha))
                coef[:, col] = at[i] * g[:, k]
                rows.append(coef.ravel())
                rhs.append(1.0 if col == i + k else 0.0)
    bt = np.linalg.lstsq(np.asarray(rows), np.asarray(rhs), rcond=None)[0].reshape(alpha, alpha)
    out = (_snap(at), g, _snap(bt))
    for a in out:  # cached: shared by every caller, so never writable
        a.setflags(write=False)
    return out


def _snap(mat: np.ndarray) -> np.ndarray:
    """Round entries within 1e-9 of a multiple of 1/64 to it (least squares leaves
    ``1.0000000000000002`` where the transform has 1, which would cost a multiply)."""
    grid = np.round(mat * 64) / 64
    return np.where(np.abs(mat - grid) < 1e-9, grid, mat)


def transform_weight(weight: np.ndarray, m: int, k_block: int, dtype: str,
                     store_dtype: str | None = None) -> np.ndarray:
    """Winograd-domain weights ``U = G w G^T``, packed for the batched GEMM.

    Parameters
    ----------
    weight : numpy.ndarray
        OIHW 3 x 3 weights ``[K, C, 3, 3]``.
    m : int
        Output tile size.
    k_block : int
        Output channels per GEMM register block (the packed innermost axis).
    dtype : str
        Compute dtype of the convolution (selects the point set); the transform itself is
        computed in float64.
    store_dtype : str, optional
        Dtype of the result (default `dtype`; fp16 for fp16 weight storage).

    Returns
    -------
    numpy.ndarray
        ``[alpha * alpha, ceil(K / k_block), C, k_block]``, zero past the last channel.
    """
    k, c, kh, kw = weight.shape
    if (kh, kw) != (3, 3):
        raise ValueError(f"Winograd weights must be 3 x 3, got {kh} x {kw}")
    _, g, _ = matrices(m, dtype)
    alpha = m + 2
    u = np.einsum("ea,kcab,fb->efkc", g, weight.astype(np.float64), g)
    chunks = -(-k // k_block)
    packed = np.zeros((alpha * alpha, chunks * k_block, c))
    packed[:, :k] = u.reshape(alpha * alpha, k, c)
    packed = packed.reshape(alpha * alpha, chunks, k_block, c).transpose(0, 1, 3, 2)
    return np.ascontiguousarray(packed).astype(store_dtype or dtype)


def reference(data: np.ndarray, weight: np.ndarray, m: int, padding: tuple,
              dtype: str = "float32") -> np.ndarray:
    """Winograd convolution in numpy, rounding to `dtype` after every stage as the
    kernels do (for the transform-error measurements).

    Parameters
    ----------
    data : numpy.ndarray
        ``[C, H, W]``.
    weight : numpy.ndarray
        ``[K, C, 3, 3]``.
    m : int
    padding : tuple of int
        ``(top, left, bottom, right)``.
    dtype : str

    Returns
    -------
    numpy.ndarray
        ``[K, OH, OW]`` in float64.
    """
    at, g, bt = (x.astype(dtype) for x in matrices(m, dtype))
    top, left, bottom, right = padding
    c, h, w = data.shape
    oh, ow = h + top + bottom - 2, w + left + right - 2
    nh, nw = -(-oh // m), -(-ow // m)
    padded = np.zeros((c, nh * m + 2, nw * m + 2), dtype)
    padded[:, top:top + h, left:left + w] = data
    u = np.einsum("ea,kcab,fb->efkc", g.astype(np.float64), weight.astype(np.float64),
                  g.astype(np.float64)).astype(dtype)
    out = np.zeros((weight.shape[0], nh * m, nw * m), np.float64)
    for th in range(nh):
        for tw in range(nw):
            d = padded[:, th * m:th * m + m + 2, tw * m:tw * m + m + 2]
            v = np.einsum("ea,cab,fb->efc", bt, d, bt).astype(dtype)
            prod = np.einsum("efkc,efc->efk", u, v).astype(dtype)
            y = np.einsum("ie,efk,jf->kij", at, prod, at).astype(dtype)
            out[:, th * m:th * m + m, tw * m:tw * m + m] = y
    return out[:, :oh, :ow]


def _lin(coeffs, xs, dtype: str):
    """``sum c * x`` over the nonzero coefficients: +-1 as add / subtract, a +1 term first
    (no negation to start from), the rest as multiply-adds LLVM fuses into ``fmla``."""
    terms = [(float(c), x) for c, x in zip(coeffs, xs, strict=True) if abs(c) > _ZERO]
    terms.sort(key=lambda cx: 0 if cx[0] == 1 else (1 if cx[0] == -1 else 2))  # exact: snapped
    first, x0 = terms[0]
    out = x0 if first == 1 else x0 * tirx.const(first, dtype)
    for c, x in terms[1:]:
        if c == 1:
            out = out + x
        elif c == -1:
            out = out - x
        elif c < 0:
            out = out - x * tirx.const(-c, dtype)
        else:
            out = out + x * tirx.const(c, dtype)
    return out


def _column_pairs(mt: np.ndarray) -> list:
    """Pairs of columns ``(a, b)`` whose coefficients are equal or opposite in every row
    (both zero, or ``mt[i, a] = +-mt[i, b] != 0``), used by at least two rows: each row then
    reads ``x_a + x_b`` or ``x_a - x_b``, computed once (the output transform's ``A^T``)."""
    nz = np.abs(mt) > _ZERO
    pairs, used = [], set()
    for a in range(mt.shape[1]):
        for b in range(a + 1, mt.shape[1]):
            if a in used or b in used or (nz[:, a] != nz[:, b]).any() or nz[:, a].sum() < 2:
                continue
            if np.allclose(np.abs(mt[:, a]), np.abs(mt[:, b])):
                pairs.append((a, b))
                used |= {a, b}
    return pairs


def _row_cost(row: np.ndarray) -> int:
    """Operations `_lin` spends on one row (a multiply when no coefficient is +1)."""
    nz = np.abs(row) > _ZERO
    return max(int(nz.sum()) - 1, 0) + int(nz.any() and not np.isclose(row[nz], 1).any())


def transform_rows(mt: np.ndarray, xs: list, dtype: str) -> list:
    """The expressions ``mt @ xs`` (one per row of `mt`): inputs paired where the rows
    use them as sums / differences (`_column_pairs`), when that costs fewer operations, and
    rows sharing even / odd parts.

    Parameters
    ----------
    mt : numpy.ndarray
        ``[rows, len(xs)]`` coefficients (a transform matrix).
    xs : list of tirx.PrimExpr
        Inputs (scalars or vectors of one dtype).
    dtype : str
        Dtype of the constants.

    Returns
    -------
    list of tirx.PrimExpr
    """
    pairs = _column_pairs(mt)
    if pairs:
        cols, ins, extra = [], [], 0
        paired = {i for pair in pairs for i in pair}
        for j in range(mt.shape[1]):
            if j not in paired:
                cols.append(mt[:, j])
                ins.append(xs[j])
        for a, b in pairs:
            same = np.isclose(mt[:, a], mt[:, b])
            for keep, value in ((same, xs[a] + xs[b]), (~same, xs[a] - xs[b])):
                col = np.where(keep, mt[:, a], 0.0)
                if (np.abs(col) > _ZERO).any():
                    cols.append(col)
                    ins.append(value)
                    extra += 1
        new = np.stack(cols, axis=1)
        if extra + sum(map(_row_cost, new)) < sum(map(_row_cost, mt)):
            return _shared_rows(new, ins, dtype)
    return _shared_rows(mt, xs, dtype)


def _shared_rows(mt: np.ndarray, xs: list, dtype: str) -> list:
    """``mt @ xs`` with rows sharing even / odd parts (pairs ``e + o`` / ``e - o``)."""
    nonzero = np.abs(mt) > _ZERO
    outs: list = [None] * mt.shape[0]
    for i in range(mt.shape[0]):
        if outs[i] is not None:
            continue
        for j in range(i + 1, mt.shape[0]):
            if outs[j] is not None:
                continue
            even, odd = (mt[i] + mt[j]) / 2, (mt[i] - mt[j]) / 2
            e_nz, o_nz = np.abs(even) > _ZERO, np.abs(odd) > _ZERO
            if e_nz.any() and o_nz.any() and not (e_nz & o_nz).any():
                e, o = _lin(even, xs, dtype), _lin(odd, xs, dtype)
                outs[i], outs[j] = e + o, e - o
                break
        if outs[i] is None:
            outs[i] = _lin(mt[i], xs, dtype) if nonzero[i].any() else tirx.const(0, dtype)
    return outs


def pick(index, exprs: list):
    """``exprs[index]`` as a ``Select`` chain (folds to one branch once `index` is an
    unrolled constant)."""
    out = exprs[-1]
    for k in range(len(exprs) - 2, -1, -1):
        out = tirx.Select(index == k, exprs[k], out)
    return out
