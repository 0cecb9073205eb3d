"""Run and count the peer engines on the emulated phone, as MobileDL's libraries are.

The same deterministic set-up as `deploy.emulator.count_instructions` (one thread, fixed
seeds, no ASLR, N and 2N inferences so start-up cancels), the same CPU model, with the
peers' packages first on the guest's ``PYTHONPATH``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from deploy.device import DeviceEnv, setup
from deploy.emulator import count_guest, counting_workdir, per_run, read_outputs, run_guest
from deploy.peers.convert import PeerModel
from deploy.peers.errors import EngineRefused
from mdl_tvm.core.errors import DeviceError

RUNNER = Path(__file__).with_name("peer_runner.py")
REFUSED = 3  # peer_runner's exit code when the engine refuses the model


def _files(model: PeerModel, spec_path: Path) -> dict[str, Path]:
    return {"peer_runner.py": RUNNER, "spec.json": spec_path,
            **{Path(f).name: Path(f) for f in model.files}}


def _argv(names: list[str], runs: int) -> list[str]:
    return ["peer_runner.py", "spec.json", "--inputs", *names, "--outputs-dir", "out",
            "--repeat", f"{runs:09d}"]


def _refused(err: DeviceError, model: PeerModel) -> Exception:
    text = str(err)
    if f"exit {REFUSED})" in text:
        return EngineRefused(text.strip().splitlines()[-1])
    return err


def _with_spec(model: PeerModel, fn):
    with tempfile.TemporaryDirectory(prefix="mdl-peer-") as tmp:
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(model.spec))
        return fn(spec_path)


def run_peer(model: PeerModel, inputs, cpu: str, env: DeviceEnv | None = None,
             timeout: float = 900.0) -> list[np.ndarray]:
    """Run `model` once on the phone; returns its outputs in the caller's layout."""
    env = env or setup(peers=True)

    def go(spec_path: Path):
        with tempfile.TemporaryDirectory(prefix="mdl-peer-run-") as tmp:
            work = Path(tmp)
            for name, src in _files(model, spec_path).items():
                (work / name).write_bytes(Path(src).read_bytes())
            names = []
            for i, arr in enumerate(inputs):
                np.save(work / f"in{i}.npy", np.ascontiguousarray(arr))
                names.append(f"in{i}.npy")
            try:
                run_guest(env, work, "peer_runner.py", _argv(names, 1)[1:], cpu, timeout,
                          pythonpath=[env.peers], what=f"{model.engine} (peer_runner.py)")
            except DeviceError as err:
                raise _refused(err, model) from None
            return read_outputs(work / "out")

    return _with_spec(model, go)


def count_peer(model: PeerModel, inputs, cpu: str, runs: int = 2, verify: bool = False,
               env: DeviceEnv | None = None, timeout: float = 1800.0) -> int:
    """Instructions one inference of `model` retires on the phone (N / 2N method)."""
    env = env or setup(peers=True)

    def go(spec_path: Path) -> int:
        with counting_workdir(env, _files(model, spec_path), inputs) as (work, names):
            def count(n: int) -> int:
                try:
                    path = count_guest(env, work, _argv(names, n), timeout, cpu,
                                       pythonpath=[env.peers])
                except DeviceError as err:
                    raise _refused(err, model) from None
                return int(path.read_text())

            return per_run(count, runs, verify)

    return _with_spec(model, go)
