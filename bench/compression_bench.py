"""Accuracy, size and host latency of channel compression vs ratio: k-means and masks.

    python bench/compression_bench.py                  # lenet5 + alexnet, all methods
    python bench/compression_bench.py --quick          # lenet5, 50 %, 2,000 test images
    python bench/compression_bench.py --models lenet5 --methods kmeans --ratios 0.5 --out /tmp/c

LeNet-5 and the AlexNet-style CNN are trained on Fashion-MNIST (cached, `mdl_tvm.train`)
and compressed by the pipeline with each method:

* ``kmeans``      k-means channel clustering, no data (`relay_passes.kmeans_cluster`)
* ``kmeans+ls``   the same, consumers refitted by least squares on calibration images
* ``mask``        L1 filter-magnitude masks, committed, no recovery
* ``mask+ls``     the same masks with least-squares recovery (no training)
* ``mask+ft``     masked fine-tuning with splice-back in PyTorch (`mdl_tvm.compiler.finetune`),
                  then committed

Calibration: 1,000 training images. Accuracy: the 10,000 test images, run by the compiled
host library. Latency: median of 200 batch-1 runs. The seed's two points (50 % -> +8.5 %
relative error; 67.5 % -> 7.2 points lost) are marked in the plot.

Writes ``bench/results/compression.json``, ``compression.md`` and ``compression.png``
(``compression-quick.*`` with ``--quick``, so the peer benchmark's accuracy source is never
replaced by a quick run; ``--out``: another directory).
"""

from __future__ import annotations

import copy
import os
import sys
import time
from pathlib import Path

if not __package__:  # run as `python bench/compression_bench.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common  # noqa: E402

RATIOS = (0.25, 0.5, 0.625, 0.675, 0.75)
METHODS = ("kmeans", "kmeans+ls", "mask", "mask+ls", "mask+ft")


def accuracy(compiled, images, labels) -> float:
    """Top-1 accuracy of a compiled host model, one image at a time."""
    hits = sum(int(compiled.run(img[None])[0].argmax() == lab)
               for img, lab in zip(images, labels, strict=True))
    return hits / len(labels)


def compile_variant(model, name, method, ratio, calibration):
    """Compile `model` for the host compressed by `method` (``none``: uncompressed)."""
    import mdl_tvm
    from mdl_tvm import zoo
    from mdl_tvm.compiler.finetune import FinetuneConfig, masked_finetune
    from relay_passes import MaskPruning, RecoveryConfig

    shape = [zoo.INPUT_SHAPES[name]]
    if method == "none":
        return mdl_tvm.compile(model, "host", input_shapes=shape)
    if method == "mask+ft":
        tuned, masks = masked_finetune(copy.deepcopy(model), FinetuneConfig(ratio=ratio),
                                       log=lambda s: None)
        pruner = MaskPruning(options=RecoveryConfig(recovery="none"), masks=masks)
        return mdl_tvm.compile(tuned, "host", input_shapes=shape, compress=pruner)
    kind, _, recover = method.partition("+")
    return mdl_tvm.compile(model, "host", input_shapes=shape, compress=f"{kind}:{ratio}",
                           calibration=calibration if recover == "ls" else None)


def run(models, ratios, methods, limit):
    """Accuracy, latency, MACs and weight bytes of every (model, method, ratio)."""
    import torch

    from mdl_tvm.data import load_fashion_mnist
    from mdl_tvm.train import trained_model

    torch.set_num_threads(os.cpu_count() or 1)
    x, y = load_fashion_mnist("test", limit=limit)
    calibration, _ = load_fashion_mnist("train", limit=1000)
    rows = []
    for name in models:
        model = trained_model(name)
        for method, ratio in [("none", 0.0)] + [(m, r) for m in methods for r in ratios]:
            start = time.perf_counter()
            compiled = compile_variant(model, name, method, ratio, calibration)
            seconds = time.perf_counter() - start
            acc = accuracy(compiled, x, y)
            lat = compiled.benchmark(x[:1], repeat=200, warmup=20)["median_ms"]
            rows.append({"model": name, "method": method, "ratio": ratio, "accuracy": acc,
                         "latency_ms": lat, "macs": compiled.stats.macs,
                         "weight_bytes": compiled.stats.weight_bytes,
                         "compress_s": round(seconds, 1)})
            print(f"{name:8s} {method:9s} {ratio:5.3f}  acc {acc:.4f}  {lat:.3f} ms  "
                  f"MACs {compiled.stats.macs:,}  ({seconds:.0f} s)", flush=True)
    return rows


def markdown(rows: list, meta: dict) -> str:
    """The results table: accuracy, points lost, latency and size against the base."""
    base = {r["model"]: r for r in rows if r["method"] == "none"}
    lines = [f"Channel compression on Fashion-MNIST ({meta['date']}, `{meta['command']}`, "
             f"{meta['wall_s']} s)", "",
             "| model | method | removed | top-1 | points lost | error vs base (rel.) | "
             "latency ms | speed-up | MACs | weight bytes |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b = base[r["model"]]
        rel = ((1 - r["accuracy"]) / max(1 - b["accuracy"], 1e-9) - 1) * 100
        lines.append(
            f"| {r['model']} | {r['method']} | {r['ratio']:.1%} | {r['accuracy']:.4f} | "
            f"{(b['accuracy'] - r['accuracy']) * 100:+.2f} | {rel:+.1f} % | "
            f"{r['latency_ms']:.3f} | {b['latency_ms'] / r['latency_ms']:.2f}x | "
            f"{r['macs']:,} | {r['weight_bytes']:,} |")
    return "\n".join(lines) + "\n"


def plot(rows, base, methods=METHODS):
    """Accuracy vs channels removed per model, one curve per method, the seed's points
    marked (None without matplotlib)."""
    if (plt := common.pyplot()) is None:
        return None
    fig, axes = plt.subplots(1, len(base), figsize=(6 * len(base), 4.2), squeeze=False)
    for ax, name in zip(axes[0], base, strict=True):
        b = base[name]["accuracy"] * 100
        for method in methods:
            pts = sorted((r["ratio"] * 100, r["accuracy"] * 100) for r in rows
                         if r["model"] == name and r["method"] == method)
            if pts:
                ax.plot(*zip(*([(0, b)] + pts), strict=True), marker="o", label=method)
        ax.scatter([50], [100 - (100 - b) * 1.085], marker="*", s=160, color="k",
                   label="seed: 50 % -> +8.5 % rel. error", zorder=5)
        ax.scatter([67.5], [b - 7.2], marker="X", s=110, color="k",
                   label="seed: 67.5 % -> -7.2 points", zorder=5)
        ax.set_title(name)
        ax.set_xlabel("channels removed (%)")
        ax.set_ylabel("Fashion-MNIST test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def main(argv=None) -> int:
    """Command-line entry point (see the module docstring); returns the exit status."""
    parser = common.parser(__doc__, "python bench/compression_bench.py",
                           models=("lenet5", "alexnet"),
                           quick="lenet5 at 50 %% on 2,000 test images")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--ratios", nargs="+", type=float, default=list(RATIOS))
    args = common.parse_args(parser, argv)
    start = time.perf_counter()
    if args.quick:
        rows = run(["lenet5"], [0.5], args.methods, 2000)
    else:
        rows = run(args.models, args.ratios, args.methods, None)
    meta = common.run_meta(args, start, calibration="1,000 Fashion-MNIST training images",
                           seed_reference={"50%": "+8.5% relative error",
                                           "67.5%": "-7.2 points"})
    base = {r["model"]: r for r in rows if r["method"] == "none"}
    stem = "compression-quick" if args.quick else "compression"  # never the full results
    common.write_results(stem, {"meta": meta, "rows": rows}, markdown(rows, meta),
                         plot(rows, base), out=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
