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
crash is on disk. A crash in the middle of an append can leave a torn last line. Readers
never write: `open_database` loads the usable lines into memory and reports every damaged
line with its file and line number; `repair` (``mdl-tvm tune --repair DIR``) is the only
thing that rewrites the tables, after copying them to a backup. The manifest is always
replaced atomically.

`applied(db, profile)` puts a database in scope for `mdl_tvm.compile` (``tuning_db=``);
`tuned_functions(mod)` names the functions that took a record.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from mdl_tvm.core.errors import MdlError
from mdl_tvm.core.io import atomic_write, cache_root
from mdl_tvm.core.targets import get_profile
from schedules.apply import RULE_ATTR

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
MANIFEST_FILE = "mdl_tuning.json"
DATABASE_RULE = "database"  # the ``mdl.schedule_rule`` of a function taken from a database


class DatabaseDamagedError(MdlError, RuntimeError):
    """A tuning database with damaged lines, opened for tuning (repair it first)."""


class DatabaseBusyError(MdlError, RuntimeError):
    """Another tuning run holds the database's lock."""


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


@dataclass(frozen=True)
class Damage:
    """One line of a table that cannot be used."""

    file: Path
    line: int  # 1-based
    reason: str

    def __str__(self) -> str:
        return f"{self.file.name}:{self.line} ({self.reason})"


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").split("\n")
    except FileNotFoundError:
        return []


def scan(path) -> tuple[dict, list, list[Damage]]:
    """Parse a database directory without changing it.

    Returns
    -------
    (dict, list, list of Damage)
        ``{workload line index: JSON}``, ``[(workload index, record JSON)]`` and the lines
        that cannot be used (torn, not JSON, a record of a missing workload), each with
        its file and line number.
    """
    path = Path(path)
    damage: list[Damage] = []
    workloads = {}
    for i, line in enumerate(_lines(path / WORKLOAD_FILE)):
        if line.strip():
            try:
                workloads[i] = json.loads(line)
            except ValueError as err:
                damage.append(Damage(path / WORKLOAD_FILE, i + 1, f"not JSON: {err.msg}"))
    records = []
    for i, line in enumerate(_lines(path / RECORD_FILE)):
        if not line.strip():
            continue
        try:
            index, record = json.loads(line)
            index = int(index)
        except (ValueError, TypeError) as err:
            damage.append(Damage(path / RECORD_FILE, i + 1, f"not a record: {err}"))
            continue
        if index not in workloads:
            damage.append(Damage(path / RECORD_FILE, i + 1, f"workload {index} is missing"))
            continue
        records.append((index, record, i + 1))
    return workloads, records, damage


def _hint(path: Path) -> str:
    return (f"the files are left as they are; `mdl-tvm tune --repair {path}` rewrites them "
            "without those lines (keeping a backup)")


def open_database(path, *, create: bool = False):
    """Open the MetaSchedule database in directory `path`.

    Reading (``create=False``, what `compile` does) never writes: usable lines are loaded
    into memory and each damaged line is reported (file and line number) and skipped.
    Tuning (``create=True``, under the tuning lock) opens the files for appending; a
    damaged line there stops the run with the repair command (nothing is deleted).

    Parameters
    ----------
    path : str or os.PathLike
        The database directory.
    create : bool
        Create the directory and empty tables when missing (tuning).

    Returns
    -------
    tvm.s_tir.meta_schedule.database.Database

    Raises
    ------
    FileNotFoundError
        When ``create`` is False and `path` holds no database.
    NotADirectoryError
        When `path` is a file.
    DatabaseDamagedError
        When tuning into a database with damaged lines.
    """
    from tvm.s_tir import meta_schedule as ms

    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"tuning database {str(path)!r} is a file; it must be a "
                                 "directory (give --db a directory)")
    if not create and not (path / WORKLOAD_FILE).is_file():
        raise FileNotFoundError(
            f"no tuning database in {str(path)!r} (no {WORKLOAD_FILE}); make one with "
            f"`mdl-tvm tune MODEL --target TARGET --db {path}` or drop tuning_db="
        )
    workloads, records, damage = scan(path)
    if create:
        if damage:
            raise DatabaseDamagedError(
                f"tuning database {path} has {len(damage)} damaged line(s): "
                f"{', '.join(map(str, damage[:5]))}; tuning would append after them. Run "
                f"`mdl-tvm tune --repair {path}` (keeps a backup), then tune again")
        path.mkdir(parents=True, exist_ok=True)
        return ms.database.JSONDatabase(path_workload=str(path / WORKLOAD_FILE),
                                        path_tuning_record=str(path / RECORD_FILE),
                                        allow_missing=True)
    memory, loaded = ms.database.MemoryDatabase(), {}
    for index, record, line in records:
        try:
            if index not in loaded:
                loaded[index] = memory.commit_workload(
                    ms.database.Workload.from_json(workloads[index]).mod)
            memory.commit_tuning_record(ms.database.TuningRecord.from_json(record,
                                                                           loaded[index]))
        except Exception as err:  # noqa: BLE001 - TVM raises its own types for bad JSON
            damage.append(Damage(path / RECORD_FILE, line, f"unreadable: {str(err)[:80]}"))
    if damage:
        warnings.warn(f"tuning database {path}: skipped {len(damage)} damaged or torn "
                      f"line(s): {', '.join(map(str, damage[:5]))}; {_hint(path)}",
                      stacklevel=2)
    return memory


def repair(path) -> dict:
    """Rewrite a database directory without its damaged lines, after backing it up.

    Workload indices of the kept records are renumbered; the old tables go to
    ``backup-YYYYmmdd-HHMMSS/`` in the directory. Returns ``{"dropped", "kept_records",
    "backup"}`` (``backup`` None when nothing needed repair).
    """
    path = Path(path)
    workloads, records, damage = scan(path)
    if not damage:
        return {"dropped": 0, "kept_records": len(records), "backup": None}
    backup = path / time.strftime("backup-%Y%m%d-%H%M%S")
    backup.mkdir()
    for name in (WORKLOAD_FILE, RECORD_FILE):
        if (path / name).exists():
            shutil.copy2(path / name, backup / name)
    order = {old: new for new, old in enumerate(sorted(workloads))}
    atomic_write(path / WORKLOAD_FILE, "".join(json.dumps(workloads[old]) + "\n"
                                               for old in sorted(workloads)))
    atomic_write(path / RECORD_FILE, "".join(json.dumps([order[i], r]) + "\n"
                                             for i, r, _ in records))
    return {"dropped": len(damage), "kept_records": len(records), "backup": str(backup)}


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
    best = []  # sorted by mean seconds (a MemoryDatabase keeps insertion order): first is best
    valid = [r for r in db.get_all_tuning_records() if mean_seconds(r) is not None]
    for record in sorted(valid, key=mean_seconds):
        if any(w.same_as(record.workload) for w, _ in best):
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
    db = open_database(path)
    listed = read_manifest(path)["tasks"]
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
        path, db = db, selected(db)  # checks the directory first
        tuned_for = read_manifest(path).get("target")
        if profile is not None and tuned_for and tuned_for != profile.name:
            warnings.warn(f"tuning database {path} was tuned for {tuned_for!r}, not "
                          f"{profile.name!r}: only functions that match exactly use it",
                          stacklevel=3)
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
