"""The image transformer network of Johnson et al. (2016), made small.

Down-sampling convolutions (9x9, then two stride-2 3x3), residual blocks, nearest-neighbour
up-sampling + convolution (no checkerboard artefacts), instance normalisation, and a 9x9
output convolution. Channel widths 16/32/64 and 4 residual blocks: ~0.2 M parameters.

Instance normalisation is written with ``mean`` / ``sqrt`` ops instead of
``nn.InstanceNorm2d``: both import into Relax and run, but MobileDL's channel analysis
(`relay_passes.channel_graph`) knows mean, subtract, multiply, divide and sqrt, not
``relax.nn.instance_norm``, so only this form lets ``compress="kmeans:0.5"`` shrink the
network. Zero padding for the same reason (reflection padding imports as ``take`` ops).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mdl_tvm.core.io import atomic_output

WEIGHTS = Path(__file__).with_name("weights.npz")


@dataclass(frozen=True)
class NetConfig:
    """Widths of the three resolution levels and the number of residual blocks."""

    widths: tuple[int, int, int] = (16, 32, 64)
    res_blocks: int = 4


class InstanceNorm(nn.Module):
    """Per-image, per-channel normalisation over H and W, with a learned scale and shift."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(2, 3), keepdim=True)
        centred = x - mean
        var = (centred * centred).mean(dim=(2, 3), keepdim=True)
        scale = self.weight.view(1, -1, 1, 1)
        shift = self.bias.view(1, -1, 1, 1)
        return centred / torch.sqrt(var + self.eps) * scale + shift


class ConvLayer(nn.Sequential):
    """conv (same padding) -> instance norm -> ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1):
        super().__init__(nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2),
                         InstanceNorm(c_out), nn.ReLU())


class ResidualBlock(nn.Module):
    """x + IN(conv(ReLU(IN(conv(x))))), as in Johnson et al."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, 1, 1), InstanceNorm(channels), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, 1, 1), InstanceNorm(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class UpsampleConv(nn.Sequential):
    """Nearest-neighbour x2 up-sampling, then ConvLayer (instead of a transposed conv)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(nn.Upsample(scale_factor=2, mode="nearest"), ConvLayer(c_in, c_out, 3))


class TransformerNet(nn.Module):
    """RGB in [0, 1] of shape (N, 3, H, W), H and W multiples of 4 -> stylised RGB in [0, 1]."""

    def __init__(self, config: NetConfig = NetConfig()):
        super().__init__()
        c1, c2, c3 = config.widths
        self.config = config
        self.down = nn.Sequential(ConvLayer(3, c1, 9), ConvLayer(c1, c2, 3, 2),
                                  ConvLayer(c2, c3, 3, 2))
        self.res = nn.Sequential(*[ResidualBlock(c3) for _ in range(config.res_blocks)])
        self.up = nn.Sequential(UpsampleConv(c3, c2), UpsampleConv(c2, c1))
        self.out = nn.Conv2d(c1, 3, 9, 1, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.out(self.up(self.res(self.down(x))))
        return torch.sigmoid(y)


def save_weights(net: TransformerNet, path: str | Path = WEIGHTS) -> Path:
    """Write the state dict and config as float32 ``.npz`` (atomic)."""
    path = Path(path)
    arrays = {k: v.detach().cpu().numpy().astype(np.float32)
              for k, v in net.state_dict().items()}
    arrays["__widths__"] = np.array(net.config.widths)
    arrays["__res_blocks__"] = np.array(net.config.res_blocks)
    with atomic_output(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)
    return path


def load_transformer(path: str | Path = WEIGHTS) -> TransformerNet:
    """The trained network (eval mode) from a ``.npz`` written by `save_weights`.

    Raises
    ------
    FileNotFoundError
        When `path` does not exist (the shipped weights are ``apps/style_transfer/weights.npz``;
        ``python -m apps.style_transfer.train`` re-creates them).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no style-transfer weights at {path}; re-create them with "
                                "`python -m apps.style_transfer.train`")
    with np.load(path) as data:
        config = NetConfig(tuple(int(w) for w in data["__widths__"]),
                           int(data["__res_blocks__"]))
        state = {k: torch.from_numpy(data[k]) for k in data.files if not k.startswith("__")}
    net = TransformerNet(config)
    net.load_state_dict(state)
    return net.eval()
