"""A model library on this machine: load it, check inputs, run it, time it.

The runtime half of a model. `mdl_tvm.load` returns a `HostModel` for an exported library;
the compiler's `CompiledModel` is a `HostModel` that also holds the executable and can
export it. Nothing here imports the compiler, ``tvm`` or torch: the library is loaded and
run by the TVM runtime alone (`deploy.library.runtime`: tvm-ffi + ``libtvm_runtime.so``).
"""

from __future__ import annotations

import threading

import numpy as np

from deploy.library import RuntimeVM, open_library, to_tensor, vm_lock
from deploy.zero_copy import ZeroCopyError, ZeroCopyExecutor
from mdl_tvm.core.errors import InputSpecError, NonFiniteError, UnknownTargetError
from mdl_tvm.core.graph_stats import GraphStats
from mdl_tvm.core.numerics import summary_ms, time_calls
from mdl_tvm.core.relax_utils import flatten_outputs
from mdl_tvm.core.specs import InputSpec, OutputSpec
from mdl_tvm.core.targets import TargetProfile


def check_arrays(specs: list[InputSpec], arrays) -> list[np.ndarray]:
    """Validate count, shape and dtype of `arrays` against `specs`; returns them as
    contiguous numpy arrays.

    Raises
    ------
    InputSpecError
        Naming the input, the expected and the given shape or dtype.
    """
    if len(arrays) != len(specs):
        raise InputSpecError(
            f"the model takes {len(specs)} input(s) "
            f"({', '.join(s.name for s in specs)}), got {len(arrays)}"
        )
    out = []
    for spec, arr in zip(specs, arrays, strict=True):
        arr = np.asarray(arr)
        if tuple(arr.shape) != spec.shape:
            raise InputSpecError(
                f"input {spec.name!r} must have shape {spec.shape}, got {tuple(arr.shape)}"
            )
        if str(arr.dtype) != spec.dtype:
            raise InputSpecError(
                f"input {spec.name!r} must have dtype {spec.dtype}, got {arr.dtype}; "
                f"convert it with .astype({spec.dtype!r})"
            )
        out.append(np.ascontiguousarray(arr))
    return out


def _check_finite(arrays, what: str) -> None:
    """Raise `NonFiniteError` naming the first of `arrays` that holds NaN or Inf."""
    for i, a in enumerate(arrays):
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            bad = int(a.size - np.count_nonzero(np.isfinite(a)))
            raise NonFiniteError(
                f"{what} {i} {a.dtype}{list(a.shape)} holds {bad:,} NaN/Inf value(s)"
                + ("; check the data you pass (a NaN input may still give finite outputs: "
                   "ReLU, max-pooling and clamps map NaN to a number in compiled code)"
                   if what == "input" else "; the model overflowed or its inputs were extreme"))


class HostModel:
    """A model for one target profile, runnable when the profile is this machine's.

    Threads: `run` and `benchmark` may be called from many threads; calls into the one
    VM are serialised by a lock (the kernels already use every core). For concurrent
    inferences load one model per thread. A `ZeroCopyExecutor` owns one set of buffers
    and refuses to be run from two threads at once (`ConcurrentUseError`).

    Parameters
    ----------
    profile : TargetProfile
    inputs : list of InputSpec
    outputs : list of OutputSpec
    stats : GraphStats
    module : tvm.runtime.Module or relax.VMExecutable, optional
        What the Relax VM loads (a loaded library or a freshly built executable).
    source : str
        Where the model came from (``torch``, ``onnx``, ``relax``).
    """

    def __init__(self, profile: TargetProfile, inputs: list[InputSpec],
                 outputs: list[OutputSpec], stats: GraphStats, module=None,
                 source: str = "relax"):
        self.profile = profile
        self.inputs = inputs
        self.outputs = outputs
        self.stats = stats
        self.source = source
        self.compression: list[dict] = []  # per-layer-group report of a compress= pass
        self.precision: dict = {"mode": "fp32"}  # PrecisionConfig.to_json() of the build
        self._module = module
        self._vm = None
        self._vm_guard = threading.Lock()
        self._run_guard = threading.Lock()  # `run`'s executor: one run at a time
        self._executor = None  # `run`'s executor, False when the library has no main_zc

    # -- metadata ---------------------------------------------------------------------
    def metadata(self) -> dict:
        """The note an exported library carries (`mdl_tvm.core.artifact`)."""
        return {
            "format": 1,
            "target": self.profile.name,
            "mtriple": self.profile.mtriple,
            "mcpu": self.profile.mcpu,
            "mattr": list(self.profile.mattr),
            "source": self.source,
            "inputs": [s.to_json() for s in self.inputs],
            "outputs": [s.to_json() for s in self.outputs],
            "stats": self.stats.to_json(),
            "compression": self.compression,
            "precision": self.precision,
        }

    def summary(self) -> dict:
        """Target, inputs, outputs, weight bytes, MACs and operator counts."""
        return self.metadata()

    # -- run --------------------------------------------------------------------------
    def vm(self) -> RuntimeVM:
        """The Relax VM on this machine's CPU (made once; `deploy.library.RuntimeVM`).

        Raises
        ------
        UnknownTargetError
            When the model is built for another machine.
        """
        if self._vm is None:
            if not self.profile.is_host:
                raise UnknownTargetError(
                    f"this model is compiled for {self.profile.name!r}, which cannot run on "
                    "this machine; export it and run it on the device (mdl-tvm device start "
                    "+ deploy.remote), or compile with target='host'"
                )
            with self._vm_guard:  # two threads' first runs make one VM
                if self._vm is None:
                    self._vm = RuntimeVM(self._module)
        return self._vm

    def check_inputs(self, arrays) -> list[np.ndarray]:
        """Validate count, shape and dtype of `arrays` (`check_arrays`); returns them as
        contiguous numpy."""
        return check_arrays(self.inputs, arrays)

    def run(self, *inputs, check_finite: bool = False) -> list[np.ndarray]:
        """Run on this machine; returns the outputs as a list of numpy arrays.

        Parameters
        ----------
        *inputs : numpy.ndarray
            One array per model input, of its shape and dtype.
        check_finite : bool
            Refuse NaN/Inf inputs and outputs with `NonFiniteError` (costs one pass over
            each array, about 0.1 ms per MB). Compiled code does not propagate NaN the
            way PyTorch does: ReLU, max-pooling and clamps turn a NaN into a number, so a
            NaN input can give finite, plausible outputs; check inputs you do not control.

        Thread-safe: concurrent calls are serialised (see the class docstring). Where the
        library has a zero-copy entry point, runs go through one preset executor (inputs,
        outputs and intermediates planned once, as ONNX Runtime's memory pattern does) and
        return copies of its outputs; else through ``main``, which allocates per run.
        """
        arrays = self.check_inputs(inputs)
        if check_finite:
            _check_finite(arrays, "input")
        vm = self.vm()
        with self._run_guard:
            executor = self._run_executor()
            if executor is not None:  # planned buffers: no allocation per run
                outputs = [o.copy() for o in executor(*arrays)]
            else:
                with vm_lock(vm):
                    outputs = flatten_outputs(vm["main"](*[to_tensor(a) for a in arrays]))
        if check_finite:
            _check_finite(outputs, "output")
        return outputs

    __call__ = run

    def _run_executor(self):
        """`run`'s own `ZeroCopyExecutor`, made at the first run; None without ``main_zc``
        (a library built before it, or a graph the zero-copy pass cannot plan)."""
        if self._executor is None:
            try:
                self._executor = ZeroCopyExecutor(self)
            except ZeroCopyError:
                self._executor = False
        return self._executor or None

    def executor(self, **buffers):
        """A `deploy.zero_copy.ZeroCopyExecutor` for this host model: preset input, output
        and workspace buffers allocated once (or ``inputs=``, ``outputs=``, ``workspace=``
        given), shared with numpy, no copy or allocation per run."""
        return ZeroCopyExecutor(self, **buffers)

    def benchmark(self, *inputs, repeat: int = 20, warmup: int = 3) -> dict:
        """Median and spread of `repeat` host runs, in milliseconds."""
        arrays = [to_tensor(a) for a in self.check_inputs(inputs)]
        vm = self.vm()
        with vm_lock(vm):
            main = vm["main"]
            return summary_ms(time_calls(lambda: main(*arrays), repeat, warmup))


def load(path: str) -> HostModel:
    """Load an exported library. Running it needs a profile of this machine's kind.

    Raises
    ------
    ModelFormatError
        When `path` is not a MobileDL artifact.
    UnknownTargetError
        When the library was built for a target this machine cannot execute.
    """
    meta, profile, module = open_library(path)
    model = HostModel(
        profile=profile,
        inputs=[InputSpec.from_json(i) for i in meta["inputs"]],
        outputs=[OutputSpec.from_json(o) for o in meta["outputs"]],
        stats=GraphStats(**meta["stats"]),
        module=module,
        source=meta.get("source", "relax"),
    )
    model.compression = meta.get("compression", [])
    model.precision = meta.get("precision", {"mode": "fp32"})
    return model
