"""Default schedules on the emulated phone: instructions per inference before and after.

    python bench/schedules_phone.py                     # lenet5 alexnet, fp32 and fp16
    python bench/schedules_phone.py --models lenet5 --runs 2

Per model (batch 1) and precision (fp32 on ``arm64``, fp16 on ``arm64-fp16``), two builds:
*before*, TVM's plain pipeline (``compile(..., default_schedules=False)``: naive loop nests)
and *after*, MobileDL's default schedules. Instructions retired per inference are counted
by `deploy.emulator.count_instructions` (QEMU TCG plugin, deterministic). The 224x224 zoo
models are left out: their unscheduled builds retire tens of billions of instructions
(hours under the plugin); their after-only counts are in ``bench/results/precision.md``.

Each build is made, run and counted by `bench.phone_build.build_on_phone`; the *after* output is
checked against the *before* output. Writes ``bench/results/schedules_phone.json`` and
``schedules_phone.md`` (``--out``: another directory); the schedules issue's bar is fp16 <=
0.6x the fp32 instructions.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

if not __package__:  # run as `python bench/schedules_phone.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common  # noqa: E402
from bench.phone_build import build_on_phone  # noqa: E402

BUILDS = (("fp32", "arm64"), ("fp16", "arm64-fp16"))


def count_pair(name: str, precision: str, target: str, runs: int, workdir: Path) -> list:
    """Build zoo model `name` without and with the default schedules, export both for
    aarch64, count their instructions per inference and compare their outputs.

    Returns
    -------
    list of dict
        The *before* and the *after* row; the after row has ``rel_error_vs_before``.
    """
    import torch

    from mdl_tvm import zoo

    torch.manual_seed(0)
    net = zoo.build(name).eval()
    x = np.random.default_rng(0).standard_normal(zoo.INPUT_SHAPES[name]).astype("float32")
    rows, before = [], None
    for schedules in (False, True):
        tag = "after" if schedules else "before"
        b = build_on_phone(net, target, [x], workdir, f"{name}-{precision}-{tag}",
                                  runs=runs, run=True, reference=before, timeout=3600,
                                  precision=precision, default_schedules=schedules)
        before = b.output
        rows.append({"model": name, "precision": precision, "target": target, "schedules": tag,
                     "instructions": b.instructions, "runs": runs,
                     "phone_s": round(b.run_s + b.count_s, 1)})
        print(f"{name:10s} {precision:5s} {tag:6s} {b.instructions:>15,} insns "
              f"({rows[-1]['phone_s']:.0f} s)", flush=True)
    rows[-1]["rel_error_vs_before"] = b.rel_error
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    """The before / after table and the output check."""
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


def main(argv=None) -> int:
    """Command-line entry point (see the module docstring); returns the exit status."""
    parser = common.parser(__doc__, "python bench/schedules_phone.py",
                           models=("lenet5", "alexnet"), runs=3)
    args = common.parse_args(parser, argv)
    rows, errors = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            for precision, target in BUILDS:
                pair = count_pair(name, precision, target, args.runs, Path(tmp))
                errors[f"{name} {precision}"] = pair[-1].pop("rel_error_vs_before")
                rows += pair
    meta = common.run_meta(args, models=args.models, rel_error_after_vs_before=errors)
    md = markdown(rows, meta)
    common.write_results("schedules_phone", {"meta": meta, "rows": rows}, md, out=args.out)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
