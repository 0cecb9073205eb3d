"""What a tuning run records and shows: the measure callback, the progress line, the report.

`Recorder` replaces MetaSchedule's ``AddToDatabase``: each measured batch is committed to
the database as it arrives (one appended line per candidate, so a crash loses nothing
measured). A candidate that fails to build, or fails to run while the devices are still
there, is committed as a failed trial (it counts against the budget and is never chosen).
When run failures come with no device left under the key, the batch's failures are *not*
committed (they say nothing about the candidates) and the run stops with
`DeviceLostError`; rerunning resumes.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field

from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

from mdl_tvm.core.errors import DeviceError
from schedules.database import best_seconds
from schedules.tuning.seed import _float_imm

FAILED_SECS = 1e10  # MetaSchedule's mark of a failed trial (never picked as best)


class DeviceLostError(DeviceError):
    """Every device under the key went away during tuning; `report` says what was kept."""

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report


@dataclass
class TaskReport:
    """One task's line in the summary."""

    name: str
    weight: int
    flops: float
    budget: int
    trials_before: int = 0
    trials_new: int = 0
    failed: int = 0
    default_us: float | None = None
    best_us: float | None = None
    status: str = "pending"
    key: str = ""  # the workload's key in the manifest
    use: str = ""  # "tuned" or "default": what compile applies (after the model check)

    @property
    def speedup(self) -> float | None:
        if self.default_us and self.best_us:
            return self.default_us / self.best_us
        return None


@dataclass
class TuningReport:
    """What `schedules.tuning.driver` did."""

    model: str
    target: str
    db: str
    tasks: list[TaskReport] = field(default_factory=list)
    wall_seconds: float = 0.0
    status: str = "complete"
    verified: dict = field(default_factory=dict)  # the whole-model check (schedules.verify)

    @property
    def trials(self) -> int:
        """Trials measured in this run."""
        return sum(t.trials_new for t in self.tasks)

    @property
    def failed(self) -> int:
        return sum(t.failed for t in self.tasks)

    def to_json(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k != "tasks"}
        out["tasks"] = [dict(asdict(t), speedup=t.speedup) for t in self.tasks]
        out.update(trials=self.trials, failed=self.failed)
        return out

    def table(self) -> str:
        """The summary table: per task trials, failures, default and best kernel time, what
        `compile` applies; then the whole-model check."""
        head = (f"{'task':<36} {'calls':>5} {'trials':>6} {'failed':>6} {'default us':>10} "
                f"{'best us':>9} {'kernel':>7} {'applied':>8}  status")
        rows = [head, "-" * len(head)]
        for t in self.tasks:
            rows.append(f"{t.name[:36]:<36} {t.weight:>5} {t.trials_before + t.trials_new:>6} "
                        f"{t.failed:>6} {_us(t.default_us):>10} {_us(t.best_us):>9} "
                        f"{_x(t.speedup):>7} {t.use or '-':>8}  {t.status}")
        rows.append("-" * len(head))
        rows.append(f"{self.trials} new trials in {self.wall_seconds:.0f} s "
                    f"({self.trials / max(self.wall_seconds, 1e-9) * 60:.1f} per minute), "
                    f"{self.failed} failed; {self.status}; database {self.db}")
        v = self.verified
        if v.get("default_ms") is not None:
            rows.append(f"model check ({v['where']}): default schedules {v['default_ms']:.4g} ms, "
                        f"with the kept tasks {v['tuned_ms']:.4g} ms "
                        f"({v['default_ms'] / v['tuned_ms']:.2f}x); kept {len(v['kept'])}, "
                        f"rejected {len(v['rejected'])} of the tasks whose kernels won")
        elif v:
            rows.append("model check: no tuned kernel beat its default schedule; compile "
                        "builds the default schedules")
        return "\n".join(rows)


def _us(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def _x(value) -> str:
    return "-" if value is None else f"{value:.2f}x"


class Progress:
    """One status line: task i/n, trials done/total, best latency so far, failures."""

    def __init__(self, total_trials: int, num_tasks: int, stream=None, enabled=True):
        self.total, self.num_tasks = total_trials, num_tasks
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.done = 0
        self.start = time.monotonic()
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._task: TaskReport | None = None
        self._index = 0

    def task(self, index: int, report: TaskReport) -> None:
        self._index, self._task = index, report
        self.show()

    def add(self, trials: int) -> None:
        if trials:
            self.done += trials
            self.show()

    def show(self, note: str = "") -> None:
        if not self.enabled or self._task is None:
            return
        t = self._task
        elapsed = time.monotonic() - self.start
        line = (f"[tune {elapsed:5.0f}s] task {self._index}/{self.num_tasks} {t.name[:32]} | "
                f"trials {self.done}/{self.total} (task {t.trials_before + t.trials_new}/"
                f"{t.budget}) | best {_us(t.best_us)} us (default {_us(t.default_us)} us) | "
                f"failed {t.failed}{' | ' + note if note else ''}")
        if self.tty:
            self.stream.write("\r\033[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


@derived_object
class Recorder(PyMeasureCallback):
    """Commit each measured batch of one task; stop when the devices are gone.

    Parameters
    ----------
    db : tvm.s_tir.meta_schedule.database.Database
    workload_mod : tvm.IRModule
        The task's workload.
    target : tvm.target.Target
    report : TaskReport
        Updated in place (trials, failures, best time).
    progress : Progress
    farm : schedules.tuning.measure.Farm or None
        The device farm (None on the host): asked whether devices remain after run
        failures.
    """

    def __init__(self, db, workload_mod, target, report: TaskReport, progress: Progress,
                 farm=None):
        super().__init__()
        self.db, self.mod, self.target, self.report = db, workload_mod, target, report
        self.progress, self.farm = progress, farm
        self.lost: str | None = None
        self.errors: list[str] = []

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results,
              runner_results) -> None:
        from tvm.s_tir import meta_schedule as ms


        workload = self.db.commit_workload(self.mod)
        target = self.target
        run_failed = []
        for cand, built, ran in zip(measure_candidates, builder_results, runner_results,
                                    strict=True):
            if built.error_msg is None and ran.error_msg is not None:
                run_failed.append((cand, ran.error_msg))
                continue
            ok = built.error_msg is None and ran.run_secs
            secs = list(ran.run_secs) if ok else [_float_imm(FAILED_SECS)]
            if not ok:
                self.report.failed += 1
                self.errors.append(str(built.error_msg or ran.error_msg)[:400])
            self.db.commit_tuning_record(ms.database.TuningRecord(
                cand.sch.trace, workload, secs, target, cand.args_info))
            self.report.trials_new += 1
        if run_failed and self.farm is not None and not self._devices_left():
            self.lost = str(run_failed[0][1])
            self.progress.show("device lost")
            raise DeviceLostError(f"no device left under key {self.farm.key!r}")
        for cand, error in run_failed:
            self.report.failed += 1
            self.errors.append(str(error)[:400])
            self.db.commit_tuning_record(ms.database.TuningRecord(
                cand.sch.trace, workload, [_float_imm(FAILED_SECS)], target, cand.args_info))
            self.report.trials_new += 1
        best = best_seconds(self.db, workload)
        self.report.best_us = best * 1e6 if best is not None else self.report.best_us
        self.progress.add(len(measure_candidates))

    def _devices_left(self) -> bool:
        try:
            return self.farm.devices() > 0
        except DeviceError:
            return False
