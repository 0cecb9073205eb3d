"""The emulated-phone half of `executor_bench.py`: instructions, device allocations, RPC.

For each model an arm64 library is built with `mdl_tvm.compile(..., target="arm64")`
(through `bench.phone_build.build_on_phone`):

* instructions per inference (`deploy.emulator.count_instructions`, QEMU TCG plugin,
  ``(count(2N) - count(N)) / N``) for the device runner's modes ``plain`` (``main`` on an
  input tensor made once), ``copy-io`` (inputs copied in, outputs copied out every run, as
  `CompiledModel.run` does on host) and ``zero-copy`` (``main_zc`` on preset buffers);
* VM allocation calls per inference counted on the device by a VM instrument
  (``device_runner.py --count-calls``), and the outputs of the three modes compared;
* over RPC (a real tracker + the phone's RPC server on 127.0.0.1): wall time of one
  inference seen from the host (upload, run, download) for `RemoteModel.run` vs
  `RemoteZeroCopyExecutor.__call__`, and device-side time (time_evaluator) of both.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from bench.phone_build import build_on_phone
from mdl_tvm.core.numerics import median_ms

MODES = ("plain", "copy-io", "zero-copy")
ALLOCS = ("vm.builtin.alloc_storage", "vm.builtin.alloc_tensor")


def _insn_runs(name: str) -> int:
    return 10 if name == "lenet5" else 1  # ResNet-18 / style: one inference is ~1e10 insns


def device_side(lib: str, x: np.ndarray, runs: int, repeat: int) -> dict:
    """Instruction counts, device allocation calls and output agreement of the modes."""
    from deploy.emulator import count_instructions, run_on_emulator

    out, outputs = {}, {}
    for mode in MODES:
        calls: dict = {}
        outputs[mode] = run_on_emulator(lib, [x], repeat=repeat, mode=mode, calls=calls)
        per_run = {k: calls["calls"].get(k, 0) / repeat for k in ALLOCS}
        t0 = time.perf_counter()
        insns = count_instructions(lib, [x], runs=runs, mode=mode)
        out[mode] = {"insns_per_inference": insns, "insn_runs": runs,
                     "count_seconds": round(time.perf_counter() - t0, 1),
                     "device_alloc_calls_per_run": per_run}
    same = all(np.array_equal(a, b) for m in MODES[1:]
               for a, b in zip(outputs["plain"], outputs[m], strict=True))
    return {"modes": out, "outputs_identical": bool(same)}


def over_rpc(libs: dict, inputs: dict, runs: int, workdir: Path) -> dict:
    """RemoteModel.run vs RemoteZeroCopyExecutor on the phone's RPC server."""
    from deploy import procs
    from deploy.remote import RemoteDevice

    rundir = workdir / "phone-run"
    tracker = procs.start_tracker(rundir=rundir)
    out = {}
    try:
        procs.start_phone(tracker=tracker, key="bench-zero-copy", rundir=rundir)
        with RemoteDevice.connect(tracker, key="bench-zero-copy", timeout=120) as dev:
            for name, lib in libs.items():
                x = inputs[name]
                n = runs if name == "lenet5" else 3  # ~7 s per ResNet-18 run under QEMU
                k = 10 if name == "lenet5" else 1
                with dev.load(lib) as model:
                    ex = model.executor()
                    same = all(np.array_equal(a, b) for a, b in
                               zip(ex(x), model.run([x]), strict=True))
                    plain_ms = median_ms(lambda m=model, a=x: m.run([a]), n, warmup=1)
                    zero_ms = median_ms(lambda e=ex, a=x: e(a), n, warmup=1)
                    out[name] = {
                        "outputs_identical": bool(same),
                        "wall_ms": {"plain": plain_ms, "zero-copy": zero_ms},
                        "device_ms": {"plain": model.time([x], number=k, repeat=3),
                                      "zero-copy": ex.time(number=k, repeat=3)},
                        "runs": n}
    finally:
        procs.stop_phone(rundir=rundir)
        procs.stop_tracker(rundir=rundir)
    return out


def bench_phone(models, workdir: Path, build_model, quick: bool = False) -> dict:
    """All phone measurements for `models` (names understood by `build_model`).

    Parameters
    ----------
    models : sequence of str
    workdir : pathlib.Path
    build_model : callable
        ``name -> (torch module, input shape)``.
    quick : bool
        Fewer RPC runs for LeNet-5 (20 instead of 50).

    Returns
    -------
    dict
        ``device`` (per model: instruction counts, allocations, output agreement per mode)
        and ``rpc`` (per model: wall and device time of both call paths).
    """
    libs, inputs, device = {}, {}, {}
    for name in models:
        net, shape = build_model(name)
        inputs[name] = np.random.default_rng(0).random(shape, dtype=np.float32)
        libs[name] = build_on_phone(net, "arm64", [inputs[name]], workdir,
                                    f"{name}-arm64").library
        device[name] = device_side(libs[name], inputs[name], _insn_runs(name),
                                   repeat=10 if name == "lenet5" else 2)
        print(name, {m: v["insns_per_inference"] for m, v in device[name]["modes"].items()},
              flush=True)
    rpc = over_rpc(libs, inputs, runs=20 if quick else 50, workdir=workdir)
    return {"device": device, "rpc": rpc}
