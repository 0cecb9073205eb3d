"""Run one inference engine's model on the device itself: ONNX Runtime, NCNN, MNN, LiteRT.

Copied to the emulated phone (or an arm64 Linux board) and run with the peers' wheels on
``PYTHONPATH``; it imports nothing from MobileDL::

    python3 peer_runner.py spec.json --inputs in0.npy [...] --outputs-dir DIR --repeat N

``spec.json`` names the engine (``ort``, ``ncnn``, ``ncnn-fp16``, ``mnn``, ``mnn-fp16``,
``litert``), its model files and, per input, the name and layout the engine wants. One
*inference* is what an app does per frame with each engine's Python API: put the inputs
in, run, take the outputs out (copied to numpy). Every engine runs on one thread. The last
run's outputs are written as ``DIR/out0.npy`` ... in the caller's layout (NCHW, batch
axis kept). Exit code 0 on success, 2 on bad arguments, 3 when the engine refuses the
model (the message names the op when the engine does).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

ENGINES = ("ort", "ncnn", "ncnn-fp16", "mnn", "mnn-fp16", "litert")


class Refused(Exception):
    """The engine cannot load or run the model."""


def _ort(spec):
    import onnxruntime as ort

    ort.disable_telemetry_events()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    try:
        sess = ort.InferenceSession(spec["files"][0], opts, providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - ORT raises its own exception types
        raise Refused(str(err)) from err
    names = [i.name for i in sess.get_inputs()]

    def run(arrays):
        return sess.run(None, dict(zip(names, arrays, strict=True)))

    return run


def _ncnn(spec, fp16: bool):
    import ncnn

    net = ncnn.Net()
    net.opt.num_threads = 1
    net.opt.use_vulkan_compute = False
    net.opt.use_fp16_storage = net.opt.use_fp16_packed = net.opt.use_fp16_arithmetic = fp16
    if net.load_param(spec["files"][0]) != 0 or net.load_model(spec["files"][1]) != 0:
        raise Refused(f"ncnn could not load {spec['files'][0]}")
    outputs = spec["outputs"]

    def run(arrays):
        ex = net.create_extractor()
        for name, arr in zip(spec["input_names"], arrays, strict=True):
            ex.input(name, ncnn.Mat(arr))
        outs = []
        for name in outputs:
            ret, mat = ex.extract(name)
            if ret != 0:
                raise Refused(f"ncnn failed to compute {name} (error {ret})")
            outs.append(np.array(mat))
        return outs

    return run


def _mnn(spec, fp16: bool):
    import MNN  # the engine only: never MNN.tools (its wrapper pip-installs on import)

    interp = MNN.Interpreter(spec["files"][0])
    session = interp.createSession({"backend": "CPU", "numThread": 1,
                                    "precision": "low" if fp16 else "high"})
    inputs = [interp.getSessionInput(session, n) for n in spec["input_names"]]
    outputs = [interp.getSessionOutput(session, n) for n in spec["outputs"]]
    caffe = MNN.Tensor_DimensionType_Caffe

    def run(arrays):
        for tensor, arr in zip(inputs, arrays, strict=True):
            if arr.dtype.kind in "iu":  # MNN's converter stores int64 inputs as int32
                host = MNN.Tensor(arr.shape, MNN.Halide_Type_Int, arr.astype(np.int32), caffe)
            else:
                host = MNN.Tensor(arr.shape, MNN.Halide_Type_Float, arr.astype(np.float32),
                                  caffe)
            tensor.copyFrom(host)
        interp.runSession(session)
        outs = []
        for tensor in outputs:
            host = MNN.Tensor(tensor.getShape(), MNN.Halide_Type_Float,
                              np.zeros(tensor.getShape(), np.float32), caffe)
            tensor.copyToHostTensor(host)
            outs.append(np.array(host.getNumpyData(), copy=True))
        return outs

    return run


def _litert(spec):
    from ai_edge_litert.interpreter import Interpreter

    try:
        it = Interpreter(model_path=spec["files"][0], num_threads=1)
        it.allocate_tensors()
    except Exception as err:  # noqa: BLE001
        raise Refused(str(err)) from err
    ins = [d["index"] for d in it.get_input_details()]
    outs = [d["index"] for d in it.get_output_details()]

    def run(arrays):
        for index, arr in zip(ins, arrays, strict=True):
            it.set_tensor(index, arr)
        it.invoke()
        return [it.get_tensor(index).copy() for index in outs]

    return run


def make_runner(spec: dict):
    """``run(arrays) -> outputs`` for the engine of `spec` (arrays in the engine's layout)."""
    engine = spec["engine"]
    if engine == "ort":
        return _ort(spec)
    if engine in ("ncnn", "ncnn-fp16"):
        return _ncnn(spec, engine.endswith("fp16"))
    if engine in ("mnn", "mnn-fp16"):
        return _mnn(spec, engine.endswith("fp16"))
    if engine == "litert":
        return _litert(spec)
    raise SystemExit(f"unknown engine {engine!r}; choose one of {ENGINES}")


def to_engine(arr: np.ndarray, layout: str) -> np.ndarray:
    """A caller's array in the engine's layout (``nchw`` as is, ``nhwc``, ``chw``: batch
    dropped, ``i32bits``: int token as the float32 bits of an int32, NCNN's convention)."""
    if layout == "nhwc":
        arr = arr.transpose(0, 2, 3, 1)
    elif layout == "chw":
        arr = arr[0]
    elif layout == "i32bits":
        arr = arr.astype(np.int32).view(np.float32)
    return np.ascontiguousarray(arr)


def from_engine(arr: np.ndarray, layout: str, shape) -> np.ndarray:
    """An engine's output back in the caller's layout and shape."""
    arr = np.asarray(arr, np.float32)
    if layout == "nhwc":
        arr = arr.transpose(0, 3, 1, 2)
    return arr.reshape(shape)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("spec")
    p.add_argument("--inputs", nargs="+", required=True)
    p.add_argument("--outputs-dir", required=True)
    p.add_argument("--repeat", type=int, default=1)
    args = p.parse_args(argv)
    with open(args.spec) as f:
        spec = json.load(f)
    if args.repeat < 1 or len(args.inputs) != len(spec["input_layouts"]):
        print("bad --repeat or wrong number of --inputs", file=sys.stderr)
        return 2
    arrays = [to_engine(np.load(path), layout)
              for path, layout in zip(args.inputs, spec["input_layouts"], strict=True)]
    try:
        run = make_runner(spec)
        for _ in range(args.repeat):
            outs = run(arrays)
    except Refused as err:
        print(f"{spec['engine']} refused the model: {err}", file=sys.stderr)
        return 3
    os.makedirs(args.outputs_dir, exist_ok=True)
    for i, (out, layout, shape) in enumerate(zip(outs, spec["output_layouts"],
                                                  spec["output_shapes"], strict=True)):
        np.save(os.path.join(args.outputs_dir, f"out{i}.npy"), from_engine(out, layout, shape))
    return 0


if __name__ == "__main__":
    sys.exit(main())
