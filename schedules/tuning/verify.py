"""The whole-model check: a tuned task is kept only if the model gets faster with it.

Candidates are timed one kernel at a time, in a loop, with hot caches. A kernel that wins
there can lose inside the model (seen here on LeNet-5: two tuned convolutions, each faster
alone, made the model 18 % slower). So after tuning, for every task whose best record
beats its default schedule, heaviest predicted saving first:

1. build the model with the tasks kept so far plus this one (`compile`'s own ``lower`` and
   ``build`` stages, with a database restricted to those tasks);
2. time it against the current build, alternating rounds, on the same machine the
   candidates were measured on (``host``: here; otherwise a device under the tracker key);
3. keep the task if the median improves by more than `tolerance` (1 % for timings; 0 for
   instruction counts, which are deterministic, so any saving is real).

The start is the default build, so the result is never slower than it as measured. The
decision goes into the manifest (``"use": "tuned" | "default"``), which
`database.selected` honours whenever `compile(..., tuning_db=DIR)` applies the directory.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import numpy as np

from deploy.emulator import count_instructions
from deploy.remote import RemoteDevice
from mdl_tvm.compiler.pipeline import run_pipeline
from mdl_tvm.core.artifact import export_library
from mdl_tvm.core.errors import DeviceError
from schedules.database import restricted
from schedules.tuning.progress import DeviceLostError


def build_variant(state, db):
    """Run `compile`'s stages from ``lower`` on a copy of a `graph_before_lowering` state."""
    state = dataclasses.replace(state, options=dataclasses.replace(state.options, tuning_db=db),
                                timings={})
    return run_pipeline(state, start="lower").executable


def example_inputs(state) -> list[np.ndarray]:
    """Random inputs matching the parameters of the graph's ``main``."""
    rng = np.random.default_rng(0)
    out = []
    for param in state.mod["main"].params:
        ty = param.ty
        shape = tuple(int(d) for d in ty.shape)
        out.append(rng.standard_normal(shape).astype(str(ty.dtype)))
    return out


class HostTimer:
    """Times executables on this machine (TVM's time evaluator)."""

    def __init__(self, inputs, number=None, min_repeat_ms=100):
        self.inputs, self.number, self.min_repeat_ms = inputs, number, min_repeat_ms

    def load(self, executable):
        import tvm
        from tvm import relax

        vm = relax.VirtualMachine(executable, tvm.cpu())
        args = [tvm.runtime.tensor(a) for a in self.inputs]
        timer = vm.time_evaluator("main", tvm.cpu(), number=self.number or 1, repeat=1,
                                  min_repeat_ms=self.min_repeat_ms)
        return lambda: float(timer(*args).median) * 1e3

    def close(self):
        pass


class DeviceTimer:
    """Times executables on a device of the farm over RPC (exported with the profile's
    compiler, uploaded once, timed with the device's time evaluator)."""

    def __init__(self, farm, profile, inputs, number=10):

        self.profile, self.inputs, self.number = profile, inputs, number
        self.tmp = tempfile.TemporaryDirectory(prefix="mdl-verify-")
        self.device = RemoteDevice.connect((farm.host, farm.port), key=farm.key, timeout=120)
        self.count = 0

    def load(self, executable):
        self.count += 1
        path = Path(self.tmp.name) / f"variant{self.count}.so"
        executable.export_library(str(path), fcompile=self.profile.compiler())
        model = self.device.load(path)
        return lambda: model.time(self.inputs, number=self.number, repeat=1)

    def close(self):
        self.device.close()
        self.tmp.cleanup()


class InsnTimer:
    """Counts executables' instructions per inference on the emulated phone, QEMU run
    locally with the profile's CPU model (`deploy.emulator.count_instructions`); the
    "milliseconds" it returns are millions of instructions (deterministic: counted once)."""

    def __init__(self, profile, inputs, runs: int = 2):
        self.profile, self.inputs, self.runs = profile, inputs, runs
        self.tmp = tempfile.TemporaryDirectory(prefix="mdl-verify-")
        self.count = 0

    def load(self, executable):
        self.count += 1
        path = Path(self.tmp.name) / f"variant{self.count}.so"
        export_library(executable, str(path), {"target": self.profile.name,
                                               "mattr": list(self.profile.mattr)},
                       self.profile.compiler())
        insns = count_instructions(path, self.inputs, runs=self.runs,
                                   cpu=self.profile.qemu_cpu or None)
        return lambda: insns / 1e6

    def close(self):
        self.tmp.cleanup()


def _compare(time_a, time_b, rounds: int) -> tuple[float, float]:
    a, b = [], []
    for _ in range(rounds):
        a.append(time_a())
        b.append(time_b())
    return float(np.median(a)), float(np.median(b))


def check(state, db, candidates, timer, *, rounds: int = 5, tolerance: float = 0.01,
          max_tasks: int = 8, progress=None) -> dict:
    """Greedy whole-model selection of tuned tasks.

    Parameters
    ----------
    state : mdl_tvm.compiler.pipeline.BuildState
        From `schedules.tuning.tasks.graph_before_lowering` (not modified).
    db : tvm.s_tir.meta_schedule.database.Database
        The tuning records.
    candidates : list of (str, str, float)
        ``(workload key, task name, predicted saving in us)`` of tasks whose best record
        beats the default schedule.
    timer : HostTimer or DeviceTimer
    rounds : int
        Alternating measurements per comparison.
    tolerance : float
        Relative improvement a task must bring to be kept.
    max_tasks : int
        Tasks tried (largest predicted saving first); the rest keep the default.
    progress : callable(str), optional

    Returns
    -------
    dict
        ``kept`` / ``rejected`` task keys, ``default_ms`` and ``tuned_ms`` (same-run
        medians of the default build and the final one), ``builds``.
    """

    order = sorted(candidates, key=lambda c: -c[2])
    kept: list[str] = []
    rejected = [key for key, _, _ in order[max_tasks:]]
    default = timer.load(build_variant(state, None))
    current, builds = default, 1
    for key, name, _ in order[:max_tasks]:
        if progress:
            progress(f"model check: {name}")
        keys = set(kept) | {key}
        variant = timer.load(build_variant(state, restricted(db, keys.__contains__)))
        builds += 1
        now, new = _compare(current, variant, rounds)
        if new < now * (1.0 - tolerance):
            kept.append(key)
            current = variant
        else:
            rejected.append(key)
    default_ms, tuned_ms = _compare(default, current, rounds)
    if current is default:
        tuned_ms = default_ms
    elif tuned_ms > default_ms:  # drift between comparisons: keep nothing
        rejected, kept, tuned_ms = rejected + kept, [], default_ms
    return {"kept": kept, "rejected": rejected, "default_ms": default_ms,
            "tuned_ms": tuned_ms, "builds": builds}


def select_tasks(state, db, report, manifest, profile, farm=None, *, rounds: int = 5,
                 progress=None, cost: str = "seconds") -> dict:
    """Run `check` for a tuning run and record the decision.

    Fills ``report.verified`` and each task's ``use``, and sets ``"use"`` of every tuned
    task in `manifest` (written by the caller). Tasks whose best record is their default
    schedule need no decision: they build the same code either way.

    Raises
    ------
    DeviceLostError
        When the device goes away during the check (the records are kept; rerun).
    """


    candidates = []
    for task in report.tasks:
        entry = manifest["tasks"].get(task.key) if task.key else None
        if entry is None:
            continue
        entry.pop("use", None)
        task.use = "default" if task.best_us is not None else ""
        if task.best_us is not None and (task.default_us is None or task.best_us < task.default_us):
            saving = (task.default_us - task.best_us) * task.weight if task.default_us else 0.0
            candidates.append((task.key, task.name, saving))
    result = {"where": profile.name, "kept": [], "rejected": []}
    if candidates:
        inputs = example_inputs(state)
        try:
            tolerance = 0.01  # timings are noisy: a saving must exceed 1 %
            if cost == "instructions":  # deterministic counts: any saving is real
                timer, rounds, tolerance = InsnTimer(profile, inputs), 1, 0.0
            else:
                timer = (HostTimer(inputs) if farm is None
                         else DeviceTimer(farm, profile, inputs))
            try:
                result.update(check(state, db, candidates, timer, rounds=rounds,
                                    tolerance=tolerance, progress=progress))
            finally:
                timer.close()
        except DeviceError as err:
            raise DeviceLostError(f"the model check lost the device: {err}") from err
    names = {t.key: t.name for t in report.tasks}
    for key in result["kept"]:
        manifest["tasks"][key]["use"] = "tuned"
    for task in report.tasks:
        if task.key in result["kept"]:
            task.use = "tuned"
    result["kept"] = [names.get(k, k) for k in result["kept"]]
    result["rejected"] = [names.get(k, k) for k in result["rejected"]]
    manifest["verified"] = result
    report.verified = result
    return result
