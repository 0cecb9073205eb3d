"""A model library on this machine: load it, check inputs, run it, time it.

The runtime half of a model. `mdl_tvm.load` returns a `HostModel` for an exported library;
the compiler's `CompiledModel` is a `HostModel` that also holds the executable and can
export it. Nothing here imports the compiler.
"""

from __future__ import annotations

import numpy as np

from deploy.library import open_library
from deploy.zero_copy import ZeroCopyExecutor
from mdl_tvm.core.errors import InputSpecError, UnknownTargetError
from mdl_tvm.core.graph_stats import GraphStats
from mdl_tvm.core.numerics import summary_ms, time_calls
from mdl_tvm.core.relax_utils import flatten_outputs
from mdl_tvm.core.specs import InputSpec, OutputSpec
from mdl_tvm.core.targets import TargetProfile


class HostModel:
    """A model for one target profile, runnable when the profile is this machine's.

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
    def vm(self):
        """The Relax VM on this machine's CPU (made once).

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
            import tvm
            from tvm.runtime.vm import VirtualMachine

            self._vm = VirtualMachine(self._module, tvm.cpu())
        return self._vm

    def check_inputs(self, arrays) -> list[np.ndarray]:
        """Validate count, shape and dtype of `arrays`; returns them as contiguous numpy.

        Raises
        ------
        InputSpecError
            Naming the input, the expected and the given shape or dtype.
        """
        if len(arrays) != len(self.inputs):
            raise InputSpecError(
                f"the model takes {len(self.inputs)} input(s) "
                f"({', '.join(s.name for s in self.inputs)}), got {len(arrays)}"
            )
        out = []
        for spec, arr in zip(self.inputs, arrays, strict=True):
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

    def run(self, *inputs) -> list[np.ndarray]:
        """Run on this machine; returns the outputs as a list of numpy arrays."""
        import tvm

        arrays = self.check_inputs(inputs)
        result = self.vm()["main"](*[tvm.runtime.tensor(a) for a in arrays])
        return flatten_outputs(result)

    __call__ = run

    def executor(self, **buffers):
        """A `deploy.zero_copy.ZeroCopyExecutor` for this host model: preset input, output
        and workspace buffers allocated once (or ``inputs=``, ``outputs=``, ``workspace=``
        given), shared with numpy, no copy or allocation per run."""
        return ZeroCopyExecutor(self, **buffers)

    def benchmark(self, *inputs, repeat: int = 20, warmup: int = 3) -> dict:
        """Median and spread of `repeat` host runs, in milliseconds."""
        import tvm

        arrays = [tvm.runtime.tensor(a) for a in self.check_inputs(inputs)]
        main = self.vm()["main"]
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
