"""The peer benchmark (`python -m bench`): a real --quick run, checked for structure, exact
sizes and consistent numbers (no timing bounds: those are the benchmark's business)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HOST_ENGINES = ("torch", "onnxruntime", "ncnn", "tvm", "ours_kmeans", "ours_mask")
# LeNet-5's parameters (conv 1->6 5x5, conv 6->16 5x5, 400->120->84->10), and at half of
# every hidden layer (3, 8, 60, 42 channels) as both compressors leave it
LENET_BYTES = 4 * (6 * 25 + 6 + 16 * 6 * 25 + 16 + 400 * 120 + 120 + 120 * 84 + 84 + 84 * 10 + 10)
LENET_HALF_BYTES = 4 * (3 * 25 + 3 + 8 * 3 * 25 + 8 + 200 * 60 + 60 + 60 * 42 + 42 + 42 * 10 + 10)


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def quick(phone_env, tmp_path_factory):
    """One real ``--quick`` run (LeNet-5 on every engine, instruction counts on the phone,
    one accuracy point of the trained LeNet-5), shared by the four tests below."""
    out = tmp_path_factory.mktemp("peers")
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out",
                           str(out)], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return out, json.loads((out / "peers-quick.json").read_text())


@pytest.mark.phone
@pytest.mark.slow
@pytest.mark.training
def test_quick_writes_its_own_files(quick):
    out, _ = quick
    for name in ("peers-quick.json", "peers-quick.md", "peers-quick-latency.png"):
        assert (out / name).stat().st_size > 0
    assert not (out / "peers.json").exists()  # never the full run's files
    table = json.loads((out / "phone_peers-quick.json").read_text())["cells"]["lenet5"]
    assert set(table) >= {"mobiledl", "mobiledl-fp16", "ort", "ncnn", "ncnn-fp16", "mnn",
                          "mnn-fp16", "litert"}  # every engine on the same phone
    assert all(_positive(c["instructions"]) and c["rel_error"] < 2e-2 for c in table.values())


@pytest.mark.phone
@pytest.mark.slow
@pytest.mark.training
def test_host_engines_measured(quick):
    _, result = quick
    assert result["meta"]["quick"] and result["meta"]["threads"] == 2
    assert result["meta"]["repeat"] >= 20 and _positive(result["meta"]["wall_s"])
    row = result["host"]["lenet5"]
    for engine in HOST_ENGINES:
        r = row[engine]
        assert "error" not in r, (engine, r)
        for key in ("ms", "ratio_to_ort", "rss_base_mib", "rss_peak_mib"):
            assert _positive(r[key]), (engine, key, r[key])
        assert r["rss_peak_mib"] >= r["rss_base_mib"]
        assert r["runs"] >= 20
        assert r["ratio_to_ort"] == pytest.approx(r["ms"] / row["onnxruntime"]["ms"], rel=1e-2)
    for engine in ("torch", "onnxruntime", "tvm"):  # same network, same bytes, same numbers
        assert row[engine]["weight_bytes"] == LENET_BYTES, engine
        assert row[engine]["rel_err_vs_torch"] < 1e-4, engine
    assert row["ncnn"]["rel_err_vs_torch"] < 1e-4
    assert row["onnxruntime"]["ratio_to_ort"] == 1.0
    assert row["ours_kmeans"]["weight_bytes"] == row["ours_mask"]["weight_bytes"] == (
        LENET_HALF_BYTES)
    for engine in ("ours_kmeans", "ours_mask"):  # a different function: half the channels
        assert row[engine]["rel_err_vs_torch"] > 1e-2, engine
    assert row["ours_fp16"]["error"].startswith("n/a on host")
    tuned = row["tvm_tuned"]
    assert _positive(tuned.get("ms")) or any("TVM tuned" in n for n in result["notes"])


@pytest.mark.phone
@pytest.mark.slow
@pytest.mark.training
def test_phone_and_accuracy(quick):
    _, result = quick
    phone = result["phone"]["lenet5"]
    counts = {key: phone[key]["instructions"] for key in ("fp32", "fp16", "kmeans")}
    assert all(isinstance(n, int) for n in counts.values()), counts
    # LeNet-5: 416,520 MACs; NEON fp32 does 4 per fmla, so a few hundred thousand in all
    assert 100_000 < counts["fp32"] < 2_000_000, counts
    assert counts["fp16"] < 0.8 * counts["fp32"], counts  # 8-lane fp16 vectors
    assert counts["kmeans"] < 0.6 * counts["fp32"], counts  # half the channels
    point = result["accuracy"]["quick_point"]
    # trained LeNet-5 on 10 classes: about 0.87; k-means 0.5 without recovery loses points
    assert 0.8 < point["base_accuracy"] <= 1, point
    assert 0.3 < point["accuracy"] < point["base_accuracy"], point
    if (ROOT / "bench" / "results" / "compression.json").exists():
        methods = {(r["model"], r["method"]) for r in result["accuracy"]["rows"]}
        assert {("lenet5", "kmeans"), ("lenet5", "mask"), ("alexnet", "mask")} <= methods


@pytest.mark.phone
@pytest.mark.slow
@pytest.mark.training
def test_markdown_table(quick):
    out, result = quick
    md = (out / "peers-quick.md").read_text()
    for label in ("PyTorch eager", "ONNX Runtime", "NCNN", "TVM untuned", "ours kmeans:0.5",
                  "| LeNet-5", "instructions retired", "Fashion-MNIST"):
        assert label in md
    assert result["meta"]["command"] in md
    assert f"{result['phone']['lenet5']['fp32']['instructions'] / 1e6:.2f} M" in md


def test_unknown_model_is_refused():
    proc = subprocess.run([sys.executable, "-m", "bench", "--models", "vgg99"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2
    assert "unknown model(s) vgg99; allowed: lenet5" in proc.stderr


def test_phone_table_shows_counts_and_ratios_to_fp32():
    """The report's phone table from a fixed result (no run): millions with two decimals,
    ratios to fp32, the footnote mark on counts taken from precision.json, a dash when a
    build was not counted."""
    from bench.report import PHONE_LABELS, phone_table

    result = {"phone": {"lenet5": {"fp32": {"instructions": 292_349},
                                   "fp16": {"instructions": 161_148, "source": "precision.json"},
                                   "kmeans": {"instructions": 114_986}}}}
    header, rule, row = phone_table(result)
    assert header == "| model | " + " | ".join(PHONE_LABELS.values()) + " |"
    assert rule == "|---|" + "---:|" * len(PHONE_LABELS)
    assert row == "| LeNet-5 | 0.29 M | 0.16 M (0.55x)² | 0.11 M (0.39x) | — |"


def test_phone_peers_resume_of_one_model_keeps_the_other_rows(tmp_path):
    """``--resume --models X`` recounts only X's missing cells and keeps every other row
    (it once wrote a table of X alone, dropping the rest)."""
    from bench import phone_peers

    done = {c: {"instructions": 1000 + i, "rel_error": 1e-6}
            for i, c in enumerate(phone_peers.columns())}
    other = {"ort": {"instructions": 7, "rel_error": 0.0},
             "mobiledl": {"instructions": 5, "rel_error": 0.0}}
    (tmp_path / "phone_peers.json").write_text(json.dumps(
        {"cells": {"lenet5": done, "resnet18": other}, "meta": {"command": "x"}}))
    result = phone_peers.table(["lenet5"], False, tmp_path, "again", resume=True)
    assert list(result["cells"]) == ["lenet5", "resnet18"]
    assert result["cells"]["resnet18"]["ort"]["instructions"] == 7
    assert result["cells"]["lenet5"]["ort"]["instructions"] == done["ort"]["instructions"]
    saved = json.loads((tmp_path / "phone_peers.json").read_text())
    assert set(saved["cells"]) == {"lenet5", "resnet18"}
