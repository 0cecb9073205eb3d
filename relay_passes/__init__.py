"""Graph-level compression passes (Relax passes; the folder keeps the project's name).

* `channel_graph`     one channel-dependency analysis shared by every channel pass
* `channel_layout`    its vocabulary: segments, layouts, weight refs, groups
* `channel_classes`   channels of a group that go different ways (splits, shuffles)
* `shuffle_as_take`   a channel shuffle as one gather, so the analysis can follow it
* `channel_rewrite`   applies channel edits and rebuilds the graph with smaller shapes
* `kmeans_cluster`    channel-oriented k-means clustering (merge look-alike channels)
* `channel_masks`     keep-masks per group: criteria (magnitude, activation, greedy), disk I/O
* `mask_prune`        mask-based pruning, committed into the graph, with recovery
* `activations`       calibration activations sampled as least-squares rows (probe runner)
* `ls_recovery`       ridge least-squares refit of consumer layers
* `layerwise`         the group-by-group driver shared by mask pruning and data-aware k-means
* `reports`           per-group reports (channels, weights, MACs before and after)
* `compress_spec`     one parser for ``"kmeans:0.5"`` / ``"mask:0.5:greedy"`` specs
* `config`            `CompressConfig`, `RecoveryConfig`

Names are imported on first use: ``import relay_passes`` is cheap.
"""

from mdl_tvm.core.lazy import lazy_exports

_EXPORTS = {
    "CRITERIA": "relay_passes.config",
    "CompressConfig": "relay_passes.config",
    "RecoveryConfig": "relay_passes.config",
    "parse_compress": "relay_passes.config",
    "ChannelMasks": "relay_passes.channel_masks",
    "ChannelGraph": "relay_passes.channel_graph",
    "ChannelGroup": "relay_passes.channel_graph",
    "analyze": "relay_passes.channel_graph",
    "GroupReport": "relay_passes.reports",
    "KMeansChannelClustering": "relay_passes.kmeans_cluster",
    "cluster_channels": "relay_passes.kmeans_cluster",
    "MaskPruning": "relay_passes.mask_prune",
    "prune_channels": "relay_passes.mask_prune",
    "make_compressor": "relay_passes.compress_spec",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
