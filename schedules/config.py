"""Machine parameters the rules read, derived from a `TargetProfile`, and tile choosers.

`MachineConfig` answers the few questions a schedule needs: how many elements of a dtype
fit one vector register, how many vector registers there are (16 on AVX2, 32 on AVX-512 and
AArch64), and how many cores run the parallel loops. The tile choosers below turn those
numbers into register blocks for the packed convolution, dense and depthwise kernels; they
are plain functions of shapes so the legalizer (which lays out weights) and the rules (which
tile the loops) always agree.
"""

from __future__ import annotations

from dataclasses import dataclass

# Instructions per streamed weight byte on x86 hosts (MachineConfig.weight_byte_cost): about
# one instruction's time per byte at one core's share of memory bandwidth. Measured where it
# decides: SqueezeNet's 13 x 13 expand convs (48->192, 64->256; F(4,3) U 1.3 / 2.4 MB) by GEMM
# instead of Winograd, 2 threads, same-process A/B: 0.90-0.96x the time; 1 thread 0.99x.
X86_WEIGHT_BYTE_COST = 1.0
# Independent FMA chains that keep both FMA pipes busy (2 units x ~4 cycles latency).
_FMA_IN_FLIGHT = 8


@dataclass(frozen=True)
class MachineConfig:
    """What the schedules need to know about the CPU.

    Attributes
    ----------
    vector_bits : int
        Width of one SIMD register in bits (128 NEON, 256 AVX2, 512 AVX-512).
    num_regs : int
        Number of architectural vector registers.
    num_cores : int
        Threads the parallel loops are sized for.
    fp16_arith : bool
        True when the core has native fp16 vector arithmetic.
    indexed_fma : bool
        True when an FMA can take its scalar operand from a vector register lane
        (AArch64 ``fmla v.4s, v.4s, v.s[i]``): broadcast operands are then loaded a vector
        at a time.
    neon_tiles : bool
        The target is AArch64 code: register tiles may use the hand-written micro-kernels of
        `schedules.neon_tile` (False in configurations whose kernels run on another host).
    weight_byte_cost : float
        Instructions the cost model charges per byte of weights an algorithm streams in
        beyond the 3 x 3 ones (Winograd's ``alpha^2 / 9`` times larger ``U``), once per
        inference. 0 counts instructions only: the phones' measure (instructions retired
        cannot see memory traffic). On x86 hosts `X86_WEIGHT_BYTE_COST` (`schedules.algo`).
    """

    vector_bits: int = 128
    num_regs: int = 32
    num_cores: int = 4
    fp16_arith: bool = False
    indexed_fma: bool = False
    neon_tiles: bool = False
    weight_byte_cost: float = 0.0

    @classmethod
    def from_profile(cls, profile) -> MachineConfig:
        """Build the configuration for a `mdl_tvm.core.targets.TargetProfile`.

        Parameters
        ----------
        profile : TargetProfile
            The target profile (``vector_bits``, ``num_cores``, ``fp16_arith``, ``mtriple``).

        Returns
        -------
        MachineConfig
        """
        arm = profile.mtriple.startswith("aarch64")
        return cls(
            vector_bits=int(profile.vector_bits),
            num_regs=32 if arm or profile.vector_bits >= 512 else 16,  # AVX-512: zmm0-31
            num_cores=max(1, int(profile.num_cores)),
            fp16_arith=bool(profile.fp16_arith),
            indexed_fma=arm,
            neon_tiles=arm,
            weight_byte_cost=0.0 if arm else X86_WEIGHT_BYTE_COST,
        )

    def lanes(self, dtype: str) -> int:
        """Elements of `dtype` per vector register.

        fp16 without native arithmetic is computed in fp32 registers by LLVM, so it gets
        the fp32 lane count.
        """
        dtype = str(dtype)
        if dtype == "float16" and not self.fp16_arith:
            bits = 32
        else:
            bits = max(8, int("".join(ch for ch in dtype if ch.isdigit()) or 32))
        return max(1, self.vector_bits // bits)

    def max_accumulators(self, operand_vectors: int) -> int:
        """Vector accumulators that fit next to `operand_vectors` loaded operands."""
        return max(1, self.num_regs - operand_vectors - 2)


def ceil_div(a: int, b: int) -> int:
    """``ceil(a / b)`` for positive integers."""
    return -(-a // b)


def elem_bytes(dtype) -> int:
    """Bytes of one element of a compute dtype (float16: 2, else float32's 4)."""
    return 2 if str(dtype) == "float16" else 4


@dataclass(frozen=True)
class ConvTile:
    """Register block of the packed convolution.

    Attributes
    ----------
    vector_axis : str
        ``"oc"``: vectors run over ``oc_block`` output channels, ``ow_tile`` pixels are
        broadcast; ``"ow"``: vectors run over ``ow_tile`` consecutive output pixels (stride 1
        only), ``oc_block`` channel weights are broadcast, and the epilogue stores whole
        vectors of an NCHW row.
    oc_block : int
        Output channels per block (the packed weights' innermost axis).
    ow_tile : int
        Output pixels per block.
    """

    vector_axis: str
    oc_block: int
    ow_tile: int


# Per-core machine model of one reduction step of a register block (Zen 3 / Cortex-A7x
# class cores): FMA pipes and their latency, load ports, bytes per cycle the L1 is refilled
# with. Checked against measured 1x1 and 3x3 convolutions on the host, where it ranks the
# candidate blocks in the measured order.
_FMA_UNITS, _FMA_LATENCY, _LOAD_PORTS, _L1_FILL_BYTES, _LINE = 2, 4, 2, 20, 64
# Reductions up to this length count as short: the output epilogue is then a large share
# of the work and the "ow" layout's vector epilogue wins.
_SHORT_REDUCTION = 160
# Cycles per input element of a padded copy (fill + copy).
_PAD_COPY_CYCLES = 0.5
# Cycles per store of the epilogue (with its bias / residual / activation).
_EPILOGUE_CYCLES = 1.0


def _step_cycles(fmas: int, loads: int, line_bytes: float) -> float:
    """Cycles of one reduction step: FMA issue, FMA latency, load ports or L1 refill."""
    return max(fmas / _FMA_UNITS, _FMA_LATENCY, loads / _LOAD_PORTS,
               line_bytes / _L1_FILL_BYTES)


@dataclass(frozen=True)
class ConvGeometry:
    """Shape of one NCHW convolution (batch aside).

    Attributes
    ----------
    in_channels, in_height, in_width, out_channels, out_width : int
    kernel : tuple of int
        ``(kh, kw)``.
    stride, dilation : tuple of int
        ``(h, w)``.
    pad_top, pad_left : int
        Leading padding (the trailing padding is implied by the output size).
    groups : int
        Channel groups (each output channel reads ``in_channels / groups`` inputs).
    """

    in_channels: int
    in_height: int
    in_width: int
    out_channels: int
    out_width: int
    kernel: tuple = (1, 1)
    stride: tuple = (1, 1)
    dilation: tuple = (1, 1)
    pad_top: int = 0
    pad_left: int = 0
    groups: int = 1

    def needs_pad_copy(self, out_rows: int, ow_padded: int) -> bool:
        """Whether the input must be copied into a padded buffer for this width."""
        rows = (out_rows - 1) * self.stride[0] + self.dilation[0] * (self.kernel[0] - 1) + 1
        cols = (ow_padded - 1) * self.stride[1] + self.dilation[1] * (self.kernel[1] - 1) + 1
        return bool(self.pad_top or self.pad_left or rows > self.in_height
                    or cols > self.in_width)


def _broadcast_loads(cfg: MachineConfig, count: int, elem: int, contiguous: bool) -> int:
    """Loads for the `count` broadcast scalars of one reduction step: one each, or, with
    indexed FMAs and contiguous scalars, whole vectors plus one per leftover element."""
    if not (cfg.indexed_fma and contiguous):
        return count
    per_vector = max(1, cfg.vector_bits // 8 // elem)
    return count // per_vector + count % per_vector


def _epilogue_cycles(oc: int, ow: int, lanes: int, by_width: bool) -> float:
    """Cycles per output row of unpacking the tile into NCHW: whole vectors along the row
    (``"ow"``) or one transposed scalar store per output (``"oc"``)."""
    return oc * (ceil_div(ow, lanes) if by_width else ow) * _EPILOGUE_CYCLES


def choose_conv_tile(cfg: MachineConfig, dtype: str, geo: ConvGeometry,
                     out_rows: int = 1) -> ConvTile:
    """Pick the layout and register block of the packed convolution.

    Layout: ``"ow"`` (vectors over output pixels, vector epilogue) for unit-stride
    convolutions that are 1x1 or have a short reduction, where the transposed scalar
    epilogue of ``"oc"`` or the input line per channel dominates (measured faster for every
    1x1 MobileNetV2 layer); ``"oc"`` otherwise (measured faster for ResNet's 3x3 layers).
    A short k x k reduction is costed both ways, the epilogue included (one store per
    output for ``"oc"``, one per vector for ``"ow"``): rows that would mostly be padding in
    pixel vectors (LeNet's 10-pixel rows in 8-lane fp16) take channel vectors instead.

    Block: every candidate is costed in cycles per output row as tiles x reduction steps x
    cycles per step, a step being limited by FMA issue, FMA latency (too few accumulators),
    load ports, or the bytes it pulls into L1 (the weight block plus one new input line per
    input row, shared by the ``kw`` taps along it; the broadcast scalars count one load
    each, or a vector load per register-full with `MachineConfig.indexed_fma`). Padded
    output columns are charged twice (computed, then thrown away); a width that forces a
    padded copy of an otherwise unpadded input pays for the copy; ties go to more vectors
    per block.

    Parameters
    ----------
    cfg : MachineConfig
    dtype : str
        Accumulation dtype.
    geo : ConvGeometry
    out_rows : int
        Output height (only decides whether a padded copy is needed).

    Returns
    -------
    ConvTile
    """
    lanes = cfg.lanes(dtype)
    elem = elem_bytes(dtype)
    oc, ow, kw = geo.out_channels, geo.out_width, geo.kernel[1]
    reduce_size = geo.in_channels * geo.kernel[0] * kw
    pixel_vectors = geo.stride[1] == 1 and (kw == 1 or reduce_size <= _SHORT_REDUCTION)

    def _cost(tiles, width, step):
        cost = tiles * reduce_size * step * (2 - ow / width)
        if geo.needs_pad_copy(out_rows, width):
            cost += geo.in_channels * geo.in_width * geo.stride[0] * _PAD_COPY_CYCLES
        return cost

    best, best_cost = ConvTile("oc", lanes, 1), float("inf")
    # 1x1: "ow" measured faster in every case; a short k x k reduction: costed both ways
    layouts = ((True,) if kw == 1 else (True, False)) if pixel_vectors else (False,)
    for by_width, vecs in ((b, v) for b in layouts for v in (4, 2, 1)):
        block = lanes * vecs
        if by_width:
            if vecs > 1 and ow <= block - lanes:
                continue
            blocks = range(1, min(oc, cfg.max_accumulators(vecs) // vecs) + 1)
        else:
            if vecs > 1 and oc <= block - lanes:
                continue
            blocks = range(1, min(ow, cfg.max_accumulators(vecs) // vecs) + 1)
        for count in blocks:
            loads = _broadcast_loads(cfg, count, elem, by_width or geo.stride[1] == 1)
            if by_width:  # count = output channels, vectors of `block` pixels
                line = (block * elem + _LINE) / kw
                step = _step_cycles(vecs * count, vecs + loads, count * elem + line)
                width = ceil_div(ow, block) * block
                tile = ConvTile("ow", count, block)
                tiles = ceil_div(oc, count) * width // block
            else:  # count = output pixels, vectors of `block` channels
                line = (count * geo.stride[1] * elem + _LINE) / kw
                step = _step_cycles(vecs * count, vecs + loads, block * elem + line)
                width = ceil_div(ow, count) * count
                tile = ConvTile("oc", block, count)
                tiles = ceil_div(oc, block) * width // count
            cost = _cost(tiles, width, step) + _epilogue_cycles(oc, ow, lanes, by_width)
            if cost < best_cost - 1e-9:
                best, best_cost = tile, cost
    return best


def choose_dense_tile(cfg: MachineConfig, dtype: str, rows: int, cols: int):
    """Pick ``(n_block, m_tile)`` for the packed dense kernel.

    ``n_block`` output columns (a multiple of the lane count) times ``m_tile`` rows (a
    divisor of `rows`) are accumulated in registers; one row (batch 1) uses up to four
    vectors per block to have several independent FMA chains.
    """
    lanes = cfg.lanes(dtype)
    best, best_cost = (lanes, 1), float("inf")
    for vecs in (1, 2, 4):
        if vecs > 1 and cols <= lanes * vecs // 2:
            break
        max_acc = cfg.max_accumulators(vecs)
        for m_tile in range(1, min(rows, max(1, max_acc // vecs)) + 1):
            if rows % m_tile:
                continue
            acc = vecs * m_tile
            padded = ceil_div(cols, lanes * vecs) * lanes * vecs * rows
            loads_per_fma = (vecs + m_tile) / acc
            slowdown = max(1.0, _FMA_IN_FLIGHT / acc, loads_per_fma / 0.75)
            cost = padded * slowdown
            if cost < best_cost - 1e-9:
                best, best_cost = (lanes * vecs, m_tile), cost
    return best


def choose_row_tile(cfg: MachineConfig, dtype: str, out_width: int) -> int:
    """Output pixels per register block of the depthwise kernel.

    The block is ``tile / lanes`` separate vectors (an unrolled loop, so any count works),
    each an independent FMA chain over the taps; up to 8 keep the adds in flight. The
    choice minimises padded width times the latency penalty of few chains.

    Returns
    -------
    int
        A multiple of the lane count.
    """
    lanes = cfg.lanes(dtype)
    best, best_cost = lanes, float("inf")
    max_vecs = max(1, min(8, cfg.num_regs - 6))
    for vecs in range(1, max_vecs + 1):
        tile = lanes * vecs
        if vecs > 1 and tile - lanes >= out_width:
            break
        cost = ceil_div(out_width, tile) * tile * max(1.0, 4.0 / vecs)
        if cost < best_cost - 1e-9:
            best, best_cost = tile, cost
    return best


def reads_in_place(kernel, stride, padded: bool, plane: int, lanes: int,
                   by_lane: bool) -> bool:
    """Whether the GEMM convolution reads its input in place instead of an im2col copy:
    1 x 1, stride 1, unpadded -- and, on cores with indexed FMAs (AArch64, where ``ldr q``
    offsets are multiples of 16 bytes), input planes of whole vectors (a 392-byte fp16
    14 x 14 plane costs an address computation per load)."""
    return (tuple(kernel) == (1, 1) and tuple(stride) == (1, 1) and not padded
            and not (by_lane and plane % lanes))
