"""Run a model library on the emulated phone without RPC, and count its ARM instructions.

`run_on_emulator` runs ``device_runner.py`` with the phone's python under
``qemu-aarch64-static``. `count_instructions` runs it under Debian's plugin-capable
``qemu-aarch64`` with ``libinsn.so`` and returns instructions retired per inference:
``(count(2N runs) - count(N runs)) / N``, so start-up (python, numpy, TVM import) cancels.

Every run names its CPU (``-cpu``; `deploy.cpus`): by default the core of the profile the
library was built for (``cortex-a76`` for ARMv8.2-A profiles, ``cortex-a72`` for ARMv8.0-A
ones), never QEMU's ``max``. A library that needs what that CPU lacks (fp16 arithmetic on
an ARMv8.0 core) is refused before it runs; forced, its SIGILL comes back as a
`DeviceError` naming the cause.

Counts are deterministic: both runs see the same directory, file names, argv length,
environment and standard streams, with one thread, address-space randomisation off, a
fixed hash seed and a fixed QEMU random seed. `count_guest` is the same machinery for any
guest script (the peer engines use it, `deploy.peers.count`).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from deploy.cpus import (
    DEFAULT_CPU,
    check_cpu,
    cpu_features,
    illegal_instruction_error,
    missing_features,
    refusal,
)
from deploy.device import DeviceEnv, setup
from mdl_tvm.core.artifact import read_metadata
from mdl_tvm.core.errors import DeviceError, MdlError
from mdl_tvm.core.targets import PROFILES

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


def read_outputs(outdir: Path) -> list[np.ndarray]:
    """``out0.npy``, ``out1.npy``, ... of a runner's output directory, in order."""
    outs, i = [], 0
    while (outdir / f"out{i}.npy").exists():
        outs.append(np.load(outdir / f"out{i}.npy"))
        i += 1
    return outs


def library_cpu(so_path, cpu: str | None = None, force: bool = False) -> tuple[str, dict | None]:
    """The CPU to run `so_path` on and its metadata (None for a foreign library).

    `cpu` defaults to the core of the library's target profile. Raises `DeviceError`
    when the library needs features that CPU lacks, unless `force`.
    """
    try:
        meta = read_metadata(str(so_path))
    except MdlError:
        meta = None  # not a MobileDL artifact: the runner reports what it is
    if cpu is None:
        profile = PROFILES.get(meta.get("target")) if meta else None
        cpu = (profile.qemu_cpu if profile is not None else "") or DEFAULT_CPU
    check_cpu(cpu)
    if meta is not None and not force:
        missing = missing_features(meta, cpu_features(cpu))
        if missing:
            raise refusal(meta, cpu, missing, "the emulated phone")
    return cpu, meta


def _fail(what: str, res: subprocess.CompletedProcess | None, err_file: Path, cpu: str,
          meta: dict | None) -> DeviceError:
    try:
        tail = err_file.read_text()[-2000:]
    except OSError:
        tail = ""
    if res is not None and res.returncode in (-signal.SIGILL, 128 + signal.SIGILL):
        lines = tail.strip().splitlines()
        return illegal_instruction_error(meta, cpu, lines[-1] if lines else "")
    code = res.returncode if res is not None else "timeout"
    return DeviceError(f"{what} failed on the emulated phone ({cpu}, exit {code}):\n{tail}")


def _guest_env(env: DeviceEnv, home: Path, pythonpath: Sequence[Path] = ()) -> dict:
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "PYTHONPATH": os.pathsep.join(str(p) for p in (*pythonpath, env.site)),
        "PYTHONNOUSERSITE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONHASHSEED": "0",
        "TVM_USE_RUNTIME_LIB": "1",
        "TVM_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "ORT_DISABLE_TELEMETRY": "1",
    }


def run_on_emulator(
    so_path, inputs, repeat: int = 1, timeout: float = 600.0, env: DeviceEnv | None = None,
    mode: str = "plain", calls: dict | None = None, cpu: str | None = None,
    force: bool = False,
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
    cpu : str, optional
        QEMU CPU model (`deploy.cpus.QEMU_CPUS`); default: the library's profile's core.
    force : bool
        Run even when the library needs features `cpu` lacks.

    Returns
    -------
    list of numpy.ndarray
        The outputs, tuples flattened in order.
    """
    _check_mode(mode)
    cpu, meta = library_cpu(so_path, cpu, force)
    env = env or setup()
    with tempfile.TemporaryDirectory(prefix="mdl_emu_") as tmp:
        work = Path(tmp)
        names = _save_inputs(inputs, work)
        argv = [os.path.abspath(so_path), "--inputs", *names, "--outputs-dir", "out",
                "--repeat", str(repeat), "--mode", mode,
                *(["--count-calls", "calls.json"] if calls is not None else [])]
        run_guest(env, work, str(RUNNER), argv, cpu, timeout, meta=meta)
        if calls is not None:
            calls.update(json.loads((work / "calls.json").read_text()))
        return read_outputs(work / "out")


def run_guest(env: DeviceEnv, work: Path, script: str, argv: list, cpu: str,
              timeout: float, pythonpath: Sequence[Path] = (), meta: dict | None = None,
              what: str = "the device runner") -> None:
    """Run a python `script` with `argv` on the phone (no plugin) in directory `work`."""
    err = work / "stderr.txt"
    cmd = [env.qemu, "-cpu", cpu, "-L", str(env.sysroot), str(env.guest_python), script, *argv]
    try:
        with open(err, "w") as ef:
            res = subprocess.run(cmd, cwd=work, env=_guest_env(env, work, pythonpath),
                                 stdin=subprocess.DEVNULL, stdout=ef, stderr=subprocess.STDOUT,
                                 timeout=timeout)
    except subprocess.TimeoutExpired:
        raise _fail(what, None, err, cpu, meta) from None
    if res.returncode != 0:
        raise _fail(what, res, err, cpu, meta)


def _no_aslr() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    cur = libc.personality(0xFFFFFFFF)
    if cur != -1:
        libc.personality(cur | ADDR_NO_RANDOMIZE)


@contextlib.contextmanager
def counting_workdir(env: DeviceEnv, files: dict[str, Path], inputs):
    """The work directory of an instruction count, ``(work, input file names)``: `files`
    (``{name in work: source}``) and the inputs at fixed paths (the guest must see
    identical names in every counted run), held under the phone's count lock and removed
    after a successful count."""
    base = env.root / "count"
    base.mkdir(exist_ok=True)
    with open(env.root / "count.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        work = base / "w"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        for name, source in files.items():
            shutil.copyfile(source, work / name)
        yield work, _save_inputs(inputs, work)
        shutil.rmtree(work, ignore_errors=True)


def library_files(so_path) -> dict[str, Path]:
    """The files of a MobileDL count: the device runner and the library."""
    return {"runner.py": RUNNER, "model.so": Path(so_path)}


def count_guest(env: DeviceEnv, work: Path, argv: list, timeout: float, cpu: str,
                plugin: Path | None = None, pythonpath: Sequence[Path] = (),
                meta: dict | None = None) -> Path:
    """Run ``python3 *argv`` in `work` under the counting plugin (default ``libinsn.so``)
    with the deterministic set-up; returns the file the plugin wrote."""
    out, err, count = work / "out", work.parent / "stderr.txt", work.parent / "count.txt"
    shutil.rmtree(out, ignore_errors=True)
    count.unlink(missing_ok=True)
    cmd = [env.qemu_plugins, "-cpu", cpu, "-seed", "1", "-plugin",
           f"{plugin or env.plugin},out={count}", "-L", str(env.sysroot),
           str(env.guest_python), *argv]
    res = None
    try:
        with open(work.parent / "stdout.txt", "w") as of, open(err, "w") as ef:
            res = subprocess.run(cmd, cwd=work, env=_guest_env(env, work, pythonpath),
                                 stdin=subprocess.DEVNULL, stdout=of, stderr=ef,
                                 timeout=timeout, preexec_fn=_no_aslr)
    except subprocess.TimeoutExpired:
        raise _fail("instruction counting", None, err, cpu, meta) from None
    if res.returncode != 0 or not count.exists():
        raise _fail("instruction counting", res, err, cpu, meta)
    return count


def runner_argv(names: list[str], runs: int, mode: str = "plain",
                script: str = "runner.py") -> list[str]:
    """``device_runner.py``'s arguments for `runs` runs (fixed width: the same argv length
    for N and 2N, so the guest's start-up is identical)."""
    return [script, "model.so", "--inputs", *names, "--outputs-dir", "out",
            "--repeat", f"{runs:09d}", "--mode", mode]


def per_run(count: Callable[[int], int], runs: int, verify: bool = False) -> int:
    """``(count(2N) - count(N)) / N`` rounded; with `verify`, count(N) twice and require
    the same number (determinism)."""
    if runs < 1:
        raise ValueError("runs must be at least 1")
    c1 = count(runs)
    if verify:
        again = count(runs)
        if again != c1:
            raise DeviceError(f"instruction counts differ run to run: {c1} vs {again}")
    c2 = count(2 * runs)
    if c2 <= c1:
        raise DeviceError(f"{2 * runs} runs counted {c2} <= {runs} runs counted {c1}")
    return round((c2 - c1) / runs)


def count_instructions(
    so_path,
    inputs,
    runs: int = 10,
    verify: bool = False,
    timeout: float = 900.0,
    env: DeviceEnv | None = None,
    mode: str = "plain",
    cpu: str | None = None,
    force: bool = False,
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
    cpu : str, optional
        QEMU CPU model; default: the core of the library's target profile.
    force : bool
        Count even when the library needs features `cpu` lacks.

    Returns
    -------
    int
        Instructions retired per inference (rounded to the nearest integer).

    Raises
    ------
    DeviceError
        When the runner fails under QEMU, the library needs what the CPU lacks, or the
        counts are not reproducible.
    """
    _check_mode(mode)
    cpu, meta = library_cpu(so_path, cpu, force)
    env = env or setup()
    with counting_workdir(env, library_files(so_path), inputs) as (work, names):
        def count(n: int) -> int:
            path = count_guest(env, work, runner_argv(names, n, mode), timeout, cpu, meta=meta)
            return int(path.read_text())

        return per_run(count, runs, verify)
