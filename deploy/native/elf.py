"""Which CPU a shared library is for, read from its ELF header (before anything loads it).

``dlopen`` of a library built for another CPU fails with a misleading "No such file or
directory"; reading ``e_machine`` first lets every loader (`deploy.library`, the emulated
phone, the native runtime, `deploy-bundle`) say what is wrong and how to fix it.
"""

from __future__ import annotations

import platform

from mdl_tvm.core.errors import ModelFormatError, UnknownTargetError

#: ELF ``e_machine`` -> the name MobileDL uses
MACHINES = {3: "x86", 40: "arm", 62: "x86-64", 183: "aarch64", 243: "riscv"}
_PLATFORM = {"x86_64": "x86-64", "amd64": "x86-64", "aarch64": "aarch64", "arm64": "aarch64"}


def elf_machine(path) -> str:
    """The CPU `path` is built for (``"x86-64"``, ``"aarch64"``, or ``"ELF machine N"``).

    Raises
    ------
    ModelFormatError
        When the file is missing or not a 64-bit ELF shared object.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(20)
    except OSError as err:
        raise ModelFormatError(f"cannot read {path}: {err.strerror}") from None
    if len(head) < 20 or head[:4] != b"\x7fELF":
        raise ModelFormatError(f"{path} is not an ELF shared library: give a model library "
                               "exported by MobileDL (mdl-tvm compile ... -o model.so)")
    if head[4] != 2 or int.from_bytes(head[16:18], "little") != 3:  # ELFCLASS64, ET_DYN
        raise ModelFormatError(f"{path} is not a 64-bit shared library")
    code = int.from_bytes(head[18:20], "little")
    return MACHINES.get(code, f"ELF machine {code}")


def host_machine() -> str:
    """This machine's CPU in `MACHINES`' names (``platform.machine()`` otherwise)."""
    return _PLATFORM.get(platform.machine().lower(), platform.machine())


def check_machine(path, want: str, fix: str) -> str:
    """Require `path` to be built for `want`; returns `want`.

    Parameters
    ----------
    path : str or os.PathLike
    want : str
        A name of `MACHINES` (``"aarch64"``, ``"x86-64"``).
    fix : str
        What to do instead, appended to the message.

    Raises
    ------
    UnknownTargetError
        Naming both CPUs and the fix.
    ModelFormatError
        When `path` is not a 64-bit ELF shared library.
    """
    got = elf_machine(path)
    if got != want:
        raise UnknownTargetError(f"{path} is built for {got}, not {want}: {fix}")
    return want
