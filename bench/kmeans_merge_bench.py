"""Data-free k-means merges compared: centroid vs representative with Neuron Merging's scale.

    python bench/kmeans_merge_bench.py                    # LeNet-5, 25 / 50 / 62.5 / 75 %
    python bench/kmeans_merge_bench.py --models lenet5 alexnet

The two merges `relay_passes.kmeans_cluster` could use without calibration data, applied in
PyTorch to a trained sequential net (conv / linear layers, every layer but the classifier
clustered, a consumer after a flatten edited per spatial block):

* ``centroid``        raw-feature clusters; the kept channel is the cluster's centroid and
                      every consumer sums its weights over the cluster (the data-free pass);
* ``representative``  direction clusters; the cluster's largest member is kept and each
                      consumer reads it with Neuron Merging's scale (the prior of the
                      data-driven pass, `kmeans_cluster.representatives`).

Top-1 on the Fashion-MNIST test split. Writes ``bench/results/compression-kmeans-merge.json``
and ``.md``. Decides which merge the data-free pass uses (issue #18).
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import numpy as np

if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common  # noqa: E402


def merged(model, ratio: float, merge: str):
    """A copy of sequential `model` with every hidden layer's channels k-means merged."""
    import torch

    from relay_passes.config import kept_channels
    from relay_passes.kmeans_cluster import cluster_matrices, kmeans_labels, representatives

    m = copy.deepcopy(model).eval()
    layers = [lay for lay in m.modules() if isinstance(lay, (torch.nn.Conv2d, torch.nn.Linear))]
    w = [lay.weight.detach().double().numpy().copy() for lay in layers]
    b = [lay.bias.detach().double().numpy().copy() for lay in layers]
    for i in range(len(layers) - 1):
        channels = len(w[i])
        k = kept_channels(channels, ratio)
        features = np.concatenate([layers[i].weight.detach().double().numpy().reshape(
            channels, -1), layers[i].bias.detach().double().numpy()[:, None]], axis=1)
        if merge == "centroid":
            produce, consume = cluster_matrices(kmeans_labels(features, k, 0, direction=False))
        else:
            keep, consume = representatives(features, kmeans_labels(features, k, 0))
            produce = np.eye(channels)[np.flatnonzero(keep)]
        w[i], b[i] = np.tensordot(produce, w[i], axes=(1, 0)), produce @ b[i]
        nxt = w[i + 1]
        blocks = nxt.reshape(len(nxt), channels, -1)
        out = np.einsum("ocs,kc->oks", blocks, consume)
        w[i + 1] = (out.reshape(len(nxt), -1) if nxt.ndim == 2
                    else out.reshape((len(nxt), len(consume)) + nxt.shape[2:]))
    for lay, wi, bi in zip(layers, w, b, strict=True):
        lay.weight = torch.nn.Parameter(torch.from_numpy(wi).float())
        lay.bias = torch.nn.Parameter(torch.from_numpy(bi).float())
    return m


def top1(model, x, y) -> float:
    import torch

    with torch.no_grad():
        pred = np.concatenate([model(torch.from_numpy(x[i : i + 500])).argmax(1).numpy()
                               for i in range(0, len(x), 500)])
    return float(np.mean(pred == y))


def main(argv=None) -> int:
    import torch

    from mdl_tvm.data import load_fashion_mnist
    from mdl_tvm.train import trained_model

    parser = common.parser(__doc__, "python bench/kmeans_merge_bench.py", models=("lenet5",))
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.25, 0.5, 0.625, 0.75])
    args = common.parse_args(parser, argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    x, y = load_fashion_mnist("test")
    rows = []
    for name in args.models:
        model = trained_model(name).eval()
        base = top1(model, x, y)
        for ratio in args.ratios:
            row = {"model": name, "ratio": ratio, "base": base}
            for merge in ("centroid", "representative"):
                row[merge] = top1(merged(model, ratio, merge), x, y)
            print(row, flush=True)
            rows.append(row)
    meta = common.run_meta(args, start)
    lines = [f"Data-free k-means merges, Fashion-MNIST test top-1 (`{meta['command']}`, "
             f"{meta['date']})", "", "| model | removed | base | centroid | representative |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['ratio']:.1%} | {r['base']:.4f} | {r['centroid']:.4f} | "
              f"{r['representative']:.4f} |" for r in rows]
    common.write_results("compression-kmeans-merge", {"meta": meta, "rows": rows},
                         "\n".join(lines) + "\n", out=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
