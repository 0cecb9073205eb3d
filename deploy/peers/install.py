"""Install the peer engines: their aarch64 wheels for the phone, their converters here.

Two parts of the device cache (built by ``mdl-tvm device setup --peers``, stamped and
re-checked like the sysroot, see `deploy.device`):

* ``peers/``       the aarch64 wheels of ONNX Runtime, NCNN, MNN and LiteRT (+ their pure
                   Python dependencies), ``pip install --no-deps --target``: put on the
                   guest's ``PYTHONPATH`` for peer runs only, never in the device site;
* ``peers-host/``  this machine's converter for MNN (its ``_tools`` extension, called
                   without importing the ``MNN.tools`` wrapper, which pip-installs a
                   telemetry package on import) and the TFLite flatbuffer schema.

The host's own Python environment is never touched.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

PEER_WHEELS = (
    "onnxruntime==1.32.0",
    "ncnn==1.0.20261020",
    "MNN==3.6.1",
    "ai-edge-litert==1.4.0",
    "flatbuffers==25.12.19",
    "protobuf==7.36.2",
    "coloredlogs==15.0.1",
    "humanfriendly==10.0",
    "packaging==26.4",
    "sympy==1.14.0",
    "mpmath==1.4.1",
)
HOST_WHEELS = ("MNN==3.6.1",)
AARCH64 = (
    "--only-binary=:all: --python-version 3.11 --implementation cp --platform "
    "manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64"
).split()
SCHEMA = "ai_edge_litert/schema_py_generated.py"


def _pip(run, logf: Path, args: list, what: str) -> None:
    run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], logf, what)


def build_peers(run, tmp: Path, logf: Path, log) -> None:
    """Download and unpack the aarch64 peer wheels into `tmp` (`run` executes a command)."""
    log("downloading the peer engines' aarch64 wheels (ONNX Runtime, NCNN, MNN, LiteRT)")
    wheels = tmp.parent / "peer-wheels.tmp"
    shutil.rmtree(wheels, ignore_errors=True)
    _pip(run, logf, ["download", "--no-deps", *AARCH64, "-d", str(wheels), *PEER_WHEELS],
         "pip download (peers)")
    files = sorted(str(p) for p in wheels.glob("*.whl"))
    _pip(run, logf, ["install", "--no-deps", "--no-index", "--no-compile", *AARCH64,
                     "--target", str(tmp), *files], "pip install --target (peers)")
    shutil.rmtree(wheels, ignore_errors=True)
    shutil.rmtree(tmp / "bin", ignore_errors=True)
    for required in ("onnxruntime", "ncnn", "MNN", SCHEMA):
        if not (tmp / required).exists():
            raise FileNotFoundError(f"the peer wheels lack {required}; see {logf}")


def build_peers_host(run, tmp: Path, logf: Path, log) -> None:
    """This machine's MNN converter into `tmp` (no dependencies, no host site-packages)."""
    log("installing the MNN converter for this machine")
    _pip(run, logf, ["install", "--no-deps", "--only-binary=:all:", "--target", str(tmp),
                     *HOST_WHEELS], "pip install --target (MNN converter)")
    if not list(tmp.glob("_tools*.so")):
        raise FileNotFoundError(f"the MNN wheel has no _tools converter; see {logf}")
