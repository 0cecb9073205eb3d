"""Any engine on any model on the emulated phone: instructions per inference, output checked.

`count_model("resnet18", "ncnn-fp16")` resolves the model (a zoo name, an ONNX file, or a
torch module with inputs), makes seeded inputs and the host reference output (PyTorch for a
module, ONNX Runtime for an ONNX file), converts the model for the engine (or compiles it
with MobileDL through the injected `compile_model`), runs it once on the phone to check its
output against the reference, and counts its instructions by the N / 2N method. Every
engine runs on one thread, on the same CPU model, with the same inputs.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deploy.cpus import DEFAULT_CPU
from deploy.device import setup
from deploy.emulator import count_instructions, run_on_emulator
from deploy.peers import ENGINES as PEER_ENGINES
from deploy.peers.convert import export_onnx, onnx_io, prepare_peer
from deploy.peers.count import count_peer, run_peer
from mdl_tvm import zoo
from mdl_tvm.core.numerics import relative_error

ENGINES = ("mobiledl", "mobiledl-fp16", *PEER_ENGINES)
CompileFn = Callable[[object, tuple, str, str, Path], Path]
"""``compile_model(model, inputs, target, precision, out_path) -> library path``: a
MobileDL build of a torch module (traced with `inputs`) or an ONNX path."""


@dataclass(frozen=True)
class EngineCount:
    """One engine's figures for one model."""

    engine: str
    instructions: int
    rel_error: float
    model_bytes: int
    cpu: str


@dataclass(frozen=True)
class ModelRef:
    """A model every engine can start from: an ONNX file (plus, for a torch model, the
    module itself), seeded inputs and the host reference outputs."""

    name: str
    onnx: Path
    inputs: tuple
    reference: tuple
    module: object = None


def resolve(model, workdir: Path, inputs=None, seed: int = 0) -> ModelRef:
    """A `ModelRef` for a zoo name, an ONNX path, or ``(name, torch module, inputs)``."""
    rng = np.random.default_rng(seed)
    workdir.mkdir(parents=True, exist_ok=True)
    if isinstance(model, tuple):
        name, module, inputs = model
    elif isinstance(model, str) and model in zoo.MODELS:
        name, module = model, zoo.build(model).eval()
        inputs = inputs or (rng.standard_normal(zoo.INPUT_SHAPES[model]).astype("float32"),)
    elif isinstance(model, (str, Path)) and Path(model).is_file():
        path = Path(model)
        names, _, _, dtypes = onnx_io(path)
        if inputs is None:
            import onnx

            graph = onnx.load(str(path)).graph
            shapes = {i.name: tuple(d.dim_value for d in i.type.tensor_type.shape.dim)
                      for i in graph.input}
            if any(d <= 0 for n in names for d in shapes[n]):
                raise ValueError(f"{path} has symbolic input dims; pass --input X.npy")
            inputs = tuple(rng.standard_normal(shapes[n]).astype(d)
                           for n, d in zip(names, dtypes, strict=True))
        return ModelRef(path.stem, path, tuple(inputs), tuple(_ort_reference(path, inputs)))
    else:
        raise ValueError(f"{model!r} is neither an ONNX file nor a zoo model; zoo models: "
                         f"{', '.join(zoo.MODELS)}")
    import torch

    with torch.no_grad():
        outs = module(*[torch.from_numpy(np.asarray(a)) for a in inputs])
    outs = outs if isinstance(outs, (tuple, list)) else (outs,)
    onnx_path = export_onnx(module, tuple(inputs), workdir / f"{name}.onnx")
    return ModelRef(name, onnx_path, tuple(inputs), tuple(o.numpy() for o in outs), module)


def _ort_reference(path: Path, inputs) -> list[np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {i.name: a for i, a in zip(sess.get_inputs(), inputs, strict=True)})


def _error(outputs, reference) -> float:
    if len(outputs) != len(reference):
        return float("nan")
    return max(relative_error(np.asarray(o).reshape(np.shape(r)), r)
               for o, r in zip(outputs, reference, strict=True))


def count_model(model, engine: str, *, cpu: str = DEFAULT_CPU, runs: int = 2,
                inputs=None, compile_model: CompileFn | None = None,
                workdir: Path | None = None, verify: bool = False) -> EngineCount:
    """Instructions per inference of `model` on `engine` on the emulated phone.

    Parameters
    ----------
    model : str, os.PathLike or (name, torch.nn.Module, inputs)
        A zoo name, an ONNX file, or a torch module with its inputs.
    engine : str
        One of `ENGINES`: ``mobiledl`` (fp32, profile ``arm64``), ``mobiledl-fp16``
        (``arm64-fp16``), ``ort``, ``ncnn``, ``ncnn-fp16``, ``mnn``, ``mnn-fp16``,
        ``litert``.
    cpu : str
        QEMU CPU model every engine runs on (default ``cortex-a76``).
    runs : int
        N of the N / 2N method.
    inputs : tuple of numpy.ndarray, optional
        Default: seeded standard-normal inputs of the model's shapes.
    compile_model : callable, optional
        Builds a MobileDL library (`CompileFn`); required for the ``mobiledl`` engines
        (the command line passes ``mdl_tvm.compile``).
    workdir : path, optional
        Where converted models go (default: a temporary directory).
    verify : bool
        Count N twice and require equal counts.

    Raises
    ------
    deploy.peers.errors.EngineRefused
        When the engine cannot take the model (the message names the op).
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {ENGINES}")
    with tempfile.TemporaryDirectory(prefix="mdl-engines-") as tmp:
        work = Path(workdir or tmp)
        ref = resolve(model, work, inputs)
        if engine.startswith("mobiledl"):
            if compile_model is None:
                raise ValueError("the mobiledl engines need compile_model= (mdl_tvm.compile)")
            fp16 = engine.endswith("fp16")
            source = ref.module if ref.module is not None else str(ref.onnx)
            so = compile_model(source, ref.inputs, "arm64-fp16" if fp16 else "arm64",
                               "fp16" if fp16 else "fp32", work / f"{ref.name}-{engine}.so")
            outputs = run_on_emulator(so, list(ref.inputs), cpu=cpu)
            n = count_instructions(so, list(ref.inputs), runs=runs, cpu=cpu, verify=verify)
            size = Path(so).stat().st_size
        else:
            env = setup(peers=True)
            shapes = [tuple(np.shape(a)) for a in ref.inputs]
            peer = prepare_peer(engine, ref.onnx, work / engine, env, shapes)
            outputs = run_peer(peer, ref.inputs, cpu, env)
            n = count_peer(peer, ref.inputs, cpu, runs=runs, verify=verify, env=env)
            size = peer.weight_bytes
        return EngineCount(engine, n, _error(outputs, ref.reference), size, cpu)
