"""Fashion-MNIST accuracy of the compressed variants, read from `bench/compression_bench.py`.

The full accuracy sweep (5 methods x 5 ratios x 2 models over the 10,000 test images) took
40 minutes, so the peer benchmark reads ``bench/results/compression.json`` instead of
recomputing it; ``--quick`` computes one small point itself (LeNet-5, k-means 0.5, on the
first test images) so the path stays exercised.
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
COMPRESSION_JSON = RESULTS / "compression.json"
METHODS = ("kmeans", "kmeans+ls", "mask", "mask+ls", "mask+ft")
RATIOS = (0.5, 0.675)
CURVES = ("kmeans", "mask", "kmeans+ls", "mask+ls")
SEED = {"kmeans_50_rel_error_increase_pct": 8.5, "mask_67.5_points_lost": 7.2}


def _entry(row: dict, base: dict) -> dict:
    b, a = base["accuracy"], row["accuracy"]
    return {"model": row["model"], "method": row["method"], "ratio": row["ratio"],
            "accuracy": a, "base_accuracy": b, "points_lost": round((b - a) * 100, 2),
            "rel_error_increase_pct": round(((1 - a) / (1 - b) - 1) * 100, 1),
            "weight_bytes": row.get("weight_bytes"), "base_weight_bytes": base.get("weight_bytes")}


def from_compression_json(path: Path = COMPRESSION_JSON) -> dict:
    """Accuracy of every compressed variant at 50 % and 67.5 % of the channels removed.

    ``kmeans`` and ``mask`` (no recovery) are the builds `compress="kmeans:0.5"` /
    ``"mask:0.5"`` make, as benchmarked for speed; ``+ls`` adds least-squares recovery on
    1,000 calibration images, ``mask+ft`` masked fine-tuning.

    Returns
    -------
    dict
        ``source``, ``date``, ``rows`` (one per model and variant) and the raw ``curves``
        rows for the plot; ``{"error": ...}`` when the file is missing.
    """
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        return {"error": f"cannot read {path}: {err}"}
    rows = data["rows"]
    base = {r["model"]: r for r in rows if r["method"] == "none"}
    picked = [_entry(r, base[r["model"]]) for r in rows
              if r["method"] in METHODS and any(abs(r["ratio"] - x) < 1e-9 for x in RATIOS)]
    return {"source": str(Path(path).name), "date": data["meta"].get("date"),
            "command": data["meta"].get("command"), "test_images": 10000,
            "rows": picked, "curves": [r for r in rows if r["method"] in ("none", *CURVES)]}


def quick_point(limit: int = 1000) -> dict:
    """LeNet-5 (trained), uncompressed and ``kmeans:0.5``, on the first `limit` test images."""
    import numpy as np

    import mdl_tvm
    from mdl_tvm.data import load_fashion_mnist
    from mdl_tvm.train import trained_model

    x, y = load_fashion_mnist("test", limit=limit)
    model = trained_model("lenet5")
    acc = {}
    for label, compress in (("none", None), ("kmeans", "kmeans:0.5")):
        compiled = mdl_tvm.compile(model, "host", input_shapes=[x.shape], compress=compress)
        acc[label] = float(np.mean(compiled.run(x)[0].argmax(1) == y))
    entry = _entry({"model": "lenet5", "method": "kmeans", "ratio": 0.5,
                    "accuracy": acc["kmeans"]}, {"accuracy": acc["none"]})
    entry["test_images"] = limit
    return entry


def plot_curves(curves: list):
    """k-means and mask accuracy curves (and with least squares) with the seed's two points,
    one panel per model (`bench.compression_bench.plot`).

    Returns
    -------
    matplotlib.figure.Figure or None
        None when matplotlib is not installed.
    """
    from bench.compression_bench import plot

    base = {r["model"]: r for r in curves if r["method"] == "none"}
    return plot(curves, base, methods=CURVES)
