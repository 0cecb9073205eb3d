"""Channel-oriented k-means clustering: merge look-alike channels so the network shrinks.

What it rewrites
----------------
For every prunable group of coupled channels found by `channel_graph.analyze` (C
channels), the channels are clustered with k-means (scikit-learn, seeded) into
``k = round(C * (1 - ratio))`` clusters. A channel's feature vector is everything that
defines it along its whole path — the producers' filters, biases, folded BatchNorm
scales/shifts, depthwise filters. Two merges, one per setting:

* **without data** (`cluster_channels`): each cluster is replaced by its centroid, so the
  channels of one cluster carry identical values; one of each is kept and every consumer
  (conv, depthwise chain, dense after flatten, both branches of a residual add) gets the
  **sum** of its weights over the cluster. ``merge=False`` builds the same function with the
  original shapes (every channel replaced by its centroid), for testing.
* **with calibration inputs** (`cluster_channels_refit`): channels are clustered by
  *direction* (unit-length features) and each cluster keeps one real member, its largest;
  every consumer reads the kept channel in place of member j with Neuron Merging's scale
  ``max(cos(f_j, f_rep), 0) * ||f_j|| / ||f_rep||`` (exact for positive multiples under
  ReLU and max-pooling) as the *prior* of its consume matrix, which is then regressed on
  data, group by group, with the held-out gate and least squares of mask pruning
  (`layerwise`, `consumer_fit`). A real member is needed there because the regression
  runs on the current network's kept channel maps.

Why two: measured on the trained LeNet-5 (Fashion-MNIST test top-1, base 0.8665, no data),
the centroid merge keeps 0.775 / 0.576 at 25 / 50 % removed where the representative with
Neuron Merging's scale keeps 0.614 / 0.313 (``python bench/kmeans_merge_bench.py``);
with data, the representative makes the dependent-channel net exact (relative error
< 1e-3, `tests/test_compensation.py`) where the centroid refit gave 0.97.

The idea is the seed project's "Channels-Oriented K-Means Clustering" with the merge of
Neuron Merging (Kim et al., NeurIPS 2020), the end state of Centripetal SGD (Ding et al.,
CVPR 2019) reached without training. ``merge=False`` builds the same function with the
original shapes (each consumer reads its cluster's representative), for testing.

Preconditions: weights bound as constants, BatchNorm folded or decomposed (the
`mdl_tvm` prepare stage), one dataflow block, NCHW.
"""

from __future__ import annotations

import warnings

import numpy as np

from mdl_tvm.core.relax_utils import bound_constants
from relay_passes.budget_curves import planning_curves
from relay_passes.channel_classes import moved_attrs
from relay_passes.channel_graph import analyze
from relay_passes.channel_layout import ChannelGroup, weight_rows
from relay_passes.channel_masks import ChannelMasks
from relay_passes.channel_rewrite import Edit, rewrite
from relay_passes.config import DEFAULT_CONFIG, CompressConfig, RecoveryConfig, kept_channels
from relay_passes.layerwise import LayerwiseDriver, graph_order
from relay_passes.macs_budget import planned_config
from relay_passes.reports import GroupReport, finish_reports, recovery_note, report_frozen
from relay_passes.shuffle_as_take import shuffle_as_take


def channel_features(group: ChannelGroup, consts: dict) -> np.ndarray:
    """Concatenate every per-channel parameter of `group` into one vector per channel."""
    refs = group.producers + group.params
    return np.concatenate([weight_rows(consts, ref) for ref in refs], axis=1)


def kmeans_labels(features: np.ndarray, k: int, seed: int,
                  direction: bool = True, blocks: int = 1) -> np.ndarray:
    """Cluster labels of the feature rows (``direction``: of the unit-length rows),
    renumbered so cluster j's first member precedes cluster j+1's. With `blocks` equal
    runs of rows (the groups of a grouped conv), each run gets ``k / blocks`` clusters of
    its own."""
    from sklearn.cluster import KMeans

    if blocks > 1:
        labels, offset = [], 0
        for part in np.split(features, blocks):
            part_labels = _split_to(kmeans_labels(part, k // blocks, seed, direction),
                                    k // blocks)
            labels.append(part_labels + offset)
            offset += k // blocks
        return np.concatenate(labels)
    if k >= len(features):
        return np.arange(len(features))
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-30)
    unit = unit if direction else features
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate points: fewer distinct clusters than k
        labels = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(unit).labels_
    return _in_order(labels)


def _in_order(labels: np.ndarray) -> np.ndarray:
    """`labels` renumbered so cluster j's first member precedes cluster j+1's."""
    first = {label: i for i, label in reversed(list(enumerate(labels)))}
    order = {label: j for j, label in enumerate(sorted(first, key=first.get))}
    return np.array([order[label] for label in labels])


def _split_to(labels: np.ndarray, k: int) -> np.ndarray:
    """`labels` with exactly ``min(k, len(labels))`` clusters: while k-means found fewer
    (duplicate rows), the last member of the largest cluster becomes a cluster of its own;
    renumbered in order of first members."""
    labels = labels.copy()
    while len(np.unique(labels)) < min(k, len(labels)):
        largest = np.argmax(np.bincount(labels))
        labels[np.flatnonzero(labels == largest)[-1]] = labels.max() + 1
    return _in_order(labels)


def representatives(features: np.ndarray, labels: np.ndarray):
    """``(keep, prior)``: the largest member of each cluster, and the ``(k, C)`` prior of the
    consume matrix (member j read as its representative times Neuron Merging's scale)."""
    norms = np.linalg.norm(features, axis=1)
    reps = sorted(int(np.flatnonzero(labels == c)[np.argmax(norms[labels == c])])
                  for c in np.unique(labels))
    keep = np.zeros(len(labels), bool)
    keep[reps] = True
    row = {labels[r]: i for i, r in enumerate(reps)}
    prior = np.zeros((len(reps), len(labels)))
    for j, label in enumerate(labels):
        rep = reps[row[label]]
        cos = features[j] @ features[rep] / max(norms[j] * norms[rep], 1e-30)
        cos = 1.0 if cos > 1 - 1e-12 else cos  # the same direction up to rounding
        prior[row[label], j] = max(cos, 0.0) * norms[j] / max(norms[rep], 1e-30)
    return keep, prior


def cluster_matrices(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(average, membership)``, both ``(k, C)``: centroid rows and consumer sums."""
    k = int(labels.max()) + 1
    member = np.zeros((k, len(labels)))
    member[labels, np.arange(len(labels))] = 1.0
    return member / member.sum(axis=1, keepdims=True), member


def group_edits(group: ChannelGroup, labels: np.ndarray, merge: bool) -> list[Edit]:
    """The edits that cluster `group` without data (merged to k channels, or
    centroid-replaced with the original shapes)."""
    average, member = cluster_matrices(labels)
    if merge:
        return ([Edit(ref, average) for ref in group.producers + group.params]
                + [Edit(ref, member) for ref in group.consumers])
    replace = member.T @ average  # (C, C): each channel becomes its cluster's centroid
    return [Edit(ref, replace) for ref in group.producers + group.params]


def cluster_channels(mod, config: CompressConfig = DEFAULT_CONFIG, merge: bool = True,
                     func_name: str = "main"):
    """Cluster every prunable channel group of `mod` without data; returns
    ``(new_mod, reports)``."""
    mod = shuffle_as_take(mod, func_name)
    graph = analyze(mod, func_name)
    config.check_names(graph.groups)
    config = planned_config(mod, config, [g.name for g in graph_order(graph)
                                          if not config.skips(g.name)], None, func_name)
    consts = bound_constants(mod, func_name)
    edits, depthwise, reports, kept = [], set(), report_frozen(graph, config), {}
    for group in graph.groups.values():
        if not group.prunable or config.skips(group.name):
            continue
        k = kept_channels(group.channels, config.ratio_for(group.name), group.blocks)
        labels = kmeans_labels(channel_features(group, consts), k, config.seed,
                               direction=False, blocks=group.blocks)
        clusters = int(labels.max()) + 1
        if clusters == group.channels:
            reports.append(GroupReport(group.name, group.channels, group.channels,
                                       "nothing removed"))
            continue
        edits += group_edits(group, labels, merge)
        if merge:
            depthwise.update(group.depthwise)
            kept[group.name] = clusters
        reports.append(GroupReport(group.name, group.channels,
                                   clusters if merge else group.channels,
                                   f"{clusters} clusters, centroid merge (no data)"))
    new_mod = rewrite(mod, edits, depthwise, set(graph.flatten_reshapes), func_name,
                      moves=moved_attrs(graph.moves, kept))
    return new_mod, finish_reports(reports, graph, mod, new_mod)


def cluster_channels_refit(mod, config: CompressConfig, calibration, options=None,
                           func_name: str = "main", runner=None):
    """Data-aware variant: cluster group by group in graph order; each consumer's consume
    matrix is regressed on `calibration` toward the prior, gated on held-out samples (see
    `layerwise`). Returns ``(new_mod, reports, driver, masks)``: ``masks`` keeps each
    cluster's representative."""
    options = options or RecoveryConfig()
    mod = shuffle_as_take(mod, func_name)
    graph = analyze(mod, func_name)
    config.check_names(graph.groups)
    order = [g.name for g in graph_order(graph) if not config.skips(g.name)]
    reports = report_frozen(graph, config)
    driver = LayerwiseDriver(mod, config, options, calibration, func_name, runner)
    if config.speedup is not None:
        curves = planning_curves(driver, order, config.speedup)
        config = driver.config = planned_config(mod, config, order, curves, func_name)

    def choose(evidence):
        group = evidence.group
        k = kept_channels(group.channels, config.ratio_for(group.name), group.blocks)
        features = channel_features(group, evidence.consts)
        keep, prior = representatives(features, kmeans_labels(features, k, config.seed,
                                                              blocks=group.blocks))
        return keep, prior, f"{int(keep.sum())} clusters"

    new_mod, kept = driver.run(order, choose)
    reports += [GroupReport(name, graph.groups[name].channels, int(m.sum()),
                            recovery_note(driver.notes[name], driver.choices.get(name),
                                          options.recovery))
                for name, m in kept.items()]
    return new_mod, finish_reports(reports, graph, mod, new_mod), driver, ChannelMasks(kept)


class KMeansChannelClustering:
    """The pass: ``KMeansChannelClustering(config)(mod) -> mod``.

    With `calibration`, the consume matrices are fitted on data (`options`: a
    `RecoveryConfig`, its criterion unused). After a call, ``.reports`` holds one
    `GroupReport` per channel group (and, with data, ``.masks`` -- each cluster's kept
    representative -- ``.choices`` / ``.model_error`` / ``.consume`` / ``.refits`` /
    ``.sensitivity`` as `MaskPruning`: ``.masks`` and ``.consume`` start
    `mdl_tvm.compiler.finetune.masked_finetune` from the merged network).
    `as_tvm_pass()` wraps it as a `tvm.transform` module pass for a `Sequential`.
    """

    def __init__(self, config: CompressConfig = DEFAULT_CONFIG, merge: bool = True,
                 calibration=None, runner=None, options: RecoveryConfig | None = None):
        if not isinstance(config, CompressConfig):
            raise TypeError(f"config must be a CompressConfig, got {type(config).__name__}")
        if options is not None and not isinstance(options, RecoveryConfig):
            raise TypeError(f"options must be a RecoveryConfig, got {type(options).__name__}")
        if calibration is not None and not merge:
            raise ValueError("recovery on data (calibration=...) needs merge=True")
        self.config, self.merge, self.reports, self.masks = config, merge, [], None
        self.calibration, self.runner, self.options = calibration, runner, options
        self.choices, self.priors, self.model_error = {}, {}, None
        self.consume, self.refits, self.sensitivity = {}, {}, {}

    def __call__(self, mod):
        if self.calibration is not None:
            new_mod, self.reports, driver, self.masks = cluster_channels_refit(
                mod, self.config, self.calibration, self.options, runner=self.runner)
            self.choices, self.priors = driver.choices, driver.priors
            self.consume, self.refits = driver.consume, driver.refits
            self.sensitivity = driver.sensitivity
            self.model_error = driver.model_error
        else:
            new_mod, self.reports = cluster_channels(mod, self.config, self.merge)
        return new_mod

    def as_tvm_pass(self):
        import tvm

        return tvm.transform.module_pass(
            lambda mod, _ctx: self(mod), opt_level=0, name="KMeansChannelClustering")
