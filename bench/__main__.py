"""Benchmark against peers: the same models on PyTorch eager, ONNX Runtime, NCNN and TVM /
MobileDL (untuned, tuned, compressed), phone instruction counts, memory and accuracy.

    python -m bench                       # the full run (flock /tmp/mdl_heavy.lock ...)
    python -m bench --quick               # LeNet-5 only, a few minutes (CI)
    python -m bench --models lenet5,resnet18 --out /tmp/peers

Host: each engine's artifact is prepared first (`bench.engines.prepare`), then every engine
runs alone in a fresh process (`bench.worker`) with the same thread count: warm-up runs,
then the median of ``--repeat`` runs, and its peak RSS. Phone: instructions per inference
(`bench.phone`) and the phone table, every engine on every model (`bench.phone_peers`,
``phone_peers.{json,md,png}``; ``--quick``: LeNet-5, ``phone_peers-quick.*``).
Accuracy: read from ``bench/results/compression.json`` (`bench.accuracy`).

Writes ``OUT/peers.json``, ``peers.md``, ``peers-latency.png`` and ``peers-compression.png``
(``peers-quick.*`` with ``--quick``, so a quick run never overwrites the full results).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import accuracy, common, engines, phone, phone_peers, report  # noqa: E402
from bench.models import LABELS, MODELS, load_case  # noqa: E402
from mdl_tvm.core.io import cache_root  # noqa: E402

TUNE_TRIALS = {"lenet5": 32, "resnet18": 64}  # full mode; others have no database
BIG = ("resnet18", "mobilenetv2", "style")
RSS_NOTE = ("Peak RSS: `VmHWM` of the worker process (its own high-water mark; "
            "`getrusage().ru_maxrss` would carry over the parent's peak across fork + exec) "
            "after loading the prepared artifact and all runs. In brackets: minus the same "
            "reading taken after the engine's imports and before loading (the idle interpreter: "
            "numpy + the engine's module; torch for PyTorch, `tvm` + `mdl_tvm` for TVM). "
            "Weights: PyTorch state dict, ONNX initializers, NCNN `.bin` file, "
            "MobileDL library constants.")


def _parser() -> argparse.ArgumentParser:
    p = common.parser(__doc__, "python -m bench", models=(), repeat=None, warmup=5, threads=2,
                      quick="LeNet-5 only, 20 runs, one computed accuracy point, phone: LeNet-5")
    p.add_argument("--min-time", type=float, help="seconds of timed runs at least "
                   "(default 1.0; --quick 0.2): small models get more than --repeat runs")
    p.add_argument("--no-phone", action="store_true", help="skip instruction counts")
    p.add_argument("--tuning-root", default=None,
                   help="tuning databases, one directory per model "
                   "(default: <cache>/tuning/bench-host)")
    return p


def _tuning_db(name: str, args, notes: list) -> tuple[Path | None, dict | None]:
    root = Path(args.tuning_root or cache_root("tuning", "bench-host"))
    db = root / name
    if not args.quick and name in TUNE_TRIALS:
        case = load_case(name)
        info = engines.ensure_tuning_db(case, db, TUNE_TRIALS[name], args.threads)
        print(f"[bench] tuned {name}: {json.dumps(info)}", flush=True)
        return db, info
    if (db / "mdl_tuning.json").is_file():
        notes.append(f"TVM tuned, {LABELS[name]}: existing database {db} (not re-tuned).")
        return db, {"db": str(db), "reused": True}
    return None, None


def bench_host(name: str, args, workdir: Path, notes: list) -> tuple[dict, dict | None]:
    """Prepare every engine's artifact for `name` and time each one alone; also returns
    the tuning database's report (or None)."""
    case = load_case(name)
    db, tuning = _tuning_db(name, args, notes)
    start = time.perf_counter()
    prepared = engines.prepare(case, engines.ENGINES, workdir / name, db)
    row: dict = {"input": case.shape_text, "prepare_s": round(time.perf_counter() - start, 1)}
    for engine in engines.ENGINES:
        row[engine] = engines.run_engine(engine, prepared, case, args.repeat, args.warmup,
                                         args.threads, args.min_time)
        print(f"[bench] {name} {engine}: {json.dumps(row[engine])}", flush=True)
    ort = row["onnxruntime"].get("ms")
    for engine in engines.ENGINES:
        if ort and "ms" in row[engine]:
            row[engine]["ratio_to_ort"] = round(row[engine]["ms"] / ort, 3)
        err = row[engine].get("error")
        if err and err != engines.FP16_HOST and not (engine == "tvm_tuned" and db is None):
            notes.append(f"{engines.LABELS[engine]}, {LABELS[name]}: not run — {err}")
    for engine in engines.COMPRESS:
        if row[engine].get("weight_bytes") == row["tvm"].get("weight_bytes"):
            notes.append(f"{engines.LABELS[engine]}, {LABELS[name]}: compression found no "
                         "channel group to shrink (the build equals the uncompressed one).")
    return row, tuning


def _summary_notes(result: dict, args) -> list[str]:
    """Notes on tuning and on the phone builds, from the measured rows."""
    notes = []
    for name, t in result["tuning"].items():
        if "trials" in t:
            notes.append(f"TVM tuned, {LABELS[name]}: {t['trials']} MetaSchedule trials on this "
                         f"host ({t['wall_s'] / 60:.1f} min, database {t['db']}); "
                         f"{t['kept_tasks']} task(s) kept by the whole-model check, "
                         f"{t.get('tuned_functions')} function(s) applied. With 0 applied the "
                         "tuned build is the untuned one, so their difference is timing noise.")
    missing = [LABELS[n] for n, r in result["host"].items() if "ms" not in r["tvm_tuned"]]
    if missing:
        why = ("--quick does not tune" if args.quick else
               f"the full run tunes only {', '.join(LABELS[m] for m in TUNE_TRIALS)}")
        notes.append(f"TVM tuned: not run for {', '.join(missing)} (no tuning database; {why}).")
    big = [LABELS[n] for n, r in result["phone"].items() if "mask" not in r]
    if big:
        notes.append(f"Phone, mask:0.5 not counted for {', '.join(big)}: it keeps as many "
                     "channels per group as kmeans:0.5 (same shapes; the counts of LeNet-5 "
                     "and AlexNet-style are identical).")
    for name, r in result["phone"].items():
        fp32 = r.get("fp32", {})
        for key, v in r.items():
            if "error" in v:
                notes.append(f"Phone {key}, {LABELS[name]}: does not build — {v['error']}")
            elif (key == "fp16" and v.get("source") == "counted"
                  and v.get("instructions") == fp32.get("instructions")):
                notes.append(f"Phone fp16, {LABELS[name]}: the fp16 build is the fp32 build "
                             "(the precision pass converted no operator of this model).")
    return notes


def run(args) -> dict:
    """The whole peer benchmark for the parsed `args`; returns the result dict."""
    start = time.perf_counter()
    names = args.models or (["lenet5"] if args.quick else list(MODELS))
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    import ncnn
    import pnnx

    notes = [
        f"NCNN {ncnn.__version__}: models converted offline by pnnx {pnnx.__version__} "
        "(TorchScript → .param/.bin, fp32 weights); fp16 storage, packing and arithmetic off "
        "in `ncnn.Option` so every engine computes in fp32.",
        "Poem step on NCNN: converted in an equivalent form (`bench.models.NcnnLSTMStep`): the "
        "lookup `embed[token]` as `nn.Embedding` (pnnx leaves a bare tensor index as "
        "`pnnx.Expression`, which NCNN cannot run) and the state as (1, layers, hidden), "
        "since pnnx cannot unbind or stack along axis 0 (taken as the batch axis).",
        "TVM untuned = `mdl_tvm.compile(..., 'host')` with the project's default schedule "
        "rules; TVM's own pipeline without them is 10–80x slower (`bench/results/schedules.md`).",
        "Every engine is timed through its Python API, numpy in and numpy out: ORT "
        "`session.run`, NCNN a new extractor per run, MobileDL its zero-copy executor "
        "(inputs copied into its preset buffers, outputs left in its preset buffers).",
        "Style transfer on a real photo at 1x3x256x256; LeNet-5, "
        "AlexNet-style and the apps with their trained weights.",
    ]
    result: dict = {"meta": {}, "engines": dict(engines.LABELS), "host": {}, "tuning": {},
                    "phone": {}, "notes": notes}
    load_before = common.loadavg()
    with tempfile.TemporaryDirectory(prefix="mdl_peers_") as tmp:
        for name in names:
            print(f"[bench] {name} ...", flush=True)
            result["host"][name], tuning = bench_host(name, args, Path(tmp), notes)
            if tuning:
                result["tuning"][name] = tuning
                tuning["tuned_functions"] = result["host"][name]["tvm_tuned"].get(
                    "tuned_functions")
        if not args.no_phone:
            for name in (["lenet5"] if args.quick else names):
                runs = 1 if name in BIG else (2 if args.quick else 10)
                # mask:0.5 keeps as many channels per group as kmeans:0.5: same shapes, so
                # the big models count the compressed build once (kmeans)
                variants = (("fp32", "fp16", "kmeans") if args.quick or name in BIG
                            else None)
                result["phone"][name] = phone.count_case(load_case(name), Path(tmp) / name,
                                                         runs, variants)
            table = phone_peers.table(["lenet5"] if args.quick else names, args.quick,
                                      args.out, args.command)
            result["phone_peers"] = {"cpu": table["cpu"], "cells": table["cells"]}
            notes.append("Every engine on the phone (ORT, NCNN, MNN, LiteRT beside MobileDL, "
                         f"{table['cpu']}): `phone_peers{'-quick' if args.quick else ''}.md`.")
    notes += _summary_notes(result, args)
    acc = accuracy.from_compression_json()
    if args.quick:
        acc["quick_point"] = accuracy.quick_point(1000)
    result["accuracy"] = acc
    result["meta"] = common.run_meta(
        args, start, quick=args.quick, threads=args.threads, repeat=args.repeat,
        warmup=args.warmup, min_time=args.min_time, loadavg_before=load_before,
        loadavg_after=common.loadavg(), rss_note=RSS_NOTE)
    return result


def write(result: dict, out: Path) -> dict:
    """Write the JSON, markdown and plots; return their paths."""
    stem = "peers-quick" if result["meta"]["quick"] else "peers"
    paths = common.write_results(stem, result, report.markdown(result), out=out)
    paths["latency_png"] = common.save_figure(report.plot_latency(result),
                                              out / f"{stem}-latency.png", dpi=100)
    if result["accuracy"].get("curves"):
        paths["compression_png"] = common.save_figure(
            accuracy.plot_curves(result["accuracy"]["curves"]), out / f"{stem}-compression.png")
    return {k: str(v) for k, v in paths.items() if v is not None}


def main(argv=None) -> int:
    """Command-line entry point (see the module docstring); returns the exit status."""
    parser = _parser()
    args = common.parse_args(parser, argv)
    bad = [n for n in args.models if n not in MODELS]
    if bad:
        parser.error(f"unknown model(s) {', '.join(bad)}; allowed: {', '.join(MODELS)}")
    args.repeat = args.repeat or (20 if args.quick else 30)
    if args.min_time is None:
        args.min_time = 0.2 if args.quick else 1.0
    if args.quick:
        args.warmup = min(args.warmup, 3)
    result = run(args)
    paths = write(result, args.out)
    print(report.markdown(result))
    print(f"[bench] wrote {', '.join(paths.values())} in {result['meta']['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
