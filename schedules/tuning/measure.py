"""Where tuning candidates are built and timed: the builder, the host and RPC runners.

* Builder: MetaSchedule's `LocalBuilder` with two functions of ours. `build_candidate`
  is MetaSchedule's default build without ``import tvm.s_tir.tensor_intrin`` (about 25 s
  per builder pool on a loaded 2-core machine; CPU candidates use no tensor intrinsics).
  `export_shared` links a ``.so`` with the profile's compiler: the aarch64 cross
  compiler for a phone (the default export makes a ``.tar`` a phone cannot link). One
  worker and a 300 s timeout: on 2 busy cores, two workers made fp16 conv candidates hit
  60 s timeouts.
* Runners: `LocalRunner` for ``host``; `RPCRunner` through a tracker and device key for
  everything else, one worker per device registered under the key (a device farm is
  measured in parallel). Its session function (`create_session`) fails at once when no
  device is registered instead of waiting forever on the tracker.
* Cost: wall-clock seconds, or (``cost="instructions"``) the instructions a call retires
  on an emulated phone started with ``count=True`` (`count_evaluator`: the phone's
  ``mdl.count_call`` marks TVM's time evaluator with the marker plugin). Instructions are
  deterministic and are the ARM cost the phone table reports; QEMU's wall clock is not.
  They reach MetaSchedule as seconds at one instruction per nanosecond.
"""

from __future__ import annotations

import functools
import os
import tempfile
from dataclasses import dataclass

from deploy.rpc_net import parse_addr, tracker_summary
from mdl_tvm.core.errors import DeviceError
from mdl_tvm.core.targets import get_profile


@dataclass(frozen=True)
class MeasureConfig:
    """How candidates are built and timed.

    Attributes
    ----------
    builder_workers : int
        Parallel candidate builds (1 on a 2-core machine).
    builder_timeout : float
        Seconds one candidate build may take.
    number, repeat, min_repeat_ms : int
        `tvm.s_tir.meta_schedule.runner.EvaluatorConfig`: runs per measurement,
        measurements, minimum milliseconds per measurement.
    session_timeout : float
        Seconds an RPC session (upload, load, time one candidate) may take.
    runner_workers : int, optional
        Parallel RPC sessions; default: the number of devices under the key.
    cost : str
        ``"seconds"`` (wall clock) or ``"instructions"`` (retired on an emulated phone
        started with ``count=True``; device targets only).
    """

    builder_workers: int = 1
    builder_timeout: float = 300.0
    number: int = 3
    repeat: int = 1
    min_repeat_ms: int = 0
    session_timeout: float = 120.0
    runner_workers: int | None = None
    cost: str = "seconds"

    def __post_init__(self):
        if self.cost not in COSTS:
            raise ValueError(f"MeasureConfig.cost must be one of {COSTS}, got {self.cost!r}")
        for name in ("builder_workers", "number", "repeat"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"MeasureConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.builder_timeout <= 0 or self.session_timeout <= 0:
            raise ValueError("MeasureConfig timeouts must be positive seconds")


COSTS = ("seconds", "instructions")
INSN_SECONDS = 1e-9  # an instruction counts as a nanosecond for MetaSchedule


def count_evaluator(session, rt_mod, device, evaluator_config, repeated_args) -> list[float]:
    """RPCRunner ``f_run_evaluator``: instructions per call on the phone, as seconds.

    Raises
    ------
    DeviceError
        When the phone does not count (not started with ``count=True``).
    """
    try:
        count = session.get_function("mdl.count_call")
    except (AttributeError, RuntimeError) as err:
        raise DeviceError("the device does not count instructions: start the emulated phone "
                          "with `mdl-tvm device start --count` (or tune with --cost seconds)"
                          ) from err
    return [float(count(rt_mod, rt_mod.entry_name, int(evaluator_config.number), *args))
            * INSN_SECONDS for args in repeated_args]


HOST_MEASURE = MeasureConfig(number=10, repeat=3, min_repeat_ms=20)
DEVICE_MEASURE = MeasureConfig(number=3, repeat=1, min_repeat_ms=0)
INSN_MEASURE = MeasureConfig(number=4, repeat=1, min_repeat_ms=0, cost="instructions")


def build_candidate(mod, target, _params=None):
    """MetaSchedule ``f_build``: compile one scheduled PrimFunc module for `target`."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)


def export_shared(profile_name: str, rt_mod) -> str:
    """MetaSchedule ``f_export``: link `rt_mod` into a ``.so`` for profile `profile_name`.

    Returns the path of the library (in a fresh temporary directory, removed after the
    measurement by MetaSchedule's ``RemoveBuildArtifact``).
    """

    fcompile = get_profile(profile_name).compiler()
    path = os.path.join(tempfile.mkdtemp(prefix="mdl-tune-"), "candidate.so")
    if fcompile is None:
        rt_mod.export_library(path)
    else:
        rt_mod.export_library(path, fcompile=fcompile)
    return path


def make_builder(profile, config: MeasureConfig = DEVICE_MEASURE):
    """A `LocalBuilder` that compiles candidates for `profile` and links ``.so`` files."""
    from tvm.s_tir import meta_schedule as ms

    profile.compiler()  # fail now, with the install hint, when the cross compiler is missing
    return ms.builder.LocalBuilder(
        max_workers=config.builder_workers,
        timeout_sec=config.builder_timeout,
        f_build=build_candidate,
        f_export=functools.partial(export_shared, profile.name),
    )


def _evaluator(config: MeasureConfig):
    from tvm.s_tir import meta_schedule as ms

    return ms.runner.EvaluatorConfig(number=config.number, repeat=config.repeat,
                                     min_repeat_ms=config.min_repeat_ms,
                                     enable_cpu_cache_flush=False)


def make_local_runner(config: MeasureConfig = HOST_MEASURE):
    """A `LocalRunner` timing candidates on this machine."""
    from tvm.s_tir import meta_schedule as ms

    return ms.runner.LocalRunner(timeout_sec=config.session_timeout,
                                 evaluator_config=_evaluator(config))


@dataclass(frozen=True)
class Farm:
    """Devices registered under one key at one tracker."""

    host: str
    port: int
    key: str

    @classmethod
    def parse(cls, tracker, key: str) -> Farm:
        """From ``"HOST:PORT"`` (or a ``(host, port)`` tuple) and a key."""

        if not key:
            raise ValueError("give the device key the phones registered under (--key)")
        host, port = parse_addr(tracker) if isinstance(tracker, str) else tracker
        return cls(host, int(port), key)

    def devices(self) -> int:
        """Number of servers registered under the key (busy ones included).

        Raises
        ------
        DeviceError
            When the tracker does not answer.
        """

        summary = tracker_summary(self.host, self.port)
        wanted = f"server:{self.key}"
        return sum(1 for s in summary.get("server_info", []) if s.get("key") == wanted)

    def require(self) -> int:
        """`devices`, raising `DeviceError` (with the fix) when there are none."""
        count = self.devices()
        if count == 0:
            raise DeviceError(
                f"no device is registered under key {self.key!r} at tracker "
                f"{self.host}:{self.port}; start one with `mdl-tvm device start --tracker "
                f"{self.host}:{self.port} --key {self.key}` (or point a phone's "
                "`python -m tvm.exec.rpc_server --tracker ... --key ...` at the tracker)"
            )
        return count


def create_session(rpc_config):
    """RPCRunner ``f_create_session``: a session with a device under the key.

    Fails at once with `DeviceError` when the tracker is down or lists no device under the
    key (TVM's default would wait on the tracker forever); waits at most
    ``session_timeout_sec`` for a busy device to come free.
    """
    from tvm import rpc

    farm = Farm(rpc_config.tracker_host, rpc_config.tracker_port, rpc_config.tracker_key)
    farm.require()
    tracker = rpc.connect_tracker(farm.host, farm.port)
    try:
        tracker._sock.settimeout(float(rpc_config.session_timeout_sec))
        return tracker.request(farm.key, priority=1,
                               session_timeout=rpc_config.session_timeout_sec, max_retry=1)
    except (OSError, RuntimeError) as err:
        raise DeviceError(f"no device under key {farm.key!r} at {farm.host}:{farm.port} "
                          f"became free: {err}") from err
    finally:
        tracker.close()


def make_rpc_runner(farm: Farm, config: MeasureConfig = DEVICE_MEASURE, workers=None):
    """An `RPCRunner` over `farm` with one worker per device (or `workers`).

    Raises
    ------
    DeviceError
        When the tracker is unreachable or no device is registered under the key.
    """
    from tvm.s_tir import meta_schedule as ms

    count = farm.require()
    workers = workers or config.runner_workers or count
    rpc_config = ms.runner.RPCConfig(tracker_host=farm.host, tracker_port=farm.port,
                                     tracker_key=farm.key,
                                     session_timeout_sec=int(config.session_timeout))
    evaluator = count_evaluator if config.cost == "instructions" else None
    return ms.runner.RPCRunner(rpc_config, _evaluator(config), f_create_session=create_session,
                               f_run_evaluator=evaluator, max_workers=int(workers))
