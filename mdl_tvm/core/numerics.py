"""Numbers every part compares or measures by: relative error and median timing."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def relative_error(actual, expected) -> float:
    """``max |actual - expected| / max |expected|``: one number for a whole tensor.

    Both are compared in float64; an all-zero `expected` divides by 1e-12. NaN anywhere
    gives NaN (never a silent 0).
    """
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    if actual.shape != expected.shape:
        raise ValueError(f"shapes differ: {actual.shape} vs {expected.shape}")
    if actual.size == 0:
        return 0.0
    return float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-12))


def time_calls(fn: Callable[[], object], repeat: int = 20, warmup: int = 3,
               min_time: float = 0.0) -> list[float]:
    """Wall-clock milliseconds of `repeat` calls of `fn` after `warmup` calls.

    With `min_time` (seconds), calls continue past `repeat` until that much time is spent,
    so very short functions get enough samples for a stable median.
    """
    if repeat < 1 or warmup < 0:
        raise ValueError(f"repeat must be >= 1 and warmup >= 0, got {repeat}, {warmup}")
    for _ in range(warmup):
        fn()
    times: list[float] = []
    spent = 0.0
    while len(times) < repeat or spent < min_time:
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        times.append(elapsed * 1e3)
        spent += elapsed
    return times


def median_ms(fn: Callable[[], object], repeat: int = 20, warmup: int = 3,
              min_time: float = 0.0) -> float:
    """Median of `time_calls` in milliseconds."""
    return float(np.median(time_calls(fn, repeat, warmup, min_time)))


def summary_ms(times: list[float]) -> dict:
    """``{"median_ms", "min_ms", "max_ms", "repeat"}`` of a list of timings."""
    return {"median_ms": float(np.median(times)), "min_ms": float(np.min(times)),
            "max_ms": float(np.max(times)), "repeat": len(times)}
