"""Removal curves of a MACs budget and their output-sensitivity scaling (issue #18)."""

import numpy as np
import pytest
from helpers import prepared
from test_relaxed_targets import ChainNet

from mdl_tvm.core.graph_stats import graph_stats
from relay_passes import CompressConfig, MaskPruning, RecoveryConfig
from relay_passes.budget_curves import alone, output_scaled, planning_curves, removal_curves
from relay_passes.channel_graph import analyze
from relay_passes.layerwise import LayerwiseDriver, graph_order
from relay_passes.macs_budget import macs_model, plan_kept


@pytest.fixture(scope="module")
def chain():
    """ChainNet, a driver with 48 seeded calibration inputs, its groups and curves."""
    rng = np.random.default_rng(0)
    mod = prepared(ChainNet().eval(), (1, 1, 8, 8))
    calibration = rng.standard_normal((48, 1, 8, 8)).astype(np.float32)
    driver = LayerwiseDriver(mod, CompressConfig(speedup=2.0),
                             RecoveryConfig(output_sensitivity=True), calibration)
    order = [g.name for g in graph_order(analyze(mod))]
    return mod, driver, order, removal_curves(driver, order)


def test_removal_curves_cover_every_channel_but_one(chain):
    mod, driver, order, curves = chain
    model = macs_model(mod)
    for name in order:
        c = model.channels[name]
        assert len(curves.increments[name]) == len(curves.removed[name]) == c - 1
        assert len(set(curves.removed[name])) == c - 1
        assert (curves.increments[name] >= 0).all()


def test_a_group_pruned_alone_moves_the_output_only_when_it_loses_channels(chain):
    mod, driver, order, curves = chain
    assert driver.held_out_error(mod) == 0.0
    name = order[1]
    whole = macs_model(mod).channels[name]
    assert driver.held_out_error(alone(driver, curves, name, whole)) < 1e-12
    assert driver.held_out_error(alone(driver, curves, name, whole // 2)) > 1e-6


def test_output_scaled_curves_scale_each_group_by_output_error_over_curve_cost(chain):
    mod, driver, order, curves = chain
    model = macs_model(mod)
    scaled = output_scaled(driver, curves, model.total / 2)
    first = plan_kept(curves.increments, model, model.total / 2)
    assert set(driver.sensitivity) == {n for n, k in first.items() if k < model.channels[n]}
    for name, (kept, error, cost) in driver.sensitivity.items():
        assert kept < model.channels[name] and error > 0 and cost > 0
        np.testing.assert_allclose(scaled[name], curves.increments[name] * error / cost)
    kept = plan_kept(scaled, model, model.total / 2)
    assert model.macs(kept) <= model.total / 2
    assert kept != plan_kept(curves.increments, model, model.total / 2)  # a new plan


def test_planning_curves_are_the_plain_curves_without_output_sensitivity(chain):
    mod, driver, order, curves = chain
    plain = LayerwiseDriver(mod, CompressConfig(speedup=2.0),
                            RecoveryConfig(output_sensitivity=False), driver.samples)
    got = planning_curves(plain, order, 2.0)
    assert plain.sensitivity == {}
    for name in order:
        np.testing.assert_allclose(got[name], curves.increments[name])


def test_mask_pruning_with_output_sensitivity_meets_the_macs_target(chain):
    mod, driver, _, _ = chain
    pruner = MaskPruning(CompressConfig(speedup=2.0), RecoveryConfig(output_sensitivity=True),
                         calibration=driver.samples)
    small = pruner(mod)
    assert graph_stats(small).macs <= graph_stats(mod).macs / 2
    assert pruner.model_error["kept"] == "recovered"
