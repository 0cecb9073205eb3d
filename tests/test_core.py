"""The bottom layer (`mdl_tvm.core`): relative error, atomic writes and the cache root,
Relax helpers and graph statistics, on exact small cases."""

import math
import os
from pathlib import Path

import numpy as np
import pytest
import tvm
from helpers import relax_module
from tvm import relax

from mdl_tvm.core import io
from mdl_tvm.core.graph_stats import binding_costs, graph_stats
from mdl_tvm.core.numerics import median_ms, relative_error, summary_ms
from mdl_tvm.core.relax_utils import (
    bound_constants,
    flatten_outputs,
    main_bindings,
    op_name,
    static_shape,
)


def test_relative_error_is_max_abs_over_max_abs():
    expected = np.array([[1.0, -4.0], [2.0, 0.5]])
    actual = expected + np.array([[0.0, 0.2], [-0.1, 0.0]])
    assert relative_error(actual, expected) == pytest.approx(0.2 / 4.0, rel=1e-12)
    assert relative_error(expected, expected) == 0.0
    assert relative_error(np.ones(3), np.zeros(3)) == pytest.approx(1e12)  # zero reference
    assert math.isnan(relative_error(np.array([np.nan, 1.0]), np.ones(2)))  # never a silent 0
    assert relative_error(np.zeros((0, 3)), np.zeros((0, 3))) == 0.0
    with pytest.raises(ValueError, match=r"shapes differ: \(2,\) vs \(3,\)"):
        relative_error(np.ones(2), np.ones(3))


def test_timing_summaries_count_their_calls():
    calls = []
    median_ms(lambda: calls.append(1), repeat=5, warmup=2)
    assert len(calls) == 7  # warm-up calls are not timed but do run
    assert summary_ms([3.0, 1.0, 2.0]) == {"median_ms": 2.0, "min_ms": 1.0, "max_ms": 3.0,
                                           "repeat": 3}
    with pytest.raises(ValueError, match="repeat must be >= 1"):
        median_ms(lambda: None, repeat=0)


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(io.CACHE_ENV, str(tmp_path))
    assert io.cache_root("weights", "a.pt") == tmp_path / "weights" / "a.pt"
    assert not (tmp_path / "weights").exists()  # nothing is created
    monkeypatch.setenv(io.CACHE_ENV, "")  # empty counts as unset
    assert io.cache_root() == Path(os.path.expanduser("~"), ".cache", "mdl_tvm")


def test_atomic_write_replaces_whole_files_and_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    assert io.atomic_write(target, "first") == target
    io.atomic_write(target, b"second")
    assert target.read_bytes() == b"second"
    with pytest.raises(RuntimeError, match="disk on fire"):
        with io.atomic_output(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk on fire")
    assert target.read_bytes() == b"second"  # the old content survives a failed write
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.txt"]  # no temp file


def _shared():
    """x @ w + b, then @ w again, relu: one weight constant used by two matmuls."""
    w = np.random.default_rng(0).standard_normal((3, 3)).astype("float32")
    weight, bias = relax.const(w), relax.const(np.ones(3, "float32"))

    def body(bb, x):
        y = bb.emit(relax.op.matmul(x, weight))
        z = bb.emit(relax.op.add(y, bias))
        u = bb.emit(relax.op.matmul(z, weight))
        return relax.op.nn.relu(u)

    return relax_module((2, 3), body), w


def test_graph_stats_count_macs_ops_and_each_constant_once():
    mod, w = _shared()
    stats = graph_stats(mod)
    assert stats.macs == 2 * (2 * 3 * 3)  # two (2, 3) @ (3, 3) matmuls
    assert stats.op_counts == {"add": 1, "matmul": 2, "nn.relu": 1}
    assert (stats.weight_bytes, stats.num_weights) == (w.nbytes + 3 * 4, 2)  # w counted once
    assert binding_costs(mod) == {0: (9, 18), 1: (3, 0), 2: (9, 18), 3: (0, 0)}


def test_relax_helpers_on_a_small_graph():
    mod, w = _shared()
    bindings, _ = main_bindings(mod)
    assert [op_name(b.value) for b in bindings] == [
        "relax.matmul", "relax.add", "relax.matmul", "relax.nn.relu"]
    assert op_name(relax.const(1.0)) == ""
    assert static_shape(bindings[0].var) == (2, 3)
    assert static_shape(relax.Var("n", relax.TensorType([tvm.tirx.Var("n", "int64"), 3],
                                                        "float32"))) is None
    consts = bound_constants(mod)
    assert sorted(consts) == [(0, 1), (1, 1), (2, 1)]
    np.testing.assert_array_equal(consts[(0, 1)], w)
    with pytest.raises(ValueError, match="graph passes need exactly one dataflow block"):
        main_bindings(_two_blocks())
    assert [a.tolist() for a in flatten_outputs(
        (tvm.runtime.tensor(np.ones(2, "float32")), (tvm.runtime.tensor(np.zeros(1, "float32")),)))
    ] == [[1.0, 1.0], [0.0]]


def _two_blocks():
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 2), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit_output(relax.op.add(x, x))
        z = bb.emit(relax.op.multiply(y, y))  # a second, plain binding block
        bb.emit_func_output(z)
    return bb.get()
