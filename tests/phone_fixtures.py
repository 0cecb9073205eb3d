"""Session-scoped pytest fixtures for the emulated arm64 phone (real QEMU, real TVM RPC).

* ``phone_env``     the set-up phone (`deploy.device.setup`, cached under ``~/.cache/mdl_tvm``);
* ``phone_rundir``  a private directory for this session's pid files and logs;
* ``phone_tracker`` an RPC tracker on a free 127.0.0.1 port -> ``(host, port)``;
* ``phone``         the phone registered with that tracker -> ``{"tracker", "key", ...}``;
* ``arm64_model``   a tiny conv net exported for aarch64 -> ``(so_path, x, host_output)``.

Tracker and phone are stopped (process groups) when the session ends.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

__all__ = ["phone_env", "phone_rundir", "phone_tracker", "phone", "arm64_model"]


@pytest.fixture(scope="session")
def phone_env():
    """The emulated phone's paths; builds it on first use (about 35 s), then cached."""
    from deploy import device

    return device.setup()


@pytest.fixture(scope="session")
def phone_rundir(tmp_path_factory):
    """Directory for the session's tracker / phone pid files and logs."""
    return tmp_path_factory.mktemp("phone-run")


@pytest.fixture(scope="session")
def phone_tracker(phone_rundir):
    """An RPC tracker on a free loopback port, stopped at the end of the session."""
    from deploy import procs

    addr = procs.start_tracker(rundir=phone_rundir)
    try:
        yield addr
    finally:
        procs.stop_phone(rundir=phone_rundir)
        procs.stop_tracker(rundir=phone_rundir)


@pytest.fixture(scope="session")
def phone(phone_env, phone_tracker, phone_rundir):
    """The phone's RPC server, registered with ``phone_tracker`` under a unique key."""
    from deploy import procs

    key = f"test-phone-{os.getpid()}"
    state = procs.start_phone(tracker=phone_tracker, key=key, rundir=phone_rundir)
    try:
        yield dict(state, tracker=phone_tracker, key=key, rundir=phone_rundir)
    finally:
        procs.stop_phone(rundir=phone_rundir)


@pytest.fixture(scope="session")
def arm64_model(tmp_path_factory):
    """conv -> relu -> flatten -> linear on 1x1x8x8, imported with torch.export, built for
    arm64 (``.so``) and for the host; returns ``(so_path, x, host_fp32_output)``."""
    torch = pytest.importorskip("torch")
    import tvm
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program
    from tvm.support import cc

    class TinyNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
            self.fc = torch.nn.Linear(4 * 8 * 8, 10)

        def forward(self, x):
            return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))

    torch.manual_seed(0)
    net = TinyNet().eval()
    x = torch.randn(1, 1, 8, 8)
    mod = from_exported_program(torch.export.export(net, (x,)))
    arm = tvm.target.Target(
        {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"], "num-cores": 4}
    )
    so_path = tmp_path_factory.mktemp("arm64-model") / "tiny.so"
    relax.build(mod, arm).export_library(
        str(so_path), fcompile=cc.cross_compiler("aarch64-linux-gnu-g++")
    )
    host = relax.VirtualMachine(relax.build(mod, tvm.target.Target({"kind": "llvm"})), tvm.cpu())
    ref = host["main"](tvm.runtime.tensor(x.numpy(), tvm.cpu()))[0].numpy()
    np.testing.assert_allclose(ref, net(x).detach().numpy(), rtol=1e-4, atol=1e-5)
    return str(so_path), x.numpy(), ref
