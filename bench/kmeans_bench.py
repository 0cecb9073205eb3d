"""Accuracy and host latency of k-means channel clustering vs compression ratio.

    python bench/kmeans_bench.py                      # lenet5 + alexnet, ratios 0..0.75
    python bench/kmeans_bench.py --models lenet5 --quick

LeNet-5 and the AlexNet-style CNN are trained on Fashion-MNIST (cached weights, see
`mdl_tvm.train`), compressed by `compile(..., compress="kmeans:R")` with no training
after compression, and evaluated on the 10,000 real test images by the compiled host
library. Latency: median of 200 batch-1 runs of the same library. The seed's reference
point (50 % compression -> 8.5 % relative increase of the error) is marked in the plot.

Writes ``bench/results/kmeans.json``, ``kmeans.md`` and ``kmeans.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
RATIOS = (0.0, 0.25, 0.5, 0.625, 0.75)


def accuracy(compiled, images, labels) -> float:
    hits = sum(int(compiled.run(img[None])[0].argmax() == lab)
               for img, lab in zip(images, labels, strict=True))
    return hits / len(labels)


def run(models, ratios, epochs, limit):
    import mdl_tvm
    from mdl_tvm import zoo
    from mdl_tvm.data import load_fashion_mnist
    from mdl_tvm.train import TrainConfig, trained_model

    x, y = load_fashion_mnist("test", limit=limit)
    rows = []
    for name in models:
        model = trained_model(name, TrainConfig(epochs=epochs))
        shape = zoo.INPUT_SHAPES[name]
        for ratio in ratios:
            spec = None if ratio == 0 else f"kmeans:{ratio}"
            start = time.perf_counter()
            compiled = mdl_tvm.compile(model, "host", input_shapes=[shape], compress=spec)
            compile_s = time.perf_counter() - start
            acc = accuracy(compiled, x, y)
            lat = compiled.benchmark(x[:1], repeat=200, warmup=20)["median_ms"]
            rows.append({"model": name, "ratio": ratio, "accuracy": acc, "latency_ms": lat,
                         "macs": compiled.stats.macs, "weight_bytes": compiled.stats.weight_bytes,
                         "compile_s": round(compile_s, 2)})
            print(f"{name:8s} ratio {ratio:5.3f}  acc {acc:.4f}  {lat:.3f} ms  "
                  f"MACs {compiled.stats.macs:,}", flush=True)
    return rows


def write(rows, args):
    RESULTS.mkdir(exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.processor() or
            platform.machine(), "cores": os.cpu_count(), "threads": os.environ.get(
            "TVM_NUM_THREADS", "all"), "command": "python bench/kmeans_bench.py "
            + " ".join(args), "seed_reference": "50% compression -> +8.5% relative error"}
    (RESULTS / "kmeans.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [f"k-means channel clustering, no retraining ({meta['date']}, {meta['command']})",
             "", "| model | removed | top-1 acc | error vs 0 % (relative) | latency ms | "
             "speed-up | MACs | weight bytes |", "|---|---|---|---|---|---|---|---|"]
    base = {r["model"]: r for r in rows if r["ratio"] == 0}
    for r in rows:
        b = base.get(r["model"], r)
        rel = ((1 - r["accuracy"]) / max(1 - b["accuracy"], 1e-9) - 1) * 100
        lines.append(f"| {r['model']} | {r['ratio']:.1%} | {r['accuracy']:.4f} | {rel:+.1f} % | "
                     f"{r['latency_ms']:.3f} | {b['latency_ms'] / r['latency_ms']:.2f}x | "
                     f"{r['macs']:,} | {r['weight_bytes']:,} |")
    (RESULTS / "kmeans.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in base:
        pts = [(r["ratio"] * 100, r["accuracy"] * 100) for r in rows if r["model"] == name]
        ax.plot(*zip(*pts, strict=True), marker="o", label=f"{name} k-means")
        seed_acc = 100 - (100 - base[name]["accuracy"] * 100) * 1.085
        ax.scatter([50], [seed_acc], marker="*", s=120, label=f"seed @50% ({name})")
    ax.set_xlabel("channels removed (%)")
    ax.set_ylabel("Fashion-MNIST test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "kmeans.png", dpi=120)


def main(argv=None):
    import sys

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["lenet5", "alexnet"])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="1,000 test images, 3 ratios")
    args = parser.parse_args(argv)
    ratios = (0.0, 0.5, 0.75) if args.quick else RATIOS
    rows = run(args.models, ratios, args.epochs, 1000 if args.quick else None)
    write(rows, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
