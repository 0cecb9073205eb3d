"""CNN families beyond the zoo (`mdl_tvm.families`): host latency against ONNX Runtime,
correctness against PyTorch, heavy kernels left on a generic path, k-means MACs kept, and
(``--phone``) instructions on the emulated phone against NCNN and ONNX Runtime.

    python bench/families_bench.py                        # all nine families, host
    python bench/families_bench.py --models regnet,resnet50 --repeat 20
    python bench/families_bench.py --phone --models squeezenet   # + cortex-a76 counts
    python bench/families_bench.py --phone-only                  # counts only, merged in

Host: 1x3x224x224, random weights (BatchNorm statistics from random inputs), ours timed as
deployed (the exported library, loaded by `deploy.host_model.load`, so its kernels launch
through `mdl_tvm.core.parallel` unless ``MDL_TVM_PARALLEL=tvm``), both runtimes
in one worker process with the same thread count, timed in ``--rounds`` alternating rounds
(ours, ONNX Runtime, ours, ...) of ``repeat / rounds`` runs; each engine's figure is the
median of its round medians and ``ours / ORT`` the median of the per-round ratios, so a
drift of this shared machine lands on both sides of a ratio instead of between them.
Phone: one thread, ``cortex-a76``, N / 2N instruction counts of MobileDL fp32
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
import tempfile
import time
import warnings
from pathlib import Path

if not __package__:  # run as `python bench/families_bench.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common, runtimes  # noqa: E402
from mdl_tvm.core.numerics import median_ms, relative_error  # noqa: E402
from mdl_tvm.families import FAMILIES, INPUT_SHAPE  # noqa: E402

PHONE_ENGINES = ("mobiledl", "mobiledl-fp16", "ncnn", "ncnn-fp16", "ort")
# Idle time before each timed round: both runtimes' thread pools spin a while after a run,
# and on a 2-core machine a spinning pool slows the other engine (measured: per-round
# ratios alternating 1.9x / 0.55x on RegNet without it, 2.1-2.3x with 0.5 s).
PAUSE_S = 0.3


def measure(name: str, _part: str, args) -> dict:
    """Both runtimes on one family, in one worker process (run by `bench_family`): outputs
    checked, then ``args.rounds`` alternating rounds (ours, then ONNX Runtime) of
    ``repeat / rounds`` timed runs each after one warm-up run; then the k-means build."""
    import numpy as np
    import torch

    import mdl_tvm
    from deploy.host_model import load
    from mdl_tvm.core import parallel
    from mdl_tvm.families import build

    torch.set_num_threads(args.threads)
    model = build(name)
    x = np.random.default_rng(0).standard_normal(INPUT_SHAPE).astype("float32")
    session = runtimes.ort_from_torch(model, [x], ["x"], args.threads)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True):
        compiled = mdl_tvm.compile(model, "host", input_shapes=[INPUT_SHAPE])
    row = {"compile_s": round(time.perf_counter() - start, 1), "macs": compiled.stats.macs,
           "slow_paths": [str(s) for s in compiled.slow_paths]}
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    with tempfile.TemporaryDirectory() as tmp:  # timed as deployed: the exported library
        library = load(compiled.export(os.path.join(tmp, f"{name}.so")))
    row["launcher"] = "mdl" if parallel.launcher() is not None else "tvm"  # as loaded
    row["rel_error_vs_torch"] = relative_error(library.run(x)[0], expected)
    row["ort_rel_error_vs_torch"] = relative_error(session.run(None, {"x": x})[0], expected)
    per_round = max(1, args.repeat // args.rounds)
    engines = {"ours": lambda: library.run(x),
               "onnxruntime": lambda: session.run(None, {"x": x})}
    rounds = {engine: [] for engine in engines}
    for fn in engines.values():
        for _ in range(args.warmup):
            fn()
    for _ in range(args.rounds):
        for engine, fn in engines.items():
            time.sleep(PAUSE_S)  # the other engine's worker threads stop spinning
            rounds[engine].append(median_ms(fn, per_round, warmup=1))
    ratios = np.array(rounds["ours"]) / np.array(rounds["onnxruntime"])
    row.update({"ours_ms": float(np.median(rounds["ours"])),
                "onnxruntime_ms": float(np.median(rounds["onnxruntime"])),
                "vs_onnxruntime": round(float(np.median(ratios)), 2),
                "round_ratios": [round(float(r), 3) for r in ratios],
                "runs_per_round": per_round})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        small = mdl_tvm.compile(model, "host", input_shapes=[INPUT_SHAPE], compress="kmeans:0.5")
    row["kmeans_macs_kept"] = round(small.stats.macs / compiled.stats.macs, 3)
    row["kmeans_left_alone"] = sorted({r["name"] for r in small.compression
                                       if r["channels_after"] == r["channels_before"]})
    row["kmeans_warnings"] = len([w for w in caught if "left untouched" in str(w.message)])
    return row


def bench_family(name: str, args) -> dict:
    row = common.run_worker(__file__, "--measure", f"{name}:all",
                            *common.forward(args, "repeat", "warmup", "threads", "rounds"),
                            threads=args.threads, timeout=3600)
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
             f"{result['meta']['cpu']}, {result['threads']} threads, 1x3x224x224, both engines "
             "in one process, alternating rounds (ratio: median of the per-round ratios); "
             f"`{result['meta']['command']}`.", "",
             "| family | ours ms | ONNX Runtime ms | ours / ORT | per-round ratios | rel. error "
             "| heavy ops on a generic path | kmeans:0.5 MACs kept |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in result["families"].items():
        spread = (f"{min(r['round_ratios']):.2f}–{max(r['round_ratios']):.2f}"
                  if r.get("round_ratios") else "–")
        lines.append(f"| {name} | {r['ours_ms']:.2f} | {r['onnxruntime_ms']:.2f} | "
                     f"{r['vs_onnxruntime']}x | {spread} | {r['rel_error_vs_torch']:.1e} | "
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
                           repeat=30, warmup=3, threads=2, runs=2)
    parser.add_argument("--rounds", type=int, default=6,
                        help="alternating timing rounds per engine (host)")
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
    earlier = _earlier(args.out)
    for name in args.models:
        print(f"[families] {name} ...", flush=True)
        result["families"][name] = bench_family(name, args)
        if "phone" not in result["families"][name] and "phone" in earlier["families"].get(
                name, {}):  # a host rerun keeps the phone counts (they name their command)
            result["families"][name]["phone"] = earlier["families"][name]["phone"]
        print(json.dumps(result["families"][name]), flush=True)
    result["meta"] = common.run_meta(args, start)
    if any("phone" in r for r in result["families"].values()) and not args.phone:
        result["meta"]["phone_commands"] = (earlier["meta"].get("phone_commands")
                                            or [earlier["meta"]["command"]])
    common.write_results("families", result, markdown(result), out=args.out)
    print(markdown(result))
    return 0


def _earlier(out) -> dict:
    """The results already in `out` (empty when there are none)."""
    path = Path(out) / "families.json"
    return json.loads(path.read_text()) if path.exists() else {"families": {}, "meta": {}}


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
