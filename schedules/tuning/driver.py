"""MetaSchedule tuning of a model's tasks, seeded with the default schedules, resumable.

>>> report = tune("resnet18", "arm64-fp16", trials=128, tracker="127.0.0.1:9190",
...               key="phone", input_shapes=[(1, 3, 224, 224)])
>>> print(report.table())
>>> model = mdl_tvm.compile(net, "arm64-fp16", tuning_db=report.db, ...)

For each task (heaviest first; `schedules.tuning.tasks`):

1. its default schedule is measured and committed as the first record (`schedules.tuning.seed`),
   so the database's best is never slower than what `compile` builds without tuning;
2. the task gets its share of the trials (`tasks.plan_budgets`) minus the trials the
   database already holds for it -- a rerun skips tasks tuned to budget and continues
   the others from their best records;
3. MetaSchedule's evolutionary search with the XGBoost cost model proposes candidates,
   the builder cross-compiles them (`schedules.tuning.measure`), the runner times them on this
   machine (``host``) or on the devices under a tracker key, and `progress.Recorder`
   appends every result to the database as it arrives.

A database directory is used by one tuning run at a time (a lock file); `compile` may
read it meanwhile.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from deploy import procs
from mdl_tvm.core.errors import DeviceError
from mdl_tvm.core.targets import get_profile
from mdl_tvm.core.tvm_imports import import_tensor_intrinsics
from schedules import database as dbmod
from schedules.database import best_seconds, records_of
from schedules.tuning.measure import (
    DEVICE_MEASURE,
    HOST_MEASURE,
    Farm,
    MeasureConfig,
    make_builder,
    make_local_runner,
    make_rpc_runner,
)
from schedules.tuning.progress import DeviceLostError, Progress, Recorder, TaskReport, TuningReport
from schedules.tuning.seed import seed
from schedules.tuning.tasks import graph_before_lowering, plan_budgets, tasks_of
from schedules.tuning.verify import select_tasks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TuningConfig:
    """Search settings.

    Attributes
    ----------
    min_trials : int
        A task whose share of the trials is below this keeps its default schedule.
    per_task : int, optional
        Every task gets exactly this many trials (instead of a share of ``trials``).
    trials_per_iter : int
        Candidates proposed, built and measured per search round.
    population : int
        Evolutionary search population (MetaSchedule's default 512 is slow on 2 cores).
    genetic_iters : int
        Evolution rounds per search round.
    warmup_samples : int
        Measurements before XGBoost ranks candidates (MetaSchedule's default 100 means a
        small budget never uses the model).
    search_threads : int, optional
        Threads for the search and XGBoost (default: all cores).
    seed : int
        Random seed of the search.
    measure : MeasureConfig, optional
        Builder and runner settings (default: `measure.HOST_MEASURE` for ``host``,
        `measure.DEVICE_MEASURE` otherwise).
    verify : bool
        Run the whole-model check (`schedules.tuning.verify`) that keeps a tuned task only when
        the model gets faster with it. Without it every task whose best record beats its
        default kernel is applied (kernel timings can mislead: see `schedules.tuning.verify`).
    verify_rounds : int
        Alternating whole-model measurements per comparison.
    """

    min_trials: int = 8
    per_task: int | None = None
    trials_per_iter: int = 16
    population: int = 128
    genetic_iters: int = 3
    warmup_samples: int = 16
    search_threads: int | None = None
    seed: int = 0
    measure: MeasureConfig | None = field(default=None)
    verify: bool = True
    verify_rounds: int = 5

    def __post_init__(self):
        for name in ("min_trials", "trials_per_iter", "population", "genetic_iters"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TuningConfig.{name} must be >= 1, got {getattr(self, name)}")


@contextlib.contextmanager
def local_counting_phone(cpu: str):
    """A private tracker and emulated phone that counts instructions, for the run."""
    rundir = Path(tempfile.mkdtemp(prefix="mdl-tune-phone-"))
    try:
        tracker = procs.start_tracker(rundir=rundir)
        procs.start_phone(tracker=tracker, key="counting-phone", rundir=rundir, cpu=cpu,
                          count=True)
        yield f"{tracker[0]}:{tracker[1]}", "counting-phone"
    finally:
        procs.stop_phone(rundir=rundir)
        procs.stop_tracker(rundir=rundir)
        shutil.rmtree(rundir, ignore_errors=True)


@contextlib.contextmanager
def _locked(path: Path):
    path.mkdir(parents=True, exist_ok=True)
    with open(path / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise dbmod.DatabaseBusyError(f"another tuning run is using {path}; wait for it "
                                          "or give another --db") from None
        yield


def _quiet_metaschedule() -> None:
    for name in ("tvm.s_tir.meta_schedule", "xgboost"):
        logging.getLogger(name).setLevel(logging.WARNING)


def tune(model, target="arm64", *, trials: int = 64, db=None, tracker=None, key=None,
         config: TuningConfig | None = None, progress=True, model_name=None,
         **compile_options) -> TuningReport:
    """Tune `model`'s tasks for `target` into the database directory `db`.

    Parameters
    ----------
    model : torch.nn.Module, str, onnx.ModelProto or tvm.IRModule
        As for `mdl_tvm.compile`.
    target : str or TargetProfile
        ``host`` is measured here; any other profile on the devices at `tracker` / `key`.
    trials : int
        Trials for the whole model, shared out by task weight (see `TuningConfig`).
    db : str or os.PathLike, optional
        Database directory (default `database.default_dir(target)`); created if missing,
        resumed if it holds records.
    tracker : str or (str, int), optional
        ``"HOST:PORT"`` of the RPC tracker (device targets).
    key : str, optional
        Device key the phones registered under; every device under it measures in
        parallel.
    config : TuningConfig, optional
    progress : bool or Progress
        Print a progress line to stderr.
    model_name : str, optional
        Name for the report (default: the model's class name or path).
    **compile_options
        `mdl_tvm.compile`'s graph options (``input_shapes``, ``compress``, ``precision``
        ...): tune with the options you compile with.

    Returns
    -------
    TuningReport

    Raises
    ------
    DeviceError
        Tracker unreachable, or no device under `key` (before any work).
    DeviceLostError
        The devices went away mid-run; ``.report`` lists what was kept. Rerun to resume.
    """

    config = config or TuningConfig()
    profile = get_profile(target)
    measure = config.measure or (HOST_MEASURE if profile.is_host else DEVICE_MEASURE)
    if measure.cost == "instructions" and tracker is None and key is None:
        if profile.is_host:
            raise ValueError("cost='instructions' counts on the emulated phone: give an "
                             "arm64 target (e.g. arm64-fp16)")
        with local_counting_phone(profile.qemu_cpu) as (tracker, key):
            return tune(model, target, trials=trials, db=db, tracker=tracker, key=key,
                        config=config, progress=progress, model_name=model_name,
                        **compile_options)
    farm = None
    if not profile.is_host:
        if tracker is None or key is None:
            raise ValueError(f"target {profile.name!r} is measured on a device: give the "
                             "tracker and key (--tracker HOST:PORT --key KEY; tracker=, key= "
                             "in Python); start them with `mdl-tvm tracker start` and "
                             "`mdl-tvm device start --tracker HOST:PORT --key KEY`")
        farm = Farm.parse(tracker, key)
        farm.require()  # fail fast, before the slow extraction
    path = Path(db).expanduser() if db is not None else dbmod.default_dir(profile)
    name = model_name or (model if isinstance(model, str) else type(model).__name__)
    start = time.monotonic()
    _quiet_metaschedule()
    state = graph_before_lowering(model, profile, **compile_options)
    tasks = tasks_of(state)
    budgets = plan_budgets(tasks, trials, min_trials=config.min_trials,
                           per_task=config.per_task)
    report = TuningReport(model=str(name), target=profile.name, db=str(path))
    with _locked(path):
        database = dbmod.open_database(path, create=True)
        manifest = dbmod.read_manifest(path)
        if manifest.get("target", profile.name) != profile.name:
            raise ValueError(f"{path} holds records for target {manifest['target']!r}, not "
                             f"{profile.name!r}; give another db (one per target)")
        if manifest.get("cost", measure.cost) != measure.cost:
            raise ValueError(f"{path} holds records measured in {manifest['cost']}, not "
                             f"{measure.cost}; give another db (one per cost)")
        manifest["target"], manifest["cost"] = profile.name, measure.cost
        shown = progress if isinstance(progress, Progress) else Progress(
            sum(budgets), sum(1 for b in budgets if b), enabled=bool(progress))
        session = _Session(database, path, manifest, profile, farm, config, measure, shown)
        try:
            for task, budget in zip(tasks, budgets, strict=True):
                session.run(task, budget, report.tasks)
            if config.verify and (report.trials or "verified" not in manifest):

                shown.show("model check")
                select_tasks(state, database, report, manifest, profile, farm,
                             rounds=config.verify_rounds, progress=shown.show,
                             cost=measure.cost)
            elif config.verify:  # nothing new since the last check: report its decision
                report.verified = manifest["verified"]
                for task in report.tasks:  # as `select_tasks` set them
                    entry = manifest["tasks"].get(task.key) if task.key else None
                    if entry is not None:
                        task.use = ("tuned" if entry.get("use") == "tuned" else
                                    "default" if task.best_us is not None else "")
            else:
                for task in report.tasks:  # trust the kernel timings
                    if task.key and task.best_us and task.best_us < (task.default_us or 1e30):
                        manifest["tasks"][task.key]["use"] = task.use = "tuned"
        except DeviceLostError as err:
            report.status = "device-lost"
            kept = sum(t.trials_before + t.trials_new for t in report.tasks)
            raise DeviceLostError(
                f"{err}; the {kept} trials measured so far are kept in {path}: restart the "
                "device(s) and rerun the same command to resume", report) from err
        finally:
            report.wall_seconds = time.monotonic() - start
            shown.close()
            dbmod.write_manifest(path, manifest)
    return report


class _Session:
    """Builder, runner and cost model shared by the tasks of one run."""

    def __init__(self, db, path, manifest, profile, farm, config, measure, progress):
        self.db, self.path, self.manifest = db, path, manifest
        self.profile, self.farm, self.config = profile, farm, config
        self.progress = progress
        self.target = profile.tvm_target()
        self.threads = config.search_threads or os.cpu_count() or 1
        self.measure = measure
        self._tools = None
        self.index = 0

    def tools(self):
        """(builder, runner, cost model), made on first use: a resumed run with nothing
        left to tune starts no worker processes."""
        if self._tools is None:
            from tvm.s_tir import meta_schedule as ms


            runner = (make_local_runner(self.measure) if self.farm is None
                      else make_rpc_runner(self.farm, self.measure))
            self._tools = (make_builder(self.profile, self.measure), runner,
                           ms.cost_model.XGBModel(num_warmup_samples=self.config.warmup_samples,
                                                  adaptive_training=True,
                                                  num_tuning_cores=self.threads))
        return self._tools

    def run(self, task, budget: int, reports: list) -> TaskReport:

        report = TaskReport(task.name, task.weight, task.flops, budget)
        reports.append(report)
        if budget <= 0:
            report.status = "default (no trials)"
            return report
        self.index += 1
        workload = self.db.commit_workload(task.mod)
        key = report.key = dbmod.workload_key(workload)
        entry = self.manifest["tasks"].setdefault(key, {"name": task.name})
        entry["budget"] = max(budget, int(entry.get("budget", 0)))
        if not entry.get("seeded"):
            self.progress.task(self.index, report)
            builder, runner, _ = self.tools()
            secs, how, committed = seed(self.db, task, self.profile, self.target, builder,
                                        runner)
            if secs is None and self.farm is not None and self.farm.devices() == 0:
                report.status = "device lost"
                raise DeviceLostError(f"no device left under key {self.farm.key!r}")
            entry.update(seeded=secs is not None, default_us=secs and secs * 1e6, rule=how,
                         seed_record=committed)
            dbmod.write_manifest(self.path, self.manifest)
        report.default_us = entry.get("default_us")
        seed_record = entry.get("seed_record", entry["seeded"])  # older manifests: committed
        report.trials_before = len(records_of(self.db, workload)) - int(bool(seed_record))
        best = best_seconds(self.db, workload)
        report.best_us = best * 1e6 if best is not None else None
        remaining = budget - report.trials_before
        self.progress.task(self.index, report)
        if remaining <= 0 or entry.get("exhausted"):
            report.status = "done (resumed)" if remaining <= 0 else "done (space exhausted)"
            self.progress.add(min(budget, report.trials_before))
            return report
        self.progress.add(report.trials_before)
        self._search(task, report, remaining)
        report.status = "tuned" if report.trials_before == 0 else "tuned (resumed)"
        entry["trials"] = report.trials_before + report.trials_new
        if report.trials_new < remaining:  # the search found no more new candidates
            entry["exhausted"] = True
        return report

    def _search(self, task, report: TaskReport, remaining: int) -> None:
        from tvm.s_tir import meta_schedule as ms

        import_tensor_intrinsics()  # what TuneContext imports, without its 30-50 s
        builder, runner, cost_model = self.tools()
        recorder = Recorder(self.db, task.mod, self.target, report, self.progress, self.farm)
        context = ms.TuneContext(
            mod=task.mod, target=self.target, space_generator="post-order-apply",
            search_strategy=ms.search_strategy.EvolutionarySearch(
                population_size=self.config.population,
                init_min_unmeasured=min(50, self.config.population // 2),
                genetic_num_iters=self.config.genetic_iters),
            task_name=task.name, rand_state=self.config.seed + self.index,
            num_threads=self.threads, logger=logging.getLogger("mdl.tuning.search"),
        ).clone()
        try:
            ms.tune.tune_tasks(
                tasks=[context], task_weights=[float(task.weight)], work_dir=str(self.path),
                max_trials_global=remaining, max_trials_per_task=remaining,
                num_trials_per_iter=min(self.config.trials_per_iter, remaining),
                builder=builder, runner=runner, database=self.db,
                cost_model=cost_model, task_scheduler="round-robin",
                measure_callbacks=[recorder, ms.measure_callback.RemoveBuildArtifact(),
                                   ms.measure_callback.UpdateCostModel()])
        except Exception as err:
            if recorder.lost is not None:
                report.status = "device lost"
                last = [ln.strip() for ln in recorder.lost.splitlines() if ln.strip()][-1:]
                raise DeviceLostError(f"the devices under key {self.farm.key!r} went away "
                                      f"while tuning {task.name} (last error: "
                                      f"{(last or ['?'])[0][:200]})") from err
            if isinstance(err, DeviceError):
                raise
            raise RuntimeError(f"tuning {task.name} failed: {err}") from err
