"""Run an exported Relax library on the device itself: needs only TVM's runtime and numpy.

Copy this file to an arm64 Linux device (or run it under the emulator) and call::

    python3 device_runner.py lib.so --inputs a.npy [b.npy ...] --outputs-dir DIR [--repeat N]
                             [--mode plain|copy-io|zero-copy] [--count-calls FILE]

It loads ``lib.so`` with ``tvm.runtime.load_module``, makes a Relax VM on the CPU, runs
``main`` N times on the inputs and writes the last outputs as ``DIR/out0.npy``,
``DIR/out1.npy``, ... (tuples flattened in order). Exit code 0 on success, 2 on bad arguments.
It imports nothing from the project, so the device needs no compiler.

Modes (what one of the N runs does):

* ``plain``     ``main(*inputs)`` on input tensors made once (the VM allocates
                intermediates and outputs from its pool every run);
* ``copy-io``   the usual host call path: inputs copied into new tensors, ``main``,
                outputs copied out to numpy, every run;
* ``zero-copy`` ``main_zc`` (see `deploy.zero_copy`) on input, output and workspace
                tensors allocated once: no copy, no allocation per run.

``--count-calls FILE`` counts the VM's call instructions (kernels and builtins such as
``vm.builtin.alloc_storage``) over the N runs with a VM instrument and writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _flatten(value, out: list) -> list:
    if hasattr(value, "numpy"):
        out.append(value.numpy())
    else:
        for item in value:
            _flatten(item, out)
    return out


MODES = ("plain", "copy-io", "zero-copy")


def _zero_copy_step(vm, dev, arrays: list):
    """Allocate main_zc's buffers once, fill the inputs; returns (step, output tensors)."""
    import json

    import tvm

    plan = json.loads(bytes(vm["mdl_zc_plan"]().numpy()).decode())
    ins = [tvm.runtime.empty(tuple(s["shape"]), s["dtype"], dev) for s in plan["inputs"]]
    outs = [tvm.runtime.empty(tuple(s["shape"]), s["dtype"], dev) for s in plan["outputs"]]
    workspace = tvm.runtime.empty((plan["workspace_bytes"],), "uint8", dev)
    if len(arrays) != len(ins):
        raise SystemExit(f"main_zc takes {len(ins)} input(s), got {len(arrays)} .npy files")
    for tensor, arr in zip(ins, arrays, strict=True):
        tensor.copyfrom(arr)
    vm.save_function(plan["function"], "mdl_zc_run", *ins, *outs, workspace,
                     include_return=False)
    return vm["mdl_zc_run"], outs


def run(lib_path: str, input_paths: list[str], outputs_dir: str, repeat: int = 1,
        mode: str = "plain", count_calls: str | None = None) -> list[str]:
    """Run ``main`` of a library ``repeat`` times and save its outputs.

    Parameters
    ----------
    lib_path : str
        Library exported with ``export_library`` for this machine.
    input_paths : list of str
        ``.npy`` files, one per model input, in order.
    outputs_dir : str
        Directory for ``out0.npy``, ``out1.npy``, ...
    repeat : int
        Number of runs of ``main`` (at least 1); the last run's outputs are written.
    mode : str
        ``"plain"``, ``"copy-io"`` or ``"zero-copy"`` (see the module docstring).
    count_calls : str, optional
        Write the VM's call counts over the runs to this JSON file.

    Returns
    -------
    list of str
        Paths of the written outputs.
    """
    import numpy as np
    import tvm
    from tvm.runtime.vm import VirtualMachine

    dev = tvm.cpu(0)
    lib = tvm.runtime.load_module(lib_path)
    vm = VirtualMachine(lib, dev)
    arrays = [np.load(p) for p in input_paths]
    if mode == "zero-copy":
        step, outs = _zero_copy_step(vm, dev, arrays)
    elif mode == "copy-io":
        main = vm["main"]

        def step():
            return _flatten(main(*[tvm.runtime.tensor(a, dev) for a in arrays]), [])
    else:
        main, args = vm["main"], [tvm.runtime.tensor(a, dev) for a in arrays]

        def step():
            return main(*args)
    calls: dict = {}
    if count_calls:
        def instrument(func, symbol, before, ret, *args):
            if before:
                calls[str(symbol)] = calls.get(str(symbol), 0) + 1
            return 0

        vm.set_instrument(instrument)
    result = None
    for _ in range(repeat):
        result = step()
    if count_calls:
        vm.set_instrument(None)
        with open(count_calls, "w") as f:
            json.dump({"runs": repeat, "mode": mode, "calls": calls}, f, sort_keys=True)
    os.makedirs(outputs_dir, exist_ok=True)
    paths = []
    results = [o.numpy() for o in outs] if mode == "zero-copy" else (
        result if mode == "copy-io" else _flatten(result, []))
    for i, arr in enumerate(results):
        path = os.path.join(outputs_dir, f"out{i}.npy")
        np.save(path, arr)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("lib", help="exported .so")
    parser.add_argument("--inputs", nargs="+", default=[], metavar="X.npy")
    parser.add_argument("--outputs-dir", required=True, metavar="DIR")
    parser.add_argument("--repeat", type=int, default=1, help="runs of main (default 1)")
    parser.add_argument("--mode", choices=MODES, default="plain",
                        help="call path (default plain; zero-copy needs main_zc)")
    parser.add_argument("--count-calls", metavar="FILE",
                        help="write the VM's call counts over the runs as JSON")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    for path in [args.lib, *args.inputs]:
        if not os.path.isfile(path):
            parser.error(f"no such file: {path}")
    run(args.lib, args.inputs, args.outputs_dir, args.repeat, args.mode, args.count_calls)
    return 0


if __name__ == "__main__":
    sys.exit(main())
