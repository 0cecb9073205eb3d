"""`compile` and `load`: the public entry points, and the `CompiledModel` they return."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .artifact import export_library, read_metadata
from .errors import InputSpecError, UnknownTargetError
from .graph_stats import GraphStats, graph_stats
from .importers import InputSpec, import_model
from .pipeline import BuildState, run_pipeline
from .precision import check_target, parse_precision
from .targets import TargetProfile, get_profile


@dataclass(frozen=True)
class OutputSpec:
    shape: tuple[int, ...]
    dtype: str

    def to_json(self) -> dict:
        return {"shape": list(self.shape), "dtype": self.dtype}


def _output_specs(mod) -> list[OutputSpec]:
    ret = mod["main"].ret_ty if hasattr(mod["main"], "ret_ty") else mod["main"].body.ty
    fields = getattr(ret, "fields", None) or [ret]
    specs = []
    for ty in fields:
        shape = getattr(ty, "shape", None)
        dims = tuple(int(d) for d in shape) if shape is not None else ()
        specs.append(OutputSpec(dims, str(getattr(ty, "dtype", "float32"))))
    return specs


class CompiledModel:
    """A model compiled for one target profile.

    Created by `mdl_tvm.compile` (holds the executable) or `mdl_tvm.load` (holds the
    loaded library). `run` works when the profile is this machine's; `export` writes the
    device library for any profile.
    """

    def __init__(self, profile: TargetProfile, inputs: list[InputSpec],
                 outputs: list[OutputSpec], stats: GraphStats, executable=None,
                 library=None, relax_module=None, timings=None, source="relax"):
        self.profile = profile
        self.inputs = inputs
        self.outputs = outputs
        self.stats = stats
        self.executable = executable
        self.relax_module = relax_module
        self.timings = dict(timings or {})
        self.source = source
        self.compression: list[dict] = []  # per-layer-group report of a compress= pass
        self.masks = None  # relay_passes.ChannelMasks of a mask compression (savable)
        self.precision: dict = {"mode": "fp32"}  # PrecisionConfig.to_json() of the build
        self.tuned_functions: list[str] = []  # PrimFuncs scheduled from a tuning database
        self.zero_copy: dict = {}  # {"emitted": bool, "plan" | "reason"} of main_zc (build)
        self._library = library
        self._vm = None

    # -- metadata ---------------------------------------------------------------------
    def metadata(self) -> dict:
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
        meta = self.metadata()
        meta["compile_seconds"] = {k: round(v, 3) for k, v in self.timings.items()}
        return meta

    # -- export -----------------------------------------------------------------------
    def export(self, path: str) -> str:
        """Write one shared library the target device loads; returns the absolute path.

        The write is atomic: on failure nothing is left at `path`.
        """
        if self.executable is None:
            raise ValueError("this model was loaded from a library; it is already exported")
        return export_library(self.executable, path, self.metadata(), self.profile.compiler())

    # -- run --------------------------------------------------------------------------
    def _machine(self):
        import tvm
        from tvm import relax

        if self._vm is None:
            if not self.profile.is_host:
                raise UnknownTargetError(
                    f"this model is compiled for {self.profile.name!r}, which cannot run on this "
                    "machine; export it and run it on the device (mdl-tvm device start + "
                    "deploy.remote), or compile with target='host'"
                )
            module = self._library if self._library is not None else self.executable
            self._vm = relax.VirtualMachine(module, tvm.cpu())
        return self._vm

    def check_inputs(self, arrays) -> list[np.ndarray]:
        """Validate count, shape and dtype of `arrays`; returns them as contiguous numpy."""
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
        vm = self._machine()
        result = vm["main"](*[tvm.runtime.tensor(a) for a in arrays])
        return _flatten(result)

    __call__ = run

    def executor(self, **buffers):
        """A `deploy.zero_copy.ZeroCopyExecutor` for this host model: preset input, output
        and workspace buffers allocated once (or ``inputs=``, ``outputs=``, ``workspace=``
        given), shared with numpy, no copy or allocation per run."""
        from deploy.zero_copy import ZeroCopyExecutor

        return ZeroCopyExecutor(self, **buffers)

    def benchmark(self, *inputs, repeat: int = 20, warmup: int = 3) -> dict:
        """Median and spread of `repeat` host runs, in milliseconds."""
        import tvm

        arrays = [tvm.runtime.tensor(a) for a in self.check_inputs(inputs)]
        main = self._machine()["main"]
        for _ in range(warmup):
            main(*arrays)
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            main(*arrays)
            times.append((time.perf_counter() - start) * 1e3)
        return {"median_ms": float(np.median(times)), "min_ms": float(np.min(times)),
                "max_ms": float(np.max(times)), "repeat": repeat}


def _flatten(result) -> list[np.ndarray]:
    if hasattr(result, "numpy"):
        return [result.numpy()]
    out = []
    for item in result:
        out.extend(_flatten(item))
    return out


def compile(model, target="arm64", *, input_shapes=None, example_inputs=None,
            input_dtype="float32", compress=None, calibration=None,
            graph_passes=(), precision="fp32", accumulate=None,
            tuning_db=None, default_schedules=True) -> CompiledModel:
    """Compile a model for a target profile.

    Parameters
    ----------
    model : torch.nn.Module, str, onnx.ModelProto or tvm.IRModule
        PyTorch module (give `example_inputs` or `input_shapes`), ONNX path or proto,
        or a Relax module with a ``main`` function.
    target : str or TargetProfile
        Profile name, see `mdl_tvm.targets.PROFILES` / ``mdl-tvm targets``.
    input_shapes : dict or list, optional
        Input shapes (required where the model does not fix them).
    example_inputs : tuple of torch.Tensor, optional
        Example inputs for `torch.export`.
    input_dtype : str
        Dtype of inputs built from `input_shapes`.
    compress : str, (str, relay_passes.CompressConfig) or a pass object, optional
        Channel compression. ``"kmeans:0.5"`` removes half of each layer group's channels
        by k-means clustering (`relay_passes.kmeans_cluster`); ``"mask:0.5"`` prunes them
        by filter magnitude (``"mask:0.5:greedy"``: criterion ``l1``, ``l2``,
        ``activation`` or ``greedy``; `relay_passes.mask_prune`). With `calibration`, both
        refit the consumer layers by least squares. A configured
        ``relay_passes.MaskPruning`` / ``KMeansChannelClustering`` is accepted too.
    calibration : numpy.ndarray or iterable of arrays, optional
        Inputs ``(N, ...)`` resembling real data (a few hundred training images) for
        least-squares recovery and data-driven channel selection.
    graph_passes : sequence of callables
        Relax module passes run after preparation (and compression), before lowering.
    precision : str or mdl_tvm.precision.PrecisionConfig
        ``"fp32"``; ``"fp16"`` (fp16 weights and activations, softmax and the last layer
        in fp32); ``"fp16-full"`` (nothing kept in fp32); ``"fp16-storage"`` (fp16
        weights, fp32 arithmetic). fp16 compute needs a ``+fullfp16`` profile
        (``arm64-fp16``, ``cortex-a55``, ``cortex-a76``); elsewhere it raises
        `PrecisionError`. See `mdl_tvm.precision`.
    accumulate : str, optional
        ``"fp16"`` (default, fast) or ``"fp32"`` accumulation in the fp16 compute modes.
    tuning_db : str, os.PathLike or tvm.s_tir.meta_schedule.Database, optional
        MetaSchedule tuning records (a directory written by ``mdl-tvm tune`` /
        `schedules.tuning.tune`). Functions whose tuned record the tuning run's whole-model
        check kept use it; the rest get the default schedules, so a tuned build is never
        slower than the default one (as measured; see `schedules.verify`).
    default_schedules : bool
        ``False`` builds with TVM's plain pipeline, no `schedules` rules (naive loop
        nests, for comparison only: tens of times slower).

    Returns
    -------
    CompiledModel
    """
    state, inputs, source, compressor = start_state(
        model, target, input_shapes=input_shapes, example_inputs=example_inputs,
        input_dtype=input_dtype, compress=compress, calibration=calibration,
        graph_passes=graph_passes, precision=precision, accumulate=accumulate)
    if not isinstance(default_schedules, bool):
        raise TypeError(f"default_schedules must be True or False, not {default_schedules!r}")
    state.options["tuning_db"] = tuning_db
    state.options["default_schedules"] = default_schedules
    profile, precision_config = state.profile, state.options["precision"]
    state = run_pipeline(state)
    compiled = CompiledModel(
        profile=profile,
        inputs=inputs,
        outputs=_output_specs(state.high_level_mod),
        stats=graph_stats(state.high_level_mod),
        executable=state.executable,
        relax_module=state.high_level_mod,
        timings=state.timings,
        source=source,
    )
    compiled.precision = precision_config.to_json()
    if compressor is not None:
        compiled.compression = [vars(r) for r in compressor.reports]
        compiled.masks = getattr(compressor, "masks", None)
    compiled.tuned_functions = list(state.options.get("tuned_functions", ()))
    compiled.zero_copy = dict(state.options.get("zero_copy_report") or {})
    return compiled


def start_state(model, target="arm64", *, input_shapes=None, example_inputs=None,
                input_dtype="float32", compress=None, calibration=None, graph_passes=(),
                precision="fp32", accumulate=None):
    """Import `model` and make the pipeline's start state, as `compile` does.

    Takes `compile`'s model and graph arguments; tuning (`schedules.tuning`) runs the
    stages before ``lower`` on it, so what is tuned is what `compile` builds.

    Returns
    -------
    (BuildState, list of InputSpec, str, compressor or None)
        The state (``options`` hold ``graph_passes`` and ``precision``), the inputs, the
        source kind and the compression pass (its reports fill in as the stages run).
    """
    profile = get_profile(target)
    precision_config = parse_precision(precision, accumulate)
    check_target(precision_config, profile)  # before the (slow) import
    compressor = _compressor(compress, calibration)
    if compressor is not None:
        graph_passes = (compressor, *graph_passes)
    start = time.perf_counter()
    mod, inputs, source = import_model(model, input_shapes, example_inputs, input_dtype)
    state = BuildState(mod=mod, profile=profile, options={"graph_passes": tuple(graph_passes),
                                                          "precision": precision_config})
    state.timings["import"] = time.perf_counter() - start
    return state, inputs, source, compressor


def _compressor(compress, calibration=None):
    if compress is None:
        if calibration is not None:
            raise ValueError("calibration= is only used by compression; also give "
                             "compress='mask:RATIO' or 'kmeans:RATIO'")
        return None
    import relay_passes as rp

    if isinstance(compress, (rp.MaskPruning, rp.KMeansChannelClustering)):
        if calibration is not None and compress.calibration is None:
            compress.calibration = calibration
        return compress
    criterion = None
    if isinstance(compress, str) and compress.count(":") == 2:
        compress, _, criterion = compress.rpartition(":")
    method, config = rp.parse_compress(compress)
    if method == "kmeans":
        if criterion is not None:
            raise ValueError(f"k-means takes no criterion; got {criterion!r} (use 'kmeans:R')")
        return rp.KMeansChannelClustering(config, calibration=calibration)
    criterion = criterion or "l1"
    if criterion not in rp.CRITERIA:
        raise ValueError(f"unknown mask criterion {criterion!r}; choose one of {rp.CRITERIA}")
    if calibration is None and criterion in ("activation", "greedy"):
        raise ValueError(f"mask criterion {criterion!r} needs calibration inputs: pass "
                         "calibration=ARRAY (N, ...) of training inputs")
    recovery = "ls" if calibration is not None else "none"
    return rp.MaskPruning(config, rp.RecoveryConfig(criterion=criterion, recovery=recovery),
                          calibration=calibration)


def load(path: str) -> CompiledModel:
    """Load an exported library. Running it needs a profile of this machine's kind.

    Raises
    ------
    ModelFormatError
        When `path` is not a MobileDL artifact.
    UnknownTargetError
        When the library was built for a target this machine cannot execute.
    """
    import tvm

    meta = read_metadata(path)
    name = meta["target"]
    host = get_profile("host")
    if name != "host" and not meta["mtriple"].startswith(host.mtriple.split("-")[0]):
        raise UnknownTargetError(
            f"{path!r} is built for {name!r} ({meta['mtriple']}) and cannot be loaded on this "
            f"{host.mtriple} machine; run it on the device (mdl-tvm device start, deploy.remote)"
        )
    profile = host if name == "host" else get_profile(name)
    library = tvm.runtime.load_module(path)
    model = CompiledModel(
        profile=host if profile.mtriple == host.mtriple else profile,
        inputs=[InputSpec(i["name"], tuple(i["shape"]), i["dtype"]) for i in meta["inputs"]],
        outputs=[OutputSpec(tuple(o["shape"]), o["dtype"]) for o in meta["outputs"]],
        stats=GraphStats(**meta["stats"]),
        library=library,
        source=meta.get("source", "relax"),
    )
    model.compression = meta.get("compression", [])
    model.precision = meta.get("precision", {"mode": "fp32"})
    return model
