"""Train the quatrain language model that ships as ``weights.npz`` (CPU, one thread, seeded).

    python -m apps.poem.corpus                                   # once: build the corpus
    flock /tmp/mdl_heavy.lock python -m apps.poem.train          # the shipped run
    python -m apps.poem.train --steps 20 --out /tmp/p.npz        # a quick check

Each example is ``^`` + one quatrain + ``$``; a batch holds quatrains of one form (five or
seven characters a line) so no padding is needed. Adam with cosine decay, gradient
clipping, a 2% held-out split for the validation loss.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from apps.poem.corpus import load_corpus
from apps.poem.model import BOS, EOS, SPECIALS, WEIGHTS, CharLSTM, PoemConfig, save_weights


@dataclass(frozen=True)
class TrainConfig:
    """Settings of the shipped run."""

    steps: int = 1000
    batch: int = 128
    lr: float = 3e-3
    clip: float = 1.0
    max_vocab: int = 4000
    seed: int = 0
    threads: int = 1


def build_vocab(quatrains: list[str], max_vocab: int) -> str:
    """Special tokens, then the `max_vocab` - 4 most frequent characters."""
    counts = Counter(ch for q in quatrains for ch in q if ch not in SPECIALS)
    chars = [ch for ch, _ in counts.most_common(max_vocab - len(SPECIALS))]
    return "".join(SPECIALS) + "".join(chars)


def encode(quatrains: list[str], vocab: str) -> dict[int, np.ndarray]:
    """Token arrays by line length (5 or 7); quatrains with a rare character are dropped."""
    index = {ch: i for i, ch in enumerate(vocab)}
    forms: dict[int, list[list[int]]] = {5: [], 7: []}
    for q in quatrains:
        if all(ch in index for ch in q):
            forms[len(q) // 4 - 1].append([index[ch] for ch in BOS + q + EOS])
    return {n: np.array(rows, dtype=np.int64) for n, rows in forms.items() if rows}


def split(data: dict[int, np.ndarray], rng: np.random.Generator, held: float = 0.02):
    train, val = {}, {}
    for n, rows in data.items():
        order = rng.permutation(len(rows))
        cut = int(len(rows) * held)
        val[n], train[n] = rows[order[:cut]], rows[order[cut:]]
    return train, val


def _loss(net: CharLSTM, batch: torch.Tensor) -> torch.Tensor:
    logits = net(batch[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))


def evaluate(net: CharLSTM, data: dict[int, np.ndarray], batch: int = 256) -> float:
    """Mean cross-entropy per predicted token (nats)."""
    total, count = 0.0, 0
    with torch.no_grad():
        for rows in data.values():
            for i in range(0, len(rows), batch):
                chunk = torch.from_numpy(rows[i:i + batch])
                n = chunk[:, 1:].numel()
                total += float(_loss(net, chunk)) * n
                count += n
    return total / max(count, 1)


def train(quatrains: list[str], config: TrainConfig = TrainConfig(),
          log_every: int = 50) -> tuple[CharLSTM, str, dict]:
    """Train from scratch; returns the model, its vocabulary and a report."""
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    vocab = build_vocab(quatrains, config.max_vocab)
    train_data, val_data = split(encode(quatrains, vocab), rng)
    forms = sorted(train_data)
    weights = np.array([len(train_data[n]) for n in forms], dtype=np.float64)
    net = CharLSTM(PoemConfig(len(vocab))).train()
    optimiser = torch.optim.Adam(net.parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, config.steps,
                                                          eta_min=config.lr / 20)
    start = time.perf_counter()
    for step in range(1, config.steps + 1):
        form = forms[rng.choice(len(forms), p=weights / weights.sum())]
        rows = train_data[form]
        batch = torch.from_numpy(rows[rng.integers(len(rows), size=config.batch)])
        loss = _loss(net, batch)
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), config.clip)
        optimiser.step()
        schedule.step()
        if step % log_every == 0 or step == config.steps:
            print(f"step {step:5d}  loss {float(loss):.3f}  {time.perf_counter() - start:6.0f} s",
                  flush=True)
    net.eval()
    val = evaluate(net, val_data)
    report = {"train_quatrains": {n: len(r) for n, r in train_data.items()},
              "val_quatrains": {n: len(r) for n, r in val_data.items()},
              "val_loss": round(val, 4), "val_perplexity": round(math.exp(val), 1),
              "seconds": round(time.perf_counter() - start)}
    return net, vocab, report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = TrainConfig()
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch", type=int, default=defaults.batch)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--corpus", type=Path, help="quatrains.txt (default: build/cache it)")
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    args = parser.parse_args(argv)
    config = TrainConfig(steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed)
    net, vocab, report = train(load_corpus(args.corpus), config)
    path = save_weights(net, vocab, args.out)
    print(f"wrote {path} ({path.stat().st_size:,} bytes), vocabulary {len(vocab)}")
    print(json.dumps({"train": asdict(config), **report}, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
