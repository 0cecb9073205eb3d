"""Brief, seeded training of the zoo's 28x28 CNNs on Fashion-MNIST, cached on disk.

Weights are cached in ``$MDL_TVM_CACHE/weights`` (default ``~/.cache/mdl_tvm``) under a
name that includes the model, epochs and seed, and written atomically.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from mdl_tvm import zoo
from mdl_tvm.core.io import atomic_output, cache_root
from mdl_tvm.data import load_fashion_mnist


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 2
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    limit: int | None = None  # training images used (None: all 60,000)


def evaluate(model, images: np.ndarray, labels: np.ndarray, batch_size: int = 1000) -> float:
    """Top-1 accuracy of a torch model on numpy data."""
    import torch

    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            logits = model(torch.from_numpy(images[i : i + batch_size]))
            correct += int((logits.argmax(1).numpy() == labels[i : i + batch_size]).sum())
    return correct / len(images)


def train(model, config: TrainConfig = TrainConfig(), log=print):
    """Train `model` in place with Adam on the Fashion-MNIST training split."""
    import torch

    torch.manual_seed(config.seed)
    x, y = load_fashion_mnist("train", limit=config.limit)
    rng = np.random.default_rng(config.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    for epoch in range(config.epochs):
        model.train()
        order = rng.permutation(len(x))
        start, total = time.perf_counter(), 0.0
        for i in range(0, len(x), config.batch_size):
            idx = order[i : i + config.batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(torch.from_numpy(x[idx])), torch.from_numpy(y[idx]))
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
        log(f"epoch {epoch + 1}/{config.epochs}: loss {total / len(x):.4f} "
            f"({time.perf_counter() - start:.1f} s)")
    return model.eval()


def trained_model(name: str, config: TrainConfig = TrainConfig(), log=print):
    """Return zoo model `name` trained on Fashion-MNIST, from the cache when present."""
    import torch

    if name not in zoo.FASHION_MNIST_MODELS:
        raise ValueError(
            f"{name!r} is not a 28x28 model; trainable: {', '.join(zoo.FASHION_MNIST_MODELS)}"
        )
    model = zoo.build(name, seed=config.seed)
    limit = "all" if config.limit is None else str(config.limit)
    path = cache_root("weights", f"{name}-e{config.epochs}-s{config.seed}-n{limit}.pt")
    if path.is_file():
        try:
            model.load_state_dict(torch.load(path, weights_only=True))
            return model.eval()
        except (RuntimeError, OSError, EOFError) as err:
            log(f"cached weights {path} are unreadable ({err}); retraining")
    torch.set_num_threads(os.cpu_count() or 1)
    train(model, config, log=log)
    with atomic_output(path, suffix=".pt") as tmp:
        torch.save(model.state_dict(), tmp)
    return model.eval()
