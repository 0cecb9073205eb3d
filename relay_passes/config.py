"""Compression configuration shared by the channel passes, and the ``"kmeans:0.5"`` syntax."""

from __future__ import annotations

from dataclasses import dataclass, field

METHODS = ("kmeans", "mask")
CRITERIA = ("l1", "l2", "activation", "greedy")


@dataclass(frozen=True)
class CompressConfig:
    """How much to compress, layer group by layer group.

    Attributes
    ----------
    ratio : float
        Fraction of each group's channels removed, in [0, 1). A group of C channels keeps
        ``max(1, round(C * (1 - ratio)))``.
    per_layer : dict
        ``{layer_name: ratio}`` overrides; names are the analysis' layer names
        (``conv0``, ``conv1``, ..., ``dense0``; see ``mdl_tvm`` compile reports).
    skip : tuple of str
        Layer groups left untouched.
    seed : int
        Seed of k-means / any randomised selection.
    """

    ratio: float = 0.5
    per_layer: dict = field(default_factory=dict)
    skip: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self):
        _check_ratio(self.ratio, "ratio")
        for name, ratio in self.per_layer.items():
            _check_ratio(ratio, f"per_layer[{name!r}]")
        if isinstance(self.skip, str):
            raise TypeError("skip must be a tuple of layer names, not a string")

    def ratio_for(self, name: str) -> float:
        return float(self.per_layer.get(name, self.ratio))

    def check_names(self, known) -> None:
        """Raise ValueError when `per_layer` or `skip` name a layer the model lacks."""
        known = list(known)
        unknown = sorted(set(self.per_layer) - set(known) | set(self.skip) - set(known))
        if unknown:
            raise ValueError(
                f"unknown layer name(s) {unknown} in the compression config; this model's "
                f"layer groups are: {', '.join(known) or '(none)'}"
            )


def _check_ratio(value, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number in [0, 1), got {value!r}")
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{what} must be in [0, 1) (fraction of channels removed), got {value}")


def kept_channels(channels: int, ratio: float) -> int:
    return max(1, min(channels, int(round(channels * (1.0 - ratio)))))


def parse_compress(spec) -> tuple[str, CompressConfig]:
    """Parse ``"kmeans:0.5"`` / ``"mask:0.675"`` / ``(method, CompressConfig)``."""
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[1], CompressConfig):
        method, config = spec
    elif isinstance(spec, str):
        method, _, ratio = spec.partition(":")
        try:
            config = CompressConfig(ratio=float(ratio) if ratio else 0.5)
        except ValueError as err:
            raise ValueError(f"bad compress spec {spec!r}: {err}") from None
    else:
        raise TypeError(
            f"compress must be a string like 'kmeans:0.5' or (method, CompressConfig), "
            f"got {spec!r}"
        )
    if method not in METHODS:
        raise ValueError(f"unknown compression method {method!r}; choose one of {METHODS}")
    return method, config


DEFAULT_CONFIG = CompressConfig()


RECOVERIES = ("none", "ls")


@dataclass(frozen=True)
class RecoveryConfig:
    """How masks are chosen and accuracy recovered.

    Attributes
    ----------
    criterion : str
        Mask criterion, one of `channel_masks.CRITERIA` (mask pruning only).
    recovery : str
        ``"ls"``: refit consumers by ridge least squares on calibration data; ``"none"``.
    alpha : float
        Ridge strength relative to the mean diagonal of ``X^T X``.
    positions : int
        Output pixels sampled per calibration input and conv consumer.
    max_samples : int
        Calibration inputs used at most.
    """

    criterion: str = "l1"
    recovery: str = "ls"
    alpha: float = 1e-3
    positions: int = 16
    max_samples: int = 1024

    def __post_init__(self):
        if self.criterion not in CRITERIA:
            raise ValueError(f"unknown mask criterion {self.criterion!r}; choose one of "
                             f"{CRITERIA}")
        if self.recovery not in RECOVERIES:
            raise ValueError(f"unknown recovery {self.recovery!r}; choose one of {RECOVERIES}")
        if not self.alpha >= 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha}")
        if self.positions < 1 or self.max_samples < 1:
            raise ValueError("positions and max_samples must be >= 1")

    @property
    def needs_data(self) -> bool:
        return self.recovery == "ls" or self.criterion in ("activation", "greedy")


DEFAULT_RECOVERY = RecoveryConfig()
