"""The deployable artifact: one shared library with the model, its weights and a metadata note.

The metadata (target profile, input and output specs, graph statistics) is linked into the
library as a C string in its own section (``.mdl_tvm_meta``, behind a magic prefix), so a
single ``.so`` is all a device needs and `read_metadata` reads it from a library of any
architecture without loading it. After linking, the SHA-256 of the library is appended as a
trailer (``dlopen`` ignores bytes after the ELF contents): `read_metadata` checks the ELF
structure (a truncated file is refused, not left to die of SIGBUS in ``dlopen``) and, with
``verify=True`` (``mdl-tvm info``, ``mdl_tvm.load``), the checksum, reading the file in
chunks, never all at once.

Writes are atomic: the library is linked to a temporary name beside the destination and
renamed into place, so a failed or interrupted export leaves nothing at the output path.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile

from mdl_tvm.core.elf import ElfError, read_elf
from mdl_tvm.core.errors import ModelFormatError, OutputPathError, ToolchainError
from mdl_tvm.core.io import atomic_output

MAGIC = b"MDLTVM-METADATA-V1:"
SYMBOL = "mdl_tvm_metadata"
SECTION = ".mdl_tvm_meta"
TRAILER = b"\nMDLTVM-SHA256:"
TRAILER_SIZE = len(TRAILER) + 64 + 1
FORMAT = 2  # 2: metadata section + SHA-256 trailer
_WRITE_ERRORS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT,
                 errno.EISDIR, errno.ENOTDIR, errno.ENOENT)
_CHUNK = 1 << 20


def _metadata_source(meta: dict, directory: str) -> str:
    text = MAGIC.decode() + json.dumps(meta, separators=(",", ":"))
    path = os.path.join(directory, "mdl_tvm_metadata.cc")
    with open(path, "w") as f:
        f.write(
            f'extern "C" __attribute__((used, visibility("default"), section("{SECTION}"))) '
            f"const char {SYMBOL}[] = {json.dumps(text)};\n"
        )
    return path


def _sha256(f, length: int) -> str:
    f.seek(0)
    digest, left = hashlib.sha256(), length
    while left > 0:
        chunk = f.read(min(_CHUNK, left))
        if not chunk:
            break
        digest.update(chunk)
        left -= len(chunk)
    return digest.hexdigest()


def _check_destination(path: str) -> None:
    if os.path.isdir(path):
        raise OutputPathError(f"{path} is a directory; give the library's file name, e.g. "
                              f"{os.path.join(path, 'model.so')}")


def export_library(executable, path: str, meta: dict, fcompile=None) -> str:
    """Link `executable` (a Relax VM executable) plus `meta` into the shared library `path`.

    Raises
    ------
    OutputPathError
        When `path` cannot be written (a directory, read-only, full disk): nothing is left.
    ToolchainError
        When linking fails (the target's compiler).
    """
    path = os.path.abspath(path)
    _check_destination(path)
    meta = dict(meta, format=FORMAT)
    try:
        with atomic_output(path, suffix=".so") as tmp_path, \
                tempfile.TemporaryDirectory(prefix="mdl-tvm-export-") as work:
            open(tmp_path, "wb").close()  # the destination is writable before we link
            addon = _metadata_source(meta, work)
            kwargs = {"fcompile": fcompile} if fcompile is not None else {}
            try:
                executable.export_library(str(tmp_path), addons=[addon], workspace_dir=work,
                                          **kwargs)
            except OSError:
                raise
            except Exception as err:
                raise ToolchainError(
                    f"linking {path} failed ({type(err).__name__}: {str(err).strip()[:400]}); "
                    "check that the target's compiler is installed (scripts/setup.sh)"
                ) from err
            with open(tmp_path, "r+b") as f:
                size = f.seek(0, os.SEEK_END)
                f.write(TRAILER + _sha256(f, size).encode() + b"\n")
    except OSError as err:
        if err.errno not in _WRITE_ERRORS:
            raise
        raise OutputPathError(f"cannot write {path}: {err.strerror}; choose a writable "
                              "directory with free space") from err
    return path


def _fail(path, why: str) -> ModelFormatError:
    return ModelFormatError(f"{path!r} is not a usable MobileDL library: {why}; re-export it "
                            "with CompiledModel.export or `mdl-tvm compile`")


def _meta_from(text: bytes, path) -> dict:
    start = text.find(MAGIC)
    if start < 0:
        raise ModelFormatError(
            f"{path!r} is not a MobileDL artifact (no metadata); export it with "
            "CompiledModel.export or `mdl-tvm compile`")
    end = text.find(b"\0", start)
    try:
        return json.loads(text[start + len(MAGIC): end if end >= 0 else None].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _fail(path, f"its metadata note is damaged ({err})") from err


def read_metadata(path, verify: bool = False) -> dict:
    """Return the metadata dict linked into an exported library.

    Parameters
    ----------
    path : str or os.PathLike
    verify : bool
        Also check the SHA-256 written at export (reads the whole file in chunks).

    Raises
    ------
    ModelFormatError
        When the file is missing, not a 64-bit ELF library, truncated, not a MobileDL
        artifact, or damaged (its metadata, or with `verify` its checksum).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelFormatError(f"no artifact at {path!r}")
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        try:
            elf = read_elf(f, size)
        except ElfError as err:
            raise _fail(path, str(err)) from None
        section = elf.section(SECTION)
        if section is not None:
            f.seek(section.offset)
            meta = _meta_from(f.read(section.size), path)
        else:  # format 1: the note sits in .rodata
            rodata = elf.section(".rodata")
            if rodata is None:
                raise _fail(path, "it has no metadata section")
            f.seek(rodata.offset)
            meta = _meta_from(f.read(rodata.size), path)
        for key in ("target", "mtriple", "inputs", "outputs", "stats"):
            if key not in meta:
                raise _fail(path, f"its metadata lacks {key!r}")
        meta["machine"] = elf.machine
        if meta.get("format", 1) >= 2:
            f.seek(max(size - TRAILER_SIZE, 0))
            tail = f.read(TRAILER_SIZE)
            if not tail.startswith(TRAILER):
                raise _fail(path, "its checksum trailer is missing (the file was cut or "
                            "altered)")
            if verify and _sha256(f, size - TRAILER_SIZE) != tail[len(TRAILER):-1].decode(
                    "ascii", "replace"):
                raise _fail(path, "its SHA-256 does not match the one written at export "
                            "(the file is damaged)")
    return meta
