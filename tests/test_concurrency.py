"""The concurrency contract (issue #21): `run` is safe from many threads (calls into the
one VM are serialised); a `ZeroCopyExecutor` owns one set of buffers and refuses a second
thread with `ConcurrentUseError`; executors made per thread share the VM safely. Plus the
opt-in `check_finite` of `run`.

The threaded runs happen in a child process: before the lock, eight threads crashed the
interpreter (SIGSEGV), which would take the whole test session down with it.
"""

import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import torch
from helpers import seeded

import mdl_tvm
from deploy.library import aligned_empty, vm_lock
from mdl_tvm import zoo
from mdl_tvm.core.errors import ConcurrentUseError, NonFiniteError

SHAPE = (1, 1, 28, 28)


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    model = mdl_tvm.compile(seeded(zoo.LeNet5), "host", input_shapes=[SHAPE])
    path = tmp_path_factory.mktemp("conc") / "lenet.so"
    model.export(str(path))
    return model, path


def _in_child(code: str, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout)


THREADED = """
    import sys, threading
    import numpy as np
    import mdl_tvm
    model = mdl_tvm.load({path!r})
    xs = [np.random.default_rng(i).standard_normal({shape}).astype("float32") for i in range(8)]
    refs = [model.run(x)[0] for x in xs]
    bad = []

    def work(i):
        try:
            {body}
        except Exception as err:  # an exception ends the thread: count it, print it
            bad.append(i)
            print(type(err).__name__, str(err)[:200], file=sys.stderr)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("mismatches", len(bad))
"""


def test_eight_threads_on_one_model_get_the_single_thread_answers(lenet):
    body = """for _ in range(40):
                if not np.array_equal(model.run(xs[i])[0], refs[i]):
                    bad.append(i)"""
    proc = _in_child(THREADED.format(path=str(lenet[1]), shape=SHAPE, body=body))
    assert proc.returncode == 0, proc.stderr[-2000:]  # was -11 (SIGSEGV)
    assert proc.stdout.strip() == "mismatches 0"


def test_one_executor_per_thread_shares_the_vm_safely(lenet):
    body = """ex = model.executor()
            for _ in range(40):
                (out,) = ex(xs[i])
                if not np.array_equal(out, refs[i]):
                    bad.append(i)"""
    proc = _in_child(THREADED.format(path=str(lenet[1]), shape=SHAPE, body=body))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "mismatches 0"


def test_a_second_thread_on_one_executor_is_refused_not_crashed(lenet):
    model, _ = lenet
    ex = model.executor()
    x = np.random.default_rng(0).standard_normal(SHAPE).astype("float32")
    expected = model.run(x)[0]
    lock = vm_lock(ex.vm)
    lock.acquire()  # hold the VM: the first thread's run waits inside the executor
    first = threading.Thread(target=ex, args=(x,))
    first.start()
    try:
        for _ in range(200):  # until the first thread holds the executor
            if ex._busy.locked():
                break
            first.join(0.01)
        with pytest.raises(ConcurrentUseError, match="one per thread"):
            ex.run()
        with pytest.raises(ConcurrentUseError, match="another thread"):
            ex.bind_input(0, aligned_empty(SHAPE, "float32"))
    finally:
        lock.release()
        first.join(30)
    np.testing.assert_array_equal(ex.outputs[0], expected)  # the first run completed
    np.testing.assert_array_equal(ex.run()[0], expected)  # and the executor is free again


def test_check_finite_names_the_input_and_the_output(lenet):
    model, _ = lenet
    x = np.random.default_rng(0).standard_normal(SHAPE).astype("float32")
    x[0, 0, 3, 4] = np.nan
    assert np.isfinite(model.run(x)[0]).all()  # NaN through ReLU / max-pool: finite logits
    with pytest.raises(NonFiniteError, match=r"input 0 float32\[1, 1, 28, 28\] holds 1 NaN"):
        model.run(x, check_finite=True)
    net = torch.nn.Linear(4, 2)
    with torch.no_grad():
        net.weight.fill_(1e30)
    big = mdl_tvm.compile(net, "host", input_shapes=[(1, 4)])
    huge = np.full((1, 4), 1e30, "float32")  # finite input, overflowing output
    assert not np.isfinite(big.run(huge)[0]).all()
    with pytest.raises(NonFiniteError, match="output 0"):
        big.run(huge, check_finite=True)
