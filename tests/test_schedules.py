"""Default schedules, rule by rule: each rule on a small case against the same function
unscheduled, the generic rules on Relax operators, and the machine configuration."""

import dataclasses

import numpy as np
import pytest
import tvm
from helpers import check_rule_numerics, neon_config, relax_module, rules_used
from tvm import relax, te, tirx, topi

import schedules
from mdl_tvm.core.targets import get_profile, host_profile, missing_cpu_flags
from schedules import algo, compute
from schedules.config import ConvGeometry, MachineConfig, choose_conv_tile, choose_dense_tile
from schedules.conv2d import Conv2DPacked
from schedules.dense import DensePacked
from schedules.depthwise import DepthwiseConv2D

HOST = get_profile("host")
CONV_RULES = {"conv2d", "gemm_conv", "winograd", "winograd_input"}
CFG = MachineConfig.from_profile(HOST)


def _random_args(func, rng):
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    infos = ArgInfo.from_prim_func(func)
    return [rng.standard_normal([int(d) for d in a.shape]).astype(a.dtype) for a in infos]


def _run_prim_func(func, arrays):
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                      target=HOST.tvm_target())
    args = [tvm.runtime.tensor(a) for a in arrays]
    lib["main"](*args)
    return args[-1].numpy()


def _assert_rule_preserves_numerics(func, rule, rng, cfg=CFG):
    sch = rule.apply(func, cfg)
    assert sch is not None, f"rule {rule.name} did not match"
    arrays = _random_args(func, rng)
    expected = _run_prim_func(func, [a.copy() for a in arrays])
    actual = _run_prim_func(sch.mod["main"], [a.copy() for a in arrays])
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * scale)
    return sch


def _bias_relu(out):
    bias = te.placeholder((1, int(out.shape[1]), 1, 1), name="bias")
    added = te.compute(out.shape, lambda n, c, y, x: out[n, c, y, x] + bias[0, c, 0, 0],
                       name="T_add")
    relu = te.compute(out.shape, lambda *i: tirx.max(added(*i), tirx.const(0, "float32")),
                      name="relu")
    return bias, relu


@pytest.mark.parametrize(
    "in_c, out_c, size, kernel, stride, pad, dilation, axis",
    [
        (13, 37, 16, 3, 1, 1, 1, "oc"),  # pruned channel counts, remainder chunk
        (13, 37, 16, 3, 1, 1, 1, "ow"),
        (3, 16, 23, 7, 2, 3, 1, "oc"),  # stem-like, odd width
        (16, 24, 14, 1, 1, 0, 1, "ow"),  # 1x1, width not a whole vector
        (8, 9, 12, 3, 1, 2, 2, "oc"),  # dilation
    ],
)
def test_conv2d_rule(rng, in_c, out_c, size, kernel, stride, pad, dilation, axis):
    lanes = CFG.lanes("float32")
    oc_block, ow_tile = (lanes, 3) if axis == "oc" else (5, lanes)
    data = te.placeholder((1, in_c, size, size), name="data")
    weight = te.placeholder((out_c, in_c, kernel, kernel), name="weight")
    packed = compute.pack_conv_weight(weight, oc_block)
    out = compute.conv2d_packed(data, packed, out_c, (stride, stride), (pad,) * 4,
                                (dilation, dilation), ow_tile, "float32", axis)
    bias, relu = _bias_relu(out)
    func = te.create_prim_func([data, weight, bias, relu])
    sch = _assert_rule_preserves_numerics(func, Conv2DPacked(), rng)
    # the epilogue is fused into the tile loop, so the tile never leaves registers
    conv_outer = sch.get(sch.get_loops(sch.get_sblock("mdl_conv2d_blocked_update"))[0])
    root = sch.get_sblock(sch.mod["main"].body.block.name_hint)
    for block in sch.get_output_blocks(root):
        assert sch.get(sch.get_loops(block)[0]).same_as(conv_outer)


@pytest.mark.parametrize("channels, mult, size, stride", [(8, 1, 15, 1), (6, 2, 16, 2),
                                                           (16, 1, 7, 2)])
def test_depthwise_rule(rng, channels, mult, size, stride):
    data = te.placeholder((1, channels, size, size), name="data")
    weight = te.placeholder((channels * mult, 1, 3, 3), name="weight")
    out = compute.depthwise_conv2d(data, weight, (stride, stride), (1, 1, 1, 1), (1, 1),
                                   2 * CFG.lanes("float32"))
    bias, relu = _bias_relu(out)
    func = te.create_prim_func([data, weight, bias, relu])
    _assert_rule_preserves_numerics(func, DepthwiseConv2D(), rng)


@pytest.mark.parametrize("in_c, out_c, kernel, hw, dtype", [
    (16, 3, 9, (20, 18), "float16"),  # style transfer's RGB output conv: kb = 4 of 8 lanes
    (5, 2, 5, (12, 13), "float32"),  # kb = 2 of 4 lanes
    (24, 4, 1, (14, 14), "float16")])  # 1 x 1
def test_gemm_conv_half_vector_weight_block(rng, in_c, out_c, kernel, hw, dtype):
    """Convolutions with at most half a vector of output channels use a half-vector block
    of weights (one short load used by lane) on a core with indexed FMAs -- chosen by the
    cost model, computed as the unscheduled conv computes -- and never on x86; LeNet-5's
    6-channel first conv keeps a full block (the half one measured slower)."""
    neon = neon_config()
    lanes = neon.lanes(dtype)
    pad = kernel // 2
    geo = ConvGeometry(in_c, hw[0], hw[1], out_c, hw[1], (kernel, kernel), pad_top=pad,
                       pad_left=pad)
    assert algo.gemm_cost(neon, dtype, geo, hw[0]).k_block == lanes // 2
    lenet = ConvGeometry(1, 28, 28, 6, 28, (5, 5), pad_top=2, pad_left=2)
    assert algo.gemm_cost(neon, "float32", lenet, 28).k_block >= 4
    host = MachineConfig.from_profile(HOST)  # x86: no indexed FMA, blocks broadcast as before
    assert algo.gemm_tiles(host, 8, half=True) == algo.gemm_tiles(host, 8)
    w = (rng.standard_normal((out_c, in_c, kernel, kernel)) / kernel).astype(dtype)

    def body(bb, x):
        y = bb.emit(relax.op.nn.conv2d(x, relax.const(w), padding=pad, out_dtype=dtype))
        return relax.op.nn.relu(y)

    x = rng.standard_normal((1, in_c, *hw)).astype(dtype)
    check_rule_numerics(relax_module(x.shape, body, dtype), x, neon, "gemm_conv", dtype)


@pytest.mark.parametrize("rows, k, cols, dtype", [
    (1, 37, 10, "float32"), (4, 64, 70, "float32"),
    # batch-1 GEMVs: K a multiple of 4, 2 and 1 vectors (x read as vectors), odd N
    (1, 64, 10, "float32"), (1, 48, 33, "float32"), (1, 24, 20, "float32"),
    (1, 64, 19, "float16")])
def test_dense_rule(rng, rows, k, cols, dtype):
    cfg = neon_config()
    n_block, m_tile = choose_dense_tile(cfg, "float32", rows, cols)
    data = te.placeholder((rows, k), name="data", dtype=dtype)
    weight = te.placeholder((k, cols), name="weight", dtype=dtype)
    out = compute.dense_packed(data, compute.pack_dense_weight(weight, n_block), cols, m_tile)
    bias = te.placeholder((cols,), name="bias")
    relu = te.compute(out.shape, lambda m, n: tirx.max(out[m, n] + bias[n], 0.0), name="relu")
    func = te.create_prim_func([data, weight, bias, relu])
    sch = _assert_rule_preserves_numerics(func, DensePacked(), rng, cfg)
    vector_x = rows == 1 and k % cfg.lanes("float32") == 0
    assert ("data_global" in sch.mod.script()) == vector_x  # the x tile block
    host = _assert_rule_preserves_numerics(func, DensePacked(), rng)  # x86: no indexed FMA
    assert "data_global" not in host.mod.script()  # x broadcast from memory


def _lower_build_run(mod, x, rules):
    target = HOST.tvm_target()
    with target:
        lowered = schedules.lowering_pipeline(HOST, rules=rules)(mod)
    vm = relax.VirtualMachine(relax.build(lowered, target), tvm.cpu())
    return lowered, vm["main"](tvm.runtime.tensor(x)).numpy()


def _check_against_unscheduled(mod, x):
    plain, expected = _lower_build_run(mod, x, rules=())
    assert not any(rules_used(plain).values())
    lowered, actual = _lower_build_run(mod, x, rules=schedules.DEFAULT_RULES)
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * scale)
    return rules_used(lowered)


@pytest.mark.parametrize("op", ["max_pool", "avg_pool", "global_avg_pool"])
def test_reduction_rule_on_pooling(rng, op):
    def body(bb, x):
        if op == "max_pool":
            return relax.op.nn.max_pool2d(x, pool_size=3, strides=2, padding=1)
        if op == "avg_pool":
            return relax.op.nn.avg_pool2d(x, pool_size=2, strides=2)
        return relax.op.nn.adaptive_avg_pool2d(x, output_size=1)

    x = rng.standard_normal((1, 5, 16, 16)).astype("float32")
    used = _check_against_unscheduled(relax_module(x.shape, body), x)
    assert set(used.values()) == ({"max_pool"} if op == "max_pool" else {"reduction"})


@pytest.mark.parametrize("size, pool, stride", [(28, 2, 2), (10, 2, 2), (13, 3, 1)])
def test_pooling_rows_of_odd_width_are_one_vector(rng, size, pool, stride):
    """Output rows of 14, 5 or 11 pixels (no multiple of the 8 lanes) are still vectorised:
    the whole row is one vector (LLVM splits it into 8 + 4 + 2 ...), not a scalar loop."""
    def body(bb, x):  # max pools have their own kernel (schedules.pool)
        return relax.op.nn.avg_pool2d(x, pool_size=pool, strides=stride)

    x = rng.standard_normal((1, 6, size, size)).astype("float32")
    mod = relax_module(x.shape, body)
    assert set(_check_against_unscheduled(mod, x).values()) == {"reduction"}
    with HOST.tvm_target():
        lowered = schedules.lowering_pipeline(HOST)(mod)
    pools = [f for _, f in lowered.functions_items() if isinstance(f, tirx.PrimFunc)
             and f.attrs and f.attrs.get(schedules.RULE_ATTR) == "reduction"]
    assert pools and all("T.vectorized(" in f.script() for f in pools), "a scalar row"


def test_shape_no_rule_matches_still_builds_and_runs(rng):
    def body(bb, x):
        y = bb.emit(relax.op.permute_dims(x, [0, 2, 1]))
        y = bb.emit(relax.op.nn.softmax(relax.op.exp(y), axis=-1))
        return relax.op.cumsum(y, axis=1)

    x = rng.standard_normal((2, 7, 13)).astype("float32")
    _, actual = _lower_build_run(relax_module(x.shape, body), x, schedules.DEFAULT_RULES)
    y = np.exp(np.transpose(x, (0, 2, 1)))
    y = np.exp(y - y.max(-1, keepdims=True))
    expected = np.cumsum(y / y.sum(-1, keepdims=True), axis=1)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)


def test_scheduled_functions_are_left_alone():
    data = te.placeholder((4, 8), name="data")
    out = te.compute((4, 8), lambda i, j: data[i, j] * 2.0, name="double")
    func = te.create_prim_func([data, out]).with_attr("tirx.is_scheduled", True)
    gvar = tvm.ir.GlobalVar("double")
    mod = tvm.IRModule({gvar: func})
    assert schedules.apply_default_schedules(mod, HOST)[gvar].same_as(func)
    fresh = tvm.IRModule({gvar: te.create_prim_func([data, out])})
    done = schedules.apply_default_schedules(fresh, HOST)[gvar]
    assert schedules.is_scheduled(done) and done.attrs[schedules.RULE_ATTR] == "fallback"


def test_lanes_and_registers_come_from_the_profile():
    arm = MachineConfig.from_profile(get_profile("arm64"))
    fp16 = MachineConfig.from_profile(get_profile("arm64-fp16"))
    assert (arm.lanes("float32"), arm.lanes("float16"), arm.num_regs) == (4, 4, 32)
    assert (fp16.lanes("float32"), fp16.lanes("float16")) == (4, 8)
    assert CFG.lanes("float32") == HOST.fp32_lanes() and CFG.num_cores == HOST.num_cores
    for cfg in (arm, fp16, CFG):
        for in_c, out_c, width, k in ((13, 37, 16, 3), (64, 64, 56, 3), (144, 24, 56, 1),
                                      (512, 512, 7, 3), (960, 160, 7, 1)):
            geo = ConvGeometry(in_c, width, width, out_c, width, (k, k), pad_top=k // 2,
                               pad_left=k // 2)
            tile = choose_conv_tile(cfg, "float32", geo, width)
            lanes = cfg.lanes("float32")
            vecs = tile.oc_block // lanes if tile.vector_axis == "oc" else tile.ow_tile // lanes
            blocks = tile.ow_tile if tile.vector_axis == "oc" else tile.oc_block
            assert vecs * blocks + vecs + 1 <= cfg.num_regs  # accumulators + operands fit


def test_x86_host_profile_takes_the_widest_vector_isa_the_cpu_has():
    """AVX-512 machines get 512-bit vectors and 32 registers (ONNX Runtime's MLAS uses
    them; measured ResNet-18 20.3 -> 14.2 ms, 2 threads), AVX2 machines 256 bits and 16."""
    avx2 = {"sse2", "avx", "avx2", "fma"}
    avx512 = avx2 | {"avx512f", "avx512bw", "avx512dq", "avx512vl"}
    wide = host_profile("x86_64", avx512, 2)
    assert (wide.mcpu, wide.vector_bits) == ("skylake-avx512", 512)
    assert (MachineConfig.from_profile(wide).num_regs, MachineConfig.from_profile(wide).lanes(
        "float32")) == (32, 16)
    for flags, mcpu, bits, regs in ((avx2, "haswell", 256, 16), (avx2 | {"avx512f"},
                                     "haswell", 256, 16), ({"sse2"}, "", 128, 16)):
        prof = host_profile("x86_64", flags, 2)
        assert (prof.mcpu, prof.vector_bits, MachineConfig.from_profile(prof).num_regs) == (
            mcpu, bits, regs)
    assert missing_cpu_flags("skylake-avx512", avx2) == ["avx512bw", "avx512dq", "avx512f",
                                                         "avx512vl"]
    assert missing_cpu_flags("haswell", avx512) == [] and missing_cpu_flags("", set()) == []
    arm = host_profile("aarch64", {"asimd", "asimdhp"}, 4)
    assert arm.fp16_arith and arm.vector_bits == 128


def test_short_kxk_reduction_vectorises_the_axis_without_waste():
    """LeNet's second conv (6 -> 16 channels, 5x5, 10-pixel rows): 8-lane pixel vectors
    would compute 16 columns for 10, so fp16 vectors run over the 16 channels instead; a
    1x1 conv keeps its pixel vectors (measured faster for every MobileNetV2 1x1 layer)."""
    fp16 = MachineConfig.from_profile(get_profile("arm64-fp16"))
    lenet_conv2 = ConvGeometry(6, 14, 14, 16, 10, (5, 5))
    assert choose_conv_tile(fp16, "float16", lenet_conv2, 10).vector_axis == "oc"
    pointwise = ConvGeometry(64, 14, 14, 384, 14, (1, 1))
    assert choose_conv_tile(fp16, "float16", pointwise, 14).vector_axis == "ow"


def test_lowering_matches_topi_conv_reference(rng):
    """The packed legalization computes what TOPI's conv2d computes."""
    w = rng.standard_normal((37, 13, 3, 3)).astype("float32")

    def body(bb, x):
        return relax.op.nn.conv2d(x, relax.const(w), strides=2, padding=(1, 0, 2, 1))

    x = rng.standard_normal((1, 13, 17, 19)).astype("float32")
    used = _check_against_unscheduled(relax_module(x.shape, body), x)
    assert "gemm_conv" in used.values()
    data, kernel = te.placeholder(x.shape), te.placeholder(w.shape)
    ref = te.create_prim_func([data, kernel, topi.nn.conv2d_nchw(data, kernel, 2, (1, 0, 2, 1),
                                                                 1)])
    expected = _run_prim_func(ref, [x, w, np.zeros((1, 37, 9, 9), "float32")])
    _, actual = _lower_build_run(relax_module(x.shape, body), x, schedules.DEFAULT_RULES)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def test_non_constant_weights_are_packed_at_run_time(rng):
    """Weights passed as inputs (not folded constants) still go through the packed kernels."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 6, 9, 9), "float32"))
    w = relax.Var("w", relax.TensorType((11, 6, 3, 3), "float32"))
    with bb.function("main", [x, w]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.nn.relu(relax.op.nn.conv2d(x, w, padding=1)))
        bb.emit_func_output(out)
    target = HOST.tvm_target()
    with target:
        lowered = schedules.lowering_pipeline(HOST)(bb.get())
    assert "gemm_conv" in rules_used(lowered).values()  # no Winograd: weights not constant
    vm = relax.VirtualMachine(relax.build(lowered, target), tvm.cpu())
    xs = rng.standard_normal((1, 6, 9, 9)).astype("float32")
    ws = rng.standard_normal((11, 6, 3, 3)).astype("float32")
    actual = vm["main"](tvm.runtime.tensor(xs), tvm.runtime.tensor(ws)).numpy()
    data, kernel = te.placeholder(xs.shape), te.placeholder(ws.shape)
    ref = te.create_prim_func([data, kernel, topi.nn.conv2d_nchw(data, kernel, 1, 1, 1)])
    expected = np.maximum(_run_prim_func(ref, [xs, ws, np.zeros(actual.shape, "float32")]), 0)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def test_an_empty_tuning_database_leaves_the_default_schedules(rng):
    from tvm.s_tir import meta_schedule as ms

    w = rng.standard_normal((8, 3, 3, 3)).astype("float32")
    mod = relax_module((1, 3, 12, 12), lambda bb, x: relax.op.nn.conv2d(x, relax.const(w)))
    with HOST.tvm_target(), ms.database.MemoryDatabase():
        lowered = schedules.lowering_pipeline(HOST)(mod)
    assert set(rules_used(lowered).values()) <= CONV_RULES - {"database"}


def test_conv_whose_output_is_also_returned(rng):
    """A fused function with two outputs (conv and relu(conv)) keeps both correct."""
    w = rng.standard_normal((10, 4, 3, 3)).astype("float32")

    def body(bb, x):
        y = bb.emit(relax.op.nn.conv2d(x, relax.const(w), padding=1))
        z = bb.emit(relax.op.nn.relu(y))
        return relax.op.add(relax.op.sum(y, axis=[1]), relax.op.sum(z, axis=[1]))

    x = rng.standard_normal((1, 4, 11, 11)).astype("float32")
    used = _check_against_unscheduled(relax_module(x.shape, body), x)
    assert all(used.values())


@pytest.mark.parametrize("batch, in_c, out_c, size, kernel", [
    (2, 13, 37, 7, 1), (1, 24, 96, 14, 1), (1, 16, 64, 14, 3), (2, 5, 24, 17, 3)])
def test_gemm_split_by_output_channel_groups_matches_reference(rng, batch, in_c, out_c,
                                                               size, kernel):
    """Every task split (k_groups, forced for the 3x3 stride-2 convs) with remainder chunks
    and a batch computes what the unscheduled conv computes."""
    w = rng.standard_normal((out_c, in_c, kernel, kernel)).astype("float32")

    def body(bb, x):
        return relax.op.nn.conv2d(x, relax.const(w), strides=kernel // 2 + 1,
                                  padding=kernel // 2)

    x = rng.standard_normal((batch, in_c, size, size)).astype("float32")
    mod = relax_module(x.shape, body)
    assert "gemm_conv" in _check_against_unscheduled(mod, x).values()
    if kernel == 3:  # small convs are not split: force a split of every chunk pair
        import unittest.mock

        with unittest.mock.patch.object(algo, "PARALLEL_MIN_COST", 0):
            assert "gemm_conv" in _check_against_unscheduled(mod, x).values()


def test_gemm_tasks_split_by_output_channels_on_small_maps(monkeypatch):
    """On a small map a big GEMM conv's parallel tasks are output-channel groups, not short
    segments whose last pixel block is mostly waste (a 1x1 keeps whole images, a 3x3
    stride-2 one shares one im2col copy among its groups, so the split costs no extra
    instructions); a small conv is not split at all."""
    phone = MachineConfig.from_profile(get_profile("cortex-a76"))
    wanted = 2 * phone.num_cores

    def tasks(a, out):
        return -(-out // a.rows) * a.k_groups

    pointwise = algo.gemm_cost(phone, "float32", ConvGeometry(96, 14, 14, 576, 14), 14)
    assert (pointwise.rows, pointwise.k_groups) == (14, 576 // pointwise.k_block)
    down = algo.gemm_cost(phone, "float32", ConvGeometry(
        256, 14, 14, 512, 7, kernel=(3, 3), stride=(2, 2), pad_top=1, pad_left=1), 7)
    assert down.k_groups > 1 and tasks(down, 7) >= wanted
    one_core = dataclasses.replace(phone, num_cores=1)
    assert down.cost == algo.gemm_cost(one_core, "float32", ConvGeometry(
        256, 14, 14, 512, 7, kernel=(3, 3), stride=(2, 2), pad_top=1, pad_left=1), 7).cost
    small_geo = ConvGeometry(6, 14, 14, 16, 10, kernel=(5, 5))  # LeNet-5's second conv
    small = algo.gemm_cost(phone, "float32", small_geo, 10)
    assert small.cost < algo.PARALLEL_MIN_COST and tasks(small, 10) < wanted
    monkeypatch.setattr(algo, "PARALLEL_MIN_COST", 0)
    split = algo.gemm_cost(phone, "float32", small_geo, 10)
    assert tasks(split, 10) >= wanted and split.cost >= small.cost
