"""The compression-trust bench's bookkeeping (`bench/trust_bench.py`) and its phone
instructions per point (`bench/trust_phone.py`): a re-measured base keeps older rows'
ratios, which row an architecture is rebuilt from, the refusal of a rebuild with other
MACs, and the report's columns (the counts themselves: `python bench/trust_phone.py`,
minutes on the phone)."""

import argparse

import numpy as np
import pytest
import torch

from bench.trust_bench import Bench
from bench.trust_phone import architectures, count_point, point_masks
from bench.trust_report import markdown


def _row(part, method, ratio, macs, model="net", **extra):
    return {"part": part, "model": model, "method": method, "recovery": "ls", "ratio": ratio,
            "calibration": 256, "epochs": 0, "accuracy": 0.9, "macs": macs,
            "weight_bytes": 100, "latency_ms": 1.0, **extra}


def test_a_new_base_leaves_older_rows_their_own_base_latency(tmp_path):
    bench = Bench.__new__(Bench)
    bench.args, bench.start = argparse.Namespace(part="curve", out=tmp_path, command="x"), 0.0
    bench.data = {"meta": {}, "rows": [_row("base", "none", 0.0, 1000, latency_ms=2.0),
                                       _row("curve", "mask", 0.5, 400, latency_ms=1.0),
                                       _row("base", "none", 0.0, 9, model="other")]}
    bench.save(_row("base", "none", 0.0, 1000, latency_ms=4.0))
    rows = {(r["part"], r["model"]): r for r in bench.data["rows"]}
    assert rows[("base", "net")]["latency_ms"] == 4.0  # replaced, not duplicated
    assert len(bench.data["rows"]) == 3
    assert rows[("curve", "net")]["base_latency_ms"] == 2.0  # its ratio stays 0.50
    assert "base_latency_ms" not in rows[("base", "other")]
    assert "| 0.50 |" in (tmp_path / "compression-trust.md").read_text()


def test_report_lists_the_command_behind_each_part_s_rows():
    data = {"meta": {"curve": {"command": "c2"}, "budget": {"command": "b"}},
            "rows": [_row("base", "none", 0.0, 1000, command="c2"),
                     _row("curve", "mask", 0.5, 400, command="c1"),
                     _row("curve", "mask", 0.75, 200, command="c2"),
                     _row("curve", "kmeans", 0.5, 400),
                     _row("budget", "mask", 0.5, 400)]}
    lines = markdown(data).splitlines()
    curve = lines[lines.index("- `curve`: last run `c2` (None, None s so far)") + 1]
    assert curve == "  - its rows come from `c1`; `c2` (1 earlier rows: commands in the README)"
    budget = lines.index("- `budget`: last run `b` (None, None s so far)")
    assert not lines[budget + 1].startswith("  - its rows")  # none recorded: nothing made up


def test_one_architecture_per_model_and_macs_rebuilt_from_the_cheapest_row():
    rows = [_row("budget", "mask", 0.33, 500, speedup=2.0),
            _row("curve", "mask", 0.3, 500),
            _row("finetune", "uncompressed+ft", 0.0, 1000),
            _row("base", "none", 0.0, 1000),
            _row("base", "none", 0.0, 1000, model="other")]
    found = architectures(rows)
    assert sorted(found) == [("net", 500), ("net", 1000), ("other", 1000)]
    assert found[("net", 500)]["part"] == "curve"  # a ratio, not the plan's calibration
    assert found[("net", 1000)]["part"] == "base"


def test_report_divides_the_base_count_by_the_points():
    data = {"meta": {}, "rows": [_row("base", "none", 0.0, 1000), _row("curve", "mask", 0.5, 400),
                                 _row("curve", "kmeans", 0.75, 200)],
            "phone": [{"model": "net", "macs": 1000, "instructions": 300_000},
                      {"model": "net", "macs": 400, "instructions": 120_000}]}
    lines = markdown(data).splitlines()
    mask = next(line for line in lines if "| mask+ls |" in line)
    kmeans = next(line for line in lines if "| kmeans+ls |" in line)
    assert "| 120,000 | 2.50x |" in mask
    assert "|  |  |" in kmeans  # not counted: blank, not a made-up ratio


def _tiny():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(),
                               torch.nn.Conv2d(8, 4, 3), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 24 * 24, 10)).eval()


def test_recorded_channels_rebuild_those_counts_without_data():
    row = _row("budget", "mask", 0.4, 0, speedup=2.0, channels={"conv0": [8, 3]})
    commit, host = point_masks(_tiny(), row, None)  # no calibration: the plan is not rerun
    assert int(commit.given_masks["conv0"].sum()) == 3
    assert int(host.stats.macs) == 26 * 26 * 3 * 9 + 24 * 24 * 4 * 3 * 9 + 4 * 24 * 24 * 10


def test_a_rebuild_with_other_macs_is_refused_before_the_phone(tmp_path):
    model = _tiny()
    row = _row("curve", "mask", 0.5, 123, model="tiny")
    image = np.random.default_rng(0).standard_normal((1, 1, 28, 28)).astype("float32")
    found = count_point(model, row, None, image, tmp_path, runs=1)
    assert "instructions" not in found
    assert found["error"].startswith("not reproduced")
    assert "123 MACs" in found["error"]
    assert not list(tmp_path.glob("*.so"))  # nothing built for the phone


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__, "-q"]))
