"""`bench/families_bench.py --phone-only`: merging phone counts into an earlier host run."""

import json
import os

import pytest

from bench import families_bench

ROW = {"ours_ms": 2.0, "onnxruntime_ms": 1.0, "vs_onnxruntime": 2.0, "rel_error_vs_torch": 1e-6,
       "slow_paths": [], "kmeans_macs_kept": 0.3}


def _results(tmp_path, phone):
    data = {"threads": 1, "meta": {"cpu": "test", "command": "host run"},
            "families": {"efficientnet": {**ROW, "phone": phone}, "regnet": dict(ROW)}}
    (tmp_path / "families.json").write_text(json.dumps(data))


def test_engines_recount_only_those_engines_and_keep_the_peers(tmp_path, monkeypatch):
    counted = []

    def fake_counts(name, args, engines=families_bench.PHONE_ENGINES):
        counted.append((name, tuple(engines)))
        return {e: {"instructions": 7, "rel_error": 0.0} for e in engines}

    monkeypatch.setattr(families_bench, "phone_counts", fake_counts)
    # main() sets TVM_NUM_THREADS; monkeypatch restores it after the test
    monkeypatch.setenv("TVM_NUM_THREADS", os.environ.get("TVM_NUM_THREADS", "2"))
    old = {e: {"instructions": 100, "rel_error": 0.0} for e in families_bench.PHONE_ENGINES}
    _results(tmp_path, old)
    assert families_bench.main(["--phone-only", "--models", "efficientnet", "--out",
                                str(tmp_path), "--engines", "mobiledl", "mobiledl-fp16"]) == 0
    phone = json.loads((tmp_path / "families.json").read_text())["families"]["efficientnet"]
    assert {e: c["instructions"] for e, c in phone["phone"].items()} == {
        "mobiledl": 7, "mobiledl-fp16": 7, "ncnn": 100, "ncnn-fp16": 100, "ort": 100}
    assert counted == [("efficientnet", ("mobiledl", "mobiledl-fp16"))]
    # without --engines a counted family is skipped, an uncounted one gets every engine
    families_bench.main(["--phone-only", "--models", "efficientnet", "regnet",
                         "--out", str(tmp_path)])
    assert counted[1:] == [("regnet", families_bench.PHONE_ENGINES)]
    assert "0.07x" in (tmp_path / "families.md").read_text()  # 7 / 100 vs the best peer


def test_engines_without_a_phone_run_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TVM_NUM_THREADS", os.environ.get("TVM_NUM_THREADS", "2"))
    with pytest.raises(SystemExit) as stop:
        families_bench.main(["--models", "regnet", "--out", str(tmp_path),
                             "--engines", "mobiledl"])
    assert stop.value.code == 2 and "add --phone or --phone-only" in capsys.readouterr().err
    assert not (tmp_path / "families.json").exists()


def test_a_host_rerun_keeps_the_phone_counts_and_their_command(tmp_path, monkeypatch):
    monkeypatch.setenv("TVM_NUM_THREADS", os.environ.get("TVM_NUM_THREADS", "2"))
    monkeypatch.setattr(families_bench, "bench_family", lambda name, args: {
        **ROW, "ours_ms": 1.5, "vs_onnxruntime": 1.5, "round_ratios": [1.4, 1.5, 1.7]})
    old = {e: {"instructions": 100, "rel_error": 0.0} for e in families_bench.PHONE_ENGINES}
    _results(tmp_path, old)
    assert families_bench.main(["--models", "efficientnet", "regnet", "--out",
                                str(tmp_path)]) == 0
    result = json.loads((tmp_path / "families.json").read_text())
    assert result["families"]["efficientnet"]["phone"] == old
    assert "phone" not in result["families"]["regnet"]
    assert result["meta"]["phone_commands"] == ["host run"]
    text = (tmp_path / "families.md").read_text()
    assert "| efficientnet | 1.50 | 1.00 | 1.5x | 1.40–1.70 |" in text and "`host run`" in text
