"""Channel-oriented k-means clustering: merge look-alike channels so the network shrinks.

What it rewrites
----------------
For every prunable group of coupled channels found by `channel_graph.analyze` (C
channels), the channels are clustered with k-means (scikit-learn, seeded) into
``k = round(C * (1 - ratio))`` clusters. A channel's feature vector is everything that
defines it along its whole path: the producers' filters, biases, folded BatchNorm
scales/shifts, depthwise filters. Each cluster is replaced by its centroid, so the
channels of one cluster carry identical values everywhere; one of each is kept, and every
consumer (conv, depthwise chain, dense after flatten) gets the **sum** of its weights over
the cluster's input channels. The result has k channels and computes exactly what the
centroid-replaced network computes (``merge=False`` builds that reference).

With calibration inputs the clustering runs group by group and each group's consumers
are then refitted by ridge least squares to the original network's outputs (the
data-aware refinement shared with mask pruning, see `layerwise` and `ls_recovery`).

The idea is the seed project's "Channels-Oriented K-Means Clustering"; the merge is the
same algebra as Neuron Merging (Kim et al., NeurIPS 2020) and the end state of
Centripetal SGD (Ding et al., CVPR 2019), reached here without training.

Preconditions: weights bound as constants, BatchNorm folded or decomposed (the
`mdl_tvm` prepare stage), one dataflow block, NCHW.
"""

from __future__ import annotations

import warnings

import numpy as np

from mdl_tvm.core.relax_utils import bound_constants
from relay_passes.channel_graph import ChannelGroup, analyze, weight_rows
from relay_passes.channel_rewrite import Edit, rewrite
from relay_passes.config import DEFAULT_CONFIG, CompressConfig, RecoveryConfig, kept_channels
from relay_passes.layerwise import LayerwiseDriver, graph_order
from relay_passes.reports import GroupReport, finish_reports, report_frozen


def channel_features(group: ChannelGroup, consts: dict) -> np.ndarray:
    """Concatenate every per-channel parameter of `group` into one vector per channel."""
    refs = group.producers + group.params
    return np.concatenate([weight_rows(consts, ref) for ref in refs], axis=1)


def kmeans_labels(features: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Cluster labels, renumbered so cluster j's first member precedes cluster j+1's."""
    from sklearn.cluster import KMeans

    if k >= len(features):
        return np.arange(len(features))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate points: fewer distinct clusters than k
        labels = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(features).labels_
    first = {label: i for i, label in reversed(list(enumerate(labels)))}
    order = {label: j for j, label in enumerate(sorted(first, key=first.get))}
    return np.array([order[label] for label in labels])


def cluster_matrices(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(average, membership)``, both ``(k, C)``: centroid rows and consumer sums."""
    k = int(labels.max()) + 1
    member = np.zeros((k, len(labels)))
    member[labels, np.arange(len(labels))] = 1.0
    return member / member.sum(axis=1, keepdims=True), member


def group_edits(group: ChannelGroup, labels: np.ndarray, merge: bool) -> list[Edit]:
    """The edits that cluster `group` (merged to k channels, or centroid-replaced)."""
    average, member = cluster_matrices(labels)
    edits = []
    if merge:
        edits += [Edit(ref, average) for ref in group.producers + group.params]
        edits += [Edit(ref, member) for ref in group.consumers]
    else:
        replace = member.T @ average  # (C, C): each channel becomes its cluster's centroid
        edits += [Edit(ref, replace) for ref in group.producers + group.params]
    return edits


def cluster_channels(mod, config: CompressConfig = DEFAULT_CONFIG, merge: bool = True,
                     func_name: str = "main"):
    """Cluster every prunable channel group of `mod`; returns ``(new_mod, reports)``."""
    graph = analyze(mod, func_name)
    config.check_names(graph.groups)
    consts = bound_constants(mod, func_name)
    edits, depthwise, reports = [], set(), report_frozen(graph, config)
    for group in graph.groups.values():
        if not group.prunable or group.name in config.skip:
            continue
        k = kept_channels(group.channels, config.ratio_for(group.name))
        labels = kmeans_labels(channel_features(group, consts), k, config.seed)
        edits += group_edits(group, labels, merge)
        after = int(labels.max()) + 1 if merge else group.channels
        if merge:
            depthwise.update(group.depthwise)
        reports.append(GroupReport(group.name, group.channels, after,
                                   f"{int(labels.max()) + 1} clusters"))
    new_mod = rewrite(mod, edits, depthwise, set(graph.flatten_reshapes), func_name)
    return new_mod, finish_reports(reports, graph, mod, new_mod)


def cluster_channels_refit(mod, config: CompressConfig, calibration, options=None,
                           func_name: str = "main", runner=None):
    """Data-aware variant: cluster group by group in graph order and refit each group's
    consumers by least squares on `calibration` (see `layerwise`). Returns
    ``(new_mod, reports)``."""
    options = options or RecoveryConfig(recovery="ls")
    graph = analyze(mod, func_name)
    config.check_names(graph.groups)
    order = [g.name for g in graph_order(graph) if g.name not in config.skip]
    reports = report_frozen(graph, config)

    def choose(evidence):
        group = evidence.group
        k = kept_channels(group.channels, config.ratio_for(group.name))
        labels = kmeans_labels(channel_features(group, evidence.consts), k, config.seed)
        average, member = cluster_matrices(labels)
        reports.append(GroupReport(group.name, group.channels, len(average),
                                   f"{len(average)} clusters, least-squares refit"))
        return average, member, False

    new_mod, _ = LayerwiseDriver(mod, config, options, calibration, func_name,
                                 runner).run(order, choose)
    return new_mod, finish_reports(reports, graph, mod, new_mod)


class KMeansChannelClustering:
    """The pass: ``KMeansChannelClustering(config)(mod) -> mod``.

    After a call, ``.reports`` holds one `GroupReport` per channel group.
    `as_tvm_pass()` wraps it as a `tvm.transform` module pass for a `Sequential`.
    """

    def __init__(self, config: CompressConfig = DEFAULT_CONFIG, merge: bool = True,
                 calibration=None, runner=None):
        if not isinstance(config, CompressConfig):
            raise TypeError(f"config must be a CompressConfig, got {type(config).__name__}")
        if calibration is not None and not merge:
            raise ValueError("least-squares refit (calibration=...) needs merge=True")
        self.config, self.merge, self.reports = config, merge, []
        self.calibration, self.runner = calibration, runner

    def __call__(self, mod):
        if self.calibration is not None:
            new_mod, self.reports = cluster_channels_refit(mod, self.config, self.calibration,
                                                         runner=self.runner)
        else:
            new_mod, self.reports = cluster_channels(mod, self.config, self.merge)
        return new_mod

    def as_tvm_pass(self):
        import tvm

        return tvm.transform.module_pass(
            lambda mod, _ctx: self(mod), opt_level=0, name="KMeansChannelClustering")
