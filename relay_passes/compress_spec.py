"""One parser for compression specs: ``"kmeans:0.5"``, ``"mask:0.5:greedy"``, a pass object.

`make_compressor` is what ``mdl_tvm.compile(compress=...)`` and the CLI's ``--compress`` /
``--masks`` both call; it returns a configured pass (`KMeansChannelClustering` or
`MaskPruning`) or None.
"""

from __future__ import annotations

from relay_passes.activations import Runner
from relay_passes.channel_masks import ChannelMasks
from relay_passes.config import CRITERIA, DATA_CRITERIA, RecoveryConfig, parse_compress
from relay_passes.kmeans_cluster import KMeansChannelClustering
from relay_passes.mask_prune import MaskPruning

COMPRESSORS = (KMeansChannelClustering, MaskPruning)


def make_compressor(compress=None, calibration=None, *, masks=None,
                    runner: Runner | None = None):
    """The compression pass for a spec, or None for no compression.

    Parameters
    ----------
    compress : str, (str, CompressConfig), KMeansChannelClustering, MaskPruning or None
        ``"kmeans:R"`` clusters a fraction R of each group's channels away; ``"mask:R"``
        prunes them (criterion ``auto``: ``refit`` with calibration and least squares,
        filter magnitude without), ``"mask:R:CRITERION"`` by a criterion of `CRITERIA`.
        With `calibration`, both recover on data: compensation and least squares, each
        kept only where it lowers the held-out error (`relay_passes.layerwise`).
    calibration : numpy.ndarray or iterable of arrays, optional
        Inputs ``(N, ...)`` for data-driven criteria and recovery.
    masks : ChannelMasks, str or os.PathLike, optional
        Commit these channel masks (a `ChannelMasks` or a saved ``.npz``) by mask pruning;
        `compress` must then be None.
    runner : callable, optional
        Builds probe graphs for this machine (see `relay_passes.activations`); set on the
        pass when it has none.

    Raises
    ------
    ValueError, TypeError
        For a bad spec, an unknown method or criterion, calibration without compression,
        or a criterion that needs calibration without it.
    """
    if masks is not None:
        if compress is not None:
            raise ValueError("give either masks (commit saved masks) or compress, not both")
        if not isinstance(masks, ChannelMasks):
            masks = ChannelMasks.load(masks)
        options = RecoveryConfig(recovery="ls" if calibration is not None else "none")
        return MaskPruning(options=options, masks=masks, calibration=calibration,
                           runner=runner)
    if compress is None:
        if calibration is not None:
            raise ValueError("calibration= is only used by compression; also give "
                             "compress='mask:RATIO' or 'kmeans:RATIO'")
        return None
    if isinstance(compress, COMPRESSORS):
        if calibration is not None and compress.calibration is None:
            compress.calibration = calibration
        if compress.runner is None:
            compress.runner = runner
        return compress
    criterion = None
    if isinstance(compress, str) and compress.count(":") == 2:
        compress, _, criterion = compress.rpartition(":")
    method, config = parse_compress(compress)
    if method == "kmeans":
        if criterion is not None:
            raise ValueError(f"k-means takes no criterion; got {criterion!r} (use 'kmeans:R')")
        return KMeansChannelClustering(config, calibration=calibration, runner=runner)
    criterion = criterion or "auto"
    if criterion not in CRITERIA:
        raise ValueError(f"unknown mask criterion {criterion!r}; choose one of {CRITERIA}")
    if calibration is None and criterion in DATA_CRITERIA:
        raise ValueError(f"mask criterion {criterion!r} needs calibration inputs: pass "
                         "calibration=ARRAY (N, ...) of training inputs")
    recovery = "ls" if calibration is not None else "none"
    return MaskPruning(config, RecoveryConfig(criterion=criterion, recovery=recovery),
                       calibration=calibration, runner=runner)
