"""Run an exported Relax library on the device itself: needs only TVM's runtime and numpy.

Copy this file to an arm64 Linux device (or run it under the emulator) and call::

    python3 device_runner.py lib.so --inputs a.npy [b.npy ...] --outputs-dir DIR [--repeat N]

It loads ``lib.so`` with ``tvm.runtime.load_module``, makes a Relax VM on the CPU, runs
``main`` N times on the inputs and writes the last outputs as ``DIR/out0.npy``,
``DIR/out1.npy``, ... (tuples flattened in order). Exit code 0 on success, 2 on bad arguments.
It imports nothing from the project, so the device needs no compiler.
"""

from __future__ import annotations

import argparse
import os
import sys


def _flatten(value, out: list) -> list:
    if hasattr(value, "numpy"):
        out.append(value.numpy())
    else:
        for item in value:
            _flatten(item, out)
    return out


def run(lib_path: str, input_paths: list[str], outputs_dir: str, repeat: int = 1) -> list[str]:
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
    main = vm["main"]
    args = [tvm.runtime.tensor(np.load(p), dev) for p in input_paths]
    result = None
    for _ in range(repeat):
        result = main(*args)
    os.makedirs(outputs_dir, exist_ok=True)
    paths = []
    for i, arr in enumerate(_flatten(result, [])):
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
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    for path in [args.lib, *args.inputs]:
        if not os.path.isfile(path):
            parser.error(f"no such file: {path}")
    run(args.lib, args.inputs, args.outputs_dir, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
