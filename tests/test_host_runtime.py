"""The host runtime path: `mdl_tvm.load` and the zero-copy executor on the TVM runtime alone.

An exported LeNet-5 is loaded and run in a fresh interpreter that must import neither the
compiler (``tvm``'s Python package, ``libtvm_compiler.so``) nor torch, and stay small; the
compiler still works in that process afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mdl_tvm
from deploy.library import runtime_library
from deploy.native.elf import elf_machine, host_machine
from mdl_tvm.core.errors import ModelFormatError, ToolchainError, UnknownTargetError

ROOT = Path(__file__).resolve().parents[1]
RSS_LIMIT_MIB = 80  # issue 19: ONNX Runtime takes 48 MiB for the same job

CHILD = r"""
import json, sys
import numpy as np
import mdl_tvm

path, x_path = sys.argv[1], sys.argv[2]
x = np.load(x_path)
model = mdl_tvm.load(path)
plain = model.run(x)[0]
ex = model.executor()
ex.inputs[0][...] = x
zero_copy = ex.run()[0].copy()
top = {m: m.split(".") for m in sys.modules}
heavy = sorted(m for m, p in top.items() if p[0] in ("tvm", "torch")
               or (p[0] == "mdl_tvm" and len(p) > 1 and p[1] != "core"))
maps = open("/proc/self/maps").read()
# VmHWM: this process's own peak (getrusage would carry the parent's over fork + exec)
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
report = {"heavy": heavy, "compiler_mapped": "libtvm_compiler" in maps,
          "runtime_mapped": "libtvm_runtime" in maps,
          "peak_mib": int(hwm.split()[1]) / 1024,
          "plain": plain.tolist(), "zero_copy": zero_copy.tolist()}
if len(sys.argv) > 3:  # then compile in the same process: torch and the compiler load now
    import torch
    from mdl_tvm import zoo
    torch.manual_seed(0)
    net = zoo.build("lenet5").eval()
    compiled = mdl_tvm.compile(net, "host", input_shapes=[(1, 1, 28, 28)])
    report["compiled"] = compiled.executor()(x)[0].tolist()
    report["torch"] = net(torch.from_numpy(x)).detach().numpy().tolist()
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def lenet_host(tmp_path_factory):
    """``(library path, input .npy path, reference output)`` of a seeded LeNet-5."""
    torch = pytest.importorskip("torch")
    from mdl_tvm import zoo

    torch.manual_seed(0)
    net = zoo.build("lenet5").eval()
    work = tmp_path_factory.mktemp("host-runtime")
    compiled = mdl_tvm.compile(net, "host", input_shapes=[(1, 1, 28, 28)])
    path = compiled.export(str(work / "lenet-host.so"))
    x = np.random.default_rng(0).standard_normal((1, 1, 28, 28)).astype(np.float32)
    np.save(work / "x.npy", x)
    return path, str(work / "x.npy"), compiled.run(x)[0]


def _child(*argv, timeout: float = 300) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([sys.executable, "-c", CHILD, *map(str, argv)], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_load_and_run_imports_no_compiler_nor_torch(lenet_host):
    path, x_path, ref = lenet_host
    report = _child(path, x_path)
    assert report["heavy"] == [], report["heavy"]  # no tvm.*, torch*, mdl_tvm.compiler
    assert report["runtime_mapped"] and not report["compiler_mapped"]
    np.testing.assert_array_equal(np.array(report["plain"], np.float32), ref)
    np.testing.assert_array_equal(np.array(report["zero_copy"], np.float32), ref)
    assert report["peak_mib"] <= RSS_LIMIT_MIB, report["peak_mib"]


@pytest.mark.slow  # imports torch and compiles LeNet-5 in the child: about 25 s
def test_compiler_still_works_after_the_light_load(lenet_host):
    path, x_path, ref = lenet_host
    report = _child(path, x_path, "compile")
    np.testing.assert_array_equal(np.array(report["compiled"], np.float32), ref)
    np.testing.assert_allclose(report["compiled"], report["torch"], rtol=1e-4, atol=1e-5)


def test_library_for_another_cpu_is_refused_before_loading(lenet_host, tmp_path):
    """Metadata says host, the ELF header says aarch64: the header check refuses it (dlopen
    would report a misleading "No such file")."""
    path, _, _ = lenet_host
    data = bytearray(Path(path).read_bytes())
    data[18:20] = (183).to_bytes(2, "little")
    forged = tmp_path / "forged.so"
    forged.write_bytes(bytes(data))
    assert elf_machine(forged) == "aarch64" and elf_machine(path) == host_machine()
    with pytest.raises(UnknownTargetError, match=f"built for aarch64, not {host_machine()}"):
        mdl_tvm.load(str(forged))
    text = tmp_path / "text.so"
    text.write_text("not a library")
    with pytest.raises(ModelFormatError, match="not an ELF shared library"):
        elf_machine(text)


def test_missing_runtime_library_names_the_fix(monkeypatch, tmp_path):
    import importlib.util

    assert runtime_library().name == "libtvm_runtime.so"
    monkeypatch.setenv("TVM_LIBRARY_PATH", str(tmp_path))  # empty: looked at, then the wheel
    assert runtime_library().parent.name == "lib"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ToolchainError, match="pip install apache-tvm==0.27.0.post1"):
        runtime_library()
    (tmp_path / "libtvm_runtime.so").write_bytes(b"")
    assert runtime_library() == tmp_path / "libtvm_runtime.so"


def test_workspace_larger_than_the_plan_is_accepted(lenet_host):
    from deploy.zero_copy import ZeroCopyExecutor, aligned_empty

    path, x_path, ref = lenet_host
    plain = ZeroCopyExecutor(path)
    bigger = aligned_empty((plain.plan.workspace_bytes + 128,), "uint8")
    ex = ZeroCopyExecutor(path, workspace=bigger)
    assert ex.workspace is bigger
    np.testing.assert_array_equal(ex(np.load(x_path))[0], ref)
