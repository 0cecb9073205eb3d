"""Zero-copy executor vs the plain Relax VM call path, on host and on the emulated phone.

    python bench/executor_bench.py                 # LeNet-5, ResNet-18, style transfer
    python bench/executor_bench.py --quick         # LeNet-5 only, fewer runs
    python bench/executor_bench.py --no-phone      # host only

Host paths (the same compiled library, `mdl_tvm.compile(..., target="host")`):

* ``plain``     ``CompiledModel.run(x)``: the project's call path; input copied into a new
                tensor, ``main`` (the VM allocates intermediates and outputs from its
                pooled allocator), outputs copied out to numpy;
* ``vm-call``   ``vm["main"](x_tensor)`` on an input tensor made once, outputs left as
                TVM tensors: the leanest use of the plain VM;
* ``zero-copy`` `deploy.zero_copy.ZeroCopyExecutor.run()`: ``main_zc`` on preset buffers.

Per-inference VM allocations are counted with a VM instrument (`count_vm_calls`: calls of
``vm.builtin.alloc_storage`` / ``vm.builtin.alloc_tensor`` over 100 runs after warm-up).
Copies are the host-side copies of each path's code (``plain`` copies every input in and
every output out). Latency: median of interleaved blocks (>= 20 runs per path). Peak RSS:
a fresh process per (model, path) that loads the exported library and runs it.

Phone (qemu-aarch64 with the aarch64 TVM runtime, `deploy.device_runner`): instructions per
inference for ``plain``, ``copy-io`` (the host-like path with per-run copies) and
``zero-copy``, allocation calls counted on the device, and over RPC the wall time of one
inference (upload, run, download) for `RemoteModel.run` vs `RemoteZeroCopyExecutor`.

Writes ``bench/results/executor.json``, ``executor.md`` and ``executor.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
HOST_PATHS = ("plain", "vm-call", "zero-copy")
ALLOC_RUNS = 100


def build_model(name: str):
    """(torch module, input shape) of a benchmarked network."""
    import torch

    from mdl_tvm import zoo

    torch.manual_seed(0)
    if name == "style":
        from apps.style_transfer.model import load_transformer

        return load_transformer(), (1, 3, 256, 256)
    return zoo.build(name).eval(), zoo.INPUT_SHAPES[name]


def _paths(compiled, x):
    """name -> zero-argument callable running one inference that way."""
    import tvm

    vm = compiled._machine()
    main, xt = vm["main"], tvm.runtime.tensor(x)
    ex = compiled.executor()
    ex.inputs[0][...] = x
    return {"plain": lambda: compiled.run(x), "vm-call": lambda: main(xt),
            "zero-copy": ex.run}, vm, ex


def allocations(compiled, x) -> dict:
    """VM allocation calls per inference of each path (instrument over ALLOC_RUNS runs)."""
    from deploy.zero_copy import count_vm_calls

    paths, vm, ex = _paths(compiled, x)
    out = {}
    for name, fn in paths.items():
        fn()  # warm-up (constants load on the first call)
        target = ex.vm if name == "zero-copy" else vm
        calls = count_vm_calls(target, fn, ALLOC_RUNS)
        out[name] = {k: calls[k] / ALLOC_RUNS for k in
                     ("vm.builtin.alloc_storage", "vm.builtin.alloc_tensor",
                      "alloc_storage_bytes")}
        out[name]["tensor_views"] = (calls["runtime.TVMTensorCreateView"]
                                     + calls["vm.builtin.ensure_zero_offset"]) / ALLOC_RUNS
    return out


def copies(compiled) -> dict:
    """Host-side copies per inference of each path, from the code of the call paths."""
    nin = sum(int(np.prod(s.shape)) * np.dtype(s.dtype).itemsize for s in compiled.inputs)
    nout = sum(int(np.prod(s.shape)) * np.dtype(s.dtype).itemsize for s in compiled.outputs)
    k_in, k_out = len(compiled.inputs), len(compiled.outputs)
    return {"plain": {"copies": k_in + k_out, "bytes": nin + nout},
            "vm-call": {"copies": 0, "bytes": 0, "note": "input made once, outputs not read"},
            "zero-copy": {"copies": 0, "bytes": 0}}


def latency(compiled, x, runs: int, rounds: int = 5) -> dict:
    """Median ms per path over `rounds` interleaved blocks of runs/rounds runs each."""
    paths, _, ex = _paths(compiled, x)
    ref = compiled.run(x)[0]
    assert np.array_equal(ex.run()[0], ref), "zero-copy output differs from the plain VM"
    times = {name: [] for name in paths}
    for fn in paths.values():
        for _ in range(3):
            fn()
    per_block = max(1, runs // rounds)
    for _ in range(rounds):
        for name, fn in paths.items():
            for _ in range(per_block):
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: {"median_ms": float(np.median(t)), "runs": len(t)}
            for name, t in times.items()}


def rss_child(lib: str, path: str, runs: int) -> dict:
    """In this (fresh, runtime-only TVM) process: load `lib`, run `path`, report memory."""
    import psutil
    import tvm
    from tvm.runtime.vm import VirtualMachine

    from deploy.zero_copy import ZeroCopyExecutor, ZeroCopyPlan

    proc = psutil.Process()
    before = proc.memory_info().rss
    vm = VirtualMachine(tvm.runtime.load_module(lib), tvm.cpu())
    main = vm["main"]
    x = np.random.default_rng(0).random(ZeroCopyPlan.from_vm(vm).inputs[0].shape,
                                        dtype=np.float32)
    ex = ZeroCopyExecutor(vm) if path == "zero-copy" else None
    if path == "plain":  # what CompiledModel.run does: copy in, main, copy out
        def fn():
            return [t.numpy() for t in main(tvm.runtime.tensor(x))]
    elif path == "vm-call":
        xt = tvm.runtime.tensor(x)

        def fn():
            return main(xt)
    else:
        ex.inputs[0][...] = x
        fn = ex.run
    loaded = proc.memory_info().rss
    for _ in range(3):
        fn()
    warm = proc.memory_info().rss
    for _ in range(runs):
        fn()
    return {"peak_rss_mb": _vm_hwm_mb(),
            "start_mb": before / 2**20, "loaded_mb": loaded / 2**20,
            "growth_after_warmup_mb": (proc.memory_info().rss - warm) / 2**20}


def _vm_hwm_mb() -> float:
    """This process's peak RSS. Not ru_maxrss: on Linux a child started by fork + exec
    inherits the parent's high-water mark, and the parent holds the compiled models."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss(lib: str, runs: int) -> dict:
    out = {}
    for path in HOST_PATHS:
        env = dict(os.environ, TVM_USE_RUNTIME_LIB="1")  # as on a device: no compiler
        res = subprocess.run([sys.executable, __file__, "--rss-child", lib, path, str(runs)],
                             capture_output=True, text=True, check=True, cwd=ROOT, env=env)
        out[path] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def bench_host(name: str, runs: int, workdir: Path) -> dict:
    import mdl_tvm

    net, shape = build_model(name)
    t0 = time.perf_counter()
    compiled = mdl_tvm.compile(net, "host", input_shapes=[shape])
    compile_s = time.perf_counter() - t0
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    lib = compiled.export(str(workdir / f"{name}-host.so"))
    plan = compiled.zero_copy["plan"]
    result = {"model": name, "input_shape": list(shape), "compile_s": round(compile_s, 1),
              "workspace_bytes": plan["workspace_bytes"], "storages": plan["storages"],
              "allocations": allocations(compiled, x), "copies": copies(compiled),
              "latency": latency(compiled, x, runs), "rss": peak_rss(lib, runs)}
    print(json.dumps({name: result["latency"]}), flush=True)
    return result


def _cpu() -> dict:
    return {"machine": platform.machine(), "cpus": os.cpu_count(),
            "tvm_num_threads": os.environ.get("TVM_NUM_THREADS", "default"),
            "loadavg_1min": os.getloadavg()[0]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="LeNet-5 only, fewer runs")
    parser.add_argument("--no-phone", action="store_true", help="skip the emulated phone")
    parser.add_argument("--models", nargs="+", default=None,
                        help="subset of lenet5 resnet18 style")
    parser.add_argument("--rss-child", nargs=3, metavar=("LIB", "PATH", "RUNS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_child:
        lib, path, runs = args.rss_child
        print(json.dumps(rss_child(lib, path, int(runs))))
        return 0
    import torch

    torch.set_num_threads(1)
    models = args.models or (["lenet5"] if args.quick else ["lenet5", "resnet18", "style"])
    runs = {"lenet5": 200 if args.quick else 1000, "resnet18": 40, "style": 40}
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu": _cpu(), "host": [],
              "phone": None}
    with tempfile.TemporaryDirectory(prefix="mdl_exec_bench_") as tmp:
        for name in models:
            result["host"].append(bench_host(name, runs[name], Path(tmp)))
        if not args.no_phone:
            from executor_phone import bench_phone

            result["phone"] = bench_phone(models if not args.quick else ["lenet5"],
                                          Path(tmp), build_model, quick=args.quick)
    from executor_report import write_results

    write_results(result, RESULTS)
    print((RESULTS / "executor.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
