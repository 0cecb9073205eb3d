"""Graph-level compression passes (Relax passes; the folder keeps the project's name).

* `channel_graph`     one channel-dependency analysis shared by every channel pass
* `channel_rewrite`   applies channel edits and rebuilds the graph with smaller shapes
* `kmeans_cluster`    channel-oriented k-means clustering (merge look-alike channels)
"""

from .channel_graph import ChannelGraph, ChannelGroup, analyze
from .config import CompressConfig, parse_compress
from .kmeans_cluster import GroupReport, KMeansChannelClustering, cluster_channels

__all__ = [
    "ChannelGraph",
    "ChannelGroup",
    "CompressConfig",
    "GroupReport",
    "KMeansChannelClustering",
    "analyze",
    "cluster_channels",
    "parse_compress",
]
