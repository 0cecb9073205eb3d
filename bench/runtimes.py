"""Each peer runtime called the same way by every benchmark: numpy in, numpy out.

* `torch_outputs`   a PyTorch module without autograd
* `ort_session`     ONNX Runtime on the CPU with a fixed thread count
* `ort_from_torch`  a PyTorch module exported to ONNX and opened in `ort_session`

Imports happen inside the functions: a `bench.worker` process loads only its engine.
"""

from __future__ import annotations

import os

import numpy as np


def torch_outputs(module, tensors) -> list[np.ndarray]:
    """Run a PyTorch module without autograd; its output(s) as a list of numpy arrays."""
    import torch

    with torch.no_grad():
        outs = module(*tensors)
    return [o.numpy() for o in (outs if isinstance(outs, tuple) else (outs,))]


def ort_session(path, threads: int):
    """An ONNX Runtime CPU session with `threads` intra-op threads and one inter-op thread."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_from_torch(module, inputs, names, threads: int):
    """Export `module` on the numpy `inputs` (TorchScript exporter) and open it in
    `ort_session`."""
    import tempfile

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.onnx")
        torch.onnx.export(module, tuple(torch.from_numpy(a) for a in inputs), path,
                          dynamo=False, input_names=list(names))
        return ort_session(path, threads)
