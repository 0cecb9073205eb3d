"""The phone table: every engine x every zoo model and app net, instructions per inference
on the emulated phone, output checked, ratio to the best peer; our compressed builds with
their measured accuracy beside them.

    python -m bench.phone_peers --lock /tmp/mdl_qemu.lock     # the full table (~1.5 h)
    python -m bench.phone_peers --quick                       # LeNet-5 only (tests)
    python -m bench.phone_peers --models lenet5,resnet18 --resume --lock /tmp/mdl_qemu.lock

Every cell is `deploy.engines.count_model`: one thread, QEMU user mode with ``-cpu
cortex-a76`` (the ``arm64-fp16`` profile's CPU model) for every engine, the same seeded
inputs (the trained nets get a real test image / photo / token), N / 2N instruction
counts so start-up cancels, and the output of one run on the phone compared with host
PyTorch fp32 (max relative error). MobileDL fp32 is built for the ``arm64`` profile
(ARMv8.0-A, profile CPU ``cortex-a72``), fp16 for ``arm64-fp16`` (ARMv8.2-A +fullfp16,
``cortex-a76``); both run on the same ``cortex-a76`` as the peers. The peers run from their
aarch64 PyPI wheels (`mdl-tvm device setup --peers`). MobileDL cells (and the peers on
ResNet-18 / MobileNetV2) count N twice and require the same number (``verify``).
``--lock PATH`` takes ``flock(PATH)`` around each cell only, so other phone jobs queue
between cells. Writes ``OUT/phone_peers.{json,md,png}`` (``phone_peers-quick.*`` with
``--quick``) after every cell; ``--resume`` keeps the cells already counted.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

if not __package__:  # run as `python bench/phone_peers.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common  # noqa: E402
from bench.models import LABELS, MODELS, load_case  # noqa: E402

CPU = "cortex-a76"
ORDER = ("lenet5", "mobilenetv2", "resnet18", "alexnet", "poem_step", "style")
OURS = ("mobiledl", "mobiledl-fp16")
PEERS = ("ort", "ncnn", "ncnn-fp16", "mnn", "mnn-fp16", "litert")
FP16 = {"mobiledl-fp16", "ncnn-fp16", "mnn-fp16", "kmeans-fp16", "mask-fp16"}
# compressed MobileDL builds: column -> (count_model engine, compress spec)
COMPRESSED = {"kmeans": ("mobiledl", "kmeans:0.5"), "kmeans-fp16": ("mobiledl-fp16", "kmeans:0.5"),
              "mask": ("mobiledl", "mask:0.5"), "mask-fp16": ("mobiledl-fp16", "mask:0.5")}
NOTES = ("Poem LSTM step on NCNN: the equivalent form `bench.models.NcnnLSTMStep` (nn.Embedding "
        "for the lookup, state laid out (1, layers, hidden)); its error is against that form's "
        "PyTorch output.",
        "Weights: LeNet-5 / AlexNet-style trained on Fashion-MNIST (a real test image), style "
        "transfer trained (the shipped photo at 256x256), poem step trained; ResNet-18 / "
        "MobileNetV2 seeded random weights at 1x3x224x224 (no accuracy to report for their "
        "compressed builds: the trained residual and depthwise nets' curves are in "
        "`compression-trust.md`).",
        "Instructions are not cycles: memory traffic and issue width are invisible to the "
        "count (host wall-clock figures are in `peers.md`).",
        "Poem LSTM step compressed = uncompressed: its gate projections flow into the split "
        "of the four LSTM gates, which the channel analysis leaves untouched (compile warns).")
RECOVERIES = (("ls", "with least-squares recovery"), ("ft", "with masked fine-tuning"))
BUILDS = {"mobiledl": ("arm64", "cortex-a72"), "mobiledl-fp16": ("arm64-fp16", "cortex-a76")}
VERIFY_PEERS = ("resnet18", "mobilenetv2")
BIG = ("resnet18", "mobilenetv2", "style")
HEADS = {"mobiledl": "MobileDL fp32", "mobiledl-fp16": "MobileDL fp16", "ort": "ORT",
         "ncnn": "NCNN fp32", "ncnn-fp16": "NCNN fp16", "mnn": "MNN fp32",
         "mnn-fp16": "MNN fp16", "litert": "LiteRT+XNNPACK", "kmeans": "kmeans:0.5 fp32",
         "kmeans-fp16": "kmeans:0.5 fp16", "mask": "mask:0.5 fp32", "mask-fp16": "mask:0.5 fp16"}


def columns(quick: bool = False) -> tuple[str, ...]:
    """The table's columns in order: ours, the peers, then the compressed builds."""
    return (*OURS, *PEERS) if quick else (*OURS, *PEERS, *COMPRESSED)


def _compiler(compress: str | None):
    """A `deploy.engines.CompileFn` for MobileDL, with channel compression."""
    def build(model, inputs, target, precision, out_path):
        import torch

        import mdl_tvm

        example = None if isinstance(model, str) else tuple(torch.from_numpy(a) for a in inputs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compiled = mdl_tvm.compile(model, target, example_inputs=example,
                                       precision=precision, compress=compress)
        return compiled.export(str(out_path))
    return build


def count_cell(case, column: str, runs: int, verify: bool, lock=None) -> dict:
    """Count one cell; returns its figures, or ``refused`` (the engine's reason) or
    ``error``."""
    from deploy.emulator import recording
    from deploy.engines import count_model
    from deploy.peers.errors import EngineRefused

    engine, compress = COMPRESSED.get(column, (column, None))
    if engine.startswith("ncnn") and case.ncnn_module is not case.module:
        model = (case.name, case.ncnn_module, case.ncnn_inputs)  # same math, see bench.models
    else:
        model = (case.name, case.module, case.inputs)
    start = time.perf_counter()
    try:
        with common.qemu_lock(lock), recording() as records:
            r = count_model(model, engine, cpu=CPU, runs=runs, verify=verify,
                            compile_model=_compiler(compress))
    except EngineRefused as err:
        return {"refused": common.error_text(err)}
    except Exception as err:  # noqa: BLE001 - one failed cell must not lose the table
        return {"error": common.error_text(err)}
    row = {"instructions": r.instructions, "rel_error": r.rel_error, "model_bytes": r.model_bytes,
           "runs": runs, "verified": verify, "count_s": round(time.perf_counter() - start, 1),
           "process_counts": [list(p) for p in records]}
    if engine in BUILDS:
        row["profile"], row["profile_cpu"] = BUILDS[engine]
    if compress:
        row["compress"] = compress
    return row


def add_ratios(cells: dict) -> None:
    """Per model: the best fp32 and fp16 peer, and each cell's ratio to the best peer of
    its precision (fp16 cells: the best fp16 peer) and to the best peer of any precision."""
    for row in cells.values():
        counted = {c: v["instructions"] for c, v in row.items() if "instructions" in v}
        peers = {c: n for c, n in counted.items() if c in PEERS}
        best = {"fp32": min(((n, c) for c, n in peers.items() if c not in FP16), default=None),
                "fp16": min(((n, c) for c, n in peers.items() if c in FP16), default=None),
                "any": min(((n, c) for c, n in peers.items()), default=None)}
        for c, n in counted.items():
            own = best["fp16" if c in FP16 else "fp32"]
            row[c]["best_peer"] = own[1] if own else None
            row[c]["ratio_to_best_peer"] = round(n / own[0], 3) if own else None
            row[c]["ratio_to_best_peer_any"] = round(n / best["any"][0], 3) if best["any"] else None


def accuracy_rows() -> dict:
    """``{(model, method): entry}`` at ratio 0.5 from ``bench/results/compression.json``."""
    from bench.accuracy import from_compression_json

    acc = from_compression_json()
    return {(r["model"], r["method"]): r for r in acc.get("rows", ())
            if abs(r["ratio"] - 0.5) < 1e-9}


def accuracy_text(model: str, column: str, acc: dict) -> str:
    """What compression.json measured for this compressed build, or that nothing was."""
    method = column.split("-")[0]
    entry = acc.get((model, method))
    if entry is None:
        return "accuracy not measured"
    text = (f"{entry['accuracy'] * 100:.2f} % top-1 (uncompressed "
            f"{entry['base_accuracy'] * 100:.2f} %, {entry['points_lost']:.2f} points lost; "
            "host fp32 build)")
    recovered = [(how, acc[(model, f"{method}+{key}")]) for key, how in RECOVERIES
                 if (model, f"{method}+{key}") in acc]
    if recovered:  # recovery changes weights, not shapes: the same instruction count
        text += "; same shapes and count " + ", ".join(
            f"{how} {e['accuracy'] * 100:.2f} %" for how, e in recovered)
    return text + ("; fp16 build's accuracy not measured" if column in FP16 else "")


def _cell_text(v: dict | None) -> str:
    if v is None:
        return "not counted"
    if "instructions" in v:
        ratio = v.get("ratio_to_best_peer")
        return (f"{v['instructions'] / 1e6:.3g} M · {ratio:.2f}x · {v['rel_error']:.1e}"
                if ratio is not None else f"{v['instructions'] / 1e6:.3g} M · {v['rel_error']:.1e}")
    reason = v.get("refused") or v.get("error", "")
    return ("refused: " if "refused" in v else "failed: ") + reason.replace("|", "/")[:160]


def markdown(result: dict) -> str:
    """The phone table and the compressed builds as markdown."""
    meta, cells = result["meta"], result["cells"]
    cols = [c for c in result["columns"] if c not in COMPRESSED]
    lines = ["# The phone table: every engine on the emulated phone", "",
             f"`{meta['command']}` — host {meta.get('cpu')} ({meta.get('cores')} cores, shared), "
             f"{meta.get('date')} UTC, "
             f"{meta.get('wall_s', 0) / 60:.0f} min."
             + "".join(f" Cells kept from `{e['command']}` ({e['date']} UTC, "
                       f"{(e['wall_s'] or 0) / 60:.0f} min)."
                       for e in meta.get("earlier_runs", ())),
             "",
             f"QEMU 7.2 user mode, `-cpu {result['cpu']}` (the `arm64-fp16` profile's CPU model) "
             "for every engine, 1 thread, batch 1, instructions per inference by the N / 2N "
             "method. MobileDL fp32 is built for the `arm64` profile (ARMv8.0-A, profile CPU "
             "`cortex-a72`), fp16 for `arm64-fp16` (ARMv8.2-A +fullfp16, profile CPU "
             "`cortex-a76`). Each cell: **instructions per inference · ratio to the best peer of "
             "the same precision** (fp32 cells: best of ORT, NCNN, MNN, LiteRT fp32; fp16 cells: "
             "best of NCNN fp16, MNN fp16) **· max relative error vs host PyTorch fp32**.", "",
             "| model | " + " | ".join(HEADS[c] for c in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    best = []
    for m, row in cells.items():
        lines.append(f"| {LABELS[m]} | " + " | ".join(_cell_text(row.get(c)) for c in cols) + " |")
        picks = [row.get(c, {}).get("best_peer") for c in ("mobiledl", "mobiledl-fp16")]
        if any(picks):
            best.append(f"{LABELS[m]} {' / '.join(HEADS[p] if p else '–' for p in picks)}")
    if best:
        lines += ["", "Best peer, fp32 / fp16: " + "; ".join(best) + "."]
    comp = [c for c in result["columns"] if c in COMPRESSED]
    if comp:
        lines += ["", "## Our compressed builds (same phone, same inputs)", "",
                  "Relative error is against the *uncompressed* PyTorch model (compression "
                  "changes the function); accuracy from `bench/results/compression.json` "
                  "(Fashion-MNIST, 10,000 test images, host build).", "",
                  "| model | build | instructions | vs MobileDL same precision | ratio to best "
                  "peer | rel. error | accuracy |", "|---|---|---:|---:|---:|---:|---|"]
        for m, row in cells.items():
            for c in comp:
                v = row.get(c)
                if v is None or "instructions" not in v:
                    lines.append(f"| {LABELS[m]} | {HEADS[c]} | {_cell_text(v)} | | | | |")
                    continue
                base = row.get("mobiledl-fp16" if c in FP16 else "mobiledl", {})
                vs = (f"{v['instructions'] / base['instructions']:.2f}x"
                      if "instructions" in base else "–")
                ratio = v.get("ratio_to_best_peer")
                lines.append(f"| {LABELS[m]} | {HEADS[c]} | {v['instructions'] / 1e6:.3g} M | {vs}"
                             f" | {'–' if ratio is None else f'{ratio:.2f}x'} | "
                             f"{v['rel_error']:.1e} | {v.get('accuracy', '')} |")
    lines += ["", "## Determinism", "", result["determinism"], ""]
    if result["notes"]:
        lines += ["## Notes", ""] + [f"- {n}" for n in result["notes"]] + [""]
    if result["missing"]:
        lines += ["## Not counted", ""] + [f"- {n}" for n in result["missing"]] + [""]
    return "\n".join(lines)


def plot(result: dict):
    """Bar chart of every cell's ratio to the best peer of its precision (log scale)."""
    plt = common.pyplot()
    if plt is None:
        return None
    cells, cols = result["cells"], result["columns"]
    fig, ax = plt.subplots(figsize=(max(8, 1.9 * len(cells)), 4.8))
    width = 0.8 / len(cols)
    for j, c in enumerate(cols):
        xs = [i + (j - len(cols) / 2 + 0.5) * width for i in range(len(cells))]
        ys = [row.get(c, {}).get("ratio_to_best_peer") or 0 for row in cells.values()]
        ax.bar(xs, [y if y else float("nan") for y in ys], width, label=HEADS[c],
               hatch="//" if c in COMPRESSED else None)
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_yscale("log")
    from matplotlib.ticker import FuncFormatter

    for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
        axis(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.set_xticks(range(len(cells)), [LABELS[m] for m in cells])
    ax.set_ylabel("instructions / best peer of same precision")
    ax.set_title(f"Emulated phone ({result['cpu']}, 1 thread): ratio to the best peer "
                 "(<1: fewer instructions)")
    ax.legend(fontsize=7, ncol=6, loc="upper center", bbox_to_anchor=(0.5, -0.08))
    fig.tight_layout()
    return fig


def _summaries(result: dict) -> None:
    verified = [(m, c, v) for m, row in result["cells"].items() for c, v in row.items()
                if v.get("verified") and "instructions" in v]
    result["determinism"] = (
        f"{len(verified)} cells counted N inferences twice (`verify=True`): "
        f"{len(verified)} agreed exactly (a difference raises `DeviceError`, which would show "
        "as a failed cell): " + ", ".join(f"{LABELS[m]} {HEADS[c]}" for m, c, _ in verified)
        + ". The whole-process counts of N and 2N runs are in the JSON (`process_counts`).")
    result["missing"] = [f"{LABELS[m]}, {HEADS[c]}: {v.get('error') or v.get('refused')}"
                         for m, row in result["cells"].items() for c, v in row.items()
                         if "instructions" not in v]
    listed = " ".join(result["missing"])
    for m, row in result["cells"].items():
        gone = [HEADS[c] for c in result["columns"]
                if c not in row and f"{LABELS[m]}, {HEADS[c]}:" not in listed]
        if gone:
            what = "every column" if len(gone) == len(result["columns"]) else ", ".join(gone)
            result["missing"].append(f"{LABELS[m]}, {what}: not counted (time budget: the run "
                                     "stopped first)")


def write(result: dict, out: Path) -> dict:
    """Write ``phone_peers[-quick].{json,md,png}``; returns their paths."""
    add_ratios(result["cells"])
    acc = accuracy_rows()
    for name, row in result["cells"].items():
        for c, v in row.items():
            if c in COMPRESSED and "instructions" in v:
                v["accuracy"] = accuracy_text(name, c, acc)
    _summaries(result)
    stem = "phone_peers-quick" if result["meta"].get("quick") else "phone_peers"
    paths = common.write_results(stem, result, markdown(result), out=out)
    fig = plot(result)
    if fig is not None:
        paths["png"] = common.save_figure(fig, Path(out) / f"{stem}.png")
    return {k: str(v) for k, v in paths.items() if v is not None}


def plan(names, cols, measured: set) -> list[tuple[str, str]]:
    """The order cells are counted in, so a time budget cuts the least useful ones: every
    engine on every model but style transfer (the slowest), the compressed builds whose
    accuracy was `measured`, every engine on style transfer, the other compressed builds."""
    engines = [c for c in cols if c not in COMPRESSED]
    comp = [c for c in cols if c in COMPRESSED]
    late = [n for n in names if n == "style"]
    early = [n for n in names if n not in late]
    steps = [(early, engines), ([n for n in names if n in measured], comp), (late, engines),
             ([n for n in names if n not in measured], comp)]
    return [(n, c) for models, group in steps for n in models for c in group]


def table(names, quick: bool, out: Path, command: str, lock=None, resume: bool = False,
          deadline: float | None = None) -> dict:
    """Count every cell of `names` (``--quick``: LeNet-5, no compressed builds, no repeat
    counts), writing the results after each cell; returns the result dict."""
    start = time.perf_counter()
    cols = columns(quick)
    stem = "phone_peers-quick" if quick else "phone_peers"
    old, earlier = {}, []
    if resume and (Path(out) / f"{stem}.json").is_file():
        data = json.loads((Path(out) / f"{stem}.json").read_text())
        old = data["cells"]
        prev_meta = data.get("meta", {})
        earlier = [*prev_meta.get("earlier_runs", []),
                   {k: prev_meta.get(k) for k in ("command", "date", "wall_s")}]

    def meta() -> dict:
        return common.run_meta(argparse_ns(command), start, quick=quick, earlier_runs=earlier)

    acc = accuracy_rows()
    result = {"cpu": CPU, "columns": list(cols), "cells": {}, "notes": list(NOTES),
        "build_targets": {e: {"profile": p, "profile_cpu": c} for e, (p, c) in BUILDS.items()}}
    result["meta"] = meta()
    # a resumed run keeps the counted cells it has not reached yet in every write, and the
    # rows of models it was not asked to count as they were
    cells = {**old, **{name: {c: v for c, v in old.get(name, {}).items() if "instructions" in v}
                       for name in names}}
    result["cells"] = {n: cells[n] for n in sorted(
        cells, key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER))}
    cases: dict = {}
    for name, c in plan(names, cols, {m for m, _ in acc}):
        row = result["cells"][name]
        prev = old.get(name, {}).get(c)
        if prev and "instructions" in prev:  # failed or refused cells are tried again
            row[c] = prev
            continue
        if deadline is not None and time.time() > deadline:
            continue  # listed under "Not counted"
        case = cases.get(name) or cases.setdefault(name, load_case(name))
        verify = not quick and (c in OURS or c in COMPRESSED or name in VERIFY_PEERS)
        runs = 1 if name in BIG else 2 if quick else 5
        row[c] = count_cell(case, c, runs, verify, lock)
        print(f"[phone_peers] {name} {c}: {json.dumps(row[c])[:300]}", flush=True)
        result["meta"] = meta()
        write(result, out)
    result["meta"] = meta()
    write(result, out)
    return result


def argparse_ns(command: str):
    """A namespace `common.run_meta` reads the command line from."""
    import argparse

    return argparse.Namespace(command=command)


def main(argv=None) -> int:
    """Command-line entry point (see the module docstring); returns the exit status."""
    parser = common.parser(__doc__, "python -m bench.phone_peers", models=ORDER,
                           quick="LeNet-5 only, no compressed builds, no repeat counts")
    parser.add_argument("--lock", help="flock this file around each cell (/tmp/mdl_qemu.lock)")
    parser.add_argument("--resume", action="store_true", help="keep the cells already counted")
    parser.add_argument("--render", action="store_true",
                        help="only rewrite the markdown and the plot from the JSON")
    parser.add_argument("--until", help="stop starting cells after this UTC time (HH:MM)")
    args = common.parse_args(parser, argv)
    bad = [n for n in args.models if n not in MODELS]
    if bad:
        parser.error(f"unknown model(s) {', '.join(bad)}; allowed: {', '.join(MODELS)}")
    deadline = None
    if args.until:
        import datetime as dt

        now = dt.datetime.now(dt.timezone.utc)
        hh, mm = map(int, args.until.split(":"))
        deadline = now.replace(hour=hh, minute=mm, second=0).timestamp()
    if args.render:  # rewrite the markdown and the plot from the JSON, counting nothing
        stem = "phone_peers-quick" if args.quick else "phone_peers"
        result = json.loads((Path(args.out) / f"{stem}.json").read_text())
        result["notes"] = list(NOTES)
        write(result, Path(args.out))
        print(markdown(result))
        return 0
    names = ["lenet5"] if args.quick else list(args.models)
    result = table(names, args.quick, Path(args.out), args.command, args.lock, args.resume,
                   deadline)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
