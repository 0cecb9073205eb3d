"""Run exported models on a device through the TVM RPC tracker.

>>> dev = RemoteDevice.connect("127.0.0.1:9190", key="phone")
>>> with dev.load("model.so") as model:
...     outputs = model.run([x])          # list of numpy arrays
...     ms = model.time([x], number=10)   # median milliseconds
>>> dev.close()

Every failure of the tracker, the device or the session surfaces as
`mdl_tvm.core.errors.DeviceError` with a hint how to fix it.
"""

from __future__ import annotations

import gc
import json
import os
import time
import uuid
from collections.abc import Sequence

import numpy as np

from deploy.cpus import features, illegal_instruction_error, missing_features, refusal
from deploy.rpc_net import parse_addr, tracker_summary
from deploy.zero_copy_remote import RemoteZeroCopyExecutor
from mdl_tvm.core.artifact import read_metadata
from mdl_tvm.core.errors import DeviceError, MdlError


def _flatten(value) -> list[np.ndarray]:
    if hasattr(value, "numpy"):
        return [value.numpy()]
    if isinstance(value, Sequence) or hasattr(value, "__iter__"):
        return [arr for item in value for arr in _flatten(item)]
    raise DeviceError(f"unexpected output of type {type(value).__name__}")


def _as_list(inputs) -> list[np.ndarray]:
    if isinstance(inputs, np.ndarray):
        return [inputs]
    return [np.ascontiguousarray(a) for a in inputs]


class RemoteModel:
    """A model library uploaded to and loaded on a device; use `RemoteDevice.load`."""

    def __init__(self, device: RemoteDevice, remote_name: str, vm, meta: dict | None = None,
                 missing: list | None = None):
        self.device = device
        self.remote_name = remote_name
        self._vm = vm
        self.meta = meta
        self.missing = list(missing or ())  # features the phone lacks (a forced load)

    def _failed(self, err: DeviceError) -> DeviceError:
        """A device error, named as an illegal instruction when the library needs what
        the phone lacks (the worker dies of SIGILL)."""
        if not self.missing:
            return err
        info = self.device.phone_info() if self.device.session is not None else {}
        return illegal_instruction_error(self.meta, info.get("cpu", "device"),
                                         f"it needs {', '.join(self.missing)}")

    def _set_input(self, inputs) -> None:
        import tvm

        dev = self.device.session.cpu()
        args = [tvm.runtime.tensor(a, dev) for a in _as_list(inputs)]
        self._vm.set_input("main", *args)

    def run(self, inputs) -> list[np.ndarray]:
        """Run ``main`` once on the device.

        Parameters
        ----------
        inputs : numpy.ndarray or list of numpy.ndarray
            One array per model input.

        Returns
        -------
        list of numpy.ndarray
            The outputs, tuples flattened in order.
        """
        try:
            with self.device._guard("running main"):
                self._set_input(inputs)
                self._vm.invoke_stateful("main")
                return _flatten(self._vm.get_outputs("main"))
        except DeviceError as err:
            raise self._failed(err) from err

    def time(self, inputs, number: int = 10, repeat: int = 3, min_repeat_ms: int = 0) -> float:
        """Time ``main`` on the device with TVM's time_evaluator.

        Parameters
        ----------
        inputs : numpy.ndarray or list of numpy.ndarray
            One array per model input.
        number : int
            Runs averaged into one measurement.
        repeat : int
            Measurements taken.
        min_repeat_ms : int
            Minimum duration of one measurement (raises ``number`` if needed).

        Returns
        -------
        float
            Median milliseconds per run.
        """
        with self.device._guard("timing main"):
            self._set_input(inputs)
            dev = self.device.session.cpu()
            timer = self._vm.time_evaluator(
                "invoke_stateful", dev, number=number, repeat=repeat, min_repeat_ms=min_repeat_ms
            )
            return float(timer("main").median) * 1e3

    def executor(self):
        """A `deploy.zero_copy_remote.RemoteZeroCopyExecutor`: ``main_zc`` on device buffers
        allocated once, one RPC call per run."""

        return RemoteZeroCopyExecutor(self)

    def close(self) -> None:
        """Forget the module and delete the uploaded file on the device."""
        self._vm = None
        self.device._remove(self.remote_name)

    def __enter__(self) -> RemoteModel:
        return self

    def __exit__(self, typ, err, tb) -> None:
        try:
            self.close()
        except DeviceError:
            if typ is None:  # never hide the error that ended the block
                raise


class RemoteDevice:
    """An RPC session with one device, requested from a tracker."""

    def __init__(self, session, tracker: tuple[str, int], key: str):
        self.session = session
        self.tracker = tracker
        self.key = key
        self._uploaded: set[str] = set()
        self._info: dict | None = None

    @classmethod
    def connect(
        cls,
        tracker: str | tuple[str, int] = "127.0.0.1:9190",
        key: str = "phone",
        timeout: float = 60.0,
        session_timeout: float = 0,
    ) -> RemoteDevice:
        """Request a device from the tracker.

        Parameters
        ----------
        tracker : str or (str, int)
            Tracker address, ``"HOST:PORT"``.
        key : str
            Device key the server registered under.
        timeout : float
            Seconds to wait for a free device with that key.
        session_timeout : float
            Seconds after which the server ends the session (0: never).

        Returns
        -------
        RemoteDevice

        Raises
        ------
        DeviceError
            When the tracker is down or no device with ``key`` becomes free in time.
        """
        host, port = parse_addr(tracker) if isinstance(tracker, str) else tracker
        deadline = time.monotonic() + timeout
        hint = f"start one with `mdl-tvm device start --tracker {host}:{port} --key {key}`"
        while True:  # wait until some server registers the key (or the timeout)
            summary = tracker_summary(host, port, timeout=min(max(timeout, 1.0), 5.0))
            servers = [s for s in summary["server_info"] if s.get("key") == f"server:{key}"]
            if servers or time.monotonic() >= deadline:
                break
            time.sleep(min(0.5, max(deadline - time.monotonic(), 0.01)))
        if not servers:
            known = sorted(k for k, q in summary["queue_info"].items() if q.get("free"))
            raise DeviceError(
                f"no device with key {key!r} is registered at tracker {host}:{port} "
                f"(free keys: {', '.join(known) or 'none'}); {hint}"
            )
        from tvm import rpc

        tsess = rpc.connect_tracker(host, port)
        try:
            tsess._sock.settimeout(max(deadline - time.monotonic(), 1.0))
            sess = tsess.request(key, priority=1, session_timeout=session_timeout, max_retry=1)
        except (RuntimeError, OSError) as err:
            raise DeviceError(
                f"no device with key {key!r} became free at tracker {host}:{port} within "
                f"{timeout:g} s ({len(servers)} registered, all busy or dead): {err}; check "
                "`mdl-tvm tracker status` and `mdl-tvm device status`"
            ) from err
        finally:
            tsess.close()
        return cls(sess, (host, port), key)

    def _guard(self, what: str):
        return _Guard(self, what)

    def upload(self, so_path: str | os.PathLike) -> str:
        """Copy a library to the device's session directory; return its remote name."""
        name = f"mdl_{uuid.uuid4().hex[:12]}_{os.path.basename(so_path)}"
        with self._guard(f"uploading {so_path}"):
            self.session.upload(os.fspath(so_path), target=name)
        self._uploaded.add(name)
        return name

    def phone_info(self) -> dict:
        """``{"cpu", "features"}`` of the device, when its server tells (the emulated phone
        does, `deploy.device`); ``{}`` for a device that does not."""
        if self._info is None:
            try:
                info = json.loads(self.session.get_function("mdl.phone.info")())
                self._info = {"cpu": info["cpu"], "features": features(int(info["hwcap"]))}
            except (AttributeError, RuntimeError, ValueError, KeyError):
                self._info = {}
        return self._info

    def load(self, so_path: str | os.PathLike, force: bool = False) -> RemoteModel:
        """Upload an exported Relax library and create a VM for it on the device.

        Parameters
        ----------
        so_path : path
            ``.so`` made by ``export_library`` for the device's architecture.
        force : bool
            Load even when the library needs CPU features the device lacks (fp16
            arithmetic on an ARMv8.0 phone): running it then fails with an illegal
            instruction, reported as a `DeviceError`.

        Returns
        -------
        RemoteModel
            Runs and times ``main``; ``close()`` deletes the uploaded file.

        Raises
        ------
        DeviceError
            When the library needs features the device's CPU lacks (before uploading).
        """
        if not os.path.isfile(so_path):
            raise FileNotFoundError(f"no such library: {so_path}")
        from tvm.runtime.vm import VirtualMachine

        try:
            meta = read_metadata(os.fspath(so_path))
        except MdlError:
            meta = None  # a plain TVM library: nothing to check
        info = self.phone_info() if meta is not None else {}
        missing = missing_features(meta, info["features"]) if info else []
        if missing and not force:
            raise refusal(meta, info["cpu"], missing, f"device {self.key!r}")
        name = self.upload(so_path)
        with self._guard(f"loading {name}"):
            lib = self.session.load_module(name)
            vm = VirtualMachine(lib, self.session.cpu())
        return RemoteModel(self, name, vm, meta, missing)

    def run(self, so_path: str | os.PathLike, inputs) -> list[np.ndarray]:
        """Upload, load, run once, delete: the outputs of ``main`` as numpy arrays."""
        with self.load(so_path) as model:
            return model.run(inputs)

    def _remove(self, name: str) -> None:
        if name in self._uploaded and self.session is not None:
            self._uploaded.discard(name)
            with self._guard(f"removing {name}"):
                self.session.remove(name)

    def close(self) -> None:
        """Delete uploaded files and end the session (the device becomes free again)."""
        if self.session is None:
            return
        try:
            for name in list(self._uploaded):
                self._remove(name)
        finally:
            self.session = None
            # TVM's RPCSession and VirtualMachine sit in reference cycles: without a collection
            # the connection (and so the device) stays taken until the next automatic GC
            gc.collect()

    def __enter__(self) -> RemoteDevice:
        return self

    def __exit__(self, typ, err, tb) -> None:
        try:
            self.close()
        except DeviceError:
            if typ is None:  # never hide the error that ended the block
                raise


class _Guard:
    """Turn TVM / socket errors during a remote call into DeviceError."""

    def __init__(self, device: RemoteDevice, what: str):
        self.device, self.what = device, what

    def __enter__(self):
        if self.device.session is None:
            raise DeviceError(f"{self.what}: the device session is closed")

    def __exit__(self, typ, err, tb):
        if (
            err is None
            or isinstance(err, DeviceError)
            or not isinstance(err, (RuntimeError, OSError))
        ):
            return False
        raise DeviceError(
            f"{self.what} failed on device {self.device.key!r} "
            f"(tracker {self.device.tracker[0]}:{self.device.tracker[1]}): {err}. If the phone "
            "died, `mdl-tvm device status` shows it and `mdl-tvm device start` restarts it"
        ) from err
