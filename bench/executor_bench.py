"""Zero-copy executor vs the plain Relax VM call path, on host and on the emulated phone.

    python bench/executor_bench.py                 # LeNet-5, ResNet-18, style transfer
    python bench/executor_bench.py --quick         # LeNet-5 only, fewer runs
    python bench/executor_bench.py --no-phone      # host only
    python bench/executor_bench.py --quick --no-phone --out /tmp/e

Host paths (the same compiled library, `mdl_tvm.compile(..., target="host")`):

* ``plain``     ``CompiledModel.run(x)``: the project's call path; input copied into the
                preset input of run's own executor (``main_zc``; a library without it
                runs ``main``, which allocates from the VM's pooled allocator), outputs
                copied out to numpy (results before 2026-12-04: ``main`` always);
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

Writes ``bench/results/executor.json``, ``executor.md`` and ``executor.png`` (``--out``:
another directory).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

if not __package__:  # run as `python bench/executor_bench.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common  # noqa: E402
from mdl_tvm.core.numerics import time_calls  # noqa: E402

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

    vm = compiled.vm()
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
            times[name] += time_calls(fn, per_block, warmup=0)
    return {name: {"median_ms": float(np.median(t)), "runs": len(t)}
            for name, t in times.items()}


def rss_child(lib: str, path: str, runs: int) -> dict:
    """In this (fresh, runtime-only TVM) process: load `lib`, run `path`, report memory."""
    import psutil
    import tvm
    from tvm.runtime.vm import VirtualMachine

    from bench.worker import peak_rss_mib
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
    return {"peak_rss_mb": peak_rss_mib(),
            "start_mb": before / 2**20, "loaded_mb": loaded / 2**20,
            "growth_after_warmup_mb": (proc.memory_info().rss - warm) / 2**20}


def peak_rss(lib: str, runs: int) -> dict:
    """Memory of each host path, each in a fresh runtime-only process (`rss_child`)."""
    env = dict(os.environ, TVM_USE_RUNTIME_LIB="1")  # as on a device: no compiler
    return {path: common.run_worker(__file__, "--rss-child", lib, path, runs, cwd=common.ROOT,
                                    env=env)
            for path in HOST_PATHS}


def bench_host(name: str, runs: int, workdir: Path) -> dict:
    """Allocations, copies, latency and memory of the three host paths on model `name`."""
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
    return {**common.cpu_info(), "loadavg_1min": common.loadavg(),
            "tvm_num_threads": os.environ.get("TVM_NUM_THREADS", "default")}


def main(argv=None) -> int:
    """Command-line entry point (see the module docstring); returns the exit status."""
    parser = common.parser(__doc__, "python bench/executor_bench.py", models=(),
                           quick="LeNet-5 only, fewer runs")
    parser.add_argument("--no-phone", action="store_true", help="skip the emulated phone")
    parser.add_argument("--rss-child", nargs=3, metavar=("LIB", "PATH", "RUNS"),
                        help=argparse.SUPPRESS)
    args = common.parse_args(parser, argv)
    if args.rss_child:
        lib, path, runs = args.rss_child
        print(json.dumps(rss_child(lib, path, int(runs))))
        return 0
    import torch

    from bench.executor_phone import bench_phone
    from bench.executor_report import write_results

    torch.set_num_threads(1)
    models = args.models or (["lenet5"] if args.quick else ["lenet5", "resnet18", "style"])
    runs = {"lenet5": 200 if args.quick else 1000, "resnet18": 40, "style": 40}
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu": _cpu(), "command": args.command,
              "host": [], "phone": None}
    with tempfile.TemporaryDirectory(prefix="mdl_exec_bench_") as tmp:
        for name in models:
            result["host"].append(bench_host(name, runs[name], Path(tmp)))
        if not args.no_phone:
            result["phone"] = bench_phone(models if not args.quick else ["lenet5"],
                                          Path(tmp), build_model, quick=args.quick)
    print(write_results(result, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
