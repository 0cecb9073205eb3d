"""Carry the LSTM state from one compiled step to the next.

A stepper is started with the initial ``(h, c)`` and then called with one token at a time;
it returns that step's logits and keeps the new state for the next call.

* `ZeroCopyStepper` (host): `deploy.zero_copy.ZeroCopyExecutor`, the state lives in the
  executor's preset buffers and ``carry`` hands the new ``h``/``c`` back as the next inputs
  (buffer exchange, no copy);
* `RemoteZeroCopyStepper` (phone): `deploy.zero_copy_remote.RemoteZeroCopyExecutor`, the
  state stays in device buffers (``carry`` is a device-side copy): per character only the
  token goes up and the logits come down;
* `PlainStepper`: ``run(token, h, c)`` with the state in numpy (any runner, PyTorch eager,
  or a library without ``main_zc``).
"""

from __future__ import annotations

import numpy as np

from deploy.zero_copy_remote import RemoteZeroCopyExecutor

H_IN, C_IN, H_OUT, C_OUT = 1, 2, 1, 2  # input / output positions of h and c


class PlainStepper:
    """State in numpy, passed in and returned by ``run`` every step."""

    kind = "plain"

    def __init__(self, run):
        self._run = run
        self.h = self.c = None

    def start(self, h: np.ndarray, c: np.ndarray) -> None:
        self.h, self.c = h, c

    def __call__(self, token: int) -> np.ndarray:
        logits, self.h, self.c = self._run(np.array([token], np.int64), self.h, self.c)
        return np.asarray(logits)


class ZeroCopyStepper:
    """State in the preset buffers of a host `ZeroCopyExecutor`."""

    kind = "zero-copy"

    def __init__(self, executor):
        self.ex = executor

    def start(self, h: np.ndarray, c: np.ndarray) -> None:
        self.ex.inputs[H_IN][...] = h
        self.ex.inputs[C_IN][...] = c

    def __call__(self, token: int) -> np.ndarray:
        self.ex.inputs[0][0] = token
        logits = self.ex.run()[0].copy()  # the next run overwrites the output buffer
        self.ex.carry(output=H_OUT, input=H_IN)
        self.ex.carry(output=C_OUT, input=C_IN)
        return logits


class RemoteZeroCopyStepper:
    """State in device buffers of a `RemoteZeroCopyExecutor`."""

    kind = "zero-copy (device buffers)"

    def __init__(self, executor):
        self.ex = executor

    def start(self, h: np.ndarray, c: np.ndarray) -> None:
        self.ex.set_inputs(np.zeros(1, np.int64), h, c)

    def __call__(self, token: int) -> np.ndarray:
        self.ex.input_tensors[0].copyfrom(np.array([token], np.int64))
        self.ex.run()
        logits = self.ex.output_tensors[0].numpy()
        self.ex.carry(output=H_OUT, input=H_IN)
        self.ex.carry(output=C_OUT, input=C_IN)
        return logits


def stepper_for(runner):
    """The best stepper for an `apps.runtime.Runner`: zero-copy when the library has
    ``main_zc`` (and `deploy.zero_copy` is present), else plain runs."""
    if not runner.compiled.zero_copy.get("emitted"):
        return PlainStepper(runner.run)
    try:
        if runner.remote is None:
            return ZeroCopyStepper(runner.compiled.executor())

        return RemoteZeroCopyStepper(RemoteZeroCopyExecutor(runner.remote))
    except ImportError:
        return PlainStepper(runner.run)
