"""Where the instructions go on the emulated phone: fp32 vs fp16, kernel by kernel.

    python bench/phone_profile.py                      # lenet5 alexnet
    python bench/phone_profile.py --models lenet5 --runs 5

Per model (batch 1): the fp32 build for ``arm64`` and the fp16 build for ``arm64-fp16``,
profiled by `deploy.kernel_profile.profile_instructions` (QEMU TCG plugin counting per
address, attributed to the library's kernels; the rest is the Relax VM, Python and libc).
Each table shows which kernels reach the 0.5x lane limit and what fp16 does not shrink.
Writes ``bench/results/phone_profile.json`` and ``phone_profile.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
BUILDS = (("fp32", "arm64"), ("fp16", "arm64-fp16"))


def profile_model(name: str, runs: int, workdir: Path) -> dict:
    """``{precision: KernelProfile}`` of zoo model `name`."""
    import mdl_tvm
    from deploy.kernel_profile import profile_instructions
    from mdl_tvm import zoo

    net, shape = zoo.build(name), zoo.INPUT_SHAPES[name]
    x = np.random.default_rng(0).standard_normal(shape).astype("float32")
    out = {}
    for precision, target in BUILDS:
        model = mdl_tvm.compile(net, target, input_shapes=[shape], precision=precision)
        so = model.export(str(workdir / f"{name}-{precision}.so"))
        out[precision] = profile_instructions(so, [x], runs=runs)
        print(f"[profile] {name} {precision}: {out[precision].total:,} instructions",
              flush=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["lenet5", "alexnet"])
    parser.add_argument("--runs", type=int, default=5, help="N in (c(2N)-c(N))/N")
    args = parser.parse_args(argv)
    from deploy.device import atomic_write

    start = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory(prefix="mdl_profile_") as tmp:
        for name in args.models:
            results[name] = profile_model(name, args.runs, Path(tmp))
    command = "python bench/phone_profile.py " + " ".join(sys.argv[1:] if argv is None
                                                           else argv)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": command.strip(),
            "wall_s": round(time.perf_counter() - start)}
    lines = [f"# Instructions per inference by kernel on the emulated phone ({meta['date']})",
             "", f"Command: `{meta['command']}` ({meta['wall_s']} s). fp32 on `arm64`, fp16 on "
             "`arm64-fp16`; QEMU TCG plugin counts per address, attributed to the library's "
             "kernels (`deploy.kernel_profile`); the runtime row is the Relax VM, the TVM "
             "runtime, Python and libc. The 0.5x line is the lane limit (8 fp16 vs 4 fp32).",
             ""]
    for name, profs in results.items():
        lines += [f"## {name}", "", profs["fp16"].markdown(profs["fp32"], ("fp16", "fp32")), ""]
    RESULTS.mkdir(exist_ok=True)
    atomic_write(RESULTS / "phone_profile.md", "\n".join(lines))
    atomic_write(RESULTS / "phone_profile.json", json.dumps(
        {"meta": meta, "models": {n: {p: {"kernels": v.kernels, "total": v.total}
                                      for p, v in profs.items()}
                                  for n, profs in results.items()}}, indent=1))
    print(f"[profile] wrote {RESULTS / 'phone_profile.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
