"""Phone instructions per point of `bench/trust_bench.py` (#18, build item 3).

What the emulated phone can measure of a compressed point is its architecture: the count
of instructions one inference retires depends on the layer shapes, not on the weights
(TVM's fp32 kernels have no data-dependent branches). Every point with the same model and
the same MACs has the same kept channels per group (k-means, mask, mask + fine-tuning and
Torch-Pruning at one ratio keep ``round(C * (1 - ratio))`` per group), so each
architecture is built and counted once:

1. **masks** -- the point's channel counts, rebuilt without its recovery: from the
   ``channels`` the bench records per group (``{group: [before, after]}``) as data-free
   per-layer ratios; in rows from before that, a uniform ratio by the data-free
   ``mask:<ratio>`` (L1) and a MACs plan (``speedup``) by the same plan on the same
   calibration images (the plan is made on the original network's removal curves, before
   any recovery; with ``sensitivity`` the groups are also recovered alone, so that plan
   runs with least squares as the bench did, minutes). The host build of those masks with
   no recovery must have the point's MACs exactly, or the architecture is reported as not
   reproduced; its output is the phone's reference.
2. **phone** -- the same masks committed for ``arm64`` (ARMv8.0-A, fp32, the default
   rules), exported, run once on the emulated phone and checked against the host build's
   output on one test image, then counted: ``(count(2N) - count(N)) / N`` instructions per
   inference (`deploy.emulator.count_instructions`, QEMU TCG plugin, deterministic).

The counts go to ``data["phone"]`` of ``compression-trust.json`` keyed by (model, MACs),
so a point measured again later keeps its count; the report divides the base's count by
each point's. Instructions retired are a proxy: they do not see cache misses, memory
bandwidth, SIMD-vs-scalar latency differences or thread scaling (one thread here).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

if not __package__:  # run as `python bench/trust_phone.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common  # noqa: E402
from bench.phone_build import build_on_phone  # noqa: E402
from bench.trust_bench import SHAPE, Bench, compressor  # noqa: E402
from bench.trust_report import write  # noqa: E402

LOCK = "/tmp/mdl_qemu.lock"


def architectures(rows: list[dict]) -> dict[tuple[str, int], dict]:
    """``{(model, macs): row}``: the first row of each architecture, preferring the cheapest
    to rebuild (a base, then a uniform ratio, then a MACs plan)."""
    rank = {"base": 0}
    found = {}
    for r in sorted(rows, key=lambda r: (rank.get(r["part"], 1), bool(r.get("speedup")))):
        found.setdefault((r["model"], int(r["macs"])), r)
    return found


def point_masks(model, row: dict, calibration):
    """``(commit, host)``: the pass committing the masks of `row`'s architecture with no
    recovery (``None``: uncompressed) and its host build, the phone build's reference
    (module docstring, step 1)."""
    import mdl_tvm
    from relay_passes import CompressConfig, MaskPruning, RecoveryConfig

    data_free = RecoveryConfig(criterion="l1", recovery="none")
    if row["part"] == "base" or row["ratio"] == 0.0 and not row.get("speedup"):
        return None, mdl_tvm.compile(model, "host", input_shapes=[SHAPE])
    if row.get("channels"):  # recorded by the bench: {group: [before, after]}
        pruner = MaskPruning(CompressConfig(per_layer={
            name: 1.0 - after / before for name, (before, after) in row["channels"].items()},
            ratio=0.0), data_free)
    elif row.get("speedup"):  # the plan again, on the same images
        recovery = "ls" if row.get("sensitivity") else "none"
        pruner = compressor("mask", recovery, 0.0, calibration[:row["calibration"]],
                            speedup=row["speedup"], residual=bool(row.get("residual")),
                            sensitivity=bool(row.get("sensitivity")))
    else:
        pruner = MaskPruning(CompressConfig(ratio=row["ratio"]), data_free)
    host = mdl_tvm.compile(model, "host", input_shapes=[SHAPE], compress=pruner)
    commit = MaskPruning(options=RecoveryConfig(recovery="none"), masks=pruner.masks)
    if pruner.options.recovery != "none":  # the reference: the same masks, not recovered
        host = mdl_tvm.compile(model, "host", input_shapes=[SHAPE], compress=commit)
    return commit, host


def count_point(model, row: dict, calibration, image, workdir: Path, runs: int) -> dict:
    """Rebuild `row`'s architecture, check it, count it on the phone (module docstring)."""
    start = time.perf_counter()
    commit, host = point_masks(model, row, calibration)
    found = {"model": row["model"], "macs": int(row["macs"]),
             "rebuilt_from": f"{row['part']} {row['method']} ratio {row['ratio']}"
             + (f", {row['speedup']:g}x plan on {row['calibration']} images"
                if row.get("speedup") else "")}
    if int(host.stats.macs) != found["macs"]:
        return {**found, "error": f"not reproduced: the rebuilt masks give "
                f"{int(host.stats.macs):,} MACs, the point has {found['macs']:,} MACs"}
    extra = {} if commit is None else {"compress": commit}
    build = build_on_phone(model, "arm64", [image], workdir,
                                  f"{row['model']}-{found['macs']}", runs=runs,
                                  reference=host.run(image)[0], log=workdir / "phone.log",
                                  **extra)
    return {**found, "instructions": int(build.instructions), "runs": runs,
            "rel_error": float(build.rel_error), "target": "arm64",
            "count_s": round(time.perf_counter() - start, 1)}


def run_phone(bench, args) -> None:
    """Count every architecture in the results that has no count yet (``--recount``: all),
    for `args.models`, and save after each."""
    counted = {(p["model"], p["macs"]): p for p in bench.data.get("phone", [])
               if "instructions" in p and not args.recount}
    todo = [(key, row) for key, row in sorted(architectures(bench.data["rows"]).items())
            if key[0] in args.models and key not in counted]
    print(f"[bench] phone: {len(todo)} architecture(s) to count", flush=True)
    image = bench.x[:1].reshape(SHAPE)
    with tempfile.TemporaryDirectory(prefix="trust-phone-") as tmp, common.qemu_lock(LOCK):
        for (name, macs), row in todo:
            try:
                found = count_point(bench.model(name), row, bench.train_x, image, Path(tmp),
                                    args.runs)
            except Exception as err:  # noqa: BLE001 - reported per architecture
                found = {"model": name, "macs": macs, "error": common.error_text(err)}
            print(f"[bench] phone {name} {macs:,} MACs: {found}", flush=True)
            counted[(name, macs)] = found
            bench.data["phone"] = sorted(counted.values(),
                                         key=lambda p: (p["model"], -p["macs"]))
            bench.data["meta"]["phone"] = common.run_meta(args, bench.start)
            write(bench.data, args.out)


def main(argv=None) -> int:
    parser = common.parser(__doc__, "python bench/trust_phone.py", runs=10,
                           models=("lenet5", "alexnet", "mobilenetv2s", "resnet20"))
    parser.add_argument("--recount", action="store_true",
                        help="count the architectures that have a count too")
    args = common.parse_args(parser, argv)
    args.part, args.test_limit, args.count, args.counts = "phone", 1, 1000, []
    os.environ.setdefault("TVM_NUM_THREADS", "1")
    run_phone(Bench(args), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
