"""The dependency order holds (import-linter contracts in pyproject.toml), and a wrong
import breaks it: the check can fail."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mdl_tvm", "relay_passes", "schedules", "deploy", "apps")


def _lint(root: Path) -> subprocess.CompletedProcess:
    code = ("import sys; from importlinter.cli import lint_imports; "
            "sys.exit(lint_imports(config_filename='pyproject.toml'))")
    return subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                          text=True, timeout=300, env={"PYTHONPATH": str(root), "PATH": ""})


def test_layers_contract_holds():
    proc = _lint(ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


@pytest.mark.parametrize(("module", "wrong_import", "message"), [
    ("mdl_tvm/core/io.py", "from mdl_tvm.compiler import pipeline", "mdl_tvm.core"),
    ("deploy/zero_copy.py", "import mdl_tvm.compiler.compiled", "deploy"),
    ("schedules/conv2d.py", "import relay_passes.channel_graph", "schedules"),
])
def test_a_wrong_import_breaks_the_contract(tmp_path, module, wrong_import, message):
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.npz", "*.png"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n\ndef _wrong():\n    {wrong_import}\n")
    proc = _lint(tmp_path)
    assert proc.returncode != 0
    assert "BROKEN" in proc.stdout and message in proc.stdout
