"""Start, stop and inspect the RPC tracker and the emulated phone's RPC server.

Both run as detached process groups; their pid, address and log live in a run directory
(``$MDL_TVM_RUN_DIR``, default ``cache_root()/run``) as ``tracker.json`` / ``phone.json``.
Everything binds 127.0.0.1 unless told otherwise: TVM RPC has no authentication, so a
server reachable from the network runs anyone's code.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from deploy.cpus import DEFAULT_CPU, check_cpu
from deploy.device import setup
from deploy.plugins import MARKER_SRC, build_plugin
from deploy.rpc_net import check_bind, free_port, tracker_summary
from mdl_tvm.core.errors import DeviceError
from mdl_tvm.core.io import atomic_write, cache_root


def run_dir(path: str | os.PathLike | None = None) -> Path:
    """Return (and create) the directory for pid files and logs."""
    d = Path(path or os.environ.get("MDL_TVM_RUN_DIR") or cache_root("run"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def _read_state(name: str, rdir: Path) -> dict | None:
    try:
        state = json.loads((rdir / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None
    try:
        proc = psutil.Process(state["pid"])
        alive = _same_process(proc, state) and proc.status() != "zombie"
    except (psutil.Error, KeyError):
        alive = False
    state["alive"] = alive
    return state


def start_ticks(pid: int) -> int:
    """When process `pid` started, in clock ticks since boot (``/proc/PID/stat`` field 22).

    A pid can be reused; (pid, start_ticks) cannot. Wall-clock start times cannot serve
    here: psutil adds ``btime`` from ``/proc/stat`` on every call, a whole second that
    steps when the clock is adjusted, so the same live process can differ from its
    recorded start by one second (CI once reported a running tracker as dead that way).
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError as err:
        raise psutil.NoSuchProcess(pid) from err
    return int(stat[stat.rindex(")") + 2:].split()[19])  # fields after "(comm)": 3, 4, ...


def _same_process(proc: psutil.Process, state: dict) -> bool:
    if "start_ticks" in state:
        return start_ticks(proc.pid) == state["start_ticks"]
    return abs(proc.create_time() - state["create_time"]) < 2  # a state file from before


def _spawn(
    name: str, cmd: list[str], rdir: Path, extra: dict, env: dict | None = None
) -> tuple[subprocess.Popen, dict]:
    log = rdir / f"{name}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=rdir,
            preexec_fn=_no_core_dumps,
        )
    state = {"pid": proc.pid, "pgid": proc.pid, "cmd": cmd, "log": str(log), **extra}
    state["create_time"] = psutil.Process(proc.pid).create_time()  # for people
    state["start_ticks"] = start_ticks(proc.pid)  # for `_same_process`
    atomic_write(rdir / f"{name}.json", json.dumps(state))
    return proc, state


def _no_core_dumps() -> None:  # in the child: a crashing guest must not write a core file
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _tree(state: dict) -> list[psutil.Process]:
    """The recorded process (if it is still the same one) and its descendants."""
    try:
        root = psutil.Process(state["pid"])
        if _same_process(root, state):
            return [root] + root.children(recursive=True)
    except psutil.Error:
        pass
    return []


def _kill(state: dict, grace: float = 5.0) -> None:
    """Stop a tracker / phone: its tree plus orphans left in its process group (a killed
    server leaves its popen worker behind); only processes running TVM's RPC code."""
    procs = _tree(state)
    for p in psutil.process_iter(["cmdline"]):
        try:
            ours = any("tvm.exec." in arg or "mdl_phone_server" in arg
                       for arg in p.info["cmdline"] or [])
            if ours and p not in procs and os.getpgid(p.pid) == state["pgid"]:
                procs.append(p)
        except (OSError, psutil.Error):
            pass
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in procs:
            try:
                p.send_signal(sig)
            except psutil.Error:
                pass
        deadline = time.monotonic() + grace
        while procs and time.monotonic() < deadline:
            time.sleep(0.05)
            procs = [p for p in procs if _running(p)]
        if not procs:
            break


def _running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _log_tail(state: dict, n: int = 1500) -> str:
    try:
        return Path(state["log"]).read_text()[-n:]
    except OSError:
        return ""


def start_tracker(
    port: int | None = None,
    host: str = "127.0.0.1",
    *,
    allow_remote=False,
    rundir=None,
    timeout: float = 30.0,
) -> tuple[str, int]:
    """Start the RPC tracker (host python) unless one is already running.

    Parameters
    ----------
    port : int, optional
        Port to listen on; a free one is picked when omitted.
    host : str
        Address to bind (127.0.0.1 unless ``allow_remote``).
    allow_remote : bool
        Allow a non-loopback ``host`` (prints a warning: RPC has no authentication).
    rundir : path, optional
        Directory for the pid file and log (see `run_dir`).
    timeout : float
        Seconds to wait until the tracker answers.

    Returns
    -------
    (str, int)
        The tracker's address.
    """
    check_bind(host, allow_remote)
    rdir = run_dir(rundir)
    old = _read_state("tracker", rdir)
    if old and old["alive"]:
        if port in (None, old["port"]):
            return old["host"], old["port"]
        raise DeviceError(f"a tracker already runs on port {old['port']}; stop it first")
    for _ in range(3):
        p = port or free_port(host)
        cmd = [sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", host]
        cmd += ["--port", str(p), "--port-end", str(p + 1)]
        proc, state = _spawn("tracker", cmd, rdir, {"host": host, "port": p})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                tracker_summary(host, p, timeout=2)
                return host, p
            except DeviceError:
                time.sleep(0.2)
        _kill(state)
        (rdir / "tracker.json").unlink(missing_ok=True)
        if port:
            break
    raise DeviceError(f"the RPC tracker did not start on {host}:{p}; log:\n{_log_tail(state)}")


def stop_tracker(rundir=None) -> bool:
    """Stop the tracker started by `start_tracker`; return True if one was running."""
    rdir = run_dir(rundir)
    state = _read_state("tracker", rdir)
    if state:
        _kill(state)
        (rdir / "tracker.json").unlink(missing_ok=True)
    return bool(state and state["alive"])


def _registered(summary: dict, key: str, port: int) -> bool:
    servers = [s for s in summary.get("server_info", []) if s.get("key") == f"server:{key}"]
    free = summary.get("queue_info", {}).get(key, {}).get("free", 0)
    return free > 0 and any(list(s.get("addr", []))[1:] == [port] for s in servers)


def start_phone(
    tracker: tuple[str, int] | None = None,
    key: str = "phone",
    port: int | None = None,
    host: str = "127.0.0.1",
    *,
    allow_remote=False,
    rundir=None,
    timeout: float = 120.0,
    cpu: str = DEFAULT_CPU,
    count: bool = False,
) -> dict:
    """Start the emulated phone's RPC server (arm64 python under QEMU).

    With ``tracker`` it registers there under ``key`` and this returns once the tracker
    lists it as free; without, it serves ``host:port`` directly.

    Parameters
    ----------
    tracker : (str, int), optional
        Tracker address; the tracker must already run.
    key : str
        Device key to register under.
    port : int, optional
        Port for the server; a free one is picked when omitted.
    host : str
        Address to bind (127.0.0.1 unless ``allow_remote``).
    allow_remote : bool
        Allow a non-loopback ``host`` (prints a warning: RPC has no authentication).
    rundir : path, optional
        Directory for the pid file and log.
    timeout : float
        Seconds to wait for the server to come up.
    cpu : str
        QEMU CPU model of the phone (`deploy.cpus.QEMU_CPUS`; default ``cortex-a76``).
    count : bool
        Run the phone under the marker plugin so that clients can count the instructions
        a call retires (``mdl.count_call``, `deploy.phone_functions`): tuning by ARM cost.
        Slower (every instruction is counted).

    Returns
    -------
    dict
        The phone's state: ``pid``, ``host``, ``port``, ``tracker``, ``key``, ``cpu``,
        ``log``.

    Raises
    ------
    DeviceError
        When a phone already runs, the tracker is down, or the server does not come up.
    """
    check_bind(host, allow_remote)
    check_cpu(cpu)
    rdir = run_dir(rundir)
    old = _read_state("phone", rdir)
    if old and old["alive"]:
        raise DeviceError(f"a phone already runs (pid {old['pid']}); `mdl-tvm device stop` first")
    if tracker:
        tracker_summary(*tracker)  # fails fast with the fix when the tracker is down
    env = setup()
    port = port or free_port(host)
    cmd = [
        str(env.python),
        "-m",
        "tvm.exec.rpc_server",
        "--host",
        host,
        "--port",
        str(port),
        "--port-end",
        str(port + 1),
        "--load-library",
        str(env.runtime_extra),
    ]
    if tracker:
        cmd += ["--tracker", f"{tracker[0]}:{tracker[1]}", "--key", key]
    extra = {
        "host": host,
        "port": port,
        "key": key if tracker else None,
        "tracker": list(tracker) if tracker else None,
        "cpu": cpu,
    }
    # session directories (uploaded libraries) go to a private TMPDIR, removed by stop_phone
    tmpdir = rdir / "phone-tmp"
    shutil.rmtree(tmpdir, ignore_errors=True)
    tmpdir.mkdir()
    phone_env = dict(os.environ, TMPDIR=str(tmpdir), MDL_TVM_QEMU_CPU=cpu,
                     MDL_TVM_PHONE_CPU=cpu)
    if count:
        marks = rdir / "phone-tmp" / "marks"
        plugin = build_plugin(env, MARKER_SRC, "libinsnmark.so")
        phone_env.update(MDL_TVM_QEMU=env.qemu_plugins, MDL_TVM_QEMU_PLUGIN=f"{plugin},out={marks}",
                         MDL_TVM_MARKS=str(marks), PYTHONHASHSEED="0")
    extra["count"] = count
    proc, state = _spawn("phone", cmd, rdir, extra, env=phone_env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            (rdir / "phone.json").unlink(missing_ok=True)
            raise DeviceError(f"the phone exited with {proc.returncode}; log:\n{_log_tail(state)}")
        if _ready(state):
            return state
        time.sleep(0.3)
    _kill(state)
    (rdir / "phone.json").unlink(missing_ok=True)
    where = f"registered with {tracker} as {key!r}" if tracker else f"listening on {host}:{port}"
    raise DeviceError(f"the phone was not {where} after {timeout:.0f} s; log:\n{_log_tail(state)}")


def _ready(state: dict) -> bool:
    if state.get("tracker"):
        try:
            return _registered(tracker_summary(*state["tracker"]), state["key"], state["port"])
        except DeviceError:
            return False
    for p in _tree(state):  # standalone: one of our processes listens on the port
        try:
            for c in p.net_connections(kind="tcp"):
                if c.status == psutil.CONN_LISTEN and c.laddr.port == state["port"]:
                    return True
        except psutil.Error:
            pass
    return False


def stop_phone(rundir=None) -> bool:
    """Stop the phone (server and its worker processes); return True if one was running."""
    rdir = run_dir(rundir)
    state = _read_state("phone", rdir)
    if state:
        _kill(state)
        (rdir / "phone.json").unlink(missing_ok=True)
    shutil.rmtree(rdir / "phone-tmp", ignore_errors=True)
    return bool(state and state["alive"])


def status(rundir=None) -> dict:
    """Return the state of the tracker and the phone (``None`` when not started).

    Returns
    -------
    dict
        ``{"tracker": state or None, "phone": state or None}``; a live tracker's state has
        its ``summary``; each state has ``alive``.
    """
    rdir = run_dir(rundir)
    out = {"tracker": _read_state("tracker", rdir), "phone": _read_state("phone", rdir)}
    t = out["tracker"]
    if t and t["alive"]:
        try:
            t["summary"] = tracker_summary(t["host"], t["port"])
        except DeviceError as err:
            t["summary"] = str(err)
    return out
