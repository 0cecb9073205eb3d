"""Run a model library on the emulated phone without RPC, and count its ARM instructions.

`run_on_emulator` runs ``device_runner.py`` with the phone's python under
``qemu-aarch64-static``. `count_instructions` runs it under Debian's plugin-capable
``qemu-aarch64`` with ``libinsn.so`` and returns instructions retired per inference:
``(count(2N runs) - count(N runs)) / N``, so start-up (python, numpy, TVM import) cancels.

Counts are deterministic: both runs see the same directory, file names, argv length,
environment and standard streams, with one thread, address-space randomisation off, a
fixed hash seed and a fixed QEMU random seed.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from mdl_tvm.errors import DeviceError

from .device import DeviceEnv, setup

RUNNER = Path(__file__).with_name("device_runner.py")
MODES = ("plain", "copy-io", "zero-copy")  # device_runner.MODES
ADDR_NO_RANDOMIZE = 0x0040000


def _save_inputs(inputs, workdir: Path) -> list[str]:
    if isinstance(inputs, np.ndarray):
        inputs = [inputs]
    names = []
    for i, arr in enumerate(inputs):
        name = f"in{i}.npy"
        np.save(workdir / name, np.ascontiguousarray(arr))
        names.append(name)
    return names


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown runner mode {mode!r}; choose one of {MODES}")


def _read_outputs(outdir: Path) -> list[np.ndarray]:
    outs, i = [], 0
    while (outdir / f"out{i}.npy").exists():
        outs.append(np.load(outdir / f"out{i}.npy"))
        i += 1
    return outs


def _fail(what: str, res: subprocess.CompletedProcess | None, err_file: Path) -> DeviceError:
    try:
        tail = err_file.read_text()[-2000:]
    except OSError:
        tail = ""
    code = res.returncode if res is not None else "timeout"
    return DeviceError(f"{what} failed on the emulated phone (exit {code}):\n{tail}")


def run_on_emulator(
    so_path, inputs, repeat: int = 1, timeout: float = 600.0, env: DeviceEnv | None = None,
    mode: str = "plain", calls: dict | None = None,
) -> list[np.ndarray]:
    """Run ``main`` of an arm64 library under QEMU with the device-side runner.

    Parameters
    ----------
    so_path : path
        Library exported for aarch64 Linux.
    inputs : numpy.ndarray or list of numpy.ndarray
        One array per model input.
    repeat : int
        Runs of ``main``; the last run's outputs are returned.
    timeout : float
        Seconds before the emulator is killed.
    env : DeviceEnv, optional
        A set-up phone (``setup()`` is called when omitted).
    mode : str
        ``"plain"``, ``"copy-io"`` or ``"zero-copy"``: the runner's call path
        (`deploy.device_runner`; zero-copy runs ``main_zc`` on buffers allocated once).
    calls : dict, optional
        Filled with the VM's call counts over the `repeat` runs (``{"runs", "mode",
        "calls": {symbol: count}}``), counted on the device by a VM instrument.

    Returns
    -------
    list of numpy.ndarray
        The outputs, tuples flattened in order.
    """
    _check_mode(mode)
    env = env or setup()
    with tempfile.TemporaryDirectory(prefix="mdl_emu_") as tmp:
        work = Path(tmp)
        names = _save_inputs(inputs, work)
        cmd = [
            str(env.python),
            str(RUNNER),
            os.path.abspath(so_path),
            "--inputs",
            *names,
            "--outputs-dir",
            "out",
            "--repeat",
            str(repeat),
            "--mode",
            mode,
            *(["--count-calls", "calls.json"] if calls is not None else []),
        ]
        err = work / "stderr.txt"
        try:
            with open(err, "w") as ef:
                res = subprocess.run(
                    cmd,
                    cwd=work,
                    stdin=subprocess.DEVNULL,
                    stdout=ef,
                    stderr=subprocess.STDOUT,
                    timeout=timeout,
                )
        except subprocess.TimeoutExpired:
            raise _fail("device_runner.py", None, err) from None
        if res.returncode != 0:
            raise _fail("device_runner.py", res, err)
        if calls is not None:
            calls.update(json.loads((work / "calls.json").read_text()))
        return _read_outputs(work / "out")


def _no_aslr() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    cur = libc.personality(0xFFFFFFFF)
    if cur != -1:
        libc.personality(cur | ADDR_NO_RANDOMIZE)


def _counting_env(env: DeviceEnv, home: Path) -> dict:
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(env.site),
        "PYTHONNOUSERSITE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONHASHSEED": "0",
        "TVM_USE_RUNTIME_LIB": "1",
        "TVM_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    }


@contextlib.contextmanager
def counting_workdir(env: DeviceEnv, so_path, inputs):
    """The work directory of an instruction count, ``(work, input file names)``: the runner,
    the library and the inputs at fixed paths (the guest must see identical names in every
    counted run), held under the phone's count lock and removed after a successful count."""
    base = env.root / "count"
    base.mkdir(exist_ok=True)
    with open(env.root / "count.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        work = base / "w"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        shutil.copyfile(RUNNER, work / "runner.py")
        shutil.copyfile(so_path, work / "model.so")
        yield work, _save_inputs(inputs, work)
        shutil.rmtree(work, ignore_errors=True)


def _count_once(env: DeviceEnv, work: Path, names: list[str], runs: int, timeout: float,
                mode: str = "plain") -> int:
    return int(_run_counted(env, work, names, runs, timeout, mode).read_text())


def _run_counted(env: DeviceEnv, work: Path, names: list[str], runs: int, timeout: float,
                 mode: str = "plain", plugin: Path | None = None,
                 script: str = "runner.py") -> Path:
    """Run `script` (``device_runner.py`` or a wrapper of it) in `work` under the plugin
    (default ``libinsn.so``); returns the file the plugin wrote."""
    out, err, count = work / "out", work.parent / "stderr.txt", work.parent / "count.txt"
    shutil.rmtree(out, ignore_errors=True)
    count.unlink(missing_ok=True)
    cmd = [
        env.qemu_plugins,
        "-seed",
        "1",
        "-plugin",
        f"{plugin or env.plugin},out={count}",
        "-L",
        str(env.sysroot),
        str(env.guest_python),
        script,
        "model.so",
        "--inputs",
        *names,
        "--outputs-dir",
        "out",
        "--repeat",
        f"{runs:09d}",
        "--mode",
        mode,
    ]
    res = None
    try:
        with open(work.parent / "stdout.txt", "w") as of, open(err, "w") as ef:
            res = subprocess.run(
                cmd,
                cwd=work,
                env=_counting_env(env, work),
                stdin=subprocess.DEVNULL,
                stdout=of,
                stderr=ef,
                timeout=timeout,
                preexec_fn=_no_aslr,
            )
    except subprocess.TimeoutExpired:
        raise _fail("instruction counting", None, err) from None
    if res.returncode != 0 or not count.exists():
        raise _fail("instruction counting", res, err)
    return count


def count_instructions(
    so_path,
    inputs,
    runs: int = 10,
    verify: bool = False,
    timeout: float = 900.0,
    env: DeviceEnv | None = None,
    mode: str = "plain",
) -> int:
    """Count the aarch64 instructions one inference retires on the emulated phone.

    Parameters
    ----------
    so_path : path
        Library exported for aarch64 Linux.
    inputs : numpy.ndarray or list of numpy.ndarray
        One array per model input.
    runs : int
        N: the count is ``(count(2N runs) - count(N runs)) / N``, the steady-state cost of
        one ``main`` call (VM dispatch and kernels; python and TVM start-up cancel).
    verify : bool
        Count the N-run process twice and fail if the two counts differ.
    timeout : float
        Seconds allowed per emulator run.
    env : DeviceEnv, optional
        A set-up phone (``setup()`` is called when omitted).
    mode : str
        The runner's call path, ``"plain"``, ``"copy-io"`` or ``"zero-copy"``
        (see `deploy.device_runner`).

    Returns
    -------
    int
        Instructions retired per inference (rounded to the nearest integer).

    Raises
    ------
    DeviceError
        When the runner fails under QEMU or the counts are not reproducible.
    """
    if runs < 1:
        raise ValueError("runs must be at least 1")
    _check_mode(mode)
    env = env or setup()
    with counting_workdir(env, so_path, inputs) as (work, names):
        c1 = _count_once(env, work, names, runs, timeout, mode)
        if verify:
            again = _count_once(env, work, names, runs, timeout, mode)
            if again != c1:
                raise DeviceError(f"instruction counts differ run to run: {c1} vs {again}")
        c2 = _count_once(env, work, names, 2 * runs, timeout, mode)
    if c2 <= c1:
        raise DeviceError(f"{2 * runs} runs counted {c2} <= {runs} runs counted {c1}")
    return round((c2 - c1) / runs)
