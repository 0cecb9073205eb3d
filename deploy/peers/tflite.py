"""Write a ``.tflite`` model from an ONNX graph, for LiteRT (+ XNNPACK) on the phone.

The official PyTorch → TFLite converters need TensorFlow; this writer emits the
flatbuffer directly with the schema module the ``ai-edge-litert`` wheel ships
(``schema_py_generated.py``, object API). It covers the CNN operators of the benchmark
models: the graph is rewritten to NHWC (weights to OHWI, depthwise to 1HWO), BatchNorm is
already folded by ``torch.onnx.export``, ReLU / ReLU6 are fused into the op before them,
padding is explicit (``PAD`` then ``VALID``: TFLite's ``SAME`` pads stride-2 convs on the
bottom/right only, PyTorch on both sides), and a flatten of a 4-D tensor goes through a
``TRANSPOSE`` back to NCHW so the dense layer sees PyTorch's element order. XNNPACK then
takes the whole graph as one partition.

An operator outside that set raises `EngineRefused` naming it, so the benchmark can say
which op keeps LiteRT from a model.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from deploy.peers.errors import EngineRefused
from mdl_tvm.core.io import atomic_write

FLOAT32, INT32, INT64 = 0, 2, 4  # schema TensorType
_ACT = {"relu": 1, "relu6": 3}  # ActivationFunctionType
BINARY = ("Add", "Mul", "Sub", "Div")  # ONNX name = TFLite's ADD ... with <Name>Options
UNARY = {"Sqrt": "SQRT", "Relu": "RELU", "Sigmoid": "LOGISTIC", "HardSwish": "HARD_SWISH",
         "Tanh": "TANH"}  # ONNX -> BuiltinOperator


def _schema(path: Path):
    spec = importlib.util.spec_from_file_location("tflite_schema", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _attrs(node) -> dict:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


class _Writer:
    def __init__(self, schema, onnx_model):
        import onnx
        from onnx import numpy_helper, shape_inference

        self.s = schema
        model = shape_inference.infer_shapes(onnx_model)
        self.graph = model.graph
        self.consts = {t.name: numpy_helper.to_array(t) for t in self.graph.initializer}
        for node in self.graph.node:
            if node.op_type == "Constant":
                self.consts[node.output[0]] = numpy_helper.to_array(_attrs(node)["value"])
        self.shapes = {}
        for vi in list(self.graph.value_info) + list(self.graph.input) + list(self.graph.output):
            dims = vi.type.tensor_type.shape.dim
            self.shapes[vi.name] = tuple(d.dim_value for d in dims)
        self.tensors, self.buffers, self.ops, self.codes = [], [schema.BufferT()], [], {}
        self.index: dict[str, int] = {}  # onnx name -> tflite tensor (NHWC when 4-D)
        self.onnx = onnx

    # -- tensors ----------------------------------------------------------------------
    def tensor(self, name: str, shape, dtype=FLOAT32, data: np.ndarray | None = None) -> int:
        t = self.s.TensorT()
        t.name, t.shape, t.type = name, list(int(d) for d in shape), dtype
        if data is not None:
            buf = self.s.BufferT()
            buf.data = list(np.ascontiguousarray(data).tobytes())
            self.buffers.append(buf)
            t.buffer = len(self.buffers) - 1
        self.tensors.append(t)
        return len(self.tensors) - 1

    def const(self, name: str, array: np.ndarray) -> int:
        dtype = {np.float32: FLOAT32, np.int32: INT32, np.int64: INT64}[array.dtype.type]
        return self.tensor(name, array.shape, dtype, array)

    def nhwc_shape(self, name: str) -> tuple:
        shape = self.shapes[name]
        return (shape[0], shape[2], shape[3], shape[1]) if len(shape) == 4 else shape

    def out(self, name: str) -> int:
        self.index[name] = self.tensor(name, self.nhwc_shape(name))
        return self.index[name]

    def op(self, code: int, inputs, outputs, options_type=0, options=None) -> None:
        if code not in self.codes:
            oc = self.s.OperatorCodeT()
            oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, min(code, 127), 1
            self.codes[code] = len(self.codes)
        o = self.s.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = self.codes[code], list(inputs), list(outputs)
        o.builtinOptionsType, o.builtinOptions = options_type, options
        self.ops.append(o)

    # -- helpers ----------------------------------------------------------------------
    def pad(self, x: int, name: str, pads, value: float = 0.0) -> int:
        """Explicit spatial padding of NHWC tensor `x` (ONNX pads: t, l, b, r)."""
        t, left, b, r = pads
        if not any(pads):
            return x
        shape = list(self.tensors[x].shape)
        shape[1] += t + b
        shape[2] += left + r
        paddings = self.const(f"{name}_pads", np.array(
            [[0, 0], [t, b], [left, r], [0, 0]], np.int32))
        y = self.tensor(f"{name}_padded", shape)
        if value == 0.0:
            self.op(self.s.BuiltinOperator.PAD, [x, paddings], [y],
                    self.s.BuiltinOptions.PadOptions, self.s.PadOptionsT())
        else:
            fill = self.const(f"{name}_fill", np.array(value, np.float32))
            self.op(self.s.BuiltinOperator.PADV2, [x, paddings, fill], [y],
                    self.s.BuiltinOptions.PadV2Options, self.s.PadV2OptionsT())
        return y

    def fused(self, node_out: str, consumers) -> tuple[str, int]:
        """(final onnx name, activation) when `node_out` feeds only a Relu / ReLU6 Clip."""
        users = consumers.get(node_out, [])
        if len(users) == 1 and users[0].op_type in ("Relu", "Clip"):
            act = users[0]
            if act.op_type == "Relu":
                return act.output[0], _ACT["relu"]
            lo, hi = self.clip_bounds(act)
            if lo == 0.0 and hi == 6.0:
                return act.output[0], _ACT["relu6"]
        return node_out, 0

    def clip_bounds(self, node) -> tuple[float, float]:
        a = _attrs(node)
        lo = a.get("min", float(self.consts[node.input[1]]) if len(node.input) > 1
                   and node.input[1] else -np.inf)
        hi = a.get("max", float(self.consts[node.input[2]]) if len(node.input) > 2
                   and node.input[2] else np.inf)
        return float(lo), float(hi)

    def operand(self, name: str, like: str) -> int:
        """A tensor input; a constant operand of an element-wise op is laid out like
        `like` (a (1, C, 1, 1) constant becomes (1, 1, 1, C) beside an NHWC tensor)."""
        if name in self.index:
            return self.index[name]
        array = np.asarray(self.consts[name], np.float32)
        if array.ndim == 4 and len(self.shapes.get(like, ())) == 4:
            array = array.transpose(0, 2, 3, 1)
        return self.const(name, array)

    # -- ops --------------------------------------------------------------------------
    def conv(self, node, consumers):
        a, s = _attrs(node), self.s
        w = self.consts[node.input[1]].astype(np.float32)
        bias = (self.consts[node.input[2]].astype(np.float32) if len(node.input) > 2
                else np.zeros(w.shape[0], np.float32))
        group, (sh, sw) = a.get("group", 1), a.get("strides", [1, 1])
        if a.get("dilations", [1, 1]) != [1, 1]:
            raise EngineRefused(f"LiteRT writer: dilated Conv {node.name}")
        pads = a.get("pads", [0, 0, 0, 0])
        x = self.pad(self.index[node.input[0]], node.name, (pads[0], pads[1], pads[2], pads[3]))
        out_name, act = self.fused(node.output[0], consumers)
        channels = self.shapes[node.input[0]][1]
        if group == 1:
            wt, code = w.transpose(0, 2, 3, 1), s.BuiltinOperator.CONV_2D
            opts, kind = s.Conv2DOptionsT(), s.BuiltinOptions.Conv2DOptions
        elif group == channels and w.shape[1] == 1:
            wt, code = w.transpose(1, 2, 3, 0), s.BuiltinOperator.DEPTHWISE_CONV_2D
            opts, kind = s.DepthwiseConv2DOptionsT(), s.BuiltinOptions.DepthwiseConv2DOptions
            opts.depthMultiplier = w.shape[0] // channels
        else:
            raise EngineRefused(f"LiteRT writer: grouped Conv {node.name} (groups={group}); "
                                "TFLite has only full and depthwise convolutions")
        opts.padding, opts.strideH, opts.strideW = s.Padding.VALID, sh, sw
        opts.fusedActivationFunction = act
        self.shapes[out_name] = self.shapes[node.output[0]]
        inputs = [x, self.const(f"{node.name}_w", np.ascontiguousarray(wt)),
                  self.const(f"{node.name}_b", bias)]
        self.op(code, inputs, [self.out(out_name)], kind, opts)

    def pool(self, node, code):
        a, s = _attrs(node), self.s
        if a.get("ceil_mode", 0):
            raise EngineRefused(f"LiteRT writer: ceil-mode pooling {node.name}")
        pads = a.get("pads", [0, 0, 0, 0])
        value = -np.inf if code == s.BuiltinOperator.MAX_POOL_2D else 0.0
        if any(pads) and code == s.BuiltinOperator.AVERAGE_POOL_2D and \
                a.get("count_include_pad", 0) == 0:
            raise EngineRefused(f"LiteRT writer: padded average pool {node.name}")
        x = self.pad(self.index[node.input[0]], node.name, pads, value)
        opts = s.Pool2DOptionsT()
        opts.padding = s.Padding.VALID
        (opts.filterHeight, opts.filterWidth) = a["kernel_shape"]
        (opts.strideH, opts.strideW) = a.get("strides", [1, 1])
        self.op(code, [x], [self.out(node.output[0])], s.BuiltinOptions.Pool2DOptions, opts)

    def mean_hw(self, node):
        s = self.s
        axes = self.const(f"{node.name}_axes", np.array([1, 2], np.int32))
        opts = s.ReducerOptionsT()
        opts.keepDims = True
        self.op(s.BuiltinOperator.MEAN, [self.index[node.input[0]], axes],
                [self.out(node.output[0])], s.BuiltinOptions.ReducerOptions, opts)

    def flatten(self, node):
        s, x = self.s, self.index[node.input[0]]
        if len(self.shapes[node.input[0]]) == 4:
            nchw = self.tensor(f"{node.name}_nchw", self.shapes[node.input[0]])
            perm = self.const(f"{node.name}_perm", np.array([0, 3, 1, 2], np.int32))
            self.op(s.BuiltinOperator.TRANSPOSE, [x, perm], [nchw],
                    s.BuiltinOptions.TransposeOptions, s.TransposeOptionsT())
            x = nchw
        shape = self.shapes[node.output[0]]
        opts = s.ReshapeOptionsT()
        opts.newShape = list(shape)
        self.op(s.BuiltinOperator.RESHAPE, [x, self.const(f"{node.name}_shape",
                                                          np.array(shape, np.int32))],
                [self.out(node.output[0])], s.BuiltinOptions.ReshapeOptions, opts)

    def dense(self, node, consumers):
        a, s = _attrs(node), self.s
        w = self.consts[node.input[1]].astype(np.float32)
        if node.op_type == "MatMul" or not a.get("transB", 0):
            w = w.T  # TFLite wants (N, K)
        if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
            raise EngineRefused(f"LiteRT writer: Gemm {node.name} with transA/alpha/beta")
        bias = (self.consts[node.input[2]].astype(np.float32).reshape(-1)
                if len(node.input) > 2 else np.zeros(w.shape[0], np.float32))
        out_name, act = self.fused(node.output[0], consumers)
        self.shapes[out_name] = self.shapes[node.output[0]]
        opts = s.FullyConnectedOptionsT()
        opts.fusedActivationFunction = act
        self.op(s.BuiltinOperator.FULLY_CONNECTED,
                [self.index[node.input[0]], self.const(f"{node.name}_w", np.ascontiguousarray(w)),
                 self.const(f"{node.name}_b", bias)], [self.out(out_name)],
                s.BuiltinOptions.FullyConnectedOptions, opts)

    def binary(self, node, consumers, code, kind, options):
        a_name, b_name = node.input
        like = a_name if a_name in self.index else b_name
        out_name, act = self.fused(node.output[0], consumers)
        if hasattr(options, "fusedActivationFunction"):
            options.fusedActivationFunction = act
        elif act:
            out_name = node.output[0]
        self.shapes[out_name] = self.shapes[node.output[0]]
        self.op(code, [self.operand(a_name, like), self.operand(b_name, like)],
                [self.out(out_name)], kind, options)

    def unary(self, node, code):
        self.op(code, [self.index[node.input[0]]], [self.out(node.output[0])])

    def resize_nearest(self, node):
        """ONNX Resize, nearest / asymmetric / floor (PyTorch's ``Upsample(mode="nearest")``):
        TFLite's ``RESIZE_NEAREST_NEIGHBOR`` without align-corners or half-pixel centres."""
        a, s = _attrs(node), self.s
        how = (a.get("mode", b"nearest"), a.get("coordinate_transformation_mode", b"half_pixel"),
               a.get("nearest_mode", b"round_prefer_floor"))
        if how != (b"nearest", b"asymmetric", b"floor"):
            raise EngineRefused(f"LiteRT writer: Resize {node.name} "
                                f"({', '.join(v.decode() for v in how)})")
        size = np.array(self.shapes[node.output[0]][2:], np.int32)
        opts = s.ResizeNearestNeighborOptionsT()
        opts.alignCorners, opts.halfPixelCenters = False, False
        self.op(s.BuiltinOperator.RESIZE_NEAREST_NEIGHBOR,
                [self.index[node.input[0]], self.const(f"{node.name}_size", size)],
                [self.out(node.output[0])], s.BuiltinOptions.ResizeNearestNeighborOptions, opts)

    def concat(self, node):
        s, axis = self.s, _attrs(node)["axis"]
        rank = len(self.shapes[node.output[0]])
        axis = axis % rank
        if rank == 4:
            axis = {0: 0, 1: 3, 2: 1, 3: 2}[axis]
        opts = s.ConcatenationOptionsT()
        opts.axis = axis
        self.op(s.BuiltinOperator.CONCATENATION, [self.index[i] for i in node.input],
                [self.out(node.output[0])], s.BuiltinOptions.ConcatenationOptions, opts)

    # -- driver -----------------------------------------------------------------------
    def convert(self) -> bytes:
        s = self.s
        consumers: dict[str, list] = {}
        for node in self.graph.node:
            for name in node.input:
                consumers.setdefault(name, []).append(node)
        inputs = [i for i in self.graph.input if i.name not in self.consts]
        for i in inputs:
            self.index[i.name] = self.tensor(i.name, self.nhwc_shape(i.name))
        done = set()
        for node in self.graph.node:
            if node.op_type == "Constant" or node.output[0] in done:
                continue
            kind = node.op_type
            if kind in ("Relu", "Clip") and node.output[0] in self.index:
                continue  # fused into its producer
            if kind == "Conv":
                self.conv(node, consumers)
            elif kind == "MaxPool":
                self.pool(node, s.BuiltinOperator.MAX_POOL_2D)
            elif kind == "AveragePool":
                self.pool(node, s.BuiltinOperator.AVERAGE_POOL_2D)
            elif kind == "GlobalAveragePool" or (
                    kind == "ReduceMean" and _reduce_axes(node, self.consts) == [2, 3]):
                self.mean_hw(node)
            elif kind in ("Flatten", "Reshape"):
                self.flatten(node)
            elif kind in ("Gemm", "MatMul") and node.input[1] in self.consts:
                self.dense(node, consumers)
            elif kind in BINARY:
                self.binary(node, consumers, getattr(s.BuiltinOperator, kind.upper()),
                            getattr(s.BuiltinOptions, f"{kind}Options"),
                            getattr(s, f"{kind}OptionsT")())
            elif kind in UNARY:
                self.unary(node, getattr(s.BuiltinOperator, UNARY[kind]))
            elif kind == "Resize":
                self.resize_nearest(node)
            elif kind == "Clip" and self.clip_bounds(node) == (0.0, 6.0):
                self.unary(node, s.BuiltinOperator.RELU6)
            elif kind == "Concat":
                self.concat(node)
            elif kind == "Softmax":
                opts = s.SoftmaxOptionsT()
                opts.beta = 1.0
                self.op(s.BuiltinOperator.SOFTMAX, [self.index[node.input[0]]],
                        [self.out(node.output[0])], s.BuiltinOptions.SoftmaxOptions, opts)
            else:
                raise EngineRefused(f"LiteRT writer: ONNX op {kind} ({node.name}) is not "
                                    "supported")
            done.add(node.output[0])
        sub = s.SubGraphT()
        sub.tensors, sub.operators = self.tensors, self.ops
        sub.inputs = [self.index[i.name] for i in inputs]
        sub.outputs = [self.index[o.name] for o in self.graph.output]
        model = s.ModelT()
        model.version, model.subgraphs, model.buffers = 3, [sub], self.buffers
        model.description = "MobileDL benchmark (deploy.peers.tflite)"
        model.operatorCodes = [None] * len(self.codes)
        for code, i in self.codes.items():
            oc = s.OperatorCodeT()
            oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, min(code, 127), 1
            model.operatorCodes[i] = oc
        import flatbuffers

        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())


def _reduce_axes(node, consts) -> list[int]:
    a = _attrs(node)
    axes = a.get("axes")
    if axes is None and len(node.input) > 1:
        axes = [int(v) for v in consts[node.input[1]]]
    return sorted(int(v) % 4 for v in (axes or []))


def onnx_to_tflite(onnx_path, out_path, schema_path: Path) -> Path:
    """Write `out_path` (.tflite) from the ONNX model at `onnx_path`.

    Raises
    ------
    EngineRefused
        Naming the first ONNX operator the writer cannot express.
    """
    import onnx


    data = _Writer(_schema(schema_path), onnx.load(str(onnx_path))).convert()
    return atomic_write(out_path, data)
