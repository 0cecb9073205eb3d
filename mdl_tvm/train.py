"""Seeded training of the zoo's 28x28 CNNs on Fashion-MNIST.

* The nets in `RECIPES` ship trained weights in the package (``mdl_tvm/weights/NAME.npz`` +
  ``NAME.json``: recipe, seed, test top-1, sha256), made by ``python -m mdl_tvm.train NAME``
  with their recipe, seeded: ResNet-20 and the small MobileNetV2 with SGD (Nesterov momentum,
  one warm-up epoch then cosine, random crops and flips, one thread); LeNet-5 and the
  AlexNet-style net with the default recipe (Adam, 2 epochs). Training is not reproducible
  bit for bit across CPUs, so the benchmarks read the shipped weights, not a local training.
* Any other recipe (and the VGG-style net) trains on first use and is cached in
  ``$MDL_TVM_CACHE/weights`` (default ``~/.cache/mdl_tvm``).

Writes are atomic. Reproducing a shipped net gives the same top-1 within a few tenths of a
point; bitwise equality needs the same torch version and thread count.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from mdl_tvm import zoo
from mdl_tvm.core.io import atomic_output, atomic_write, cache_root
from mdl_tvm.data import load_fashion_mnist

SHIPPED = Path(__file__).with_name("weights")
OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class TrainConfig:
    """How a net is trained.

    Attributes
    ----------
    epochs, batch_size, lr, seed : training length, batch, peak learning rate, seed
    limit : int, optional
        Training images used (None: all 60,000).
    optimizer : str
        ``"adam"`` or ``"sgd"`` (Nesterov momentum 0.9).
    weight_decay : float
        SGD weight decay (not on BatchNorm / bias).
    cosine : bool
        One warm-up epoch, then a cosine decay to 0 (per step).
    augment : bool
        Random 28x28 crops of 2-pixel padded images and horizontal flips.
    threads : int
        Torch threads (1: reproducible and, on a busy 2-core machine, fastest).
    """

    epochs: int = 2
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    limit: int | None = None
    optimizer: str = "adam"
    weight_decay: float = 0.0
    cosine: bool = False
    augment: bool = False
    threads: int = 0  # 0: all cores

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {OPTIMIZERS}")
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError("epochs >= 1, batch_size >= 1 and lr > 0 are required")

    def cache_name(self, name: str) -> str:
        """The weights' file stem: every field that differs from the default recipe."""
        limit = "all" if self.limit is None else str(self.limit)
        extra = "".join(f"-{k}{v}" for k, v in asdict(self).items()
                        if k not in ("epochs", "seed", "limit", "threads")
                        and v != getattr(TrainConfig(), k))
        return f"{name}-e{self.epochs}-s{self.seed}-n{limit}{extra}"


RECIPES = {
    "resnet20": TrainConfig(epochs=15, lr=0.1, optimizer="sgd", weight_decay=5e-4, cosine=True,
                            augment=True, threads=1),
    "mobilenetv2s": TrainConfig(epochs=20, lr=0.05, optimizer="sgd", weight_decay=1e-4,
                                cosine=True, augment=True, threads=1),
    "lenet5": TrainConfig(),
    "alexnet": TrainConfig(),
}


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


def augment(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random 28x28 crops of 2-pixel zero-padded images, half of them flipped."""
    n, c, h, w = images.shape
    padded = np.pad(images, ((0, 0), (0, 0), (2, 2), (2, 2)))
    dy, dx = rng.integers(0, 5, n), rng.integers(0, 5, n)
    rows = dy[:, None] + np.arange(h)[None]
    cols = dx[:, None] + np.arange(w)[None]
    out = padded[np.arange(n)[:, None, None, None], np.arange(c)[None, :, None, None],
                 rows[:, None, :, None], cols[:, None, None, :]]
    flip = rng.random(n) < 0.5
    out[flip] = out[flip][..., ::-1]
    return np.ascontiguousarray(out, dtype=np.float32)


def _optimizer(model, config: TrainConfig):
    import torch

    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr)
    decay = [p for p in model.parameters() if p.ndim > 1]
    plain = [p for p in model.parameters() if p.ndim <= 1]
    return torch.optim.SGD([{"params": decay, "weight_decay": config.weight_decay},
                            {"params": plain, "weight_decay": 0.0}],
                           lr=config.lr, momentum=0.9, nesterov=True)


def _lr_at(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    if not config.cosine:
        return config.lr
    warm, total = steps_per_epoch, config.epochs * steps_per_epoch
    if step < warm:
        return config.lr * (step + 1) / warm
    return 0.5 * config.lr * (1 + math.cos(math.pi * (step - warm) / max(total - warm, 1)))


def train(model, config: TrainConfig = TrainConfig(), log=print):
    """Train `model` in place on the Fashion-MNIST training split; returns it in eval mode."""
    import torch

    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    x, y = load_fashion_mnist("train", limit=config.limit)
    rng = np.random.default_rng(config.seed)
    optimizer = _optimizer(model, config)
    loss_fn = torch.nn.CrossEntropyLoss()
    steps_per_epoch, step = math.ceil(len(x) / config.batch_size), 0
    for epoch in range(config.epochs):
        model.train()
        order = rng.permutation(len(x))
        start, total = time.perf_counter(), 0.0
        for i in range(0, len(x), config.batch_size):
            idx = order[i : i + config.batch_size]
            batch = augment(x[idx], rng) if config.augment else x[idx]
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(config, step, steps_per_epoch)
            optimizer.zero_grad()
            loss = loss_fn(model(torch.from_numpy(batch)), torch.from_numpy(y[idx]))
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
            step += 1
        log(f"epoch {epoch + 1}/{config.epochs}: loss {total / len(x):.4f} "
            f"({time.perf_counter() - start:.1f} s)")
    return model.eval()


def _load_npz(model, path: Path):
    import torch

    with np.load(path) as data:
        model.load_state_dict({k: torch.from_numpy(data[k]) for k in data.files})
    return model.eval()


def _cached(name: str, config: TrainConfig) -> Path:
    """Where a training of `name` by `config` is cached."""
    return cache_root("weights", config.cache_name(name) + ".pt")


def trained_model(name: str, config: TrainConfig | None = None, log=print):
    """Zoo model `name` trained on Fashion-MNIST: the shipped weights for the nets that
    have them (with their recipe), else the cache, else trained now and cached."""
    import torch

    if name not in zoo.FASHION_MNIST_MODELS:
        raise ValueError(
            f"{name!r} is not a 28x28 model; trainable: {', '.join(zoo.FASHION_MNIST_MODELS)}"
        )
    config = config or RECIPES.get(name, TrainConfig())
    model = zoo.build(name, seed=config.seed)
    shipped = SHIPPED / f"{name}.npz"
    if config == RECIPES.get(name) and shipped.is_file():
        return _load_npz(model, shipped)
    path = _cached(name, config)
    if path.is_file():
        try:
            model.load_state_dict(torch.load(path, weights_only=True))
            return model.eval()
        except (RuntimeError, OSError, EOFError) as err:
            log(f"cached weights {path} are unreadable ({err}); retraining")
    train(model, config, log=log)
    with atomic_output(path, suffix=".pt") as tmp:
        torch.save(model.state_dict(), tmp)
    return model.eval()


def ship(name: str, config: TrainConfig | None = None, out_dir: Path = SHIPPED,
         log=print, from_cache: bool = False) -> dict:
    """Train `name` with its recipe and write ``NAME.npz`` + ``NAME.json`` to `out_dir`.

    Parameters
    ----------
    name : str
        A net of `RECIPES`.
    config : TrainConfig, optional
        The recipe (default ``RECIPES[name]``).
    out_dir : pathlib.Path
        Where the two files go (atomic writes).
    from_cache : bool
        Ship the weights a training with `config` cached on this machine instead of
        training again (`FileNotFoundError`, naming the training command, if there are none).

    Returns
    -------
    dict
        What ``NAME.json`` holds.
    """
    import torch

    config = config or RECIPES[name]
    start = time.perf_counter()
    model = zoo.build(name, seed=config.seed)
    cached = _cached(name, config)
    if from_cache:
        if not cached.is_file():
            raise FileNotFoundError(f"no cached weights {cached} for {name}'s recipe; run "
                                    f"`python -m mdl_tvm.train {name}` to train them")
        model.load_state_dict(torch.load(cached, weights_only=True))
        model.eval()
    else:
        model = train(model, config, log=log)
    x, y = load_fashion_mnist("test")
    top1 = evaluate(model, x, y)
    npz = out_dir / f"{name}.npz"
    with atomic_output(npz, suffix=".npz") as tmp:
        np.savez(tmp, **{k: v.detach().numpy() for k, v in model.state_dict().items()})
    note = {"model": name, "recipe": asdict(config), "test_top1": top1,
            "train_seconds": None if from_cache else round(time.perf_counter() - start),
            "sha256": hashlib.sha256(npz.read_bytes()).hexdigest(),
            "command": f"python -m mdl_tvm.train {name}" + (" --from-cache" if from_cache
                                                             else "")}
    atomic_write(out_dir / f"{name}.json", json.dumps(note, indent=1) + "\n")
    log(f"{name}: test top-1 {top1:.4f}, wrote {npz}")
    return note


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mdl_tvm.train",
                                description="train a shipped zoo net with its recipe")
    p.add_argument("model", choices=sorted(RECIPES))
    p.add_argument("--epochs", type=int, help="override the recipe's epochs (not shipped)")
    p.add_argument("--out", type=Path, default=SHIPPED, help="directory for NAME.npz/.json")
    p.add_argument("--from-cache", action="store_true",
                   help="ship the weights this recipe's training cached, without training")
    args = p.parse_args(argv)
    config = RECIPES[args.model]
    if args.epochs:
        config = replace(config, epochs=args.epochs)
    ship(args.model, config, args.out, from_cache=args.from_cache)
    return 0


if __name__ == "__main__":
    sys.exit(main())
