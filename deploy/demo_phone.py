"""The demo's phone step: run an arm64 library on the emulated phone and count its work.

Starts a private tracker and phone on free loopback ports, runs the library over RPC,
compares with the host output, counts ARM instructions per inference, and stops both.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

from deploy import device, procs
from deploy.emulator import count_instructions
from deploy.remote import RemoteDevice
from mdl_tvm.core.errors import MdlError
from mdl_tvm.core.numerics import relative_error


def run(arm_path: str, sample: np.ndarray, host_out: np.ndarray, log=print):
    """Return ``(table cells, note)``; cells is None when the phone is not available."""


    try:
        log("      setting up the emulated phone (cached after the first run)")
        device.setup()
    except (MdlError, OSError) as err:
        return None, f"emulated phone unavailable: {err}"
    rundir = tempfile.mkdtemp(prefix="mdl-tvm-demo-run-")
    key = f"demo-phone-{os.getpid()}"
    try:
        tracker = procs.start_tracker(rundir=rundir)
        procs.start_phone(tracker=tracker, key=key, rundir=rundir)
        log(f"      phone registered with tracker {tracker[0]}:{tracker[1]} as {key!r}")
        with RemoteDevice.connect(tracker=f"{tracker[0]}:{tracker[1]}", key=key) as phone:
            with phone.load(arm_path) as model:
                phone_out = model.run([sample])[0]
                latency = model.time([sample], number=5, repeat=3)
    finally:
        procs.stop_phone(rundir=rundir)
        procs.stop_tracker(rundir=rundir)
    diff = relative_error(phone_out, host_out)
    insns = count_instructions(arm_path, [sample], runs=10)
    same = "=" if phone_out.argmax() == host_out.argmax() else "!="
    cells = ("MobileDL", "arm64 phone (QEMU)", f"argmax {same} host", f"{latency:.3f} (emulated)",
             f"{os.path.getsize(arm_path):,}", f"{insns:,}")
    return cells, (f"arm64 output vs host: max relative difference {diff:.2e}; emulated "
                   "latency is QEMU's, not a phone's; instructions are exact")
