"""Host-side conversions: one ONNX file per model, then each peer engine's own format.

Everything starts from ONNX (a zoo model is exported with ``torch.onnx.export``, the
TorchScript exporter, which folds BatchNorm): ONNX Runtime runs it as is, NCNN gets
``.param`` / ``.bin`` from ``pnnx`` (its ONNX front end), MNN an ``.mnn`` from its own
converter (``_tools.mnnconvert``, from the cached ``peers-host`` part), LiteRT a
``.tflite`` from `deploy.peers.tflite`. A `PeerModel` carries the files and the spec the
device-side runner (`deploy.peers.peer_runner`) reads: input names and layouts, output
names, layouts and shapes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deploy.device import DeviceEnv
from deploy.peers.errors import EngineRefused
from deploy.peers.install import SCHEMA
from deploy.peers.peer_runner import ENGINES as PEER_ENGINES
from deploy.peers.tflite import onnx_to_tflite

ONNX_OPSET = 17


@dataclass(frozen=True)
class PeerModel:
    """One engine's converted model: its files and the runner spec."""

    engine: str
    files: tuple[Path, ...]
    spec: dict = field(default_factory=dict)

    @property
    def weight_bytes(self) -> int:
        """Bytes of the model files (weights dominate)."""
        return int(sum(os.path.getsize(f) for f in self.files))


def export_onnx(module, inputs: tuple[np.ndarray, ...], path, input_names=None) -> Path:
    """Export a torch module to ONNX (TorchScript exporter, constants folded, opset 17).

    Outputs are named ``out0``, ``out1``, ...; inputs ``x`` / ``in0``... unless named.
    """
    import torch

    path = Path(path)
    tensors = tuple(torch.from_numpy(np.asarray(a)) for a in inputs)
    with torch.no_grad():
        outs = module.eval()(*tensors)
    count = len(outs) if isinstance(outs, (tuple, list)) else 1
    names = list(input_names or ([f"in{i}" for i in range(len(inputs))]))
    torch.onnx.export(module, tensors, str(path), dynamo=False, opset_version=ONNX_OPSET,
                      input_names=names, output_names=[f"out{i}" for i in range(count)],
                      do_constant_folding=True)
    return path


def onnx_io(path) -> tuple[list[str], list[str], list[tuple], list[str]]:
    """``(input names, output names, output shapes, input dtypes)`` of an ONNX model."""
    import onnx

    model = onnx.load(str(path))
    init = {t.name for t in model.graph.initializer}

    def shape(vi):
        return tuple(d.dim_value for d in vi.type.tensor_type.shape.dim)

    ins = [i for i in model.graph.input if i.name not in init]
    dtypes = [str(onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type))
              for i in ins]
    return ([i.name for i in ins], [o.name for o in model.graph.output],
            [shape(o) for o in model.graph.output], dtypes)


def _ncnn_layout(shape: tuple, dtype: str) -> str:
    if dtype == "int64":
        return "i32bits"
    return "chw" if len(shape) >= 3 and shape[0] == 1 else "nchw"


def _ncnn(onnx_path: Path, out_dir: Path, shapes: list[tuple], dtypes: list[str]) -> tuple:
    """pnnx's executable, in a scratch directory (it writes side files beside its input);
    ``fp16=0``: fp32 weights (the Python wrapper drops the flag for ONNX input)."""
    import pnnx

    with tempfile.TemporaryDirectory(prefix="mdl-pnnx-") as tmp:
        src = Path(tmp) / "model.onnx"
        shutil.copyfile(onnx_path, src)
        shape_arg = ",".join(f"[{','.join(map(str, s))}]{'i64' if d == 'int64' else 'f32'}"
                             for s, d in zip(shapes, dtypes, strict=True))
        param, binf = out_dir / "model.ncnn.param", out_dir / "model.ncnn.bin"
        proc = subprocess.run([pnnx.EXEC_PATH, str(src), f"inputshape={shape_arg}", "fp16=0",
                               f"ncnnparam={param}", f"ncnnbin={binf}"],
                              cwd=tmp, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0 or not param.exists():
            raise EngineRefused(f"pnnx could not convert the model: "
                                f"{(proc.stderr or proc.stdout).strip()[-300:]}")
    layers = [line.split() for line in param.read_text().splitlines()[2:] if line.strip()]
    unsupported = sorted({f[0] for f in layers if f[0].startswith(("pnnx.", "torch.",
                                                                    "Tensor.", "F."))})
    if unsupported:
        raise EngineRefused(f"NCNN has no layer for {', '.join(unsupported)} (left by pnnx)")
    inputs = [f[1] for f in layers if f[0] == "Input"]
    produced = {name for f in layers for name in f[4 + int(f[2]):4 + int(f[2]) + int(f[3])]}
    consumed = {name for f in layers for name in f[4:4 + int(f[2])]}
    outputs = sorted(produced - consumed, key=lambda n: (not n.startswith("out"), n))
    return (param, binf), inputs, outputs


def _mnn(onnx_path: Path, out_dir: Path, env: DeviceEnv) -> Path:
    out = out_dir / "model.mnn"
    code = ("import sys, _tools; sys.exit(0 if _tools.mnnconvert(['mnnconvert', '-f', 'ONNX', "
            "'--modelFile', sys.argv[1], '--MNNModel', sys.argv[2], '--bizCode', 'MNN']) "
            "else 1)")
    proc = subprocess.run([sys.executable, "-c", code, str(onnx_path), str(out)],
                          env={**os.environ, "PYTHONPATH": str(env.peers_host)},
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 or not out.exists():
        text = (proc.stdout + proc.stderr).strip()
        missing = [line for line in text.splitlines() if "not support" in line.lower()]
        raise EngineRefused(f"MNN's converter refused the model: "
                            f"{(missing[-1] if missing else text[-300:])}")
    return out


def prepare_peer(engine: str, onnx_path, out_dir, env: DeviceEnv,
                 input_shapes: list[tuple]) -> PeerModel:
    """Convert an ONNX model for `engine` (`deploy.peers.peer_runner.ENGINES`).

    Raises
    ------
    EngineRefused
        When the engine's converter cannot take the model (naming the op where it can).
    """
    if engine not in PEER_ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {PEER_ENGINES}")
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    in_names, out_names, out_shapes, dtypes = onnx_io(onnx_path)
    spec = {"engine": engine, "input_names": in_names, "outputs": out_names,
            "input_layouts": ["nchw"] * len(in_names), "output_layouts": ["nchw"] * len(out_names),
            "output_shapes": [list(s) for s in out_shapes]}
    if engine == "ort":
        files = (onnx_path,)
    elif engine.startswith("ncnn"):
        files, spec["input_names"], spec["outputs"] = _ncnn(onnx_path, out_dir, input_shapes,
                                                            dtypes)
        spec["input_layouts"] = [_ncnn_layout(s, d) for s, d in zip(input_shapes, dtypes,
                                                                    strict=True)]
    elif engine.startswith("mnn"):
        files = (_mnn(onnx_path, out_dir, env),)
    else:
        if any(d != "float32" for d in dtypes):
            raise EngineRefused("LiteRT writer: only float32 inputs are supported")
        files = (onnx_to_tflite(onnx_path, out_dir / "model.tflite", env.peers / SCHEMA),)
        spec["input_layouts"] = ["nhwc" if len(s) == 4 else "nchw" for s in input_shapes]
        spec["output_layouts"] = ["nhwc" if len(s) == 4 else "nchw" for s in out_shapes]
    spec["files"] = [Path(f).name for f in files]
    return PeerModel(engine, tuple(Path(f) for f in files), spec)
