"""The deployable artifact: one shared library with the model, its weights and a metadata note.

The metadata (target profile, input and output specs, graph statistics) is linked into
the library as a C string behind a magic prefix, so a single `.so` is all a device needs,
and `read_metadata` can read it from a library of any architecture without loading it.
Writes are atomic: the library is linked to a temporary name beside the destination and
renamed into place, so a failed export leaves nothing at the output path.
"""

from __future__ import annotations

import json
import os
import tempfile

from mdl_tvm.core.errors import ModelFormatError, ToolchainError
from mdl_tvm.core.io import atomic_output

MAGIC = b"MDLTVM-METADATA-V1:"
SYMBOL = "mdl_tvm_metadata"


def _metadata_source(meta: dict, directory: str) -> str:
    text = MAGIC.decode() + json.dumps(meta, separators=(",", ":"))
    path = os.path.join(directory, "mdl_tvm_metadata.cc")
    with open(path, "w") as f:
        f.write(
            'extern "C" __attribute__((used, visibility("default"))) '
            f"const char {SYMBOL}[] = {json.dumps(text)};\n"
        )
    return path


def export_library(executable, path: str, meta: dict, fcompile=None) -> str:
    """Link `executable` (a Relax VM executable) plus `meta` into the shared library `path`."""
    path = os.path.abspath(path)
    try:
        with atomic_output(path, suffix=".so") as tmp_path, \
                tempfile.TemporaryDirectory(prefix="mdl-tvm-export-") as work:
            addon = _metadata_source(meta, work)
            kwargs = {"fcompile": fcompile} if fcompile is not None else {}
            executable.export_library(str(tmp_path), addons=[addon], workspace_dir=work,
                                      **kwargs)
    except Exception as err:
        raise ToolchainError(
            f"linking {path} failed ({type(err).__name__}: {str(err).strip()[:400]}); "
            "check that the target's compiler is installed (scripts/setup.sh)"
        ) from err
    return path


def read_metadata(path: str) -> dict:
    """Return the metadata dict linked into an exported library.

    Raises
    ------
    ModelFormatError
        When the file is missing, is not an MobileDL artifact, or its note is damaged.
    """
    if not os.path.isfile(path):
        raise ModelFormatError(f"no artifact at {path!r}")
    with open(path, "rb") as f:
        data = f.read()
    start = data.find(MAGIC)
    if start < 0:
        raise ModelFormatError(
            f"{path!r} is not a MobileDL artifact (no metadata); export it with "
            "CompiledModel.export or `mdl-tvm compile`"
        )
    end = data.find(b"\0", start)
    try:
        return json.loads(data[start + len(MAGIC) : end].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFormatError(f"{path!r} has a damaged metadata note: {err}") from err
