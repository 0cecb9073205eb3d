"""Run a model library on the emulated phone without RPC, and count its ARM instructions.

Two runners start a library on the phone (`guest_runner`): ``python`` (the default),
``device_runner.py`` under the phone's python3 with TVM's Python runtime, and ``native``,
``mdl_run`` (`deploy.native`: C++ on the TVM runtime alone, ``main_zc`` on preset
buffers). `run_on_emulator` runs one under ``qemu-aarch64-static``. `count_instructions`
runs it under Debian's plugin-capable ``qemu-aarch64`` with ``libinsn.so`` and returns
instructions retired per inference: ``(count(2N runs) - count(N runs)) / N``, so start-up
(python, numpy, TVM import; or the runner's load) cancels; inside `recording` the raw
counts are kept, from which `start_up` gives the start-up instructions (peak memory:
`deploy.guest_memory`).

Every run names its CPU (``-cpu``; `deploy.cpus`): by default the core of the profile the
library was built for (``cortex-a76`` for ARMv8.2-A profiles, ``cortex-a72`` for ARMv8.0-A
ones), never QEMU's ``max``. A library that needs what that CPU lacks (fp16 arithmetic on
an ARMv8.0 core) is refused before it runs; forced, its SIGILL comes back as a
`DeviceError` naming the cause.

Counts are deterministic: both runs see the same directory, file names, argv length,
environment and standard streams, with one thread, address-space randomisation off, a
fixed hash seed and a fixed QEMU random seed (the native runner in ``--count`` mode reads
no clock). `count_guest` is the same machinery for any guest program (the peer engines use
it, `deploy.peers.count`).
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
from deploy.host_model import check_arrays
from deploy.native.elf import check_machine
from deploy.runners import MODES, RUNNER, RUNNERS, guest_runner, runner_mode  # noqa: F401
from mdl_tvm.core.artifact import read_metadata
from mdl_tvm.core.errors import DeviceError, MdlError
from mdl_tvm.core.specs import InputSpec
from mdl_tvm.core.targets import PROFILES

ADDR_NO_RANDOMIZE = 0x0040000
_RECORDS: list[list] = []  # the logs of the `recording` blocks now open


def checked_inputs(inputs, meta: dict | None) -> list:
    """`inputs` as a list, checked against a MobileDL library's input specs (`meta`) so a
    wrong shape or dtype fails here, with the fix, not on the phone (InputSpecError)."""
    inputs = [inputs] if isinstance(inputs, np.ndarray) else list(inputs)
    if meta is None:
        return inputs
    return check_arrays([InputSpec.from_json(i) for i in meta["inputs"]], inputs)


def _save_inputs(inputs, workdir: Path) -> list[str]:
    if isinstance(inputs, np.ndarray):
        inputs = [inputs]
    names = []
    for i, arr in enumerate(inputs):
        name = f"in{i}.npy"
        np.save(workdir / name, np.ascontiguousarray(arr))
        names.append(name)
    return names


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
    check_machine(so_path, "aarch64", "the phone runs aarch64 libraries; compile the model "
                  "for a phone profile (--target arm64, cortex-a76, ...)")
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
    mode: str | None = None, calls: dict | None = None, cpu: str | None = None,
    force: bool = False, runner: str = "python", log: list | None = None,
) -> list[np.ndarray]:
    """Run an arm64 library under QEMU with a device-side runner.

    Parameters
    ----------
    so_path : path
        Library exported for aarch64 Linux.
    inputs : numpy.ndarray or list of numpy.ndarray
        One array per model input.
    repeat : int
        Runs; the last run's outputs are returned.
    timeout : float
        Seconds before the emulator is killed.
    env : DeviceEnv, optional
        A set-up phone (``setup()`` is called when omitted).
    mode : str, optional
        The Python runner's call path, ``"plain"`` (default), ``"copy-io"`` or
        ``"zero-copy"`` (`deploy.device_runner`); the native runner runs ``main_zc``.
    calls : dict, optional
        Python runner: filled with the VM's call counts over the `repeat` runs (``{"runs",
        "mode", "calls": {symbol: count}}``), counted on the device by a VM instrument.
    cpu : str, optional
        QEMU CPU model (`deploy.cpus.QEMU_CPUS`); default: the library's profile's core.
    force : bool
        Run even when the library needs features `cpu` lacks.
    runner : str
        ``"python"`` or ``"native"`` (`guest_runner`).
    log : list, optional
        The runner's printed output (its latencies) is appended.

    Returns
    -------
    list of numpy.ndarray
        The outputs, tuples flattened in order.
    """
    runner_mode(runner, mode)  # a wrong runner or mode fails before the phone starts
    cpu, meta = library_cpu(so_path, cpu, force)
    inputs = checked_inputs(inputs, meta)
    env = env or setup()
    guest = guest_runner(so_path, runner, mode, env)
    if calls is not None and guest.name != "python":
        raise ValueError("calls= counts the Python runner's VM calls; the native runner has none")
    with tempfile.TemporaryDirectory(prefix="mdl_emu_") as tmp:
        work = Path(tmp)
        names = _save_inputs(inputs, work)
        argv = guest.argv(names, repeat, model=os.path.abspath(so_path), script=str(RUNNER),
                          counting=False)
        argv += ["--count-calls", "calls.json"] if calls is not None else []
        text = run_guest(env, work, None, argv, cpu, timeout, meta=meta,
                         program=guest.program, what=f"the {guest.name} runner")
        if log is not None:
            log.append(text)
        if calls is not None:
            calls.update(json.loads((work / "calls.json").read_text()))
        return read_outputs(work / "out")


def run_guest(env: DeviceEnv, work: Path, script: str | None, argv: list, cpu: str,
              timeout: float, pythonpath: Sequence[Path] = (), meta: dict | None = None,
              what: str = "the device runner", program=None) -> str:
    """Run a python `script` (or the guest executable `program`) with `argv` on the phone
    (no plugin) in directory `work`; returns what it printed."""
    err = work / "stderr.txt"
    head = [str(program)] if program else [str(env.guest_python), script]
    cmd = [env.qemu, "-cpu", cpu, "-L", str(env.sysroot), *head, *argv]
    try:
        with open(err, "w") as ef:
            res = subprocess.run(cmd, cwd=work, env=_guest_env(env, work, pythonpath),
                                 stdin=subprocess.DEVNULL, stdout=ef, stderr=subprocess.STDOUT,
                                 timeout=timeout)
    except subprocess.TimeoutExpired:
        raise _fail(what, None, err, cpu, meta) from None
    if res.returncode != 0:
        raise _fail(what, res, err, cpu, meta)
    return err.read_text()


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


def count_guest(env: DeviceEnv, work: Path, argv: list, timeout: float, cpu: str,
                plugin: Path | None = None, pythonpath: Sequence[Path] = (),
                meta: dict | None = None, program=None) -> Path:
    """Run ``python3 *argv`` (or ``program *argv``) in `work` under the counting plugin
    (default ``libinsn.so``) with the deterministic set-up; returns the file the plugin
    wrote."""
    out, err, count = work / "out", work.parent / "stderr.txt", work.parent / "count.txt"
    shutil.rmtree(out, ignore_errors=True)
    count.unlink(missing_ok=True)
    cmd = [env.qemu_plugins, "-cpu", cpu, "-seed", "1", "-plugin",
           f"{plugin or env.plugin},out={count}", "-L", str(env.sysroot),
           str(program or env.guest_python), *argv]
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


@contextlib.contextmanager
def recording():
    """Keep the raw counts `per_run` makes in this block: yields a list that fills with
    ``(runs, instructions of the whole process)`` pairs (see `start_up`)."""
    log: list = []
    _RECORDS.append(log)
    try:
        yield log
    finally:
        _RECORDS.remove(log)


def start_up(records: list, per_inference: int) -> int:
    """Instructions of a process minus its inferences: ``count(N) - N * per_inference`` of
    the first pair a `recording` kept."""
    if not records:
        raise ValueError("no count was recorded: count inside `with recording() as records`")
    runs, total = records[0]
    return total - runs * per_inference


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
    for log in _RECORDS:
        log += [(runs, c1), (2 * runs, c2)]
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
    mode: str | None = None,
    cpu: str | None = None,
    force: bool = False,
    runner: str = "python",
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
        one inference (VM dispatch and kernels; the runner's start-up cancels).
    verify : bool
        Count the N-run process twice and fail if the two counts differ.
    timeout : float
        Seconds allowed per emulator run.
    env : DeviceEnv, optional
        A set-up phone (``setup()`` is called when omitted).
    mode : str, optional
        The Python runner's call path, ``"plain"`` (default), ``"copy-io"`` or
        ``"zero-copy"`` (see `deploy.device_runner`); the native runner runs ``main_zc``.
    cpu : str, optional
        QEMU CPU model; default: the core of the library's target profile.
    force : bool
        Count even when the library needs features `cpu` lacks.
    runner : str
        ``"python"`` or ``"native"`` (`guest_runner`).

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
    runner_mode(runner, mode)  # a wrong runner or mode fails before the phone starts
    cpu, meta = library_cpu(so_path, cpu, force)
    inputs = checked_inputs(inputs, meta)
    env = env or setup()
    guest = guest_runner(so_path, runner, mode, env)
    with counting_workdir(env, guest.files, inputs) as (work, names):
        def count(n: int) -> int:
            path = count_guest(env, work, guest.argv(names, n), timeout, cpu, meta=meta,
                               program=guest.program)
            return int(path.read_text())

        return per_run(count, runs, verify)
