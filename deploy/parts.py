"""Cached parts of the device directory: each built in a temporary directory, moved into
place, and described by a stamp (recipe key, file count and bytes) written atomically
after it. A re-check reads the stamp and walks the tree (well under a second); a missing
or changed part is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from mdl_tvm.core.io import atomic_write


def tree_digest(top: Path) -> dict:
    """Count files and bytes under ``top`` (not following links, skipping __pycache__)."""
    n = size = 0
    stack = [str(top)]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    if e.name != "__pycache__":
                        stack.append(e.path)
                else:
                    n += 1
                    size += e.stat(follow_symlinks=False).st_size
    return {"files": n, "bytes": size}


def file_hashes(part: Path, files) -> dict:
    """``{relative path: sha256}`` of `files` under `part` (missing ones: None)."""
    out = {}
    for rel in files:
        try:
            out[rel] = hashlib.sha256((part / rel).read_bytes()).hexdigest()
        except OSError:
            out[rel] = None
    return out


def part_ok(root: Path, name: str, key: str, stamp: dict | None = None,
            hashed=()) -> bool:
    """True when part `name` under `root` matches its stamp and its recipe `key`: file
    count and bytes of the whole tree, and the SHA-256 of its `hashed` key files (a
    corrupted library of the same size is noticed too)."""
    if stamp is None:
        try:
            stamp = json.loads((root / f"{name}.json").read_text())
        except (OSError, ValueError):
            return False
    part = root / name
    return (stamp.get("key") == key and part.is_dir()
            and tree_digest(part) == stamp.get("digest")
            and ("sha256" not in stamp  # a stamp from before hashing: count and bytes only
                 or stamp["sha256"] == file_hashes(part, hashed)))


def build_part(root: Path, name: str, key: str, build: Callable[[Path], None], log,
               hashed=()) -> dict:
    """Build part `name` with ``build(tmp_dir)``, move it into place, stamp it; returns
    the stamp. A failed build leaves the old part (if any) unstamped, never half-moved."""
    t0 = time.monotonic()
    stamp_path = root / f"{name}.json"
    stamp_path.unlink(missing_ok=True)
    tmp = root / f"{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    build(tmp)
    shutil.rmtree(root / name, ignore_errors=True)
    os.replace(tmp, root / name)
    stamp = {"key": key, "digest": tree_digest(root / name),
             "sha256": file_hashes(root / name, hashed)}
    atomic_write(stamp_path, json.dumps(stamp))
    log(f"{name} ready in {time.monotonic() - t0:.0f} s")
    return stamp
