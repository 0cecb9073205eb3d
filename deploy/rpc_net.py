"""TVM RPC on the network, without importing TVM: free ports, addresses, which hosts are
loopback, and a tracker's summary over its wire protocol (`tvm.rpc.base`)."""

from __future__ import annotations

import ipaddress
import json
import socket
import struct
import sys

from mdl_tvm.core.errors import DeviceError

TRACKER_MAGIC = 0x2F271  # tvm.rpc.base.RPC_TRACKER_MAGIC
SUMMARY = 6  # tvm.rpc.base.TrackerCode.SUMMARY
SUCCESS = 0



def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def parse_addr(text: str, default_port: int = 9190) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (or ``HOST``) into a tuple."""
    host, sep, port = text.rpartition(":")
    return (host, int(port)) if sep else (text, default_port)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals (127.0.0.0/8, ::1); a host *name*
    such as ``127.example.com`` is not one, whatever it starts with."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, allow_remote: bool) -> None:
    """Refuse (or, with `allow_remote`, warn about) binding a non-loopback address."""
    if is_loopback(host):
        return
    if not allow_remote:
        raise ValueError(
            f"refusing to bind {host}: TVM RPC has no authentication, anyone who reaches it "
            "can run code here; pass allow_remote=True (--allow-remote) to do it anyway"
        )
    print(
        f"WARNING: binding {host}: TVM RPC has no authentication; anyone who can reach this "
        "address can run code on this machine",
        file=sys.stderr,
    )


def tracker_summary(host: str, port: int, timeout: float = 5.0) -> dict:
    """Ask a tracker for its summary (``queue_info``, ``server_info``) without importing TVM.

    Raises
    ------
    DeviceError
        When nothing answers at ``host:port`` or it is not an RPC tracker.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(struct.pack("<i", TRACKER_MAGIC))
            if struct.unpack("<i", _recv(s, 4))[0] != TRACKER_MAGIC:
                raise DeviceError(f"{host}:{port} is not a TVM RPC tracker")
            req = json.dumps([SUMMARY]).encode()
            s.sendall(struct.pack("<i", len(req)) + req)
            (size,) = struct.unpack("<i", _recv(s, 4))
            code, summary = json.loads(_recv(s, size))
    except OSError as err:
        raise DeviceError(
            f"no RPC tracker at {host}:{port} ({err}); start one with "
            f"`mdl-tvm tracker start --port {port}`"
        ) from err
    if code != SUCCESS:
        raise DeviceError(f"tracker {host}:{port} answered {code}")
    return summary


def _recv(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    return buf
