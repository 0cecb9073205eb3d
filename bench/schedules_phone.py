"""Default schedules on the emulated phone: instructions per inference before and after.

    python bench/schedules_phone.py                     # lenet5 alexnet, fp32 and fp16
    python bench/schedules_phone.py --models lenet5 --runs 2

Per model (batch 1) and precision (fp32 on ``arm64``, fp16 on ``arm64-fp16``), two builds:
*before*, TVM's plain pipeline (``compile(..., default_schedules=False)``: naive loop nests)
and *after*, MobileDL's default schedules. Instructions retired per inference are counted
by `deploy.emulator.count_instructions` (QEMU TCG plugin, deterministic). The 224x224 zoo
models are left out: their unscheduled builds retire tens of billions of instructions
(hours under the plugin); their after-only counts are in ``bench/results/precision.md``.

Writes ``bench/results/schedules_phone.json`` and ``schedules_phone.md``; the schedules
issue's bar is fp16 <= 0.6x the fp32 instructions.
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

RESULTS = Path(__file__).resolve().parent / "results"
BUILDS = (("fp32", "arm64"), ("fp16", "arm64-fp16"))


def count(name: str, precision: str, target: str, schedules: bool, runs: int,
          workdir: Path) -> dict:
    """Build one variant, export it for aarch64 and count its instructions per inference."""
    import torch

    import mdl_tvm
    from deploy.emulator import count_instructions, run_on_emulator
    from mdl_tvm import zoo

    torch.manual_seed(0)
    shape = zoo.INPUT_SHAPES[name]
    x = np.random.default_rng(0).standard_normal(shape).astype("float32")
    model = mdl_tvm.compile(zoo.build(name).eval(), target, input_shapes=[shape],
                            precision=precision, default_schedules=schedules)
    tag = "after" if schedules else "before"
    so = model.export(str(workdir / f"{name}-{precision}-{tag}.so"))
    start = time.perf_counter()
    out = run_on_emulator(so, [x], timeout=3600)[0]
    insns = count_instructions(so, [x], runs=runs, timeout=3600)
    row = {"model": name, "precision": precision, "target": target, "schedules": tag,
           "instructions": insns, "runs": runs, "phone_s": round(time.perf_counter() - start, 1),
           "output": out}
    print(f"{name:10s} {precision:5s} {tag:6s} {insns:>15,} insns ({row['phone_s']:.0f} s)",
          flush=True)
    return row


def _markdown(rows: list[dict], meta: dict) -> str:
    by = {(r["model"], r["precision"], r["schedules"]): r["instructions"] for r in rows}
    lines = [
        f"## Default schedules on the emulated phone ({meta['date']})", "",
        f"Command: `{meta['command']}`. Instructions retired per inference (QEMU TCG plugin, "
        "aarch64 TVM runtime); fp32 on `arm64`, fp16 on `arm64-fp16` (+fullfp16, fp16 "
        "accumulation, last layer fp32). *before*: TVM's plain pipeline; *after*: MobileDL's "
        "default schedules.", "",
        "| model | fp32 before | fp32 after | fp32 speed-up | fp16 before | fp16 after "
        "| fp16 speed-up | fp16 / fp32 (after) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in meta["models"]:
        f32b, f32a = by[(name, "fp32", "before")], by[(name, "fp32", "after")]
        f16b, f16a = by[(name, "fp16", "before")], by[(name, "fp16", "after")]
        lines.append(f"| {name} | {f32b:,} | {f32a:,} | {f32b / f32a:.1f}x | {f16b:,} "
                     f"| {f16a:,} | {f16b / f16a:.1f}x | {f16a / f32a:.3f}x |")
    lines += ["", "Outputs, after vs before (max |diff| / max |before|): " + ", ".join(
        f"{k}: {v:.1e}" for k, v in meta["rel_error_after_vs_before"].items()), ""]
    return "\n".join(lines)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["lenet5", "alexnet"])
    parser.add_argument("--runs", type=int, default=3, help="counted runs per build")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    rows, errors = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            for precision, target in BUILDS:
                pair = [count(name, precision, target, s, args.runs, Path(tmp))
                        for s in (False, True)]
                before, after = (np.asarray(r.pop("output"), np.float64) for r in pair)
                errors[f"{name} {precision}"] = float(
                    np.abs(after - before).max() / max(np.abs(before).max(), 1e-12))
                rows += pair
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "models": args.models,
            "command": "python bench/schedules_phone.py"
            + (" " + " ".join(argv) if argv else ""),
            "rel_error_after_vs_before": errors}
    RESULTS.mkdir(exist_ok=True)
    _atomic_write(RESULTS / "schedules_phone.json",
                  json.dumps({"meta": meta, "rows": rows}, indent=1))
    _atomic_write(RESULTS / "schedules_phone.md", _markdown(rows, meta))
    print(_markdown(rows, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
