"""`compile`: the public entry point, and the `CompiledModel` it returns."""

from __future__ import annotations

import time
import warnings

from deploy.host_model import HostModel
from mdl_tvm.compiler.importers import import_model
from mdl_tvm.compiler.pipeline import BuildOptions, BuildState, run_pipeline
from mdl_tvm.compiler.precision import check_target, parse_precision
from mdl_tvm.core.artifact import export_library
from mdl_tvm.core.graph_stats import graph_stats
from mdl_tvm.core.relax_utils import flatten_outputs
from mdl_tvm.core.specs import OutputSpec
from mdl_tvm.core.targets import get_profile
from relay_passes.compress_spec import make_compressor


def _output_specs(mod) -> list[OutputSpec]:
    ret = mod["main"].ret_ty if hasattr(mod["main"], "ret_ty") else mod["main"].body.ty
    fields = getattr(ret, "fields", None) or [ret]
    specs = []
    for ty in fields:
        shape = getattr(ty, "shape", None)
        dims = tuple(int(d) for d in shape) if shape is not None else ()
        specs.append(OutputSpec(dims, str(getattr(ty, "dtype", "float32"))))
    return specs


class CompiledModel(HostModel):
    """A model compiled for one target profile (returned by `mdl_tvm.compile`).

    A `deploy.host_model.HostModel` (``run``, ``benchmark``, ``executor`` when the profile
    is this machine's) that also holds the executable: `export` writes the device library
    for any profile.
    """

    def __init__(self, profile, inputs, outputs, stats, executable=None, relax_module=None,
                 timings=None, source="relax", graph_module=None):
        super().__init__(profile, inputs, outputs, stats, module=executable, source=source)
        self.executable = executable
        self.relax_module = relax_module
        # after the graph passes (compression), before precision: what `for_target` rebuilds
        self.graph_module = graph_module
        self.timings = dict(timings or {})
        self.masks = None  # relay_passes.ChannelMasks of a mask compression (savable)
        self.tuned_functions: list[str] = []  # PrimFuncs scheduled from a tuning database
        self.zero_copy: dict = {}  # {"emitted": bool, "plan" | "reason"} of main_zc (build)
        self.slow_paths: list = []  # schedules.coverage.SlowPath: heavy ops on a generic path

    def metadata(self) -> dict:
        """The library's note, with the heavy kernels left on a generic schedule."""
        meta = super().metadata()
        meta["slow_paths"] = [s.to_json() for s in self.slow_paths]
        return meta

    def for_target(self, target, *, precision="fp32", accumulate=None, tuning_db=None,
                   default_schedules=True) -> CompiledModel:
        """This model, compressed as it is, compiled for another target profile.

        Compression (and its calibration probes) ran once, in this compile; the Relax
        module it produced (`graph_module`: after the graph passes, before precision) is
        compiled again for `target`. The compression report, masks and source carry over.

        Parameters
        ----------
        target : str or TargetProfile
        precision, accumulate, tuning_db, default_schedules
            As in `compile`.

        Returns
        -------
        CompiledModel
        """
        other = compile(self.graph_module, target, precision=precision, accumulate=accumulate,
                        tuning_db=tuning_db, default_schedules=default_schedules)
        other.source, other.compression, other.masks = self.source, self.compression, self.masks
        return other

    def summary(self) -> dict:
        """Target, inputs, outputs, weight bytes, MACs, operator counts, compile times."""
        meta = self.metadata()
        meta["compile_seconds"] = {k: round(v, 3) for k, v in self.timings.items()}
        return meta

    def export(self, path: str) -> str:
        """Write one shared library the target device loads; returns the absolute path.

        The write is atomic: on failure nothing is left at `path`.
        """
        return export_library(self.executable, path, self.metadata(), self.profile.compiler())


def host_runner(mod):
    """Build a Relax module for this machine with the MobileDL pipeline; ``run(x)``.

    The probe runner compression passes get from `compile` (`relay_passes.activations`).
    """
    import tvm
    from tvm import relax

    state = run_pipeline(BuildState(mod=mod, profile=get_profile("host")))
    vm = relax.VirtualMachine(state.executable, tvm.cpu())
    return lambda x: flatten_outputs(vm["main"](tvm.runtime.tensor(x)))


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
        Profile name, see `mdl_tvm.core.targets.PROFILES` / ``mdl-tvm targets``.
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
        refit the consumer layers by least squares. ``"mask:2x"`` / ``"kmeans:2x"`` ask for
        half the MACs instead, shared out over the layer groups where removal costs least
        (`relay_passes.macs_budget`). A configured
        ``relay_passes.MaskPruning`` / ``KMeansChannelClustering`` is accepted too
        (`relay_passes.compress_spec.make_compressor`).
    calibration : numpy.ndarray or iterable of arrays, optional
        Inputs ``(N, ...)`` resembling real data (a few hundred training images) for
        least-squares recovery and data-driven channel selection.
    graph_passes : sequence of callables
        Relax module passes run after preparation (and compression), before lowering.
    precision : str or mdl_tvm.compiler.precision.PrecisionConfig
        ``"fp32"``; ``"fp16"`` (fp16 weights and activations, softmax and the last layer
        in fp32); ``"fp16-full"`` (nothing kept in fp32); ``"fp16-storage"`` (fp16
        weights, fp32 arithmetic). fp16 compute needs a ``+fullfp16`` profile
        (``arm64-fp16``, ``cortex-a55``, ``cortex-a76``); elsewhere it raises
        `PrecisionError`. See `mdl_tvm.compiler.precision`.
    accumulate : str, optional
        ``"fp16"`` (default, fast) or ``"fp32"`` accumulation in the fp16 compute modes.
    tuning_db : str, os.PathLike or tvm.s_tir.meta_schedule.Database, optional
        MetaSchedule tuning records (a directory written by ``mdl-tvm tune`` /
        `schedules.tuning.tune`). Functions whose tuned record the tuning run's whole-model
        check kept use it; the rest get the default schedules, so a tuned build is never
        slower than the default one (as measured; see `schedules.tuning.verify`).
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
        graph_passes=graph_passes, precision=precision, accumulate=accumulate,
        tuning_db=tuning_db, default_schedules=default_schedules)
    state = run_pipeline(state)
    compiled = CompiledModel(
        profile=state.profile,
        inputs=inputs,
        outputs=_output_specs(state.high_level_mod),
        stats=graph_stats(state.high_level_mod),
        executable=state.executable,
        relax_module=state.high_level_mod,
        graph_module=state.graph_mod,
        timings=state.timings,
        source=source,
    )
    compiled.precision = state.options.precision.to_json()
    if compressor is not None:
        compiled.compression = [vars(r) for r in compressor.reports]
        compiled.masks = getattr(compressor, "masks", None)
    compiled.tuned_functions = list(state.tuned_functions)
    compiled.zero_copy = dict(state.zero_copy_report)
    compiled.slow_paths = list(state.slow_paths)
    if compiled.slow_paths:
        warnings.warn(
            f"{len(compiled.slow_paths)} heavy kernel(s) have no fast MobileDL schedule and "
            f"run on TVM's generic path (slow): {'; '.join(map(str, compiled.slow_paths[:3]))}"
            f"{' ...' if len(compiled.slow_paths) > 3 else ''}; `mdl-tvm info` lists them",
            stacklevel=2)
    return compiled


def start_state(model, target="arm64", *, input_shapes=None, example_inputs=None,
                input_dtype="float32", compress=None, calibration=None, graph_passes=(),
                precision="fp32", accumulate=None, tuning_db=None, default_schedules=True):
    """Import `model` and make the pipeline's start state, as `compile` does.

    Takes `compile`'s arguments; tuning (`schedules.tuning`) runs the stages before
    ``lower`` on it, so what is tuned is what `compile` builds.

    Returns
    -------
    (BuildState, list of InputSpec, str, compressor or None)
        The state, the inputs, the source kind and the compression pass (its reports fill
        in as the stages run).
    """
    profile = get_profile(target)
    precision_config = parse_precision(precision, accumulate)
    check_target(precision_config, profile)  # before the (slow) import
    compressor = make_compressor(compress, calibration, runner=host_runner)
    if compressor is not None:
        graph_passes = (compressor, *graph_passes)
    options = BuildOptions(graph_passes=tuple(graph_passes), precision=precision_config,
                           tuning_db=tuning_db, default_schedules=default_schedules)
    start = time.perf_counter()
    mod, inputs, source = import_model(model, input_shapes, example_inputs, input_dtype)
    state = BuildState(mod=mod, profile=profile, options=options)
    state.timings["import"] = time.perf_counter() - start
    return state, inputs, source, compressor
