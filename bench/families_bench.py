"""CNN families beyond the zoo (`mdl_tvm.families`): host latency against ONNX Runtime,
correctness against PyTorch, heavy kernels left on a generic path, k-means MACs kept, and
(``--phone``) instructions on the emulated phone against NCNN and ONNX Runtime.

    python bench/families_bench.py                        # all nine families, host
    python bench/families_bench.py --models regnet,resnet50 --repeat 20
    python bench/families_bench.py --phone --models squeezenet   # + cortex-a76 counts
    python bench/families_bench.py --phone-only                  # counts only, merged in

Host: 1x3x224x224, random weights (BatchNorm statistics from random inputs), each runtime
alone in a fresh process with the same thread count, median of ``--repeat`` runs after
warm-up. Phone: one thread, ``cortex-a76``, N / 2N instruction counts of MobileDL fp32
(``arm64``) and fp16 (``arm64-fp16``), NCNN fp32 / fp16 and ONNX Runtime from their aarch64
wheels (`deploy.engines.count_model`), each output checked against PyTorch. Instruction
counts do not depend on what else the machine runs, so ``--phone-only`` counts them alone
(families already counted are skipped) and merges them into the existing results, keeping
their host figures; ``--engines mobiledl mobiledl-fp16`` recounts only those engines of the
given families (after a change to MobileDL, the peers' counts stand).
Writes ``bench/results/families.{json,md}`` (``--out``: another directory).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

if not __package__:  # run as `python bench/families_bench.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common, runtimes  # noqa: E402
from mdl_tvm.core.numerics import median_ms, relative_error  # noqa: E402
from mdl_tvm.families import FAMILIES, INPUT_SHAPE  # noqa: E402

PHONE_ENGINES = ("mobiledl", "mobiledl-fp16", "ncnn", "ncnn-fp16", "ort")


def measure(name: str, runtime: str, args) -> dict:
    """One runtime on one family (run in its own process by `bench_family`)."""
    import numpy as np
    import torch

    import mdl_tvm
    from mdl_tvm.families import build

    torch.set_num_threads(args.threads)
    model = build(name)
    x = np.random.default_rng(0).standard_normal(INPUT_SHAPE).astype("float32")
    if runtime == "onnxruntime":
        session = runtimes.ort_from_torch(model, [x], ["x"], args.threads)
        return {"onnxruntime_ms": median_ms(lambda: session.run(None, {"x": x}), args.repeat,
                                            args.warmup)}
    start = time.perf_counter()
    with warnings.catch_warnings(record=True):
        compiled = mdl_tvm.compile(model, "host", input_shapes=[INPUT_SHAPE])
    row = {"compile_s": round(time.perf_counter() - start, 1), "macs": compiled.stats.macs,
           "slow_paths": [str(s) for s in compiled.slow_paths]}
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    row["rel_error_vs_torch"] = relative_error(compiled.run(x)[0], expected)
    row["ours_ms"] = compiled.benchmark(x, repeat=args.repeat, warmup=args.warmup)["median_ms"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        small = mdl_tvm.compile(model, "host", input_shapes=[INPUT_SHAPE], compress="kmeans:0.5")
    row["kmeans_macs_kept"] = round(small.stats.macs / compiled.stats.macs, 3)
    row["kmeans_left_alone"] = sorted({r["name"] for r in small.compression
                                       if r["channels_after"] == r["channels_before"]})
    row["kmeans_warnings"] = len([w for w in caught if "left untouched" in str(w.message)])
    return row


def bench_family(name: str, args) -> dict:
    row: dict = {}
    for runtime in ("ours", "onnxruntime"):
        row.update(common.run_worker(__file__, "--measure", f"{name}:{runtime}",
                                     *common.forward(args, "repeat", "warmup", "threads"),
                                     threads=args.threads, timeout=3600))
    row["vs_onnxruntime"] = round(row["ours_ms"] / row["onnxruntime_ms"], 2)
    if args.phone:
        row["phone"] = phone_counts(name, args, args.engines or PHONE_ENGINES)
    return row


def phone_counts(name: str, args, engines=PHONE_ENGINES) -> dict:
    """Instructions per inference of each phone engine of `engines` on `name` (or why it
    cannot)."""
    import numpy as np

    from deploy.engines import count_model
    from deploy.peers.errors import EngineRefused
    from mdl_tvm.cli import compile_for_phone
    from mdl_tvm.families import build

    x = np.random.default_rng(0).standard_normal(INPUT_SHAPE).astype("float32")
    out = {}
    for engine in engines:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = count_model((name, build(name), (x,)), engine, runs=args.runs,
                                compile_model=compile_for_phone)
            out[engine] = {"instructions": r.instructions, "rel_error": r.rel_error}
        except (EngineRefused, RuntimeError) as err:
            out[engine] = {"error": common.error_text(err)}
        print(f"[families] {name} {engine}: {json.dumps(out[engine])}", flush=True)
    return out


def markdown(result: dict) -> str:
    lines = ["# CNN families beyond the zoo", "",
             f"{result['meta']['cpu']}, {result['threads']} threads, 1x3x224x224; "
             f"`{result['meta']['command']}`.", "",
             "| family | ours ms | ONNX Runtime ms | ours / ORT | rel. error | heavy ops on a "
             "generic path | kmeans:0.5 MACs kept |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in result["families"].items():
        lines.append(f"| {name} | {r['ours_ms']:.2f} | {r['onnxruntime_ms']:.2f} | "
                     f"{r['vs_onnxruntime']}x | {r['rel_error_vs_torch']:.1e} | "
                     f"{len(r['slow_paths'])} | {r['kmeans_macs_kept']:.2f} |")
    phone = {n: r["phone"] for n, r in result["families"].items() if "phone" in r}
    if phone:
        how = result["meta"].get("phone_commands") or [result["meta"]["command"]]
        lines += ["", "Phone (cortex-a76, 1 thread), instructions per inference; "
                  + ", ".join(f"`{c}`" for c in how) + ":", "",
                  "| family | " + " | ".join(PHONE_ENGINES) + " | fp32 / best peer | "
                  "fp16 / NCNN fp16 |", "|---|" + "---:|" * (len(PHONE_ENGINES) + 2)]
        for name, row in phone.items():
            count = {e: row[e].get("instructions") for e in PHONE_ENGINES}
            cells = [f"{n / 1e6:.1f} M" if n else "–" for n in count.values()]
            peers = [count[e] for e in ("ncnn", "ort") if count[e]]
            cells.append(f"{count['mobiledl'] / min(peers):.2f}x"
                         if count["mobiledl"] and peers else "–")
            cells.append(f"{count['mobiledl-fp16'] / count['ncnn-fp16']:.2f}x"
                         if count["mobiledl-fp16"] and count["ncnn-fp16"] else "–")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    slow = {n: r["slow_paths"] for n, r in result["families"].items() if r["slow_paths"]}
    if slow:
        lines += ["", "Heavy kernels left on a generic path:", ""]
        lines += [f"- {n}: {'; '.join(s)}" for n, s in slow.items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    """Command-line entry point (see the module docstring); returns the exit status."""
    parser = common.parser(__doc__, "python bench/families_bench.py", models=tuple(FAMILIES),
                           repeat=20, warmup=3, threads=2, runs=2)
    parser.add_argument("--phone", action="store_true", help="also count on the phone")
    parser.add_argument("--phone-only", action="store_true",
                        help="count on the phone only, merged into the existing results")
    parser.add_argument("--engines", nargs="+", choices=PHONE_ENGINES,
                        help="count only these phone engines (with --phone-only: recount them, "
                             "keeping the other engines' counts)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = common.parse_args(parser, argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    if common.measure_mode(args, measure):
        return 0
    if args.engines and not (args.phone or args.phone_only):
        parser.error("--engines chooses phone engines: add --phone or --phone-only")
    if args.phone_only:
        return phone_only(args)
    start = time.perf_counter()
    result = {"threads": args.threads, "families": {}}
    for name in args.models:
        print(f"[families] {name} ...", flush=True)
        result["families"][name] = bench_family(name, args)
        print(json.dumps(result["families"][name]), flush=True)
    result["meta"] = common.run_meta(args, start)
    common.write_results("families", result, markdown(result), out=args.out)
    print(markdown(result))
    return 0


def phone_only(args) -> int:
    """Add phone counts to the families of an earlier host run, one family at a time."""
    path = Path(args.out) / "families.json"
    if not path.exists():
        raise SystemExit(f"{path} does not exist: run the host benchmark first")
    result = json.loads(path.read_text())
    for name in args.models:
        row = result["families"].get(name)
        if row is None:
            raise SystemExit(f"{name!r} has no host row in {path}: run it on the host first")
        if args.engines:
            row["phone"] = {**row.get("phone", {}), **phone_counts(name, args, args.engines)}
        elif "phone" in row:
            print(f"[families] {name}: counted already", flush=True)
            continue
        else:
            row["phone"] = phone_counts(name, args)
        commands = result["meta"].setdefault("phone_commands", [])
        if args.command not in commands:
            commands.append(args.command)
        common.write_results("families", result, markdown(result), out=args.out)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
