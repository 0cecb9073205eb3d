"""The demo's phone step: run arm64 libraries on the emulated phone and count their work.

Starts a private tracker and phone (QEMU ``cortex-a76``, ARMv8.2-A with fp16 arithmetic) on
free loopback ports, runs the uncompressed library over RPC and compares it with the host
output, classifies test images with the fp16 library, counts ARM instructions per inference
of every library, and stops both.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field

import numpy as np

from deploy import device, procs
from deploy.emulator import count_instructions
from deploy.remote import RemoteDevice
from mdl_tvm.core.errors import MdlError
from mdl_tvm.core.numerics import relative_error


@dataclass
class PhoneResult:
    """What the phone step measured (``cells`` is None when the phone was unavailable)."""

    cells: tuple | None
    note: str
    insns: dict = field(default_factory=dict)  # library path -> instructions per inference
    top1: dict = field(default_factory=dict)  # library path -> (correct, images)


def run(arm_path: str, sample: np.ndarray, host_out: np.ndarray, log=print, count=(),
        classify=(), images=None, labels=None) -> PhoneResult:
    """Run `arm_path` on the phone beside the host output; count the instructions per
    inference of `arm_path` and every library in `count`; classify `images` with every
    library in `classify` (top-1 against `labels`)."""
    try:
        log("      setting up the emulated phone (cached after the first run)")
        device.setup()
    except (MdlError, OSError) as err:
        return PhoneResult(None, f"emulated phone unavailable: {err}")
    rundir = tempfile.mkdtemp(prefix="mdl-tvm-demo-run-")
    key = f"demo-phone-{os.getpid()}"
    top1 = {}
    try:
        tracker = procs.start_tracker(rundir=rundir)
        procs.start_phone(tracker=tracker, key=key, rundir=rundir)
        log(f"      phone registered with tracker {tracker[0]}:{tracker[1]} as {key!r}")
        with RemoteDevice.connect(tracker=f"{tracker[0]}:{tracker[1]}", key=key) as phone:
            with phone.load(arm_path) as model:
                phone_out = model.run([sample])[0]
                latency = model.time([sample], number=5, repeat=3)
            for path in classify:
                log(f"      classifying {len(labels):,} test images on the phone with "
                    f"{os.path.basename(path)}")
                with phone.load(path) as model:
                    hits = sum(int(model.run([img[None]])[0].argmax() == lab)
                               for img, lab in zip(images, labels, strict=True))
                top1[path] = (hits, len(labels))
    finally:
        procs.stop_phone(rundir=rundir)
        procs.stop_tracker(rundir=rundir)
    diff = relative_error(phone_out, host_out)
    insns = {}
    for path in (arm_path, *count):
        log(f"      counting ARM instructions of {os.path.basename(path)}")
        insns[path] = count_instructions(path, [sample], runs=10)
    same = "=" if phone_out.argmax() == host_out.argmax() else "!="
    cells = ("MobileDL", "arm64 phone (QEMU)", f"argmax {same} host", f"{latency:.3f} (emulated)",
             f"{os.path.getsize(arm_path):,}", f"{insns[arm_path]:,}")
    return PhoneResult(cells, f"arm64 output vs host: max relative difference {diff:.2e}; "
                       "emulated latency is QEMU's, not a phone's; instructions are exact",
                       insns, top1)
