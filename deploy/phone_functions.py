"""Functions the emulated phone's RPC server offers its clients (device side).

Copied into the phone's site-packages as ``mdl_phone.py`` and registered by its
``sitecustomize`` in the processes `deploy.procs.start_phone` starts (environment
``MDL_TVM_PHONE_CPU``); it needs only TVM's runtime, so a real arm64 board can run it too.

* ``mdl.phone.info()`` → JSON ``{"cpu", "hwcap"}``: the CPU model and the ``AT_HWCAP`` bits
  the kernel (here QEMU) reports, so a client can refuse a library the CPU cannot execute
  before it crashes a worker (`deploy.remote.RemoteDevice.load`).
* TVM's RPC server serves each session in a forked worker and, when the worker dies (a
  library executing an instruction the CPU lacks dies of SIGILL), raises in its listen
  loop, which ends the server; and it reads a new connection's handshake without a
  timeout, so one silent client blocks all others. `keep_serving` logs a failed session
  and serves on, and drops a connection that does not send its handshake within 3 s.
* ``mdl.count_call(module, name, number, *args)`` → instructions one call of
  ``module[name]`` retires, on a phone started with ``count=True`` (its workers run under
  the marker plugin, ``insn_marker_plugin.c``): two marks around ``number`` calls made by
  TVM's own time evaluator, divided by ``number``. MetaSchedule's runner uses it to
  measure tuning candidates in instructions (`schedules.tuning.measure`).
"""

import ctypes
import json
import logging
import os
import struct

MARKER_SYSCALL = 0x4D444C  # deploy/insn_marker_plugin.c
AT_HWCAP = 16
_libc = ctypes.CDLL(None, use_errno=True)
_libc.getauxval.restype = ctypes.c_ulong
_libc.syscall.restype = ctypes.c_long


def phone_info() -> str:
    """The phone's CPU model and HWCAP bits, as JSON text."""
    return json.dumps({"cpu": os.environ.get("MDL_TVM_PHONE_CPU", ""),
                       "hwcap": int(_libc.getauxval(AT_HWCAP))})


def _marks(prefix: str) -> list[tuple[int, int]]:
    with open(f"{prefix}.{os.getpid()}") as f:
        return [tuple(int(v) for v in line.split()) for line in f if line.strip()]


def count_call(module, name, number, *args) -> float:
    """Instructions per call of ``module[name](*args)``: marks around TVM's time evaluator
    making N and then 2N calls; the difference of the two windows over N cancels the
    evaluator's own set-up, as the N / 2N method does for a whole process."""
    import tvm

    prefix = os.environ.get("MDL_TVM_MARKS")
    if not prefix:
        raise RuntimeError("this phone does not count instructions: start it with "
                           "count=True (mdl-tvm device start --count)")
    n = max(int(number), 1)
    evaluators = [tvm.runtime._ffi_api.RPCTimeEvaluator(module, name, 1, 0, calls, 1, 0, 0, 0,
                                                        0, 0, "") for calls in (n, 2 * n)]
    evaluators[0](*args)  # lazy initialisation happens outside the windows
    path = f"{prefix}.{os.getpid()}"
    before = len(_marks(prefix)) if os.path.exists(path) else 0
    _libc.syscall(MARKER_SYSCALL, 1)
    evaluators[0](*args)
    _libc.syscall(MARKER_SYSCALL, 2)
    evaluators[1](*args)
    _libc.syscall(MARKER_SYSCALL, 3)
    (_, m0), (_, m1), (_, m2) = _marks(prefix)[before:before + 3]
    return ((m2 - m1) - (m1 - m0)) / n


HANDSHAKE_SECONDS = 3.0  # a real client sends its handshake right after connecting


RPC_MAGIC = 0xFF271  # tvm.rpc.base.RPC_MAGIC


def _read_exact(conn, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise OSError("connection closed during the handshake")
        data += chunk
    return data


class _ReadAhead:
    """A connection whose handshake bytes were read already: `recv` replays them first."""

    def __init__(self, conn, head: bytes):
        self._conn, self._head = conn, head

    def recv(self, n, *flags):
        if self._head:
            chunk, self._head = self._head[:n], self._head[n:]
            return chunk
        return self._conn.recv(n, *flags)

    def __getattr__(self, name):
        return getattr(self._conn, name)


class _TimedListener:
    """The server's listening socket. `accept` reads a new connection's handshake (magic,
    key) within `HANDSHAKE_SECONDS` and drops a client that stays silent, then hands TVM
    the connection with those bytes to replay: one idle client no longer blocks the
    others, and the server's registration at the tracker is untouched."""

    def __init__(self, sock):
        self._sock = sock

    def accept(self):
        while True:
            conn, addr = self._sock.accept()
            conn.settimeout(HANDSHAKE_SECONDS)
            try:
                head = _read_exact(conn, 8)
                magic, keylen = struct.unpack("<ii", head)
                if magic == RPC_MAGIC and 0 < keylen <= 4096:
                    head += _read_exact(conn, keylen)
            except OSError as err:
                logging.getLogger("RPCServer").warning("dropped %s: no RPC handshake (%s)",
                                                      addr, err)
                conn.close()
                continue
            conn.settimeout(None)
            return _ReadAhead(conn, head), addr

    def __getattr__(self, name):
        return getattr(self._sock, name)


def keep_serving() -> None:
    """Make ``tvm.rpc.server`` survive a failed session and a silent client: a session
    whose worker dies is logged and the server serves on; a connection that does not
    finish the handshake within `HANDSHAKE_SECONDS` is dropped (TVM's accept loop then
    reconnects to the tracker and goes on)."""
    import tvm.rpc.server as server

    if getattr(server._serving, "mdl_survives", False):
        return
    serving, listen_loop = server._serving, server._listen_loop
    log = logging.getLogger("RPCServer")

    def serving_survives(conn, addr, opts, load_library):
        cwd = os.getcwd()
        try:
            serving(conn, addr, opts, load_library)
        except RuntimeError as err:
            log.error("session from %s failed (%s); serving on", addr, err)
            os.chdir(cwd)
            try:
                conn.close()
            except OSError:
                pass

    def listen_loop_with_timeouts(sock, *args):
        return listen_loop(_TimedListener(sock), *args)

    serving_survives.mdl_survives = True
    server._serving = serving_survives
    server._listen_loop = listen_loop_with_timeouts


def register() -> None:
    """Register the functions with TVM's global registry and make the RPC server survive
    a crashed session (called by sitecustomize in the phone's processes)."""
    import tvm_ffi

    tvm_ffi.register_global_func("mdl.phone.info", phone_info, override=True)
    tvm_ffi.register_global_func("mdl.count_call", count_call, override=True)
    keep_serving()
