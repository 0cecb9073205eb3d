"""MetaSchedule tuning over a real loopback tracker and the emulated arm64 phone.

Tiny workloads (one or two dense layers), a few trials each: the point is the flow --
tasks from the compile pipeline, default schedules seeded first, records that `compile`
applies, resume, and a phone killed mid-run -- not the speed (that is bench/tuning_bench.py).
"""

from __future__ import annotations

import dataclasses
import shutil
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from helpers import mlp as _mlp  # noqa: E402

from deploy import procs, rpc_net  # noqa: E402
from deploy.remote import RemoteDevice  # noqa: E402
from mdl_tvm.core.errors import DeviceError  # noqa: E402
from mdl_tvm.core.numerics import relative_error  # noqa: E402
from schedules import database as dbmod  # noqa: E402
from schedules.tuning import tasks as tasks_mod  # noqa: E402
from schedules.tuning.driver import TuningConfig, tune  # noqa: E402
from schedules.tuning.progress import DeviceLostError  # noqa: E402

SMALL = dict(trials_per_iter=4, population=32, genetic_iters=1, warmup_samples=4,
             search_threads=1)


def _lowered(net, shape, db=None):
    """The lowered module, through `compile`'s own stages (tuning_db as compile passes it)."""
    from mdl_tvm.compiler import pipeline

    state = tasks_mod.graph_before_lowering(net, "arm64", input_shapes=[shape])
    state.options = dataclasses.replace(state.options, tuning_db=db)
    return pipeline.run_pipeline(state, start="lower", until="build")


@pytest.fixture(scope="module")
def tuned(phone, tmp_path_factory):
    """Two dense tasks tuned on the phone, 4 trials each -> (net, db dir, report)."""
    net = _mlp(48, 32, 16)
    db = tmp_path_factory.mktemp("tuning") / "db"
    report = tune(net, "arm64", db=db, tracker=phone["tracker"], key=phone["key"],
                  input_shapes=[(1, 48)], progress=False,
                  config=TuningConfig(per_task=4, **SMALL))
    return net, db, report


@pytest.mark.phone
@pytest.mark.slow  # the shared `tuned` fixture tunes for about a minute
def test_tiny_tuning_run_on_the_phone_seeds_and_records(tuned):
    net, db, report = tuned
    assert report.status == "complete" and report.target == "arm64"
    assert [t.status for t in report.tasks] == ["tuned", "tuned"]
    assert all(t.name.startswith("fused_mdl_dense") for t in report.tasks)
    assert 1 <= report.trials <= 8  # per task at most its budget
    manifest = dbmod.read_manifest(db)
    assert manifest["target"] == "arm64" and len(manifest["tasks"]) == 2
    for task in report.tasks:
        assert task.default_us and task.default_us > 0  # the default schedule was measured
        assert task.best_us is not None and task.best_us <= task.default_us  # seeded: never worse
    database = dbmod.open_database(db)
    records = database.get_all_tuning_records()
    assert len(records) == report.trials + 2  # every trial plus the two seed records
    # the whole-model check ran on the phone and decided what compile applies
    assert report.verified["where"] == "arm64"
    assert {t.use for t in report.tasks} <= {"tuned", "default"}
    kept = {t.name for t in report.tasks if t.use == "tuned"}
    assert set(report.verified["kept"]) == kept
    if kept:
        assert report.verified["tuned_ms"] <= report.verified["default_ms"]


@pytest.mark.phone
@pytest.mark.slow  # the shared `tuned` fixture tunes for about a minute
def test_compile_applies_the_database_and_runs_on_the_phone(tuned, phone, tmp_path):
    import mdl_tvm

    net, db, report = tuned
    x = np.random.default_rng(0).standard_normal((1, 48)).astype("float32")
    ref = net(torch.from_numpy(x)).detach().numpy()
    plain = mdl_tvm.compile(net, "arm64", input_shapes=[(1, 48)])
    assert plain.tuned_functions == []
    # make a tuned candidate (not the seed) the best record, in a copy of the database
    forced = tmp_path / "db"
    shutil.copytree(db, forced)
    database = dbmod.open_database(forced, create=True)  # writable, like tuning
    candidates = [r for r in database.get_all_tuning_records()
                  if dbmod.mean_seconds(r) is not None
                  and any(i.kind.name.startswith("Sample") for i in r.trace.insts)]
    assert candidates, "the search measured no valid candidate"
    from tvm.s_tir import meta_schedule as ms

    from schedules.tuning.seed import _float_imm

    rec = candidates[0]
    database.commit_tuning_record(ms.database.TuningRecord(
        rec.trace, rec.workload, [_float_imm(1e-9)], rec.target, rec.args_info))
    manifest = dbmod.read_manifest(forced)
    keys = sorted(manifest["tasks"])
    for key in keys:  # as if the model check had kept both tasks
        manifest["tasks"][key]["use"] = "tuned"
    dbmod.write_manifest(forced, manifest)
    default_mod = _lowered(net, (1, 48)).mod
    state = _lowered(net, (1, 48), db=forced)
    assert len(state.tuned_functions) == 2
    changed = [name for name in state.tuned_functions
               if str(state.mod[name].body) != str(default_mod[name].body)]
    assert changed  # the forced record replaced a default schedule: different code
    tuned_model = mdl_tvm.compile(net, "arm64", input_shapes=[(1, 48)], tuning_db=forced)
    assert tuned_model.tuned_functions == state.tuned_functions
    so = tuned_model.export(str(tmp_path / "tuned.so"))
    with RemoteDevice.connect(phone["tracker"], key=phone["key"], timeout=60) as dev:
        (out,) = dev.run(so, x)
    assert relative_error(out, ref) < 1e-4  # the tuned kernels compute the same function
    manifest["tasks"][keys[0]]["use"] = "default"  # rejected by the model check
    dbmod.write_manifest(forced, manifest)
    assert len(_lowered(net, (1, 48), db=forced).tuned_functions) == 1


@pytest.mark.phone
@pytest.mark.slow  # the shared `tuned` fixture tunes for about a minute
def test_rerun_resumes_and_skips_finished_tasks(tuned, phone):
    net, db, report = tuned
    before = len(dbmod.open_database(db).get_all_tuning_records())
    again = tune(net, "arm64", db=db, tracker=phone["tracker"], key=phone["key"],
                 input_shapes=[(1, 48)], progress=False, config=TuningConfig(per_task=4, **SMALL))
    assert again.trials == 0
    assert all(t.status.startswith("done") for t in again.tasks)
    assert again.verified == report.verified  # the stored decision, not an empty one
    assert [t.use for t in again.tasks] == [t.use for t in report.tasks]
    assert [t.trials_before for t in again.tasks] == [
        t.trials_before + t.trials_new for t in report.tasks]
    assert len(dbmod.open_database(db).get_all_tuning_records()) == before


@pytest.mark.phone
@pytest.mark.slow  # the shared `tuned` fixture tunes for about a minute
def test_torn_record_line_is_dropped_not_fatal(tuned, tmp_path):
    _, db, _ = tuned
    copy = tmp_path / "db"
    shutil.copytree(db, copy)
    n = len(dbmod.open_database(copy).get_all_tuning_records())
    with open(copy / dbmod.RECORD_FILE, "a") as f:
        f.write('[0, [[["GetSBlock", [], ["root"')  # a write cut short by a crash
    with pytest.warns(UserWarning, match="torn"):
        database = dbmod.open_database(copy)
    assert len(database.get_all_tuning_records()) == n


def _record_lines(db: Path) -> int:
    """How many record lines the tuning database holds on disk so far."""
    try:
        return sum(1 for line in (db / dbmod.RECORD_FILE).read_text().splitlines() if line.strip())
    except FileNotFoundError:
        return 0


def _candidates_loaded(rundir: Path) -> int:
    """How many tuning candidates a phone loaded (its server log names each library)."""
    log = (rundir / "phone.log").read_text()
    return sum("load_module" in line and "candidate.so" in line for line in log.splitlines())


@pytest.mark.phone
@pytest.mark.slow
def test_phone_farm_in_parallel_killed_keeps_records_restart_resumes(
        phone_env, phone_tracker, tmp_path):
    from schedules.tuning.measure import Farm

    net = _mlp(40, 24)
    key = f"farm-{uuid.uuid4().hex[:6]}"
    rundirs = [tmp_path / "run-a", tmp_path / "run-b"]
    for rundir in rundirs:  # two phones under one key: a device farm
        procs.start_phone(tracker=phone_tracker, key=key, rundir=rundir)
    assert Farm.parse(phone_tracker, key).devices() == 2
    db = tmp_path / "db"
    seen = {}

    def kill_after_first_batch():
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:  # seed record + one batch of 4 on disk
            lines = _record_lines(db)
            if lines >= 5:
                seen["records"] = lines
                for rundir in rundirs:
                    procs.stop_phone(rundir=rundir)
                return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_after_first_batch, daemon=True)
    killer.start()
    config = TuningConfig(per_task=12, **SMALL)
    try:
        with pytest.raises(DeviceLostError) as err:
            tune(net, "arm64", db=db, tracker=phone_tracker, key=key, input_shapes=[(1, 40)],
                 progress=False, config=config)
        killer.join(timeout=30)
        assert "rerun" in str(err.value) and key in str(err.value)
        assert err.value.report.status == "device-lost"
        assert all(_candidates_loaded(r) >= 1 for r in rundirs)  # both phones measured
        kept = len(dbmod.open_database(db).get_all_tuning_records())
        assert kept >= seen["records"]  # nothing measured was lost
        procs.start_phone(tracker=phone_tracker, key=key, rundir=rundirs[0])
        resumed = tune(net, "arm64", db=db, tracker=phone_tracker, key=key,
                       input_shapes=[(1, 40)], progress=False, config=config)
    finally:
        for rundir in rundirs:
            procs.stop_phone(rundir=rundir)
    (task,) = resumed.tasks
    assert task.trials_before == kept - 1 and task.status == "tuned (resumed)"
    assert task.trials_before + task.trials_new <= 12
    assert len(dbmod.open_database(db).get_all_tuning_records()) >= kept + task.trials_new


@pytest.mark.phone
def test_unreachable_tracker_and_unknown_key_are_device_errors(phone_tracker, tmp_path):
    port = rpc_net.free_port()
    with pytest.raises(DeviceError, match="mdl-tvm tracker start"):
        tune(_mlp(8, 4), "arm64", db=tmp_path, tracker=f"127.0.0.1:{port}", key="phone",
             input_shapes=[(1, 8)])
    with pytest.raises(DeviceError, match="no device is registered under key 'nobody'"):
        tune(_mlp(8, 4), "arm64", db=tmp_path, tracker=phone_tracker, key="nobody",
             input_shapes=[(1, 8)])
    with pytest.raises(ValueError, match="--tracker"):
        tune(_mlp(8, 4), "arm64", db=tmp_path, input_shapes=[(1, 8)])
    assert not (Path(tmp_path) / dbmod.RECORD_FILE).exists()  # nothing half-made


def test_tasks_follow_compression_and_precision():
    net = _mlp(64, 32, 8)
    plain = tasks_mod.extract(net, "arm64-fp16", input_shapes=[(1, 64)])
    fp16 = tasks_mod.extract(net, "arm64-fp16", input_shapes=[(1, 64)], precision="fp16")
    pruned = tasks_mod.extract(net, "arm64-fp16", input_shapes=[(1, 64)], compress="mask:0.5")
    assert len(plain) == 2 and plain[0].flops > plain[1].flops  # heaviest first
    assert "float16" not in plain[0].mod.script()
    assert "float16" in fp16[0].mod.script()  # the precision stage ran before extraction
    assert pruned[0].flops == plain[0].flops / 2  # half the hidden channels pruned first


def test_plan_budgets_shares_trials_by_work():
    class T:
        def __init__(self, cost):
            self.cost = cost

    tasks = [T(100.0), T(50.0), T(1.0)]
    assert tasks_mod.plan_budgets(tasks, 30, min_trials=4) == [20, 10, 0]
    assert sum(tasks_mod.plan_budgets(tasks, 31, min_trials=4)) == 31
    assert tasks_mod.plan_budgets(tasks, 3, min_trials=4) == [3, 0, 0]
    assert tasks_mod.plan_budgets(tasks, 0) == [0, 0, 0]
    assert tasks_mod.plan_budgets(tasks, 99, per_task=5) == [5, 5, 5]
    with pytest.raises(ValueError, match="trials"):
        tasks_mod.plan_budgets(tasks, -1)


def test_cli_tune_registered_and_errors_clearly(capsys, tmp_path):
    """Errors before any work: wall-clock cost on a device target needs --tracker / --key
    (instruction cost without them would start a private phone: see the phone tests);
    an unreachable tracker is named. Nothing is written to the database."""
    from mdl_tvm.cli import main

    db = ["--db", str(tmp_path / "db")]
    assert main(["tune", "lenet5", "--target", "arm64", "--trials", "4", "--cost", "seconds",
                 *db]) == 2
    assert "--tracker HOST:PORT --key KEY" in capsys.readouterr().err
    port = rpc_net.free_port()
    assert main(["tune", "lenet5", "--target", "arm64", "--tracker", f"127.0.0.1:{port}",
                 "--key", "phone", *db]) == 2
    assert f"no RPC tracker at 127.0.0.1:{port}" in capsys.readouterr().err
    assert not (tmp_path / "db").exists()


def test_seed_commits_only_default_schedules_whose_trace_replays():
    """A rule that schedules the reference compute (dense) leaves a trace MetaSchedule can
    replay; a hand-written kernel (the packed 1x1 GEMM) replaces the function, its trace is
    empty, and committing it would make the reference loops look like the default."""
    from mdl_tvm.core.targets import get_profile
    from schedules.tuning.seed import default_schedule, replays

    net = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(16 * 6 * 6, 10)).eval()
    found = {}
    for task in tasks_mod.extract(net, "arm64", input_shapes=[(1, 8, 6, 6)]):
        sch, rule = default_schedule(task.mod, get_profile("arm64"))
        if sch is not None:
            found[rule] = replays(sch, task.mod)
    assert found.get("dense") is True
    assert found.get("gemm_conv") is False
