"""Peak memory of a guest process on the emulated phone.

QEMU user mode keeps the guest's memory in its own process, so QEMU's peak resident set
(``VmHWM``) is the guest's peak plus QEMU's own share. ``librss.so`` (``rss_plugin.c``, a
TCG plugin that instruments nothing) reads ``VmHWM`` from QEMU's ``/proc/self/status`` when
the guest exits; `qemu_baseline_kib` takes the same reading for a trivial guest program,
and `guest_peak_rss` reports the difference for a model runner. (Reading the child's
``getrusage`` from outside would carry the parent's peak over fork + exec.) QEMU's share
also grows with the guest code it translates, so a big runtime costs a little more here
than on a phone.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

from deploy import plugins
from deploy.device import DeviceEnv, setup
from deploy.emulator import checked_inputs, count_guest, counting_workdir, library_cpu
from deploy.runners import guest_runner, runner_mode
from mdl_tvm.core.errors import DeviceError

RSS_SRC = Path(__file__).with_name("rss_plugin.c")


def peak_rss_kib(env: DeviceEnv, work: Path, argv: list, cpu: str, program=None,
                 pythonpath: Sequence[Path] = (), timeout: float = 900.0,
                 meta: dict | None = None) -> int:
    """QEMU's peak resident memory (``VmHWM``, KiB) when the guest exits, running `argv`
    in `work` as `count_guest` does but under ``librss.so`` (nothing instrumented)."""
    plugin = plugins.build_plugin(env, RSS_SRC, "librss.so")
    path = count_guest(env, work, argv, timeout, cpu, plugin, pythonpath, meta, program)
    kib = int(path.read_text())
    if kib <= 0:
        raise DeviceError("librss.so could not read QEMU's /proc/self/status VmHWM")
    return kib


def qemu_baseline_kib(env: DeviceEnv, cpu: str) -> int:
    """`peak_rss_kib` of a trivial guest program (the sysroot's ``/usr/bin/true``): QEMU's
    own share, to subtract from a model runner's reading."""
    with tempfile.TemporaryDirectory(prefix="mdl_rss_") as tmp:
        work = Path(tmp) / "w"
        work.mkdir()
        return peak_rss_kib(env, work, [], cpu, program=env.sysroot / "usr" / "bin" / "true")


def guest_peak_rss(so_path, inputs, runner: str = "python", mode: str | None = None,
                   cpu: str | None = None, env: DeviceEnv | None = None, runs: int = 1,
                   timeout: float = 900.0) -> dict:
    """Peak memory of a model runner on the phone: ``{"qemu_kib", "baseline_kib",
    "guest_kib"}`` (`peak_rss_kib` of `runs` inferences, `qemu_baseline_kib`, and their
    difference, the guest process's own peak)."""
    runner_mode(runner, mode)
    cpu, meta = library_cpu(so_path, cpu)
    inputs = checked_inputs(inputs, meta)
    env = env or setup()
    guest = guest_runner(so_path, runner, mode, env)
    with counting_workdir(env, guest.files, inputs) as (work, names):
        total = peak_rss_kib(env, work, guest.argv(names, runs), cpu, guest.program,
                             timeout=timeout, meta=meta)
    base = qemu_baseline_kib(env, cpu)
    return {"qemu_kib": total, "baseline_kib": base, "guest_kib": total - base}
