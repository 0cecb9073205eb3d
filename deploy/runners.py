"""The model runners the emulated phone can start, and how.

* ``python``  ``device_runner.py`` under the phone's python3 with TVM's Python runtime
  (the default; modes ``plain``, ``copy-io``, ``zero-copy``), the same runtime RPC and
  tuning use;
* ``native``  ``mdl_run`` (`deploy.native`): C++ on the TVM runtime alone, ``main_zc`` on
  buffers bound once; what an app ships.

`guest_runner` gives a `GuestRunner`: the program QEMU starts, the files a count copies
into its work directory, and the runner's arguments for N runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from deploy.device import DeviceEnv, setup
from deploy.native.build import ensure_build

RUNNER = Path(__file__).with_name("device_runner.py")
MODES = ("plain", "copy-io", "zero-copy")  # device_runner.MODES
RUNNERS = ("python", "native")


def check_mode(mode: str) -> None:
    """Raise ValueError naming `MODES` when `mode` is not one of them."""
    if mode not in MODES:
        raise ValueError(f"unknown runner mode {mode!r}; choose one of {MODES}")


@dataclass(frozen=True)
class GuestRunner:
    """How a model runner starts on the phone.

    Attributes
    ----------
    name : str
        ``"python"`` or ``"native"`` (`RUNNERS`).
    program : str
        The guest executable QEMU starts: the phone's python3, or ``mdl_run``.
    files : dict
        ``{name in a count's work directory: source}``: the library as ``model.so`` (and
        the runner script).
    mode : str
        The call path (`MODES`); the native runner always runs ``main_zc`` (``zero-copy``).
    """

    name: str
    program: str
    files: dict
    mode: str

    def argv(self, names: list[str], runs: int, *, model: str = "model.so",
             script: str = "runner.py", outputs: str = "out", counting: bool = True) -> list:
        """The runner's arguments for `runs` runs on the input files `names` (fixed width:
        the same argv length for N and 2N, so the guest's start-up is identical)."""
        n = f"{runs:09d}"
        if self.name == "native":
            return [model, *(a for name in names for a in ("-i", name)), "-o", outputs,
                    "-n", n, "-w", "0", *(["--count"] if counting else [])]
        return [script, model, "--inputs", *names, "--outputs-dir", outputs, "--repeat", n,
                "--mode", self.mode]


def runner_mode(runner: str, mode: str | None = None) -> str:
    """The call path `runner` takes for `mode` (default ``plain`` for python, ``zero-copy``
    for native), checked before anything starts.

    Raises
    ------
    ValueError
        For an unknown runner or mode, or a mode the native runner does not have.
    """
    if runner not in RUNNERS:
        raise ValueError(f"unknown runner {runner!r}; choose one of {RUNNERS}")
    if runner == "python":
        check_mode(mode or "plain")
        return mode or "plain"
    if mode not in (None, "zero-copy"):
        raise ValueError(f"the native runner runs main_zc on preset buffers (mode zero-copy), "
                         f"not {mode!r}: drop the mode, or use the Python runner")
    return "zero-copy"


def guest_runner(so_path, runner: str = "python", mode: str | None = None,
                 env: DeviceEnv | None = None) -> GuestRunner:
    """The `GuestRunner` of `runner` (`runner_mode`) for the library `so_path`; the native
    runner is built for the phone when missing (`deploy.native.build.ensure_build`)."""
    mode = runner_mode(runner, mode)
    env = env or setup()
    if runner == "python":
        return GuestRunner(runner, str(env.guest_python),
                           {"runner.py": RUNNER, "model.so": Path(so_path)}, mode)

    return GuestRunner(runner, str(ensure_build("aarch64", env).runner),
                       {"model.so": Path(so_path)}, mode)
