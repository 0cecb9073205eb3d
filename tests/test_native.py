"""The native runtime (`deploy.native`): the C API, the ``mdl_run`` runner and the deploy bundle,
on this machine and on the emulated phone; outputs against the Python executor's."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mdl_tvm
from deploy.native.build import ensure_build
from deploy.native.bundle import README, make_bundle
from mdl_tvm.core.errors import ModelFormatError, UnknownTargetError

torch = pytest.importorskip("torch")
BUNDLE_FILES = {"mdl_run", "libmdl_runtime.so", "mdl_runtime.h", "libtvm_ffi.so",
                "libtvm_runtime.so"}


@pytest.fixture(scope="module")
def libs(tmp_path_factory):
    """A seeded LeNet-5 exported for this machine and for the phone (cortex-a76), an input
    and the host output; plus a MobileDL library without main_zc."""
    from tvm import relax

    from mdl_tvm import zoo

    work = tmp_path_factory.mktemp("native")
    torch.manual_seed(0)
    net = zoo.build("lenet5").eval()
    host = mdl_tvm.compile(net, "host", input_shapes=[(1, 1, 28, 28)])
    x = np.random.default_rng(0).standard_normal((1, 1, 28, 28)).astype(np.float32)
    np.save(work / "x.npy", x)
    bb = relax.BlockBuilder()  # returns its input: no main_zc can be planned
    v = relax.Var("x", relax.TensorType((1, 4), "float32"))
    with bb.function("main", [v]):
        bb.emit_func_output(relax.Tuple([bb.emit(relax.op.add(v, v)), v]))
    return {"host": host.export(str(work / "lenet-host.so")),
            "arm": mdl_tvm.compile(net, "cortex-a76", input_shapes=[(1, 1, 28, 28)]).export(
                str(work / "lenet-a76.so")),
            "no_zc": mdl_tvm.compile(bb.get(), "host").export(str(work / "no-zc.so")),
            "x": work / "x.npy", "ref": host.run(x)[0], "dir": work}


def _run(cmd, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                          timeout=timeout, **kw)


def test_host_runner_matches_the_python_executor(libs, tmp_path):
    build = ensure_build("host")
    assert ensure_build("host") == build  # cached: the same directory, nothing rebuilt
    res = _run([build.runner, libs["host"], "-i", libs["x"], "-o", tmp_path / "out", "-n", "20",
                "--check-main"])
    assert res.returncode == 0, res.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "out0.npy"), libs["ref"])
    assert "main vs main_zc output 0: max |diff| = 0" in res.stdout
    assert "main_zc over 20 runs: min" in res.stdout and res.stdout.count(" ms\n") >= 20
    threads = _run([build.runner, libs["host"], "-i", libs["x"], "-o", tmp_path / "t1",
                    "-t", "1", "--count"])
    assert threads.returncode == 0 and " ms" not in threads.stdout  # --count reads no clock
    np.testing.assert_array_equal(np.load(tmp_path / "t1" / "out0.npy"), libs["ref"])


def test_c_api_error_paths(libs, tmp_path):
    not_elf = tmp_path / "not-elf.so"
    not_elf.write_text("text")
    env = {k: v for k, v in os.environ.items() if k != "TVM_BIND_THREADS"}  # the C default
    res = _run([ensure_build("host").c_api_test, libs["host"], not_elf, libs["arm"],
                libs["no_zc"]], env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    assert sum(line.startswith("ok ") for line in lines) == 25 and lines[-1] == "0 failed"
    assert "ok load other architecture" in res.stdout and "ok load library without main_zc" \
        in res.stdout


def test_runner_errors_are_messages_and_exit_codes(libs, tmp_path):
    build = ensure_build("host")
    np.save(tmp_path / "shape.npy", np.zeros((1, 1, 28, 27), np.float32))
    np.save(tmp_path / "dtype.npy", np.zeros((1, 1, 28, 28), np.float64))
    cases = [([libs["host"], "-i", tmp_path / "shape.npy"], 1, "holds shape (1,1,28,27), input "
              "0 of the model is float32(1,1,28,28)"),
             ([libs["host"], "-i", tmp_path / "dtype.npy"], 1, "x.astype('float32')"),
             ([libs["host"], "-i", libs["x"], "-i", libs["x"]], 2, "takes 1 input(s), got 2"),
             ([libs["arm"]], 1, "is built for aarch64, this runtime runs on x86-64"),
             ([libs["no_zc"]], 1, "no zero-copy entry point (main_zc)"),
             ([libs["host"], "-n", "many"], 2, "-n takes a count"),
             ([tmp_path / "absent.so"], 1, "cannot open")]
    for argv, code, message in cases:
        res = _run([build.runner, *argv])
        assert (res.returncode, message in res.stderr) == (code, True), (argv, res.stderr)
        assert "Segmentation" not in res.stderr and "Traceback" not in res.stderr
    lonely = tmp_path / "lonely"
    shutil.copytree(build.root, lonely)
    (lonely / "libtvm_runtime.so").unlink()
    res = _run([lonely / "mdl_run", libs["host"]])
    assert res.returncode == 1 and "cannot load the TVM runtime" in res.stderr
    assert "deploy-bundle" in res.stderr


def test_host_bundle_holds_what_an_app_needs_and_runs(libs, tmp_path):
    bundle = make_bundle(libs["host"], tmp_path / "b", arch="host")
    on_disk = {p.name for p in bundle.root.iterdir()}
    assert on_disk == BUNDLE_FILES | {"lenet-host.so", README}
    assert set(bundle.files) == BUNDLE_FILES | {"lenet-host.so"}
    assert bundle.total_bytes == sum((bundle.root / f).stat().st_size for f in bundle.files)
    assert 4_000_000 < bundle.runtime_bytes < 8_000_000, bundle.table()
    readme = (bundle.root / README).read_text()
    assert "./mdl_run lenet-host.so -i input0.npy -o out -n 10" in readme
    res = _run([bundle.root / "mdl_run", "lenet-host.so", "-i", libs["x"], "-o", tmp_path / "o"],
               cwd=bundle.root)
    assert res.returncode == 0, res.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "o" / "out0.npy"), libs["ref"])
    again = make_bundle(libs["host"], tmp_path / "b", arch="host")  # an earlier bundle: replaced
    assert again.files == bundle.files
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an empty folder or an earlier bundle"):
        make_bundle(libs["host"], tmp_path / "other", arch="host")
    with pytest.raises(UnknownTargetError, match="the bundle is for aarch64"):
        make_bundle(libs["host"], tmp_path / "c")
    with pytest.raises(ModelFormatError, match="no zero-copy entry point"):
        make_bundle(libs["no_zc"], tmp_path / "d", arch="host")
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()


def test_cli_bundle_errors_exit_2_with_the_fix(libs, tmp_path):
    for argv, message in (([libs["host"]], "the bundle is for aarch64"),
                          ([libs["no_zc"], "--arch", "host"], "no zero-copy entry point"),
                          ([tmp_path / "absent.so"], "cannot read")):
        res = _run([sys.executable, "-m", "mdl_tvm", "deploy-bundle", *argv, "-o",
                    tmp_path / "out"])
        assert res.returncode == 2 and message in res.stderr, res.stderr
        assert "Traceback" not in res.stderr


def test_device_cli_native_errors_before_the_phone_starts(libs, tmp_path):
    np.save(tmp_path / "shape.npy", np.zeros((1, 1, 28, 27), np.float32))
    cases = [(["run", libs["host"], "--native"], "built for x86-64, not aarch64"),
             (["run", libs["arm"], "--native", "--mode", "plain"], "runs main_zc"),
             (["run", libs["arm"], "--native", "--input", tmp_path / "shape.npy"],
              "must have shape (1, 1, 28, 28), got (1, 1, 28, 27)"),
             (["insns", "lenet5", "--native"], "--native runs a MobileDL library"),
             (["profile", libs["no_zc"], "--native"], "built for x86-64")]
    for argv, message in cases:
        res = _run([sys.executable, "-m", "mdl_tvm", "device", *argv], timeout=60)
        assert res.returncode == 2 and message in res.stderr, (argv, res.stderr)
        assert "Traceback" not in res.stderr


@pytest.mark.phone
def test_phone_bundle_and_c_api_under_qemu(libs, phone_env, tmp_path):
    from deploy.emulator import run_guest
    from deploy.native.cli import run_bundle

    res = _run([sys.executable, "-m", "mdl_tvm", "deploy-bundle", libs["arm"], "-o",
                tmp_path / "b", "--check"])
    assert res.returncode == 0, res.stderr
    assert "wrote" in res.stdout and "total" in res.stdout and "argmax" in res.stdout
    bundle = make_bundle(libs["arm"], tmp_path / "b")
    assert set(bundle.files) == BUNDLE_FILES | {"lenet-a76.so"}
    assert "output 0: float32(1, 10)" in run_bundle(bundle)
    build = ensure_build("aarch64", phone_env)
    not_elf = tmp_path / "not-elf.so"
    not_elf.write_text("text")
    text = run_guest(phone_env, tmp_path, None, [libs["arm"], not_elf, libs["host"]],
                     "cortex-a76", 300, program=build.c_api_test)
    assert "0 failed" in text and "ok load other architecture" in text, text


@pytest.mark.phone
@pytest.mark.slow  # counts both runners under the plugin: about 40 s
def test_native_runner_on_the_phone_matches_python_and_is_lighter(libs, phone_env):
    from deploy.emulator import count_instructions, recording, run_on_emulator, start_up
    from deploy.guest_memory import guest_peak_rss
    from deploy.kernel_profile import NATIVE_RUNTIME, _symbols, kernel_name, profile_instructions

    x = np.load(libs["x"])
    log: list = []
    native = run_on_emulator(libs["arm"], [x], repeat=2, runner="native", log=log)
    python = run_on_emulator(libs["arm"], [x], mode="zero-copy")
    np.testing.assert_array_equal(native[0], python[0])
    assert "main_zc over 2 runs" in log[0]
    counts = {}
    for runner, mode in (("native", None), ("python", "zero-copy")):
        with recording() as records:
            n = count_instructions(libs["arm"], [x], runs=3, runner=runner, mode=mode,
                                   verify=runner == "native", env=phone_env)
        counts[runner] = (n, start_up(records, n))
    (nat, nat_start), (py, py_start) = counts["native"], counts["python"]
    assert abs(nat - py) < 0.05 * py, counts  # the same kernels; only the call path differs
    assert nat_start * 20 < py_start, counts  # no interpreter, numpy or tvm import
    memory = {r: guest_peak_rss(libs["arm"], [x], runner=r, env=phone_env)["guest_kib"]
              for r in ("native", "python")}
    assert 0 < memory["native"] * 3 < memory["python"], memory
    prof = profile_instructions(libs["arm"], [x], runs=3, runner="native", env=phone_env)
    assert prof.total == nat and NATIVE_RUNTIME in prof.kernels
    kernels = {k: v for k, v in prof.kernels.items() if not k.startswith("(")}
    library = {kernel_name(name) for _, _, name in _symbols(Path(libs["arm"]))}
    assert set(kernels) <= library and any("conv" in k for k in kernels), kernels
    assert sum(kernels.values()) > 0.5 * prof.total  # the runtime row is the small part
