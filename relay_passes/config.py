"""Compression configuration shared by the channel passes, and the ``"kmeans:0.5"`` syntax."""

from __future__ import annotations

from dataclasses import dataclass, field

from relay_passes.channel_layout import layer_of

METHODS = ("kmeans", "mask")


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
    speedup : float, optional
        Instead of one ratio: the model's MACs divided by this (e.g. ``2.0``: half the
        MACs), shared out over the groups by `relay_passes.macs_budget` -- with calibration
        data where removal costs least, without it by one common ratio. `ratio` and
        `per_layer` are then ignored. Spelled ``"mask:2x"`` / ``"kmeans:2x"``.
    """

    ratio: float = 0.5
    per_layer: dict = field(default_factory=dict)
    skip: tuple[str, ...] = ()
    seed: int = 0
    speedup: float | None = None

    def __post_init__(self):
        _check_ratio(self.ratio, "ratio")
        for name, ratio in self.per_layer.items():
            _check_ratio(ratio, f"per_layer[{name!r}]")
        if isinstance(self.skip, str):
            raise TypeError("skip must be a tuple of layer names, not a string")
        if self.speedup is not None and (
                isinstance(self.speedup, bool) or not isinstance(self.speedup, (int, float))
                or not self.speedup > 1.0):
            raise ValueError(f"speedup must be a number > 1 (MACs reduction, e.g. 2.0), "
                             f"got {self.speedup!r}")

    def ratio_for(self, name: str) -> float:
        """The ratio of group `name`; a class (``conv3>conv5``) follows its layer's."""
        return float(self.per_layer.get(name, self.per_layer.get(layer_of(name), self.ratio)))

    def skips(self, name: str) -> bool:
        """Whether group `name` (or, for a class ``conv3>conv5``, its layer) is skipped."""
        return name in self.skip or layer_of(name) in self.skip

    def check_names(self, known) -> None:
        """Raise ValueError when `per_layer` or `skip` name a layer the model lacks."""
        known = list(dict.fromkeys([*known, *(layer_of(n) for n in known)]))
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


def kept_channels(channels: int, ratio: float, blocks: int = 1) -> int:
    """Channels kept of `channels` at removal `ratio` (at least one; with `blocks` equal
    blocks, a multiple of `blocks`: the same count in each)."""
    per_block = channels // blocks
    return blocks * max(1, min(per_block, int(round(per_block * (1.0 - ratio)))))


def parse_compress(spec) -> tuple[str, CompressConfig]:
    """Parse ``"kmeans:0.5"`` / ``"mask:0.675"`` / ``"mask:2x"`` (half the MACs) /
    ``(method, CompressConfig)``."""
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[1], CompressConfig):
        method, config = spec
    elif isinstance(spec, str):
        method, _, ratio = spec.partition(":")
        try:
            if ratio.lower().endswith("x"):  # "mask:2x": half the MACs
                config = CompressConfig(speedup=float(ratio[:-1]))
            else:
                config = CompressConfig(ratio=float(ratio) if ratio else 0.5)
        except ValueError as err:
            raise ValueError(f"bad compress spec {spec!r} (use 'METHOD:RATIO' with RATIO "
                             f"in [0, 1), or 'METHOD:Nx' for N times fewer MACs): {err}"
                             ) from None
    else:
        raise TypeError(
            f"compress must be a string like 'kmeans:0.5' or (method, CompressConfig), "
            f"got {spec!r}"
        )
    if method not in METHODS:
        raise ValueError(f"unknown compression method {method!r}; choose one of {METHODS}")
    return method, config


DEFAULT_CONFIG = CompressConfig()


RECOVERIES = ("none", "compensation", "ls")
CRITERIA = ("auto", "l1", "l2", "activation", "greedy", "redundancy", "refit")
DATA_CRITERIA = ("activation", "greedy", "redundancy", "refit")


@dataclass(frozen=True)
class RecoveryConfig:
    """How masks are chosen and accuracy recovered (see `layerwise` for the algorithm).

    Attributes
    ----------
    criterion : str
        Mask criterion, one of `CRITERIA` (mask pruning only). ``"auto"``: with
        calibration data ``"refit"`` under least-squares recovery and ``"redundancy"``
        otherwise; without data ``"l1"``. ``"refit"``: channels go in the
        order that raises least the error left after the consumers' least-squares refit
        (`refit_select`; needs ``recovery="ls"``, else it falls back to ``"redundancy"``).
        A ``speedup`` is still planned on the compensated costs (`budget_curves`): on
        ResNet-20 at 2x, planning on refit costs lost 0.3 points of top-1.
    recovery : str
        ``"none"``: the channels are removed, nothing else changes. ``"compensation"``:
        each removed channel is regressed on the kept ones and the coefficients folded into
        every consumer. ``"ls"``: compensation, then consumer least squares toward the
        folded weights where the rows outnumber the unknowns by `kappa`. Every step is kept
        only where it lowers the held-out error.
    alphas : tuple of float
        Ridge strengths of the least-squares candidates, relative to the mean diagonal of
        ``X^T X``.
    mu : float
        Ridge of the channel regression, relative to the mean diagonal of the kept
        channels' Gram (never 0: exactly dependent channels make it singular).
    kappa : float
        Least squares only where rows >= kappa * unknowns.
    holdout : float
        Fraction of calibration samples held out to decide each step.
    min_holdout : int
        Held-out samples at least.
    min_samples : int
        Calibration samples required for data-driven recovery or criteria.
    improvement : float
        A more complex candidate must lower the held-out error by more than this fraction.
    intercept : bool
        Also try the compensation with an intercept (folded into the consumer's bias).
    positions : int
        Output pixels sampled per input for the ``activation`` and ``greedy`` criteria.
    max_samples : int
        Calibration inputs used at most.
    max_unknowns : int
        Consumers with more input columns than this get no least squares (memory).
    refit_sweeps : int
        After the walk, refit every consumer this many more times, in graph order, on the
        finished network's inputs against the original network's outputs (held-out
        decision as in the walk; the current weights win unless a refit does better). The
        walk fits a layer before the groups after it are pruned; a sweep costs about one
        more walk.
    relaxed_targets : bool
        For a layer followed by a ReLU or ReLU6, fit the clamped output, not the raw one:
        where the original output is clamped, the target is the current output clamped
        the same way (`channel_stats.relaxed`), so a fit does not spend its freedom on
        values the activation throws away. Off by default: on the trained ResNet-20 at 2x
        it lowers the held-out output error by 2-6 % but moves top-1 only within noise.
    residual_targets : bool
        For a layer whose output is added to a residual (the last conv of a residual block,
        a projection shortcut), fit the *sum*: the target is the original output plus what
        the residual lost upstream (``skip_orig − skip_cur``), so the error the residual
        stream carries is absorbed block by block instead of accumulating (He et al.,
        ICCV 2017, multi-branch networks).
    output_sensitivity : bool
        Plan a MACs budget (``speedup``) on removal curves scaled by how much each group's
        removal moves the model output (`budget_curves.output_scaled`: each group pruned
        alone and recovered from up to 256 fit samples, one walk step per group; ResNet-20:
        ~4 minutes more). Off by default: on the trained ResNet-20 at 2x it lowers the
        held-out output error by ~8 % but moves top-1 only within noise.
    check_model : bool
        Compare the whole recovered model with plain removal on the held-out samples and
        keep plain removal if recovery made it worse (two extra host builds).
    """

    criterion: str = "auto"
    recovery: str = "ls"
    alphas: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1)
    mu: float = 1e-6
    kappa: float = 4.0
    holdout: float = 0.25
    min_holdout: int = 4
    min_samples: int = 8
    improvement: float = 0.01
    intercept: bool = True
    positions: int = 16
    max_samples: int = 1024
    max_unknowns: int = 4096
    refit_sweeps: int = 0
    relaxed_targets: bool = False
    residual_targets: bool = True
    output_sensitivity: bool = False
    check_model: bool = True

    def __post_init__(self):
        if self.criterion not in CRITERIA:
            raise ValueError(f"unknown mask criterion {self.criterion!r}; choose one of "
                             f"{CRITERIA}")
        if self.recovery not in RECOVERIES:
            raise ValueError(f"unknown recovery {self.recovery!r}; choose one of {RECOVERIES}")
        if isinstance(self.alphas, (int, float)) or not all(
                isinstance(a, (int, float)) and a > 0 for a in self.alphas):
            raise TypeError(f"alphas must be a tuple of positive numbers, got {self.alphas!r}")
        if not self.mu > 0:
            raise ValueError(f"mu must be > 0 (dependent channels need it), got {self.mu}")
        if not self.kappa >= 1:
            raise ValueError(f"kappa must be >= 1 (rows per unknown), got {self.kappa}")
        if not 0.0 < self.holdout < 1.0:
            raise ValueError(f"holdout must be in (0, 1), got {self.holdout}")
        if self.min_holdout < 1 or self.min_samples < self.min_holdout + 1:
            raise ValueError("min_holdout must be >= 1 and min_samples > min_holdout")
        if not isinstance(self.refit_sweeps, int) or self.refit_sweeps < 0:
            raise ValueError(f"refit_sweeps must be an int >= 0, got {self.refit_sweeps!r}")
        for name in ("relaxed_targets", "residual_targets", "output_sensitivity",
                     "check_model"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.positions < 1 or self.max_samples < 1 or self.max_unknowns < 1:
            raise ValueError("positions, max_samples and max_unknowns must be >= 1")

    def criterion_for(self, has_data: bool) -> str:
        """The criterion in effect: ``"auto"`` resolved by whether data is given."""
        if self.criterion == "auto":
            return ("refit" if self.recovery == "ls" else "redundancy") if has_data else "l1"
        return self.criterion

    @property
    def needs_data(self) -> bool:
        return self.recovery != "none" or self.criterion in DATA_CRITERIA


DEFAULT_RECOVERY = RecoveryConfig()
