"""Shipping trained weights (`mdl_tvm.train.ship`, `trained_model`)."""

import json

import numpy as np
import pytest
import torch

from mdl_tvm import train, zoo
from mdl_tvm.core.io import CACHE_ENV


def test_every_recipe_net_ships_weights_that_load():
    for name, config in train.RECIPES.items():
        note = json.loads((train.SHIPPED / f"{name}.json").read_text())
        assert note["recipe"]["epochs"] == config.epochs
        assert note["recipe"]["optimizer"] == config.optimizer
        with np.load(train.SHIPPED / f"{name}.npz") as data:
            assert set(data.files) == set(zoo.build(name).state_dict())


def test_ship_from_cache_writes_the_cached_weights(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    config = train.TrainConfig(epochs=1, seed=3)
    with pytest.raises(FileNotFoundError, match="python -m mdl_tvm.train lenet5"):
        train.ship("lenet5", config, tmp_path, from_cache=True, log=lambda m: None)
    model = zoo.build("lenet5", seed=7)
    cached = tmp_path / "cache" / "weights" / (config.cache_name("lenet5") + ".pt")
    cached.parent.mkdir(parents=True)
    torch.save(model.state_dict(), cached)
    note = train.ship("lenet5", config, tmp_path, from_cache=True, log=lambda m: None)
    assert note["train_seconds"] is None and note["command"].endswith("--from-cache")
    assert json.loads((tmp_path / "lenet5.json").read_text()) == note
    with np.load(tmp_path / "lenet5.npz") as data:
        for key, value in model.state_dict().items():
            np.testing.assert_array_equal(data[key], value.numpy())
