"""Run an app's network where the user asked: compiled for this machine, or on a phone.

`open_runner` compiles a PyTorch module with `mdl_tvm.compile` for a target profile and
returns a `Runner` whose ``run(*arrays)`` executes it: in process for ``host``, through a
`deploy.remote.RemoteDevice` (TVM RPC tracker + device key) for an arm64 profile. The
library is uploaded once; every ``run`` is one call of ``main`` on the device.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import mdl_tvm
from deploy.remote import RemoteDevice
from mdl_tvm.core.targets import get_profile


@dataclass(frozen=True)
class Placement:
    """Where to run: a target profile name and, for a device, its tracker and key."""

    target: str = "host"
    tracker: str | None = None
    key: str = "phone"
    compress: str | None = None

    def check(self) -> None:
        """Raise ValueError / UnknownTargetError for a placement that cannot work."""
        profile = get_profile(self.target)
        if not profile.is_host and not self.tracker:
            raise ValueError(
                f"target {self.target!r} runs on a device: give --tracker HOST:PORT and --key "
                "KEY (start the emulated phone with `mdl-tvm tracker start --port 9190` and "
                "`mdl-tvm device start --tracker 127.0.0.1:9190 --key phone`), or use "
                "--target host")
        if profile.is_host and self.tracker:
            raise ValueError("--tracker is for device targets; drop it or give --target arm64")


@dataclass
class Runner:
    """A compiled network ready to run; `run` returns the outputs as numpy arrays."""

    compiled: mdl_tvm.CompiledModel
    placement: Placement
    remote: object = None  # deploy.remote.RemoteModel for a device
    compile_seconds: float = 0.0
    library: Path | None = None
    calls: int = field(default=0)

    def run(self, *arrays: np.ndarray) -> list[np.ndarray]:
        """One call of the network's ``main``."""
        self.calls += 1
        if self.remote is None:
            return self.compiled.run(*arrays)
        return self.remote.run(list(self.compiled.check_inputs(arrays)))


@contextlib.contextmanager
def open_runner(module, example_inputs: tuple, placement: Placement) -> Iterator[Runner]:
    """Compile `module` for ``placement.target`` and yield a `Runner`.

    Parameters
    ----------
    module : torch.nn.Module
        The network (eval mode).
    example_inputs : tuple of torch.Tensor
        Inputs with the exact shapes and dtypes it will be run with.
    placement : Placement
        Target profile, tracker and key, compression.

    Raises
    ------
    ValueError, UnknownTargetError
        For a bad placement (checked before compiling).
    DeviceError
        When the tracker or device cannot be reached.
    """
    placement.check()
    start = time.perf_counter()
    compiled = mdl_tvm.compile(module, placement.target, example_inputs=example_inputs,
                               compress=placement.compress)
    seconds = time.perf_counter() - start
    if compiled.profile.is_host:
        yield Runner(compiled, placement, compile_seconds=seconds)
        return

    with tempfile.TemporaryDirectory(prefix="mdl_app_") as tmp:
        library = Path(compiled.export(str(Path(tmp) / f"app-{placement.target}.so")))
        with RemoteDevice.connect(placement.tracker, key=placement.key) as device:
            with device.load(library) as remote:
                yield Runner(compiled, placement, remote=remote, compile_seconds=seconds,
                             library=library)
