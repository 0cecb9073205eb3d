"""The zero-copy executor: same outputs as the plain VM, shared buffers, no allocation.

Real builds only: LeNet-5 and a small recurrent cell compiled for this machine, an arm64
library run over RPC on the emulated phone and by the device-side runner under QEMU.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import mdl_tvm
from deploy.zero_copy import (
    ALLOC_BUILTINS,
    ZeroCopyError,
    ZeroCopyExecutor,
    aligned_empty,
    count_vm_calls,
)
from mdl_tvm.core.errors import InputSpecError

torch = pytest.importorskip("torch")


class Cell(torch.nn.Module):
    """h' = tanh(W x + U h); returns (readout(h'), h'): an RNN step with state in/out."""

    def __init__(self):
        super().__init__()
        self.i2h, self.h2h, self.out = (torch.nn.Linear(8, 16), torch.nn.Linear(16, 16),
                                        torch.nn.Linear(16, 4))

    def forward(self, x, h):
        h2 = torch.tanh(self.i2h(x) + self.h2h(h))
        return self.out(h2), h2


@pytest.fixture(scope="module")
def lenet():
    from mdl_tvm import zoo

    torch.manual_seed(0)
    return mdl_tvm.compile(zoo.build("lenet5").eval(), "host", input_shapes=[(1, 1, 28, 28)])


@pytest.fixture(scope="module")
def cell():
    torch.manual_seed(0)
    return mdl_tvm.compile(Cell().eval(), "host", input_shapes=[(1, 8), (1, 16)])


def _images(n, seed=0):
    return np.random.default_rng(seed).random((n, 1, 1, 28, 28), dtype=np.float32)


def test_outputs_identical_to_plain_vm(lenet):
    assert lenet.zero_copy["emitted"] and lenet.zero_copy["plan"]["storages"] >= 1
    ex = lenet.executor()
    for x in _images(3):
        ex.inputs[0][...] = x
        (y,) = ex.run()
        np.testing.assert_array_equal(y, lenet.run(x)[0])  # bit-identical
    np.testing.assert_array_equal(ex(x)[0], lenet.run(x)[0])


def test_inputs_and_outputs_share_memory(lenet):
    mine_in = aligned_empty((1, 1, 28, 28), "float32")
    mine_out = aligned_empty((1, 10), "float32")
    ex = ZeroCopyExecutor(lenet, inputs=[mine_in], outputs=[mine_out])
    assert ex.inputs[0] is mine_in and ex.outputs[0] is mine_out
    tensors = ex._tensors  # what the VM is called with: views of the caller's arrays
    assert np.shares_memory(np.from_dlpack(tensors[0]), mine_in)
    assert np.shares_memory(np.from_dlpack(tensors[1]), mine_out)
    assert np.shares_memory(np.from_dlpack(tensors[2]), ex.workspace)
    for x in _images(2, seed=1):
        mine_in[...] = x  # written in place, no call argument: the next run sees it
        (y,) = ex.run()
        assert y is mine_out and np.shares_memory(y, mine_out)
        np.testing.assert_array_equal(mine_out, lenet.run(x)[0])


def test_zero_allocations_over_100_runs_and_planned_workspace(lenet):
    ex = lenet.executor()
    ex.inputs[0][...] = _images(1)[0, 0]
    ex.run()  # warm-up: constants are loaded on the first call
    calls = ex.count_vm_calls(runs=100)
    assert sum(calls[b] for b in ALLOC_BUILTINS) == 0
    assert calls["fused_mdl_dense2_add4"] == 100  # the tracer saw every run
    vm, main = lenet.vm(), lenet.vm()["main"]
    import tvm

    x = tvm.runtime.tensor(ex.inputs[0])
    plain = count_vm_calls(vm, lambda: main(x), runs=100)  # the same tracer sees allocations
    assert plain["vm.builtin.alloc_storage"] >= 100 and plain["vm.builtin.alloc_tensor"] >= 100

    # every buffer a kernel writes (its last argument) is the output or in the workspace
    lo, hi = ex.workspace.ctypes.data, ex.workspace.ctypes.data + ex.workspace.nbytes
    written = []

    def instrument(func, symbol, before, ret, *args):
        if before and not str(symbol).startswith(("vm.", "runtime.")):
            written.append(np.from_dlpack(args[-1]).ctypes.data)
        return 0

    ex.vm.set_instrument(instrument)
    ex.run()
    ex.vm.set_instrument(None)
    assert written[-1] == ex.outputs[0].ctypes.data
    assert len(written) >= 6 and all(lo <= p < hi for p in written[:-1])


def test_shape_dtype_alignment_errors(lenet):
    ex = lenet.executor()
    with pytest.raises(InputSpecError, match=r"shape \(1, 1, 28, 28\)"):
        ex.bind_input(0, aligned_empty((1, 1, 28, 27), "float32"))
    with pytest.raises(InputSpecError, match="dtype float32"):
        ex.bind_output(0, aligned_empty((1, 10), "float64"))
    unaligned = np.empty(10 * 4 + 4, dtype=np.uint8)
    start = 4 if unaligned.ctypes.data % 64 == 0 else 0
    with pytest.raises(ZeroCopyError, match="aligned_empty"):
        ex.bind_output(0, unaligned[start:start + 40].view(np.float32).reshape(1, 10))
    with pytest.raises(ZeroCopyError, match="C-contiguous"):
        ex.bind_output(0, aligned_empty((1, 20), "float32")[:, ::2])
    frozen = aligned_empty((1, 10), "float32")
    frozen.flags.writeable = False
    with pytest.raises(ZeroCopyError, match="read-only"):
        ex.bind_output(0, frozen)
    with pytest.raises(TypeError, match="numpy.ndarray"):
        ex.bind_input(0, [[0.0]])
    with pytest.raises(InputSpecError, match="at least"):
        ZeroCopyExecutor(lenet, workspace=aligned_empty((64,), "uint8"))
    with pytest.raises(InputSpecError, match="1 input"):
        ex(np.zeros((1, 1, 28, 28), np.float32), np.zeros(1))
    x = _images(1)[0]
    np.testing.assert_array_equal(ex(x)[0], lenet.run(x)[0])  # still bound as before


def test_alias_rejected_and_carry_keeps_recurrent_state(cell):
    ex = cell.executor()
    with pytest.raises(ZeroCopyError, match="input 1 and output 1 share memory"):
        ex.bind_output(1, ex.inputs[1])  # h in == h out in one call: rejected
    with pytest.raises(ZeroCopyError, match="share memory"):
        ex.bind_output(0, ex.workspace[:16].view(np.float32).reshape(1, 4))
    with pytest.raises(InputSpecError, match="cannot feed"):
        ex.carry(output=0, input=1)
    xs = np.random.default_rng(2).standard_normal((5, 1, 8)).astype(np.float32)
    h = np.zeros((1, 16), np.float32)
    ex.inputs[1][...] = h
    for x in xs:
        y_ref, h = cell.run(x, h)
        ex.inputs[0][...] = x
        y, h_out = ex.run()
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(h_out, h)
        ex.carry(output=1, input=1)  # ping-pong: no copy
        assert ex.inputs[1] is h_out and not np.shares_memory(ex.inputs[1], ex.outputs[1])


def test_exported_library_and_missing_entry_point(lenet, tmp_path):
    path = lenet.export(str(tmp_path / "lenet-host.so"))
    loaded = mdl_tvm.load(path)
    x = _images(1, seed=3)[0]
    np.testing.assert_array_equal(ZeroCopyExecutor(path)(x)[0], lenet.run(x)[0])
    np.testing.assert_array_equal(loaded.executor()(x)[0], lenet.run(x)[0])

    from mdl_tvm.compiler import pipeline
    from mdl_tvm.compiler.compiled import start_state

    torch.manual_seed(0)
    state, *_ = start_state(Cell().eval(), "host", input_shapes=[(1, 8), (1, 16)])
    state.options = dataclasses.replace(state.options, zero_copy=False)
    state = pipeline.run_pipeline(state)
    with pytest.raises(ZeroCopyError, match="no zero-copy entry point"):
        ZeroCopyExecutor(state.executable)


def test_run_goes_through_planned_buffers_and_returns_fresh_arrays(lenet):
    """`HostModel.run` uses a preset executor: no allocation per run, outputs copied out."""
    x1, x2 = _images(2)
    first = lenet.run(x1)[0]
    calls = count_vm_calls(lenet.vm(), lambda: lenet.run(x1), runs=20)
    assert sum(calls[b] for b in ALLOC_BUILTINS) == 0 and calls["fused_mdl_dense2_add4"] == 20
    second = lenet.run(x2)[0]
    assert not np.shares_memory(first, second)
    assert not np.array_equal(first, second)  # the first result was not overwritten
    np.testing.assert_array_equal(first, lenet.run(x1)[0])


def test_graph_returning_a_reshaped_kernel_output_gets_main_zc():
    """A final flatten (a reshape of a kernel's fresh buffer) is written in place."""
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 2, 3), "float32"))
    with bb.function("main", [x]):
        y = bb.emit(relax.op.add(x, x))
        bb.emit_func_output(bb.emit(relax.op.reshape(y, (1, 6))))
    model = mdl_tvm.compile(bb.get(), "host")
    assert model.zero_copy["emitted"] is True, model.zero_copy
    assert model.zero_copy["plan"]["outputs"] == [{"shape": [1, 6], "dtype": "float32"}]
    x_np = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    ex = model.executor()
    out = ex(x_np)[0]
    np.testing.assert_array_equal(out, 2 * x_np.reshape(1, 6))
    np.testing.assert_array_equal(model.run(x_np)[0], out)


def test_graph_returning_its_input_keeps_only_main():
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 4), "float32"))
    with bb.function("main", [x]):
        y = bb.emit(relax.op.add(x, x))
        bb.emit_func_output(relax.Tuple([y, x]))
    model = mdl_tvm.compile(bb.get(), "host")
    assert model.zero_copy == {"emitted": False, "reason": model.zero_copy["reason"]}
    assert "output 1 is a parameter or constant" in model.zero_copy["reason"]
    with pytest.raises(ZeroCopyError, match="recompile"):
        model.executor()
    x_np = np.arange(4, dtype=np.float32).reshape(1, 4)
    doubled, same = model.run(x_np)  # the plain VM path still serves it
    np.testing.assert_array_equal(doubled, 2 * x_np)
    np.testing.assert_array_equal(same, x_np)


def test_graph_returning_a_nested_tuple_keeps_only_main():
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 4), "float32"))
    with bb.function("main", [x]):
        y = bb.emit(relax.op.add(x, x))
        z = bb.emit(relax.op.multiply(x, x))
        pair = bb.emit(relax.Tuple([y, z]))
        bb.emit_func_output(relax.Tuple([pair, y]))
    model = mdl_tvm.compile(bb.get(), "host")
    assert model.zero_copy["emitted"] is False
    assert "output 0 is a nested tuple" in model.zero_copy["reason"]
    x_np = np.arange(4, dtype=np.float32).reshape(1, 4)
    outputs = model.run(x_np)  # nested outputs come back flattened, in order
    assert len(outputs) == 3
    np.testing.assert_array_equal(outputs[0], x_np + x_np)
    np.testing.assert_array_equal(outputs[1], x_np * x_np)
    np.testing.assert_array_equal(outputs[2], x_np + x_np)


@pytest.fixture(scope="module")
def cell_arm64(tmp_path_factory):
    torch.manual_seed(0)
    model = mdl_tvm.compile(Cell().eval(), "arm64", input_shapes=[(1, 8), (1, 16)])
    return model.export(str(tmp_path_factory.mktemp("zc-arm64") / "cell.so"))


@pytest.mark.phone
def test_phone_rpc_and_device_runner_match_plain_vm(phone, cell_arm64):
    from deploy.emulator import run_on_emulator
    from deploy.remote import RemoteDevice

    rng = np.random.default_rng(4)
    x, h = rng.standard_normal((1, 8), np.float32), rng.standard_normal((1, 16), np.float32)
    with RemoteDevice.connect(phone["tracker"], key=phone["key"], timeout=60) as dev:
        with dev.load(cell_arm64) as model:
            ex = model.executor()
            held = list(ex.output_tensors)
            for _ in range(2):  # the state stays on the device between steps
                ref = model.run([x, h])
                got = ex(x, h)
                assert all(np.array_equal(a, b) for a, b in zip(got, ref, strict=True))
                ex.carry(output=1, input=1)
                h = ref[1]
                np.testing.assert_array_equal(ex.input_tensors[1].numpy(), h)
            assert [t.numpy().shape for t in held] == [(1, 4), (1, 16)]
            assert ex.output_tensors == held  # the same device buffers every run
    calls: dict = {}
    outs = run_on_emulator(cell_arm64, [x, h], repeat=3, mode="zero-copy", calls=calls)
    plain = run_on_emulator(cell_arm64, [x, h], repeat=1)
    assert all(np.array_equal(a, b) for a, b in zip(outs, plain, strict=True))
    assert calls["runs"] == 3 and not any(k in calls["calls"] for k in ALLOC_BUILTINS)
