"""Train the style-transfer network that ships as ``weights.npz`` (CPU, one thread, seeded).

    flock /tmp/mdl_heavy.lock python -m apps.style_transfer.train            # the shipped run
    python -m apps.style_transfer.train --steps 50 --out /tmp/w.npz         # a quick check

Random crops of the content photos (`apps.style_transfer.data`) at random scales and flips,
Adam, the random-feature perceptual loss of `apps.style_transfer.losses` against
*Starry Night*. Also writes the README's before/after pictures (``--examples DIR``).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from apps.style_transfer import data
from apps.style_transfer.losses import LossConfig, PerceptualLoss
from apps.style_transfer.model import WEIGHTS, NetConfig, TransformerNet, save_weights

EXAMPLES = Path(__file__).with_name("examples")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of the shipped run."""

    steps: int = 1500
    crop: int = 128
    batch: int = 2
    lr: float = 2e-3
    seed: int = 0
    style_size: int = 320  # long side of the style image the Gram targets come from
    threads: int = 1


def _pool(max_side: int = 400) -> list[np.ndarray]:
    photos = []
    for img in data.content_photos():
        h, w = img.shape[:2]
        scale = min(1.0, max_side / min(h, w))
        photos.append(data.resize(img, round(h * scale), round(w * scale)) if scale < 1 else img)
    return photos


def _batch(pool, rng: np.random.Generator, crop: int, batch: int) -> torch.Tensor:
    out = []
    for _ in range(batch):
        img = pool[rng.integers(len(pool))]
        h, w = img.shape[:2]
        short = rng.integers(crop, int(min(min(h, w), 2.5 * crop)) + 1)
        scale = short / min(h, w)
        img = data.resize(img, max(crop, round(h * scale)), max(crop, round(w * scale)))
        y = rng.integers(img.shape[0] - crop + 1)
        x = rng.integers(img.shape[1] - crop + 1)
        patch = img[y:y + crop, x:x + crop]
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        out.append(np.ascontiguousarray(patch.transpose(2, 0, 1)))
    return torch.from_numpy(np.stack(out))


def style_tensor(size: int) -> torch.Tensor:
    img = data.style_image()
    h, w = img.shape[:2]
    scale = size / max(h, w)
    img = data.resize(img, round(h * scale), round(w * scale))
    return torch.from_numpy(img.transpose(2, 0, 1).copy())[None]


def train(config: TrainConfig = TrainConfig(), loss_config: LossConfig | None = None,
          net_config: NetConfig | None = None, log_every: int = 50) -> TransformerNet:
    """Train a `TransformerNet` from scratch; deterministic for a config on one thread."""
    loss_config, net_config = loss_config or LossConfig(), net_config or NetConfig()
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    net = TransformerNet(net_config).train()
    loss_fn = PerceptualLoss(style_tensor(config.style_size), loss_config)
    optimiser = torch.optim.Adam(net.parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, config.steps,
                                                          eta_min=config.lr / 10)
    pool = _pool()
    start = time.perf_counter()
    for step in range(1, config.steps + 1):
        content = _batch(pool, rng, config.crop, config.batch)
        terms = loss_fn(net(content), content)
        optimiser.zero_grad()
        terms["total"].backward()
        optimiser.step()
        schedule.step()
        if step % log_every == 0 or step == config.steps:
            parts = " ".join(f"{k} {float(v):.4f}" for k, v in terms.items())
            print(f"step {step:5d}  {parts}  {time.perf_counter() - start:6.0f} s", flush=True)
    return net.eval()


def write_examples(net: TransformerNet, outdir: Path = EXAMPLES, size: int = 256) -> list[Path]:
    """Before/after PNGs of the held-out photos (long side `size`) and the style image."""
    outdir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in data.HELD_OUT:
        img = data.held_out_photo(name)
        h, w = img.shape[:2]
        scale = size / max(h, w)
        hh, ww = (round(h * scale) // 4) * 4, (round(w * scale) // 4) * 4
        img = data.resize(img, hh, ww)
        with torch.no_grad():
            out = net(torch.from_numpy(img.transpose(2, 0, 1).copy())[None])[0]
        stem = Path(name).stem.lower()
        written.append(data.write_image(img, outdir / f"{stem}.png"))
        written.append(data.write_image(out.numpy().transpose(1, 2, 0),
                                        outdir / f"{stem}_styled.png"))
    style = style_tensor(size)[0].numpy().transpose(1, 2, 0)
    written.append(data.write_image(style, outdir / "starry_night.png"))
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = TrainConfig()
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--crop", type=int, default=defaults.crop)
    parser.add_argument("--batch", type=int, default=defaults.batch)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--style-weight", type=float, default=LossConfig().style_weight)
    parser.add_argument("--content-weight", type=float, default=LossConfig().content_weight)
    parser.add_argument("--tv-weight", type=float, default=LossConfig().tv_weight)
    parser.add_argument("--out", type=Path, default=WEIGHTS, help="weights .npz")
    parser.add_argument("--examples", type=Path, default=EXAMPLES,
                        help="directory for before/after PNGs ('' to skip)")
    args = parser.parse_args(argv)
    config = TrainConfig(steps=args.steps, crop=args.crop, batch=args.batch, lr=args.lr,
                         seed=args.seed)
    loss_config = LossConfig(style_weight=args.style_weight,
                             content_weight=args.content_weight, tv_weight=args.tv_weight)
    start = time.perf_counter()
    net = train(config, loss_config)
    seconds = time.perf_counter() - start
    path = save_weights(net, args.out)
    print(f"wrote {path} ({path.stat().st_size:,} bytes) after {seconds:.0f} s")
    print(json.dumps({"train": asdict(config), "loss": asdict(loss_config),
                      "seconds": round(seconds)}))
    if str(args.examples):
        for p in write_examples(net, args.examples):
            print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
