"""Tuning databases: a directory of MetaSchedule JSON files, opened safely and applied.

A database directory holds MetaSchedule's two JSON-lines tables plus one small manifest:

=============================  ===========================================================
file                           what
=============================  ===========================================================
``database_workload.json``     one line per tuned PrimFunc (the workload)
``database_tuning_record.json``  one line per measured candidate: trace + run seconds
``mdl_tuning.json``            this project's manifest: target profile, per task its name,
                               whether the default schedule was measured (the seed), its
                               time and the trial budget asked for
=============================  ===========================================================

MetaSchedule appends one line per record as it is measured, so everything measured before a
crash is on disk. A crash in the middle of an append can leave a torn last line, which
would make the whole table unreadable; `open_database` drops such lines first (atomically:
temporary file, fsync, rename). The manifest is always replaced atomically.

`applied(db, profile)` puts a database in scope for `mdl_tvm.compile` (``tuning_db=``);
`tuned_functions(mod)` names the functions that took a record.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path

from mdl_tvm.core.io import atomic_write, cache_root
from mdl_tvm.core.targets import get_profile
from schedules.apply import RULE_ATTR

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
MANIFEST_FILE = "mdl_tuning.json"
DATABASE_RULE = "database"  # the ``mdl.schedule_rule`` of a function taken from a database


def default_dir(target) -> Path:
    """The default database directory of a target profile: ``<cache>/tuning/<profile>``.

    Parameters
    ----------
    target : str or mdl_tvm.core.targets.TargetProfile

    Returns
    -------
    pathlib.Path
    """
    return cache_root() / "tuning" / get_profile(target).name


def _json_lines(path: Path) -> tuple[list[str], bool]:
    """The complete, parseable lines of a JSON-lines file and whether any were dropped."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return [], False
    lines = text.split("\n")
    dropped = bool(lines[-1])  # no trailing newline: the last append was cut short
    good = []
    for line in lines[:-1]:
        if not line.strip():
            continue
        try:
            json.loads(line)
        except ValueError:
            dropped = True
            break  # appends only: nothing after a torn line can be trusted
        good.append(line)
    return good, dropped


def repair(path) -> int:
    """Drop torn or unparseable lines from a database directory's tables.

    Workloads keep their longest parseable prefix (records refer to them by line number);
    records keep the parseable lines whose workload exists.

    Parameters
    ----------
    path : str or os.PathLike
        The database directory.

    Returns
    -------
    int
        Number of lines dropped (0 when the tables were intact).
    """
    path = Path(path)
    workloads, w_dropped = _json_lines(path / WORKLOAD_FILE)
    records, r_dropped = _json_lines(path / RECORD_FILE)
    kept = [r for r in records if 0 <= _workload_index(r) < len(workloads)]
    total_before = _count_lines(path / WORKLOAD_FILE) + _count_lines(path / RECORD_FILE)
    if not (w_dropped or r_dropped or len(kept) != len(records)):
        return 0
    atomic_write(path / WORKLOAD_FILE, "".join(line + "\n" for line in workloads))
    atomic_write(path / RECORD_FILE, "".join(line + "\n" for line in kept))
    return max(total_before - len(workloads) - len(kept), 1)


def _workload_index(line: str) -> int:
    try:
        return int(json.loads(line)[0])
    except (ValueError, TypeError, IndexError):
        return -1


def _count_lines(path: Path) -> int:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return 0
    return sum(1 for line in text.split("\n") if line.strip())


def open_database(path, *, create: bool = False):
    """Open (after `repair`) the MetaSchedule JSON database in directory `path`.

    Parameters
    ----------
    path : str or os.PathLike
        The database directory.
    create : bool
        Create the directory and empty tables when missing (tuning); when False (applying
        a database) a missing database raises.

    Returns
    -------
    tvm.s_tir.meta_schedule.database.JSONDatabase

    Raises
    ------
    FileNotFoundError
        When ``create`` is False and `path` holds no database.
    """
    from tvm.s_tir import meta_schedule as ms

    path = Path(path).expanduser()
    if not create and not (path / WORKLOAD_FILE).is_file():
        raise FileNotFoundError(
            f"no tuning database in {str(path)!r} (no {WORKLOAD_FILE}); make one with "
            f"`mdl-tvm tune MODEL --target TARGET --db {path}` or drop tuning_db="
        )
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"tuning database {str(path)!r} must be a directory")
    path.mkdir(parents=True, exist_ok=True)
    dropped = repair(path)
    if dropped:
        warnings.warn(f"tuning database {path}: dropped {dropped} torn line(s) left by an "
                      "interrupted write", stacklevel=2)
    return ms.database.JSONDatabase(
        path_workload=str(path / WORKLOAD_FILE),
        path_tuning_record=str(path / RECORD_FILE),
        allow_missing=True,
    )


def read_manifest(path) -> dict:
    """The manifest of database directory `path` (an empty one when there is none)."""
    try:
        manifest = json.loads((Path(path) / MANIFEST_FILE).read_text())
    except FileNotFoundError:
        return {"format": 1, "tasks": {}}
    except ValueError as err:
        raise ValueError(f"{Path(path) / MANIFEST_FILE} is not valid JSON ({err}); delete "
                         "it to rebuild it (the records stay usable)") from None
    manifest.setdefault("tasks", {})
    return manifest


def write_manifest(path, manifest: dict) -> None:
    """Replace the manifest of database directory `path` atomically."""
    atomic_write(Path(path) / MANIFEST_FILE, json.dumps(manifest, indent=1, sort_keys=True))


def records_of(db, workload) -> list:
    """All tuning records of `workload` in `db`, failed trials included."""
    return [r for r in db.get_all_tuning_records() if r.workload.same_as(workload)]


def mean_seconds(record) -> float | None:
    """Mean measured seconds of a record; None for a failed trial."""
    secs = [float(s) for s in (record.run_secs or [])]
    if not secs or any(s >= 1e9 for s in secs):
        return None
    return sum(secs) / len(secs)


def best_seconds(db, workload) -> float | None:
    """The best (smallest) mean seconds among `workload`'s valid records, or None."""
    top = db.get_top_k(workload, 1)
    return mean_seconds(top[0]) if top else None


def workload_key(workload) -> str:
    """The key of a workload in the manifest: its structural hash, as MetaSchedule saves it."""
    return str(workload.as_json()[0])


def best_records(db) -> list:
    """``(workload key, best valid record)`` for every workload of `db` that has one."""
    best = []  # records come sorted by mean seconds: the first per workload is its best
    for record in db.get_all_tuning_records():
        if mean_seconds(record) is None or any(w.same_as(record.workload) for w, _ in best):
            continue
        best.append((record.workload, record))
    return [(workload_key(w), r) for w, r in best]


def restricted(db, keep):
    """An in-memory database with the best record of each workload whose key `keep` accepts.

    Parameters
    ----------
    db : tvm.s_tir.meta_schedule.database.Database
    keep : callable(str) -> bool

    Returns
    -------
    tvm.s_tir.meta_schedule.database.MemoryDatabase
    """
    from tvm.s_tir import meta_schedule as ms

    memory = ms.database.MemoryDatabase()
    for key, record in best_records(db):
        if keep(key):
            workload = memory.commit_workload(record.workload.mod)
            memory.commit_tuning_record(ms.database.TuningRecord(
                record.trace, workload, record.run_secs, record.target, record.args_info))
    return memory


def selected(path):
    """Database directory `path` as `compile` applies it.

    A task tuned by `schedules.tuning` (listed in the manifest) is applied only when the
    whole-model check (`schedules.tuning.verify`) kept it (``"use": "tuned"``); the others build
    with their default schedule. Workloads the manifest does not list (records written by
    plain MetaSchedule) apply their best record.
    """
    listed = read_manifest(path)["tasks"]
    db = open_database(path)
    if not listed:
        return db
    return restricted(db, lambda k: k not in listed or listed[k].get("use") == "tuned")


@contextlib.contextmanager
def applied(db, profile=None):
    """Put a tuning database in scope for lowering (a no-op for ``db=None``).

    Parameters
    ----------
    db : None, str, os.PathLike or tvm.s_tir.meta_schedule.database.Database
        The database or its directory.
    profile : mdl_tvm.core.targets.TargetProfile, optional
        The target being compiled; a database tuned for another profile gives a warning.
    """
    if db is None:
        yield None
        return
    from tvm.s_tir import meta_schedule as ms

    if not isinstance(db, ms.database.Database):
        if not isinstance(db, (str, os.PathLike)):
            raise TypeError("tuning_db must be a directory path or a MetaSchedule Database, "
                            f"got {type(db).__name__}")
        tuned_for = read_manifest(db).get("target")
        if profile is not None and tuned_for and tuned_for != profile.name:
            warnings.warn(f"tuning database {db} was tuned for {tuned_for!r}, not "
                          f"{profile.name!r}: only functions that match exactly use it",
                          stacklevel=3)
        db = selected(db)
    with db:
        yield db


def tuned_functions(mod) -> list[str]:
    """Names of the PrimFuncs of a lowered module scheduled from a tuning database."""
    from tvm import tirx

    names = []
    for gvar, func in mod.functions_items():
        attrs = func.attrs if isinstance(func, tirx.PrimFunc) else None
        if attrs is not None and RULE_ATTR in attrs and str(attrs[RULE_ATTR]) == DATABASE_RULE:
            names.append(gvar.name_hint)
    return sorted(names)
