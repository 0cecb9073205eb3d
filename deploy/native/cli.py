"""``mdl-tvm deploy-bundle``: write what an app ships for a model library.

    mdl-tvm deploy-bundle ARTIFACT.so -o DIR [--arch aarch64|host] [--check]

`register(subparsers)` adds the command to the main ``mdl-tvm`` parser (`deploy.cli` calls
it); its ``func`` takes the argparse namespace and returns an exit code.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from deploy.device import setup
from deploy.emulator import library_cpu, run_guest
from deploy.native.build import ARCHES
from deploy.native.bundle import README, Bundle, make_bundle
from mdl_tvm.core.errors import DeviceError


def run_bundle(bundle: Bundle, runs: int = 1, timeout: float = 600.0) -> str:
    """Run the bundle's ``mdl_run`` on its model (a fixed pseudo-random input), from a
    scratch directory; aarch64 bundles run on the emulated phone. Returns what it printed.

    Raises
    ------
    DeviceError
        When the runner fails (its message is in the error).
    """
    argv = [str(bundle.root / bundle.model), "-n", str(runs)]
    with tempfile.TemporaryDirectory(prefix="mdl_bundle_") as tmp:
        if bundle.arch == "aarch64":
            cpu, meta = library_cpu(bundle.root / bundle.model)
            return run_guest(setup(), Path(tmp), None, argv, cpu, timeout, meta=meta,
                             program=bundle.root / "mdl_run", what="the bundle's mdl_run")
        res = subprocess.run([str(bundle.root / "mdl_run"), *argv], cwd=tmp, timeout=timeout,
                             capture_output=True, text=True)
        if res.returncode != 0:
            raise DeviceError(f"the bundle's mdl_run failed (exit {res.returncode}): "
                              f"{res.stderr.strip()}")
        return res.stdout


def _cmd_bundle(args) -> int:
    bundle = make_bundle(args.artifact, args.output, arch=args.arch)
    print(f"wrote {bundle.root} for {bundle.arch}: {bundle.total_bytes:,} bytes")
    print(bundle.table())
    print((bundle.root / README).read_text().splitlines()[1])
    if args.check:
        print(run_bundle(bundle).strip())
    return 0


def register(subparsers) -> None:
    """Add ``deploy-bundle`` to an argparse subparsers object.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        From ``parser.add_subparsers(dest="command")`` of the main CLI.
    """
    p = subparsers.add_parser(
        "deploy-bundle", help="write what an app ships: model, native runtime, header, runner")
    p.add_argument("artifact", metavar="ARTIFACT.so", help="a MobileDL library with main_zc")
    p.add_argument("-o", "--output", required=True, metavar="DIR",
                   help="folder to write (new, empty, or an earlier bundle)")
    p.add_argument("--arch", choices=ARCHES, default="aarch64",
                   help="the bundle's CPU: aarch64 (the phone, default) or host")
    p.add_argument("--check", action="store_true",
                   help="run the bundled runner once (aarch64: on the emulated phone)")
    p.set_defaults(func=_cmd_bundle)
