"""Paint a photo in the style the shipped network learned (*Starry Night*).

The photo is resized so its long side is ``size`` pixels (both sides rounded to multiples
of 4), the network is compiled for that exact shape by `mdl_tvm.compile` (optionally
compressed) and run on this machine or on the phone (`apps.runtime`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from apps.runtime import Placement, open_runner
from apps.style_transfer.data import read_image, resize, write_image
from apps.style_transfer.model import WEIGHTS, load_transformer

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass(frozen=True)
class StyleOptions:
    """Working resolution: the long side in pixels (16 to 2048)."""

    size: int = 256

    def check(self) -> None:
        if not 16 <= self.size <= 2048:
            raise ValueError(f"size must be between 16 and 2048 pixels, got {self.size}")


def fit(image: np.ndarray, size: int) -> np.ndarray:
    """Resize so the long side is about `size`, both sides multiples of 4 (at least 4)."""
    h, w = image.shape[:2]
    scale = size / max(h, w)
    hh = max(4, round(h * scale / 4) * 4)
    ww = max(4, round(w * scale / 4) * 4)
    return resize(image, hh, ww)


def to_tensor(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) float RGB -> contiguous (1, 3, H, W) float32."""
    return np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32)


def stylize(image: np.ndarray, options: StyleOptions = StyleOptions(),
            placement: Placement | None = None, weights=WEIGHTS) -> np.ndarray:
    """Stylise float RGB (H, W, 3) in [0, 1]; returns the stylised image at working size.

    `placement` says where to run (default: compiled for this machine)."""
    placement = placement or Placement()
    options.check()
    placement.check()
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) RGB, got shape {image.shape}")
    x = to_tensor(fit(image, options.size))
    net = load_transformer(weights)
    with open_runner(net, (torch.from_numpy(x),), placement) as runner:
        (out,) = runner.run(x)
    return out[0].transpose(1, 2, 0)


def stylize_eager(image: np.ndarray, options: StyleOptions = StyleOptions(),
                  weights=WEIGHTS) -> np.ndarray:
    """The same with PyTorch eager (the reference)."""
    x = to_tensor(fit(image, options.size))
    with torch.no_grad():
        out = load_transformer(weights)(torch.from_numpy(x))
    return out[0].numpy().transpose(1, 2, 0)


def stylize_file(src, dst, options: StyleOptions = StyleOptions(),
                 placement: Placement | None = None, weights=WEIGHTS) -> Path:
    """Read `src`, stylise it, write `dst` (.png or .jpg); returns `dst`.

    Raises
    ------
    FileNotFoundError
        When `src` does not exist.
    ValueError
        When `src` is not an image, `dst` has no image suffix, or the options are bad.
    """
    dst = Path(dst)
    if dst.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"output {str(dst)!r} needs an image suffix: one of {IMAGE_SUFFIXES}")
    if not dst.parent.is_dir():
        raise FileNotFoundError(f"output directory {str(dst.parent)!r} does not exist")
    options.check()
    image = read_image(src, max_side=options.size)
    return write_image(stylize(image, options, placement, weights), dst)
