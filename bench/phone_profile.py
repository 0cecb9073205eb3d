"""Where the instructions go on the emulated phone: fp32 vs fp16, kernel by kernel.

    python bench/phone_profile.py                      # lenet5 alexnet
    python bench/phone_profile.py --models lenet5 --runs 5

Per model (batch 1): the fp32 build for ``arm64`` and the fp16 build for ``arm64-fp16``,
profiled by `deploy.kernel_profile.profile_instructions` (QEMU TCG plugin counting per
address, attributed to the library's kernels; the rest is the Relax VM, Python and libc).
Each table shows which kernels reach the 0.5x lane limit and what fp16 does not shrink.
Builds are made and profiled by `bench.phone_build.build_on_phone` (``profile=True``).
Writes ``bench/results/phone_profile.json`` and ``phone_profile.md`` (``--out``: another
directory).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

if not __package__:  # run as `python bench/phone_profile.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common  # noqa: E402
from bench.phone_build import build_on_phone  # noqa: E402

BUILDS = (("fp32", "arm64"), ("fp16", "arm64-fp16"))


def profile_model(name: str, runs: int, workdir: Path) -> dict:
    """``{precision: KernelProfile}`` of zoo model `name`."""
    from mdl_tvm import zoo

    net, shape = zoo.build(name), zoo.INPUT_SHAPES[name]
    x = np.random.default_rng(0).standard_normal(shape).astype("float32")
    out = {}
    for precision, target in BUILDS:
        b = build_on_phone(net, target, [x], workdir, f"{name}-{precision}", runs=runs,
                                  profile=True, precision=precision)
        out[precision] = b.profile
        print(f"[profile] {name} {precision}: {b.instructions:,} instructions", flush=True)
    return out


def markdown(results: dict, meta: dict) -> str:
    """One fp16-vs-fp32 kernel table per model."""
    lines = [f"# Instructions per inference by kernel on the emulated phone ({meta['date']})",
             "", f"Command: `{meta['command']}` ({meta['wall_s']} s). fp32 on `arm64`, fp16 on "
             "`arm64-fp16`; QEMU TCG plugin counts per address, attributed to the library's "
             "kernels (`deploy.kernel_profile`); the runtime row is the Relax VM, the TVM "
             "runtime, Python and libc. The 0.5x line is the lane limit (8 fp16 vs 4 fp32).",
             ""]
    for name, profs in results.items():
        lines += [f"## {name}", "", profs["fp16"].markdown(profs["fp32"], ("fp16", "fp32")), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    """Command-line entry point (see the module docstring); returns the exit status."""
    parser = common.parser(__doc__, "python bench/phone_profile.py",
                           models=("lenet5", "alexnet"), runs=5)
    args = common.parse_args(parser, argv)
    start = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory(prefix="mdl_profile_") as tmp:
        for name in args.models:
            results[name] = profile_model(name, args.runs, Path(tmp))
    meta = common.run_meta(args, start)
    data = {"meta": meta, "models": {n: {p: {"kernels": v.kernels, "total": v.total}
                                         for p, v in profs.items()}
                                     for n, profs in results.items()}}
    paths = common.write_results("phone_profile", data, markdown(results, meta), out=args.out)
    print(f"[profile] wrote {paths['md']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
