"""Files: the cache root and atomic writes (a reader sees the old file or the new one).

One home for both: every module that caches or writes results imports them from here.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

CACHE_ENV = "MDL_TVM_CACHE"


def cache_root(*parts: str) -> Path:
    """The project's cache directory, ``$MDL_TVM_CACHE`` or ``~/.cache/mdl_tvm``, joined
    with `parts`. An empty ``MDL_TVM_CACHE`` counts as unset. Nothing is created.

    Parameters
    ----------
    *parts : str
        Sub-directories, e.g. ``cache_root("device")``.

    Returns
    -------
    pathlib.Path
    """
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "mdl_tvm")
    return Path(root, *parts)


@contextlib.contextmanager
def atomic_output(path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on a clean exit it is fsynced and renamed
    onto `path`, on any failure (exception, KeyboardInterrupt) it is removed.

    Parameters
    ----------
    path : str or os.PathLike
        The destination; its directory is created when missing.
    suffix : str
        Suffix of the temporary name (some writers insist on an extension, e.g. ``.npz``).

    Examples
    --------
    >>> with atomic_output("weights.pt", suffix=".pt") as tmp:
    ...     torch.save(state, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write(path, data: str | bytes) -> Path:
    """Write `data` (text or bytes) to `path` atomically; returns the path.

    Raises
    ------
    OSError
        When the directory is not writable or the disk is full; nothing is left behind.
    """
    path = Path(path)
    with atomic_output(path) as tmp:
        with open(tmp, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
    return path
