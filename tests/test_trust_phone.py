"""Phone instructions per compression point (`bench/trust_phone.py`): which row an
architecture is rebuilt from, the refusal of a rebuild with other MACs, and the report's
columns (the counts themselves: `python bench/trust_phone.py`, minutes on the phone)."""

import numpy as np
import pytest
import torch

from bench.trust_phone import architectures, count_point, point_masks
from bench.trust_report import markdown


def _row(part, method, ratio, macs, model="net", **extra):
    return {"part": part, "model": model, "method": method, "recovery": "ls", "ratio": ratio,
            "calibration": 256, "epochs": 0, "accuracy": 0.9, "macs": macs,
            "weight_bytes": 100, "latency_ms": 1.0, **extra}


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
    masks, host = point_masks(_tiny(), row, None)  # no calibration: the plan is not rerun
    assert int(masks["conv0"].sum()) == 3
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
