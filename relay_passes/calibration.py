"""Calibration data for data-driven compression: checked once, split into fit / held out.

Every check raises with the fix in the message: a wrong shape or dtype names the sample
and the shape the model takes; a NaN or infinity names the sample and the first bad
position; too few samples for recovery say how many to pass. Constant inputs (zero
variance: a blank image, an all-zero array) only warn, since a model may legitimately
see them, but they carry no information about which channels matter.

`split_samples` draws the held-out part by *sample* (a seeded permutation), never by
pixel: the pixels of one image are correlated, so a pixel split would judge a fit on
data it has half seen.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import numpy as np

RECOMMENDED = "pass at least 16 samples; 64 to 256 training images are recommended"


def as_samples(calibration, input_shape: tuple[int, ...]) -> list[np.ndarray]:
    """Validate calibration data: an array ``(N, *input_shape[1:])`` or an iterable of arrays
    of the model's input shape. Returns one float32 array of `input_shape` per sample.

    Raises
    ------
    ValueError
        No data, a sample of the wrong shape, or a sample with NaN / infinity.
    TypeError
        Not an array or iterable, or a non-float sample.
    """
    dims = ", ".join(map(str, input_shape[1:]))
    if calibration is None:
        raise ValueError(
            "recovery and data-driven channel selection need calibration inputs: pass "
            f"calibration=ARRAY of shape (N, {dims}), e.g. a few hundred training images")
    if isinstance(calibration, np.ndarray):
        items = [calibration[i : i + input_shape[0]]
                 for i in range(0, len(calibration), input_shape[0])]
    elif isinstance(calibration, Iterable) and not isinstance(calibration, (str, bytes)):
        items = [np.asarray(item) for item in calibration]
    else:
        raise TypeError(f"calibration must be a numpy array or an iterable of arrays, "
                        f"got {type(calibration).__name__}")
    if not items:
        raise ValueError(f"calibration data is empty; {RECOMMENDED}")
    for i, item in enumerate(items):
        if tuple(item.shape) != tuple(input_shape):
            raise ValueError(
                f"calibration sample {i} has shape {tuple(item.shape)} but the model input is "
                f"{tuple(input_shape)}; give an array (N, {dims})")
        if not np.issubdtype(item.dtype, np.floating):
            raise TypeError(f"calibration sample {i} has dtype {item.dtype}; give float32 data "
                            "(scaled as in training, e.g. x.astype('float32') / 255)")
        bad = ~np.isfinite(item)
        if bad.any():
            where = tuple(int(a[0]) for a in np.nonzero(bad))
            raise ValueError(f"calibration sample {i} holds {item[where]} at index {where}; "
                             "remove or repair non-finite inputs (NaN / inf)")
    samples = [np.ascontiguousarray(item, dtype=np.float32) for item in items]
    constant = [i for i, s in enumerate(samples) if s.size and float(s.max()) == float(s.min())]
    if constant:
        warnings.warn(f"{len(constant)} calibration sample(s) are constant (first: sample "
                      f"{constant[0]}); they carry no information for channel selection or "
                      "recovery", stacklevel=3)
    return samples


def require_samples(count: int, minimum: int, what: str) -> None:
    """Raise ValueError when `count` samples are fewer than `minimum` for `what`."""
    if count < minimum:
        raise ValueError(f"{what} needs at least {minimum} calibration samples, got {count}; "
                         f"{RECOMMENDED}")


def split_samples(count: int, holdout: float, min_holdout: int, seed: int):
    """``(fit, held_out)`` sample indices: a seeded permutation, ``max(min_holdout,
    round(holdout * count))`` held out, the rest (at least one) fitted; both sorted."""
    held = min(max(min_holdout, int(round(holdout * count))), count - 1)
    order = np.random.default_rng((seed, count)).permutation(count)
    return np.sort(order[held:]), np.sort(order[:held])
