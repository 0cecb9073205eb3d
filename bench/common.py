"""What the benchmarks share (building, counting and checking on the phone:
`bench.phone_build`); timing and errors are `mdl_tvm.core.numerics`, files are
written atomically by `mdl_tvm.core.io`. Heavy imports happen inside the functions.

* command line  `parser` (shared options), `parse_args` (``args.command``), `forward`,
  `measure_mode`
* machine       `cpu_info`, `cpu_model`, `loadavg`, `run_meta`
* processes     `run_worker` (one JSON line back), `quiet`, `error_text`
* tuning        `tuning_config`
* results       `write_results` (``NAME.json`` + ``.md`` + ``.png``), `pyplot`, `save_figure`
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from mdl_tvm.core.io import atomic_output, atomic_write

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SHARED_OPTIONS = {
    "runs": (int, "N of the phone's instruction count, (count(2N) - count(N)) / N"),
    "repeat": (int, "timed runs"),
    "warmup": (int, "untimed runs before the timed ones"),
    "threads": (int, "threads of every runtime (TVM_NUM_THREADS, torch, ONNX Runtime)"),
}


# -- command line ----------------------------------------------------------------------
def parser(doc: str, prog: str, *, out: bool = True, models=None, quick: str | None = None,
           **defaults) -> argparse.ArgumentParser:
    """An argument parser described by the first paragraph of `doc`, with shared options.

    Parameters
    ----------
    doc : str
        The script's docstring.
    prog : str
        How the script is run (``"python bench/precision_bench.py"``), the start of
        ``args.command``.
    out : bool
        Add ``--out`` (the results directory, default ``bench/results``).
    models : sequence of str, optional
        Add ``--models`` (space- or comma-separated) with this default.
    quick : str, optional
        Add ``--quick`` with this help text.
    **defaults
        Add these `SHARED_OPTIONS` (``runs``, ``repeat``, ``warmup``, ``threads``) with
        these defaults.
    """
    p = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    if quick is not None:
        p.add_argument("--quick", action="store_true", help=quick)
    if models is not None:
        p.add_argument("--models", nargs="+", default=list(models),
                       help=f"space- or comma-separated (default: {' '.join(models) or 'all'})")
    for name, default in defaults.items():
        kind, text = SHARED_OPTIONS[name]
        p.add_argument(f"--{name}", type=kind, default=default, help=text)
    if out:
        p.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    return p


def parse_args(p: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parse `argv` (default: ``sys.argv[1:]``); ``--models a,b c`` becomes ``[a, b, c]``
    and ``args.command`` the command line as the reports quote it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    if getattr(args, "models", None):
        args.models = [n for item in args.models for n in item.split(",") if n]
    args.command = " ".join([p.prog, *argv])
    return args


def measure_mode(args: argparse.Namespace, measure) -> bool:
    """A script's worker mode (run by `run_worker`): with ``--measure A:B``, print
    ``measure(A, B, args)`` as one JSON line and return True."""
    if not args.measure:
        return False
    print(json.dumps(measure(*args.measure.split(":", 1), args)))
    return True


def forward(args: argparse.Namespace, *names: str) -> list[str]:
    """``["--name", "value", ...]`` of `args`, to hand options on to a worker process."""
    return [a for n in names for a in (f"--{n.replace('_', '-')}", str(getattr(args, n)))]


# -- machine ---------------------------------------------------------------------------
def cpu_info() -> dict:
    """``machine``, ``cpus`` and, from /proc/cpuinfo where present, ``model``, ``mhz`` and
    ``family`` (x86 ``cpu family`` / ``model`` numbers: a virtual machine may name only
    the vendor line, "AMD EPYC", for CPUs whose vector units differ)."""
    info = {"machine": platform.machine(), "cpus": os.cpu_count()}
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    if "model name" in fields:
        info["model"] = fields["model name"]
    if fields.get("cpu MHz"):
        info["mhz"] = float(fields["cpu MHz"])
    if fields.get("cpu family") and fields.get("model"):
        info["family"] = f"family {fields['cpu family']}, model {fields['model']}"
    return info


def cpu_model() -> str:
    """The CPU's model name (with its family and model numbers where known), or the
    machine type where /proc/cpuinfo has none."""
    info = cpu_info()
    name = info.get("model", info["machine"])
    return f"{name} ({info['family']})" if "family" in info else name


def loadavg() -> float | None:
    """The 1-minute load average, or None where /proc/loadavg is missing."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except OSError:
        return None


def run_meta(args: argparse.Namespace, start: float | None = None, **extra) -> dict:
    """``date``, ``command``, ``cpu``, ``cores`` (and ``wall_s`` since the
    ``time.perf_counter()`` reading `start`) of a run, with `extra` added."""
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": args.command,
            "cpu": cpu_model(), "cores": os.cpu_count()}
    if start is not None:
        meta["wall_s"] = round(time.perf_counter() - start, 1)
    return {**meta, **extra}


# -- processes -------------------------------------------------------------------------
def run_worker(script, *argv, threads: int | None = None, **kw) -> dict:
    """Run ``python SCRIPT ARGV...`` and return the JSON object on its last stdout line.

    Parameters
    ----------
    script : path or str
        A script printing one JSON line (its ``--measure`` mode), or ``"-m"`` + module.
    *argv
        Its arguments (converted to str).
    threads : int, optional
        Its ``TVM_NUM_THREADS``.
    **kw
        Passed to `subprocess.run` (``cwd``, ``env``, ``timeout``).

    Raises
    ------
    RuntimeError
        When the worker fails, with the end of its stderr.
    """
    if threads is not None:
        kw["env"] = {**kw.get("env", os.environ), "TVM_NUM_THREADS": str(threads)}
    cmd = [sys.executable, str(script), *map(str, argv)]
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n"
                           f"{(proc.stderr or proc.stdout)[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def qemu_lock(path):
    """Hold an exclusive ``flock(path)`` for the block, shared with the other QEMU jobs
    (``/tmp/mdl_qemu.lock``: one emulated-phone job at a time); nothing when `path` is None."""
    if not path:
        yield
        return
    import fcntl

    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def quiet(log: Path | None):
    """Send this process's stdout and stderr (file descriptors, so child tools too) to
    `log`; with None, change nothing."""
    if log is None:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "ab") as f:
        for fd in (1, 2):
            os.dup2(f.fileno(), fd)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, old in zip((1, 2), saved, strict=True):
                os.dup2(old, fd)
                os.close(old)


def error_text(err: BaseException) -> str:
    """``"Type: last line of the message"``, at most 300 characters, for a result row."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[-1] if text else ''}"[:300]


# -- tuning ----------------------------------------------------------------------------
def tuning_config(threads: int):
    """The benchmarks' MetaSchedule settings: 16 trials per round, at least 8 per task."""
    from schedules.tuning.driver import TuningConfig

    return TuningConfig(search_threads=threads, trials_per_iter=16, min_trials=8)


# -- results ---------------------------------------------------------------------------
def pyplot():
    """`matplotlib.pyplot` on the Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path, dpi: int = 110) -> Path | None:
    """Save a matplotlib figure as PNG atomically and close it; None saves nothing (a plot
    function without matplotlib) and returns None."""
    if fig is None:
        return None
    import matplotlib.pyplot as plt

    with atomic_output(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return Path(path)


def write_results(name: str, data: dict, markdown: str | None = None, figure=None,
                  out=RESULTS, dpi: int = 110) -> dict:
    """Write ``OUT/NAME.json``, ``NAME.md`` and ``NAME.png``, each atomically.

    Parameters
    ----------
    name : str
        File stem, e.g. ``"precision"``.
    data : dict
        The results (JSON-serialisable).
    markdown : str, optional
    figure : matplotlib.figure.Figure, optional
        Each written only when given (the figure is closed).
    out : path
        The directory (made when missing).
    dpi : int

    Returns
    -------
    dict
        ``{"json": path, "md": path, "png": path}``: the files written.
    """
    out = Path(out)
    paths = {"json": atomic_write(out / f"{name}.json", json.dumps(data, indent=1) + "\n")}
    if markdown is not None:
        paths["md"] = atomic_write(out / f"{name}.md", markdown)
    if figure is not None:
        paths["png"] = save_figure(figure, out / f"{name}.png", dpi)
    return paths
