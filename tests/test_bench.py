"""The peer benchmark (`python -m bench`, `mdl-tvm bench`): a real --quick run, checked for
structure and sane numbers (no timing assertions)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HOST_ENGINES = ("torch", "onnxruntime", "ncnn", "tvm", "ours_kmeans", "ours_mask")


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("peers")
    proc = subprocess.run([sys.executable, "-m", "mdl_tvm", "bench", "--quick", "--out",
                           str(out)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return out, json.loads((out / "peers-quick.json").read_text())


def test_quick_writes_its_own_files(quick):
    out, _ = quick
    for name in ("peers-quick.json", "peers-quick.md", "peers-quick-latency.png"):
        assert (out / name).stat().st_size > 0
    assert not (out / "peers.json").exists()  # never the full run's files


def test_host_engines_measured(quick):
    _, result = quick
    assert result["meta"]["quick"] and result["meta"]["threads"] == 2
    assert result["meta"]["repeat"] >= 20 and _positive(result["meta"]["wall_s"])
    row = result["host"]["lenet5"]
    for engine in HOST_ENGINES:
        r = row[engine]
        assert "error" not in r, (engine, r)
        for key in ("ms", "ratio_to_ort", "weight_bytes", "rss_base_mib", "rss_peak_mib"):
            assert _positive(r[key]), (engine, key, r[key])
        assert r["rss_peak_mib"] >= r["rss_base_mib"]
        assert r["runs"] >= 20
    for engine in ("torch", "onnxruntime", "ncnn", "tvm"):  # same network, same numbers
        assert row[engine]["rel_err_vs_torch"] < 1e-4, engine
    assert row["onnxruntime"]["ratio_to_ort"] == 1.0
    assert row["ours_kmeans"]["weight_bytes"] < row["tvm"]["weight_bytes"]
    assert row["ours_fp16"]["error"].startswith("n/a on host")
    tuned = row["tvm_tuned"]
    assert _positive(tuned.get("ms")) or any("TVM tuned" in n for n in result["notes"])


def test_phone_and_accuracy(quick):
    _, result = quick
    phone = result["phone"]["lenet5"]
    for key in ("fp32", "fp16", "kmeans"):
        assert isinstance(phone[key]["instructions"], int) and phone[key]["instructions"] > 0
    assert phone["kmeans"]["instructions"] < phone["fp32"]["instructions"]
    point = result["accuracy"]["quick_point"]
    assert 0.1 < point["accuracy"] <= 1 and 0.1 < point["base_accuracy"] <= 1
    if (ROOT / "bench" / "results" / "compression.json").exists():
        methods = {(r["model"], r["method"]) for r in result["accuracy"]["rows"]}
        assert {("lenet5", "kmeans"), ("lenet5", "mask"), ("alexnet", "mask")} <= methods


def test_markdown_table(quick):
    out, result = quick
    md = (out / "peers-quick.md").read_text()
    for label in ("PyTorch eager", "ONNX Runtime", "NCNN", "TVM untuned", "ours kmeans:0.5",
                  "| LeNet-5", "instructions retired", "Fashion-MNIST"):
        assert label in md
    assert result["meta"]["command"] in md


def test_unknown_model_is_refused():
    proc = subprocess.run([sys.executable, "-m", "mdl_tvm", "bench", "--models", "vgg99"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2 and "allowed: lenet5" in proc.stderr
