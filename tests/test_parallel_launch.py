"""MobileDL's parallel launcher (`mdl_tvm.core.parallel`): a loaded library's kernels launch
through it, give the JIT build's outputs bit for bit, also from two threads at once, and
``MDL_TVM_PARALLEL`` chooses or refuses clearly. Real builds, a real exported library."""

from __future__ import annotations

import ctypes
import os
import threading

import numpy as np
import pytest

import mdl_tvm
from deploy.host_model import load
from mdl_tvm.core import parallel

torch = pytest.importorskip("torch")
from helpers import ConvConv, seeded  # noqa: E402

SHAPE = (1, 3, 32, 32)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    compiled = mdl_tvm.compile(seeded(ConvConv), "host", input_shapes=[SHAPE])
    path = compiled.export(str(tmp_path_factory.mktemp("parallel") / "convconv.so"))
    return compiled, path


def _slot(path):
    handle = ctypes.CDLL(os.path.realpath(path), mode=os.RTLD_NOLOAD | os.RTLD_NOW)
    return ctypes.c_void_p.in_dll(handle, parallel.SYMBOL).value


def test_a_loaded_library_launches_through_mobiledl_and_matches_the_jit(built, rng):
    compiled, path = built
    model = load(path)
    ours = ctypes.cast(parallel.launcher().MDLParallelLaunch, ctypes.c_void_p).value
    assert _slot(path) == ours
    assert parallel.launcher().MDLParallelThreads() == int(os.environ["TVM_NUM_THREADS"])
    lib = parallel.launcher()
    lib.MDLParallelWorkerTasks.restype = ctypes.c_int64
    for _ in range(10):
        x = rng.standard_normal(SHAPE).astype("float32")
        np.testing.assert_array_equal(model.run(x)[0], compiled.run(x)[0])
    if lib.MDLParallelThreads() > 1:  # the workers take tasks, not only the caller
        # (a tiny model's kernel can end before a sleeping worker wakes: allow 2000 runs)
        before = lib.MDLParallelWorkerTasks()
        runs = next((i for i in range(2000)
                     if model.run(x) and lib.MDLParallelWorkerTasks() > before), None)
        assert runs is not None


def test_two_threads_running_two_models_at_once_stay_correct(built, rng):
    compiled, path = built
    models = [load(path), load(path)]
    xs = [rng.standard_normal(SHAPE).astype("float32") for _ in range(2)]
    want = [compiled.run(x)[0] for x in xs]
    errors = []

    def loop(i):
        for _ in range(200):
            if not np.array_equal(models[i].run(xs[i])[0], want[i]):
                errors.append(i)

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads) and errors == []


def test_env_keeps_tvms_pool_or_names_the_choices(built, monkeypatch, tmp_path, rng):
    compiled, path = built
    ours = ctypes.cast(parallel.launcher().MDLParallelLaunch, ctypes.c_void_p).value
    copy = tmp_path / "copy.so"
    copy.write_bytes(open(path, "rb").read())
    monkeypatch.setenv(parallel.ENV, "tvm")
    model = load(str(copy))  # TVM's pool: the slot keeps the runtime's function
    assert parallel.launcher() is None and _slot(copy) not in (None, ours)
    x = rng.standard_normal(SHAPE).astype("float32")
    np.testing.assert_array_equal(model.run(x)[0], compiled.run(x)[0])
    monkeypatch.setenv(parallel.ENV, "openmp")
    with pytest.raises(ValueError, match="use one of mdl, tvm"):
        parallel.choice()
    monkeypatch.setenv(parallel.ENV, "mdl")
    assert parallel.use_in(tmp_path / "never_loaded.so") is False
