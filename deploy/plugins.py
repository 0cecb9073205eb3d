"""QEMU TCG plugins built on first use: the per-address profiler and the marker counter.

``libinsn.so`` (the whole-process counter) is a part of the device cache
(`deploy.device`); these two are compiled into the phone's ``profile/`` folder when missing
or older than their source, atomically, against the ``qemu-plugin.h`` the set-up cached.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from deploy.device import DeviceEnv
from mdl_tvm.core.errors import DeviceError
from mdl_tvm.core.io import atomic_output

HERE = Path(__file__).parent
PROFILE_SRC = HERE / "insn_profile_plugin.c"
MARKER_SRC = HERE / "insn_marker_plugin.c"
MARKER_SYSCALL = 0x4D444C  # insn_marker_plugin.c: MDL_MARKER


def build_plugin(env: DeviceEnv, src: Path, name: str) -> Path:
    """``profile/NAME`` compiled from `src` (kept while newer than its source)."""
    out = env.root / "profile" / name
    out.parent.mkdir(exist_ok=True)
    if out.exists() and out.stat().st_mtime >= src.stat().st_mtime:
        return out
    header = env.plugin.with_name("qemu-plugin.h")
    if not header.exists():
        raise DeviceError(f"{header} is missing: run `mdl-tvm device setup` (or "
                          "scripts/setup.sh) to fetch QEMU's plugin header")
    with atomic_output(out) as tmp:
        res = subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-Wall", "-I",
                              str(header.parent), str(src), "-o", str(tmp)],
                             capture_output=True, text=True)
        if res.returncode != 0:
            raise DeviceError(f"compiling {src.name} failed:\n{res.stderr[-2000:]}")
    return out
