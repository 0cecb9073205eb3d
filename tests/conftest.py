"""Fixtures of the test suite (shared helpers and small models live in helpers.py).

Run the suite (markers are registered in pyproject.toml)::

    python -m pytest -q tests                                          # everything (~15 min)
    python -m pytest -q tests -m "not slow and not phone and not training"   # fast (< 5 min)

Markers: ``phone`` needs the emulated arm64 phone (QEMU) or an RPC tracker / server;
``slow`` takes more than about 20 s; ``training`` trains a network (or loads weights a
training run cached). A test without a marker is in the fast subset. On a shared machine
wrap long runs in ``flock /tmp/mdl_heavy.lock``. ``bash scripts/test.sh`` runs everything
(``--fast`` for the fast subset).

Phone fixtures (tracker + emulated arm64 device) live in phone_fixtures.py.
"""

import numpy as np
import pytest

import mdl_tvm  # sets its thread defaults before any test starts a process

try:
    from phone_fixtures import *  # noqa: F401,F403
except ImportError as err:  # pragma: no cover - reported, not hidden
    if "phone_fixtures" not in str(err):
        raise

# Fixtures that start QEMU or RPC processes: a test using one must carry @pytest.mark.phone,
# so `-m "not phone"` never starts the phone.
PHONE_FIXTURES = {"phone", "phone_env", "phone_tracker", "arm64_model"}


@pytest.hookimpl(trylast=True)  # after `-m` / `-k` deselected what they do
def pytest_collection_modifyitems(config, items):
    """Refuse phone fixtures without the phone marker; deselect a `fast_twin` when the test
    it stands in for runs too (the full suite runs the real one only)."""
    names = {item.name for item in items}
    twins = [item for item in items
             if (mark := item.get_closest_marker("fast_twin")) and mark.args[0] in names]
    if twins:
        config.hook.pytest_deselected(items=twins)
        items[:] = [item for item in items if item not in twins]
    unmarked = [item.nodeid for item in items
                if PHONE_FIXTURES & set(getattr(item, "fixturenames", ()))
                and item.get_closest_marker("phone") is None]
    if unmarked:
        raise pytest.UsageError("tests using the phone fixtures without @pytest.mark.phone: "
                                + ", ".join(unmarked))


@pytest.fixture
def rng():
    """A seeded generator: every test's random inputs are reproducible."""
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def arm64_zoo_library(tmp_path_factory):
    """``get(name) -> path``: zoo model `name` (`mdl_tvm.zoo.build`, default seed and input
    shape) compiled for ``arm64`` and exported, once per session: the phone zoo test runs the
    library, the NEON test disassembles the same file (ResNet-18 at 224: ~23 s per build)."""
    from mdl_tvm import zoo

    root, built = tmp_path_factory.mktemp("arm64_zoo"), {}

    def get(name: str) -> str:
        if name not in built:
            model = mdl_tvm.compile(zoo.build(name), "arm64",
                                    input_shapes=[zoo.INPUT_SHAPES[name]])
            built[name] = model.export(str(root / f"{name}.so"))
        return built[name]

    return get
