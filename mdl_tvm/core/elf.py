"""Just enough ELF to check a shared library without loading it.

`read_elf` reads the 64-byte header and the section table (nothing else), checks that every
section lies inside the file (a truncated or cut library fails here, before ``dlopen`` could
die of SIGBUS), and names the machine, so a library for another CPU is refused by name.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

MACHINES = {62: "x86_64", 183: "aarch64", 40: "arm", 243: "riscv"}
SHT_NOBITS = 8


class ElfError(ValueError):
    """The file is not a well-formed 64-bit little-endian ELF file."""


@dataclass(frozen=True)
class Section:
    name: str
    type: int
    offset: int
    size: int


@dataclass(frozen=True)
class ElfInfo:
    """What `read_elf` found: the machine and the sections."""

    machine: str
    file_size: int
    sections: tuple[Section, ...]

    def section(self, name: str) -> Section | None:
        return next((s for s in self.sections if s.name == name), None)


def _unpack(fmt: str, data: bytes, offset: int = 0) -> tuple:
    try:
        return struct.unpack_from(fmt, data, offset)
    except struct.error as err:
        raise ElfError(f"the ELF header is cut short ({err})") from None


def read_elf(f, file_size: int) -> ElfInfo:
    """Parse the header and section table of the open binary file `f`.

    Raises
    ------
    ElfError
        Not ELF, not 64-bit little-endian, or a table / section reaching past the end of
        the file (truncated).
    """
    f.seek(0)
    header = f.read(64)
    if header[:4] != b"\x7fELF":
        raise ElfError("it is not an ELF shared library")
    if header[4] != 2 or header[5] != 1:
        raise ElfError("it is not a 64-bit little-endian ELF file")
    machine = MACHINES.get(_unpack("<H", header, 18)[0], f"machine {_unpack('<H', header, 18)[0]}")
    shoff, = _unpack("<Q", header, 40)
    shentsize, shnum, shstrndx = _unpack("<HHH", header, 58)
    if shnum == 0 or shentsize < 64:
        raise ElfError("it has no section table")
    end = shoff + shnum * shentsize
    if end > file_size:
        raise ElfError(f"its section table ends at byte {end:,} but the file has "
                       f"{file_size:,} bytes: the file is truncated")
    f.seek(shoff)
    table = f.read(shnum * shentsize)
    raw = []
    for i in range(shnum):
        name, kind, _, _, offset, size = _unpack("<IIQQQQ", table, i * shentsize)
        if kind != SHT_NOBITS and offset + size > file_size:
            raise ElfError(f"section {i} ends at byte {offset + size:,} but the file has "
                           f"{file_size:,} bytes: the file is truncated")
        raw.append((name, kind, offset, size))
    if shstrndx >= shnum:
        raise ElfError("its section-name table index is out of range")
    _, _, str_off, str_size = raw[shstrndx]
    f.seek(str_off)
    names = f.read(str_size)
    sections = tuple(Section(names[n:names.index(b"\0", n)].decode("ascii", "replace")
                             if n < len(names) and b"\0" in names[n:] else "", k, o, s)
                     for n, k, o, s in raw)
    return ElfInfo(machine, file_size, sections)
