"""Shared fixtures. Phone fixtures (tracker + emulated arm64 device) live in phone_fixtures.py."""

import os

import numpy as np
import pytest

os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))

try:
    from phone_fixtures import *  # noqa: F401,F403
except ImportError as err:  # pragma: no cover - reported, not hidden
    if "phone_fixtures" not in str(err):
        raise


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def relative_error(actual, expected) -> float:
    """max |a - e| / max |e|: one number for a whole output tensor."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-12))
