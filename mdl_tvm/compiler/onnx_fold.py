"""An ONNX graph's shape arithmetic folded to constants before the TVM import.

PyTorch's TorchScript ONNX exporter writes ``x.chunk(2, dim=1)`` and ``x.view(n, g, c // g,
h, w)`` as ``Shape -> Gather -> Div -> Slice / Reshape`` chains. With static input shapes
these are constants, but TVM's ``from_onnx`` keeps them as run-time shape computations
(``dynamic_strided_slice``), and every tensor after one loses its static shape, which the
compile pipeline needs (a ShuffleNetV2 exported this way did not compile). ONNX Runtime's
*basic* graph optimisations (constant folding, reshape fusion, redundant-node removal: the
rewrites that keep standard ONNX ops) fold them; the folded model is what gets imported.

Only graphs with a ``Shape`` node are folded, with the input shapes the compile was given;
without ONNX Runtime (the ``onnx`` extra) the graph is imported as it is.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path


def fold_shape_arithmetic(proto, shapes: dict[str, list[int]]):
    """`proto` with its shape computations folded (see module); `proto` itself when it has
    none or ONNX Runtime is missing. `shapes`: the static shape of each graph input."""
    if not any(node.op_type == "Shape" for node in proto.graph.node):
        return proto
    try:
        import onnxruntime as ort
    except ImportError:
        warnings.warn("this ONNX graph computes shapes at run time and onnxruntime is not "
                      "installed to fold them; install it (pip install mdl-tvm[onnx]) if the "
                      "import fails", stacklevel=3)
        return proto
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    for inp in model.graph.input:
        if inp.name in shapes:
            dims = inp.type.tensor_type.shape.dim
            del dims[:]
            for size in shapes[inp.name]:
                dims.add().dim_value = int(size)
    with tempfile.TemporaryDirectory(prefix="mdl_onnx_") as tmp:
        src, out = Path(tmp) / "in.onnx", Path(tmp) / "folded.onnx"
        onnx.save(model, src)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(out)
        ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
        return onnx.load(str(out))
