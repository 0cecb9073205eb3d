"""The zero-copy executor over TVM RPC: buffers allocated once on the device, reused.

>>> with RemoteDevice.connect("127.0.0.1:9190", key="phone") as dev:
...     with dev.load("lenet-arm64.so") as model:
...         ex = RemoteZeroCopyExecutor(model)
...         y = ex(x)[0]                  # upload x, run main_zc, download y
...         ms = ex.time(number=10)       # device-side time of one run, no transfer

TVM's VM copies every tensor that arrives over RPC into a VM-owned device tensor (an RPC
argument is a bare DLTensor, which the VM will not alias), so the executor hands
``main_zc``'s buffers to the device once with ``set_input``, runs once, and takes the
handles of the VM-owned copies from the result (``main_zc`` returns its output and input
buffers). From then on a run is one ``invoke_stateful`` call: no argument crosses the
connection and nothing is allocated on the device; inputs are written into, and outputs
read from, those device buffers. The transfers of `set_inputs` / `fetch` are the only
copies, and they are the network's.
"""

from __future__ import annotations

import numpy as np

from deploy.zero_copy import ZeroCopyPlan
from mdl_tvm.core.errors import InputSpecError


class RemoteZeroCopyExecutor:
    """Run ``main_zc`` of a `deploy.remote.RemoteModel` on device buffers made once.

    Parameters
    ----------
    model : deploy.remote.RemoteModel
        A library loaded on the device (`RemoteDevice.load`) that has ``main_zc``.

    Attributes
    ----------
    plan : ZeroCopyPlan
    input_tensors, output_tensors : list of tvm.runtime.Tensor
        Handles of the device-side buffers (the VM's own).
    """

    def __init__(self, model):
        import tvm

        self.model = model
        self.device = model.device
        vm = model._vm
        with self.device._guard("reading the zero-copy plan"):
            self.plan = ZeroCopyPlan.from_vm(vm)
        fn, plan = self.plan.function, self.plan
        with self.device._guard("allocating the zero-copy buffers"):
            dev = self.device.session.cpu()
            args = [tvm.runtime.empty(s.shape, s.dtype, dev) for s in (*plan.inputs,
                                                                         *plan.outputs)]
            for tensor, spec in zip(args, plan.inputs, strict=False):
                tensor.copyfrom(np.zeros(spec.shape, spec.dtype))
            args.append(tvm.runtime.empty((plan.workspace_bytes,), "uint8", dev))
            vm.set_input(fn, *args)  # the VM keeps device-side copies: allocated once
            vm.invoke_stateful(fn)  # returns (*outputs, *inputs): the VM's buffers
            n_out = len(plan.outputs)
            self.output_tensors = [vm._get_output(fn, j) for j in range(n_out)]
            self.input_tensors = [vm._get_output(fn, n_out + i)
                                  for i in range(len(plan.inputs))]
        self._vm = vm

    def set_inputs(self, *arrays) -> None:
        """Upload `arrays` into the device-side input buffers (one transfer each)."""
        if len(arrays) != len(self.plan.inputs):
            raise InputSpecError(f"the model takes {len(self.plan.inputs)} input(s), "
                                 f"got {len(arrays)}")
        for i, (spec, arr) in enumerate(zip(self.plan.inputs, arrays, strict=True)):
            arr = np.asarray(arr)
            if arr.shape != spec.shape or str(arr.dtype) != spec.dtype:
                raise InputSpecError(f"input {i} must be {spec.dtype}{list(spec.shape)}, "
                                     f"got {arr.dtype}{list(arr.shape)}")
        with self.device._guard("uploading inputs"):
            for tensor, arr in zip(self.input_tensors, arrays, strict=True):
                tensor.copyfrom(np.ascontiguousarray(arr))

    def run(self) -> None:
        """One inference on the device buffers (one RPC call, no data sent)."""
        with self.device._guard("running main_zc"):
            self._vm.invoke_stateful(self.plan.function)

    def fetch(self) -> list[np.ndarray]:
        """Download the outputs of the last run."""
        with self.device._guard("downloading outputs"):
            return [t.numpy() for t in self.output_tensors]

    def __call__(self, *arrays) -> list[np.ndarray]:
        """`set_inputs`, `run`, `fetch`."""
        self.set_inputs(*arrays)
        self.run()
        return self.fetch()

    def carry(self, output: int, input: int) -> None:  # noqa: A002 - as ZeroCopyExecutor
        """Make output `output` of the last run the next run's input `input`.

        On the device this is one device-side copy of the buffer (the VM's buffers cannot
        be exchanged over RPC); nothing crosses the connection.
        """
        if self.plan.inputs[input] != self.plan.outputs[output]:
            raise InputSpecError(f"output {output} {self.plan.outputs[output]} cannot feed "
                                 f"input {input} {self.plan.inputs[input]}")
        with self.device._guard("carrying an output to an input"):
            self.input_tensors[input].copyfrom(self.output_tensors[output])

    def time(self, number: int = 10, repeat: int = 3, min_repeat_ms: int = 0) -> float:
        """Median device-side milliseconds of one run (TVM's time_evaluator)."""
        with self.device._guard("timing main_zc"):
            timer = self._vm.time_evaluator("invoke_stateful", self.device.session.cpu(),
                                            number=number, repeat=repeat,
                                            min_repeat_ms=min_repeat_ms)
            return float(timer(self.plan.function).median) * 1e3
