"""Graph-level compression passes (Relax passes; the folder keeps the project's name).

* `channel_graph`     one channel-dependency analysis shared by every channel pass
* `channel_rewrite`   applies channel edits and rebuilds the graph with smaller shapes
* `kmeans_cluster`    channel-oriented k-means clustering (merge look-alike channels)
* `channel_masks`     keep-masks per group: criteria (magnitude, activation, greedy), disk I/O
* `mask_prune`        mask-based pruning, committed into the graph, with recovery
* `activations`       calibration activations sampled as least-squares rows
* `ls_recovery`       ridge least-squares refit of consumer layers
* `layerwise`         the group-by-group driver shared by mask pruning and data-aware k-means
"""

from .channel_graph import ChannelGraph, ChannelGroup, analyze
from .channel_masks import CRITERIA, ChannelMasks
from .config import CompressConfig, parse_compress
from .kmeans_cluster import GroupReport, KMeansChannelClustering, cluster_channels
from .layerwise import RecoveryConfig
from .mask_prune import MaskPruning, prune_channels

__all__ = [
    "CRITERIA",
    "ChannelMasks",
    "MaskPruning",
    "RecoveryConfig",
    "prune_channels",
    "ChannelGraph",
    "ChannelGroup",
    "CompressConfig",
    "GroupReport",
    "KMeansChannelClustering",
    "analyze",
    "cluster_channels",
    "parse_compress",
]
