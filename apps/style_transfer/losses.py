"""Perceptual losses without a pretrained network.

No pretrained VGG can be downloaded here, so the feature network is a fixed, randomly
initialised multi-scale conv net: random filters on an image pyramid capture texture well
enough for Gram-matrix style losses (Ustyuzhaninov et al., "Texture synthesis using shallow
convolutional networks with random filters", 2016; He et al., "A powerful generative model
using random weights for the deep image representation", 2016).

For each pyramid level (1, 1/2, 1/4, 1/8) a 5x5 random conv + ReLU (layer 1) and a stride-2
3x3 random conv + ReLU on top (layer 2). Style: Gram matrices of every layer and of the pixels
(colour statistics), each compared relative to the style's Gram norm. Content: layer-2
features at levels 1, 1/2 and 1/4.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class LossConfig:
    """Weights of the loss terms and the random feature net's shape."""

    style_weight: float = 2.0
    content_weight: float = 1.0
    tv_weight: float = 1e-3
    levels: int = 4
    width: int = 64
    seed: int = 1234


class RandomFeatures(nn.Module):
    """Fixed random multi-scale conv features (no gradients to its weights)."""

    def __init__(self, config: LossConfig):
        super().__init__()
        gen = torch.Generator().manual_seed(config.seed)
        self.levels = config.levels
        w = config.width
        self.conv1 = nn.ParameterList()
        self.conv2 = nn.ParameterList()
        for _ in range(config.levels):
            k1 = torch.randn(w, 3, 5, 5, generator=gen) * (2.0 / (3 * 25)) ** 0.5
            k1 -= k1.mean(dim=(1, 2, 3), keepdim=True)  # respond to structure, not brightness
            k2 = torch.randn(w, w, 3, 3, generator=gen) * (2.0 / (w * 9)) ** 0.5
            self.conv1.append(nn.Parameter(k1, requires_grad=False))
            self.conv2.append(nn.Parameter(k2, requires_grad=False))
        self.register_buffer("colour_mean", torch.tensor([0.45, 0.45, 0.45]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        """Per level: ``[layer1, layer2]`` features (level 0: ``[pixels, layer1, layer2]``)."""
        x = x - self.colour_mean
        feats = [[x]]  # level 0 also holds the pixels: their Gram is the colour statistics
        for level in range(self.levels):
            f1 = F.relu(F.conv2d(x, self.conv1[level], padding=2))
            f2 = F.relu(F.conv2d(f1, self.conv2[level], stride=2, padding=1))
            if level == 0:
                feats[0] += [f1, f2]
            else:
                feats.append([f1, f2])
            x = F.avg_pool2d(x, 2)
        return feats


def gram(features: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, C) Gram matrices divided by H*W."""
    n, c, h, w = features.shape
    flat = features.reshape(n, c, h * w)
    return flat @ flat.transpose(1, 2) / (h * w)


class PerceptualLoss(nn.Module):
    """Style (Gram) + content (features) + total-variation loss against one style image."""

    def __init__(self, style: torch.Tensor, config: LossConfig = LossConfig()):
        super().__init__()
        self.config = config
        self.features = RandomFeatures(config)
        with torch.no_grad():
            targets = [gram(f) for level in self.features(style) for f in level]
        self.style_grams = [t.detach() for t in targets]
        self.style_norms = [float(t.pow(2).mean()) for t in targets]

    def forward(self, output: torch.Tensor, content: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss terms and their weighted sum (``"total"``)."""
        out_feats = self.features(output)
        with torch.no_grad():
            content_feats = self.features(content)
        style = sum(
            (gram(f) - target).pow(2).mean() / norm
            for f, target, norm in zip(
                (f for level in out_feats for f in level), self.style_grams, self.style_norms,
                strict=True))
        style = style / len(self.style_grams)
        content_loss = sum(
            F.mse_loss(out_feats[level][-1], content_feats[level][-1])
            / content_feats[level][-1].pow(2).mean().clamp_min(1e-8)
            for level in (0, 1, 2)) / 3
        tv = ((output[..., 1:, :] - output[..., :-1, :]).abs().mean()
              + (output[..., :, 1:] - output[..., :, :-1]).abs().mean())
        c = self.config
        total = c.style_weight * style + c.content_weight * content_loss + c.tv_weight * tv
        return {"total": total, "style": style, "content": content_loss, "tv": tv}
