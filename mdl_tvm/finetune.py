"""Masked fine-tuning in PyTorch with splice-back (Dynamic Network Surgery, channel level).

Life cycle, as in ``torch.ao.pruning``: **prepare** (a channel mask on the output of every
prunable layer, by filter magnitude), **update** (every `interval` steps the masks are
re-chosen from the *dense* weights, which keep receiving gradients; a pruned channel is
spliced back when its importance beats the weakest kept one by `splice_margin`),
**commit** (the masks are returned as `relay_passes.ChannelMasks`, and
``compile(model, compress=MaskPruning(masks=...))`` removes the channels from the graph).

The forward pass multiplies a layer's output by its mask, so a masked channel contributes
exactly nothing downstream and the commit is exact. Gradients pass the mask straight
through (Guo et al., "Dynamic Network Surgery", NeurIPS 2016), which is what lets a
wrongly pruned channel regain importance and come back.

Preconditions: a model whose prunable layers (conv2d with ``groups == 1``, linear) each
form their own channel group — sequential CNNs such as LeNet-5 and the AlexNet-style net.
The layer order of the forward pass gives the channel-group names (``conv0``, ``dense0``);
the final classifier is never pruned.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FinetuneConfig:
    """Masked fine-tuning settings."""

    ratio: float = 0.5
    epochs: float = 2.0
    lr: float = 1e-3
    batch_size: int = 128
    interval: int = 50  # steps between mask updates
    splice_margin: float = 1.1
    seed: int = 0
    limit: int | None = None  # training images (None: all)

    def __post_init__(self):
        if not 0.0 <= self.ratio < 1.0:
            raise ValueError(f"ratio must be in [0, 1), got {self.ratio}")
        if self.epochs <= 0 or self.interval < 1 or self.splice_margin < 1.0:
            raise ValueError("epochs > 0, interval >= 1 and splice_margin >= 1 are required")


def _prunable_layers(model, example):
    """``[(group name, module)]`` in forward order, without the final classifier."""
    import torch

    seen = []
    hooks = [m.register_forward_hook(lambda mod, i, o: seen.append(mod))
             for m in model.modules()
             if isinstance(m, torch.nn.Linear)
             or (isinstance(m, torch.nn.Conv2d) and m.groups == 1)]
    with torch.no_grad():
        model(example)
    for h in hooks:
        h.remove()
    names, counts = [], {"conv": 0, "dense": 0}
    for m in seen:
        kind = "conv" if isinstance(m, torch.nn.Conv2d) else "dense"
        names.append((f"{kind}{counts[kind]}", m))
        counts[kind] += 1
    return names[:-1]


def _importance(module) -> np.ndarray:
    w = module.weight.detach().abs().reshape(module.weight.shape[0], -1)
    return w.sum(dim=1).numpy()


def _update_mask(mask: np.ndarray, scores: np.ndarray, k: int, margin: float) -> np.ndarray:
    """Keep the top-k, but a pruned channel only enters when it beats the weakest kept
    one by `margin` (hysteresis, so masks do not flicker)."""
    boosted = scores * np.where(mask, margin, 1.0)
    new = np.zeros_like(mask)
    new[np.argsort(-boosted, kind="stable")[:k]] = True
    return new


def masked_finetune(model, config: FinetuneConfig | None = None, log=print):
    """Fine-tune `model` (in place) under channel masks; returns ``(model, ChannelMasks)``.

    Trains on the Fashion-MNIST training split. The returned model still has every
    channel (masked ones zeroed at their output); commit the masks with
    ``mdl_tvm.compile(model, compress=relay_passes.MaskPruning(masks=masks, ...))``.
    """
    import torch

    from relay_passes import ChannelMasks
    from relay_passes.config import kept_channels

    from .data import load_fashion_mnist

    config = config or FinetuneConfig()
    if not isinstance(config, FinetuneConfig):
        raise TypeError(f"config must be a FinetuneConfig, got {type(config).__name__}")
    torch.manual_seed(config.seed)
    x, y = load_fashion_mnist("train", limit=config.limit)
    layers = _prunable_layers(model, torch.from_numpy(x[:1]))
    keep = {name: kept_channels(m.weight.shape[0], config.ratio) for name, m in layers}
    masks = {name: np.zeros(m.weight.shape[0], bool) for name, m in layers}
    for name, m in layers:  # prepare: magnitude masks
        masks[name][np.argsort(-_importance(m), kind="stable")[:keep[name]]] = True
    tensors = {name: torch.ones(m.weight.shape[0]) for name, m in layers}

    def hook_for(name):
        def hook(module, inputs, out):
            shape = (1, -1) + (1,) * (out.dim() - 2)
            m = tensors[name].reshape(shape)
            return out * m + (out - out.detach()) * (1 - m)  # straight-through gradient
        return hook

    hooks = [m.register_forward_hook(hook_for(name)) for name, m in layers]
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    rng = np.random.default_rng(config.seed)
    steps = int(config.epochs * len(x) / config.batch_size)
    spliced = 0
    try:
        model.train()
        order = np.concatenate([rng.permutation(len(x)) for _ in range(int(config.epochs) + 1)])
        for step in range(steps):
            if step % config.interval == 0:  # update
                for name, m in layers:
                    new = _update_mask(masks[name], _importance(m), keep[name],
                                       config.splice_margin)
                    spliced += int((new & ~masks[name]).sum()) if step else 0
                    masks[name] = new
                    tensors[name].copy_(torch.from_numpy(new.astype(np.float32)))
            idx = order[step * config.batch_size:(step + 1) * config.batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(torch.from_numpy(x[idx])), torch.from_numpy(y[idx]))
            loss.backward()
            optimizer.step()
            if step % 100 == 0:
                log(f"step {step}/{steps}: loss {loss.item():.4f}")
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():  # commit the final masks into the weights: exact zeros downstream
        for name, m in layers:
            m.weight[~torch.from_numpy(masks[name])] = 0
            if m.bias is not None:
                m.bias[~torch.from_numpy(masks[name])] = 0
    log(f"masked fine-tuning: {steps} steps, {spliced} channels spliced back")
    return model.eval(), ChannelMasks(masks)
