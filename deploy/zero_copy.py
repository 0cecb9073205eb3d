"""A zero-copy executor on the Relax VM: preset buffers, static memory plan, no allocation.

MobileDL libraries carry ``main_zc(*inputs, *outputs, workspace)`` next to ``main``
(`mdl_tvm.compiler.zero_copy_pass`): each output is written by its kernel straight into a caller's
buffer, and every intermediate tensor is a view into one planned workspace. The executor
allocates (or takes from the caller) these buffers once, as 64-byte aligned numpy arrays
that the VM sees through DLPack, so a run copies nothing and allocates no tensor data:

>>> ex = ZeroCopyExecutor(compiled)         # or mdl_tvm.load("m.so").executor()
>>> ex.inputs[0][...] = image               # write into the preset input (or bind_input)
>>> logits = ex.run()[0]                    # ex.outputs[0], filled in place, no copy
>>> np.shares_memory(logits, ex.outputs[0])
True

Outputs are overwritten by the next run: copy what you keep. A buffer may not be both an
input and an output of one run (a kernel could read an input it has already overwritten):
`bind_input` / `bind_output` reject overlaps with `ZeroCopyError`.

Recurrent state (the RNN pattern: output ``h`` of step t is input ``h`` of step t+1) stays
in preset buffers with `carry`, which exchanges the two buffers (ping-pong, O(1), no copy)::

    for x_t in sequence:
        ex.inputs[0][...] = x_t
        ex.run()
        ex.carry(output=1, input=1)         # new h becomes the next input h

The same executor runs on the phone: `deploy.zero_copy_remote.RemoteZeroCopyExecutor`
(RPC) and ``device_runner.py --zero-copy`` (on the device itself).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
from collections import Counter
from dataclasses import dataclass

import numpy as np

from deploy.library import ALIGN, aligned_empty, host_vm, shared_tensor, vm_lock
from mdl_tvm.core.errors import ConcurrentUseError, InputSpecError, MdlError
from mdl_tvm.core.relax_utils import flatten_outputs

__all__ = ["ALIGN", "ALLOC_BUILTINS", "RUN_NAME", "TensorSpec", "ZeroCopyError",
           "ZeroCopyExecutor", "ZeroCopyPlan", "aligned_empty", "check_buffer",
           "count_vm_calls"]
RUN_NAME = "mdl_zc_run"  # + "_<n>": each executor saves its own closure in the VM
_EXECUTOR_IDS = itertools.count()
ALLOC_BUILTINS = ("vm.builtin.alloc_storage", "vm.builtin.alloc_tensor")


class ZeroCopyError(MdlError, ValueError):
    """A library without ``main_zc``, or buffers that alias each other."""


@dataclass(frozen=True)
class TensorSpec:
    """Shape and dtype of one buffer."""

    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class ZeroCopyPlan:
    """What ``main_zc`` takes: input and output specs and the workspace size in bytes."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    workspace_bytes: int
    function: str = "main_zc"
    align: int = ALIGN

    @classmethod
    def from_dict(cls, plan: dict) -> ZeroCopyPlan:
        def specs(items):
            return tuple(TensorSpec(tuple(s["shape"]), s["dtype"]) for s in items)

        return cls(specs(plan["inputs"]), specs(plan["outputs"]), int(plan["workspace_bytes"]),
                   plan.get("function", "main_zc"), int(plan.get("align", ALIGN)))

    @classmethod
    def from_vm(cls, vm) -> ZeroCopyPlan:
        """Read the plan a library carries (``mdl_zc_plan``); works over RPC too."""
        try:
            value = vm["mdl_zc_plan"]()
        except (AttributeError, RuntimeError, ValueError) as err:
            raise ZeroCopyError(
                "this library has no zero-copy entry point (main_zc): it was built before "
                "MobileDL had one, with pipeline option zero_copy=False, or from a graph the "
                "pass cannot plan (see CompiledModel.zero_copy['reason']); recompile it with "
                f"mdl_tvm.compile(...) ({err})") from err
        return cls.from_dict(json.loads(flatten_outputs(value)[0].tobytes().decode()))

    def to_json(self) -> dict:
        return {"function": self.function, "workspace_bytes": self.workspace_bytes,
                "inputs": [{"shape": list(s.shape), "dtype": s.dtype} for s in self.inputs],
                "outputs": [{"shape": list(s.shape), "dtype": s.dtype} for s in self.outputs]}


def check_buffer(array, spec: TensorSpec, what: str) -> np.ndarray:
    """Check that `array` can be a preset buffer for `spec`; returns it unchanged.

    Raises
    ------
    TypeError
        When it is not a numpy array.
    InputSpecError
        On a shape or dtype mismatch.
    ZeroCopyError
        When it is not C-contiguous, not aligned, or read-only where written.
    """
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{what} must be a numpy.ndarray, got {type(array).__name__}; "
                        "make one with deploy.zero_copy.aligned_empty(shape, dtype)")
    if tuple(array.shape) != spec.shape:
        raise InputSpecError(f"{what} must have shape {spec.shape}, got {tuple(array.shape)}")
    if str(array.dtype) != spec.dtype:
        raise InputSpecError(f"{what} must have dtype {spec.dtype}, got {array.dtype}; "
                             "allocate it with aligned_empty(shape, dtype)")
    if not array.flags.writeable:
        raise ZeroCopyError(f"{what} is read-only; DLPack cannot share read-only memory "
                            "with TVM: pass a writeable array (np.require(a, "
                            "requirements='W')) or aligned_empty(shape, dtype)")
    if not array.flags.c_contiguous:
        raise ZeroCopyError(f"{what} must be C-contiguous; use aligned_empty(shape, dtype)")
    if array.ctypes.data % ALIGN:
        raise ZeroCopyError(f"{what} must start at a {ALIGN}-byte boundary (TVM imports only "
                            "aligned memory without a copy); use aligned_empty(shape, dtype)")
    return array


class ZeroCopyExecutor:
    """Run ``main_zc`` on this machine with preset, shared, allocated-once buffers.

    Parameters
    ----------
    model : HostModel, str or path, tvm.runtime.Module / Executable, or VirtualMachine
        A host model (`mdl_tvm.compile(..., target="host")`, `mdl_tvm.load`), an exported
        host library's path, its module, or a VM.
    inputs, outputs : list of numpy.ndarray, optional
        Caller-owned buffers (aligned, contiguous, exact shape and dtype; see
        `aligned_empty`); missing ones are allocated.
    workspace : numpy.ndarray, optional
        Caller-owned uint8 workspace of at least ``plan.workspace_bytes`` bytes.

    Attributes
    ----------
    plan : ZeroCopyPlan
    inputs, outputs : tuple of numpy.ndarray
        The preset buffers; write inputs in place, read outputs after `run`.
    workspace : numpy.ndarray
        The planned memory of all intermediate tensors.

    Notes
    -----
    One executor is one set of buffers: running it from two threads at once would mix
    their inputs and outputs, so a second concurrent `run` (or a rebinding during a run)
    raises `ConcurrentUseError` instead of waiting. Make one executor per thread
    (``model.executor()``); they share the model's VM, whose calls are serialised.
    """

    def __init__(self, model, *, inputs=None, outputs=None, workspace=None):
        self._busy = threading.Lock()
        self._name = f"{RUN_NAME}_{next(_EXECUTOR_IDS)}"  # two executors, one VM: no clash
        self.vm = host_vm(model)
        with vm_lock(self.vm):
            self.plan = ZeroCopyPlan.from_vm(self.vm)
        self._in = [aligned_empty(s.shape, s.dtype) for s in self.plan.inputs]
        self._out = [aligned_empty(s.shape, s.dtype) for s in self.plan.outputs]
        for label, given, specs in (("inputs", inputs, self.plan.inputs),
                                    ("outputs", outputs, self.plan.outputs)):
            if given is not None and len(given) != len(specs):
                raise InputSpecError(f"main_zc takes {len(specs)} {label}, got {len(given)}")
        for i, arr in enumerate(inputs or ()):
            self._in[i] = check_buffer(arr, self.plan.inputs[i], f"input {i}")
        for j, arr in enumerate(outputs or ()):
            self._out[j] = check_buffer(arr, self.plan.outputs[j], f"output {j}")
        if workspace is None:
            workspace = aligned_empty((self.plan.workspace_bytes,), "uint8")
        elif workspace.nbytes < self.plan.workspace_bytes or workspace.ndim != 1:
            raise InputSpecError(f"workspace must be a 1-D uint8 array of at least "
                                 f"{self.plan.workspace_bytes} bytes, got {workspace.shape}")
        ws_spec = TensorSpec((workspace.shape[0],), "uint8")
        self.workspace = check_buffer(workspace, ws_spec, "workspace")
        self._bind()

    # -- buffers ----------------------------------------------------------------------
    @property
    def inputs(self) -> tuple[np.ndarray, ...]:
        return tuple(self._in)

    @property
    def outputs(self) -> tuple[np.ndarray, ...]:
        return tuple(self._out)

    def _check_aliasing(self) -> None:
        named = ([(f"input {i}", a) for i, a in enumerate(self._in)]
                 + [(f"output {j}", a) for j, a in enumerate(self._out)]
                 + [("workspace", self.workspace)])
        for k, (name_a, a) in enumerate(named):
            for name_b, b in named[k + 1:]:
                both_inputs = name_a.startswith("input") and name_b.startswith("input")
                if not both_inputs and np.may_share_memory(a, b):
                    raise ZeroCopyError(
                        f"{name_a} and {name_b} share memory: a kernel could overwrite data "
                        "it still has to read. Give each output its own buffer; to feed an "
                        "output back as the next input (recurrent state) use "
                        "carry(output=j, input=i)")

    def _bind(self) -> None:
        """(Re)create the saved closure ``main_zc(*inputs, *outputs, workspace)``."""
        self._check_aliasing()
        workspace = self.workspace[:self.plan.workspace_bytes]  # main_zc takes the exact size
        tensors = [shared_tensor(a) for a in (*self._in, *self._out, workspace)]
        with vm_lock(self.vm):
            self.vm.save_function(self.plan.function, self._name, *tensors,
                                  include_return=False)
            self._run = self.vm[self._name]
        self._tensors = tensors

    def bind_input(self, index: int, array: np.ndarray) -> None:
        """Use the caller's `array` as input `index` from now on (shared, not copied)."""
        self._set(self._in, index, check_buffer(array, self.plan.inputs[index],
                                                f"input {index}"))

    def bind_output(self, index: int, array: np.ndarray) -> None:
        """Write output `index` into the caller's `array` from now on."""
        self._set(self._out, index, check_buffer(array, self.plan.outputs[index],
                                                 f"output {index}"))

    def _set(self, buffers: list, index: int, array: np.ndarray) -> None:
        with self._exclusive("rebind a buffer of"):
            old = buffers[index]
            buffers[index] = array
            try:
                self._bind()
            except ZeroCopyError:
                buffers[index] = old
                raise

    @contextlib.contextmanager
    def _exclusive(self, what: str):
        """Hold the executor for one thread; a second one is refused, not queued."""
        if not self._busy.acquire(blocking=False):
            raise ConcurrentUseError(
                f"cannot {what} this ZeroCopyExecutor: another thread is running it. An "
                "executor owns one set of input/output buffers; create one per thread with "
                "model.executor() (they share the model's VM safely)")
        try:
            yield
        finally:
            self._busy.release()

    def carry(self, output: int, input: int) -> None:  # noqa: A002 - reads best at call sites
        """Make output `output` of the last run the next run's input `input`, no copy.

        Exchanges the two preset buffers (ping-pong): ``inputs[input]`` becomes the array
        the last run wrote, and ``outputs[output]`` the old input array, which the next
        run overwrites. Costs one closure rebinding, independent of the buffer size.
        """
        if self.plan.inputs[input] != self.plan.outputs[output]:
            raise InputSpecError(f"output {output} {self.plan.outputs[output]} cannot feed "
                                 f"input {input} {self.plan.inputs[input]}")
        with self._exclusive("carry a buffer of"):
            self._in[input], self._out[output] = self._out[output], self._in[input]
            self._bind()

    # -- running ----------------------------------------------------------------------
    def run(self) -> tuple[np.ndarray, ...]:
        """One inference on the preset buffers; returns `outputs` (the same arrays).

        Raises
        ------
        ConcurrentUseError
            When another thread is running this executor.
        """
        with self._exclusive("run"), vm_lock(self.vm):
            self._run()
        return self.outputs

    def __call__(self, *arrays) -> tuple[np.ndarray, ...]:
        """Copy `arrays` into the preset inputs, then `run` (a convenience: for no copy at
        all, write into `inputs` or `bind_input` your own buffers)."""
        if len(arrays) != len(self._in):
            raise InputSpecError(f"the model takes {len(self._in)} input(s), got {len(arrays)}")
        for i, (dst, src) in enumerate(zip(self._in, arrays, strict=True)):
            src = np.asarray(src)
            if src.shape != dst.shape or src.dtype != dst.dtype:
                raise InputSpecError(f"input {i} must be {dst.dtype}{list(dst.shape)}, got "
                                     f"{src.dtype}{list(src.shape)}")
        with self._exclusive("run"):
            for dst, src in zip(self._in, arrays, strict=True):
                np.copyto(dst, np.asarray(src))
            with vm_lock(self.vm):
                self._run()
        return self.outputs

    def count_vm_calls(self, runs: int = 1) -> Counter:
        """Count the VM's calls (kernels and builtins) over `runs` runs, by instrument.

        ``ALLOC_BUILTINS`` in the result are per-run data allocations; ``main_zc`` makes
        none. Uses `vm.set_instrument`, so it is slow: not for timing.
        """
        return count_vm_calls(self.vm, self._run, runs)


def count_vm_calls(vm, fn, runs: int = 1) -> Counter:
    """Call ``fn()`` `runs` times with a VM instrument counting every call instruction.

    The key ``"alloc_storage_bytes"`` sums the bytes ``vm.builtin.alloc_storage`` asked
    the VM's allocator for.
    """
    calls: Counter = Counter()

    def instrument(func, symbol, before, ret, *args):
        if before:
            calls[str(symbol)] += 1
            if symbol == "vm.builtin.alloc_storage":
                calls["alloc_storage_bytes"] += (int(np.prod(tuple(args[1])))
                                                 * np.dtype(str(args[3])).itemsize)
        return 0

    vm.set_instrument(instrument)
    try:
        for _ in range(runs):
            fn()
    finally:
        vm.set_instrument(None)
    return calls
