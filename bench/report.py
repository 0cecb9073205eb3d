"""Markdown report and plots of the peer benchmark (`python -m bench`)."""

from __future__ import annotations

import math

from bench.common import pyplot
from bench.engines import ENGINES, FP16_HOST, LABELS
from bench.models import LABELS as MODEL_LABELS

TABLE_ENGINES = tuple(e for e in ENGINES if e != "ours_fp16")
PHONE_LABELS = {"fp32": "fp32", "fp16": "fp16 (arm64-fp16)", "kmeans": "kmeans:0.5",
                "mask": "mask:0.5"}


def _ms(v: float) -> str:
    return f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 100 else f"{v:.0f}"


def _cell(row: dict) -> str:
    if "error" in row:
        return "n/a¹" if row["error"] == FP16_HOST else "—"
    ratio = row.get("ratio_to_ort")
    return f"{_ms(row['ms'])} ms ({ratio:.2f}x)" if ratio else f"{_ms(row['ms'])} ms"


def latency_table(result: dict) -> list[str]:
    """Median host latency per model and engine, with the ratio to ONNX Runtime."""
    engines = [e for e in TABLE_ENGINES if any(e in r for r in result["host"].values())]
    lines = ["| model | " + " | ".join(LABELS[e] for e in engines) + " |",
             "|---|" + "---:|" * len(engines)]
    for name, row in result["host"].items():
        lines.append(f"| {MODEL_LABELS[name]} {row['input']} | "
                     + " | ".join(_cell(row[e]) if e in row else "" for e in engines) + " |")
    return lines


def memory_table(result: dict) -> list[str]:
    """Weight MiB and peak RSS per model and engine."""
    engines = [e for e in TABLE_ENGINES if any(e in r for r in result["host"].values())]
    lines = ["| model | " + " | ".join(LABELS[e] for e in engines) + " |",
             "|---|" + "---:|" * len(engines)]
    for name, row in result["host"].items():
        cells = []
        for e in engines:
            r = row.get(e, {})
            cells.append("—" if "ms" not in r else
                         f"{r['weight_bytes'] / 2**20:.2f} / {r['rss_peak_mib']:.0f} "
                         f"(+{r['rss_peak_mib'] - r['rss_base_mib']:.0f})")
        lines.append(f"| {MODEL_LABELS[name]} | " + " | ".join(cells) + " |")
    return lines


def phone_table(result: dict) -> list[str]:
    """Instructions per inference per model and build, with the ratio to fp32."""
    lines = ["| model | " + " | ".join(PHONE_LABELS.values()) + " |",
             "|---|" + "---:|" * len(PHONE_LABELS)]
    for name, row in result.get("phone", {}).items():
        fp32 = row.get("fp32", {}).get("instructions")
        cells = []
        for key in PHONE_LABELS:
            r = row.get(key, {})
            if "instructions" not in r:
                cells.append("—")
                continue
            n = r["instructions"]
            text = f"{n / 1e9:.2f} G" if n >= 1e9 else f"{n / 1e6:.2f} M"
            if fp32 and key != "fp32":
                text += f" ({n / fp32:.2f}x)"
            cells.append(text + ("²" if r.get("source") == "precision.json" else ""))
        lines.append(f"| {MODEL_LABELS[name]} | " + " | ".join(cells) + " |")
    return lines


def accuracy_table(result: dict) -> list[str]:
    """Top-1 per model and ratio (rows) and method (columns), points lost in brackets."""
    from bench.accuracy import METHODS

    acc = result.get("accuracy", {})
    rows = acc.get("rows", [])
    lines = ["| model, channels removed | uncompressed | " + " | ".join(METHODS) + " |",
             "|---|---:|" + "---:|" * len(METHODS)]
    keys = list(dict.fromkeys((r["model"], r["ratio"]) for r in rows))
    for model, ratio in keys:
        by = {r["method"]: r for r in rows if (r["model"], r["ratio"]) == (model, ratio)}
        base = next(iter(by.values()))["base_accuracy"]
        cells = [f"{by[m]['accuracy']:.4f} ({-by[m]['points_lost']:+.1f})" if m in by else "—"
                 for m in METHODS]
        lines.append(f"| {MODEL_LABELS[model]}, {ratio:.1%} | {base:.4f} | "
                     + " | ".join(cells) + " |")
    q = acc.get("quick_point")
    if q:
        lines += ["", f"Computed in this run: {MODEL_LABELS[q['model']]} {q['method']}:"
                  f"{q['ratio']:g} on the first {q['test_images']:,} test images: "
                  f"{q['accuracy']:.4f} (uncompressed {q['base_accuracy']:.4f})."]
    return lines


def markdown(result: dict) -> str:
    """The whole report."""
    m = result["meta"]
    lines = [f"# Benchmark against peers{' (quick)' if m['quick'] else ''}", "",
             f"{m['date']}, {m['cpu']} ({m['cores']} cores), {m['threads']} threads for every "
             f"engine, median of at least {m['repeat']} runs and {m['min_time']} s of runs after "
             f"{m['warmup']} warm-up runs, each engine alone in a fresh process. "
             f"Command: `{m['command']}` (wall time {m['wall_s'] / 60:.1f} min; load "
             f"average {m['loadavg_before']} → {m['loadavg_after']}).", "",
             "## Host latency (ratio to ONNX Runtime)", "", *latency_table(result), "",
             f"¹ ours fp16: {FP16_HOST}; see the phone table.",
             "— : not run, see Notes.", "",
             "## Memory: weight MiB / peak RSS MiB (+ over the idle interpreter)", "",
             *memory_table(result), "", m["rss_note"], "",
             "## Emulated arm64 phone: instructions retired per inference", "",
             *phone_table(result), "",
             "Ratios to the fp32 build. ² taken from `bench/results/precision.json` "
             "(same builds). QEMU TCG plugin counts, deterministic.", "",
             "## Fashion-MNIST test accuracy of the compressed variants", "",
             *accuracy_table(result), ""]
    acc = result.get("accuracy", {})
    if acc.get("source"):
        lines += [f"From `bench/results/{acc['source']}` ({acc['date']}, `{acc['command']}`, "
                  "10,000 test images). kmeans / mask: no recovery, the builds timed above; "
                  "+ls: least-squares recovery on 1,000 calibration images; mask+ft: masked "
                  "fine-tuning. Seed: 50 % → +8.5 % relative error (k-means), 67.5 % → "
                  "−7.2 points (mask).",
                  ""]
    lines += ["## Notes", ""] + [f"- {n}" for n in result.get("notes", [])]
    return "\n".join(lines) + "\n"


def plot_latency(result: dict):
    """Grouped bars: latency / ONNX Runtime latency per model and engine (log scale).

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.ticker
    import numpy as np

    plt = pyplot()

    models = list(result["host"])
    engines = [e for e in TABLE_ENGINES if e != "onnxruntime"
               and any("ratio_to_ort" in result["host"][m].get(e, {}) for m in models)]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(models) + 2), 3.8))
    width = 0.8 / max(len(engines), 1)
    for i, e in enumerate(engines):
        vals = [result["host"][m].get(e, {}).get("ratio_to_ort", math.nan) for m in models]
        ax.bar(np.arange(len(models)) + (i - (len(engines) - 1) / 2) * width, vals, width,
               label=LABELS[e])
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%gx"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_yticks([t for t in (0.125, 0.25, 0.5, 1, 2, 4, 8, 16)
                   if 0.1 < t < 2 * max(v.get("ratio_to_ort", 0) for r in result["host"].values()
                                        for v in r.values() if isinstance(v, dict))])
    ax.set_xticks(np.arange(len(models)), [MODEL_LABELS[m] for m in models], fontsize=8)
    ax.set_ylabel("latency / ONNX Runtime (log)")
    ax.set_title(f"Host latency, {result['meta']['threads']} threads (lower is better)")
    ax.grid(axis="y", alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig
