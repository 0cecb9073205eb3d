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
The channel groups and their names (``conv0``, ``dense0``) are those of
`relay_passes.channel_graph.analyze` on the imported model, as the compressors see them;
coupled producers (a residual add) share one mask; the output layer is never pruned.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mdl_tvm.compiler.importers import import_model
from mdl_tvm.compiler.pipeline import BuildState, run_pipeline
from mdl_tvm.core.relax_utils import bound_constants
from mdl_tvm.core.targets import get_profile
from mdl_tvm.data import load_fashion_mnist
from relay_passes.channel_graph import analyze
from relay_passes.channel_masks import ChannelMasks
from relay_passes.config import kept_channels
from relay_passes.layerwise import graph_order


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
    """``[(group name, [modules])]`` of the channel graph's prunable groups, in graph order.

    The names and the coupling come from `relay_passes.channel_graph.analyze` on the
    imported model, the one source of truth the compressors use; each producer binding is
    matched to the torch layer whose weight it is (same shape, same rows up to a
    per-row scale, which BatchNorm folding may apply).
    """
    import torch

    state = BuildState(mod=import_model(model, None, (example,))[0], profile=get_profile("host"))
    mod = run_pipeline(state, until="graph_passes").mod
    graph = analyze(mod)
    consts = bound_constants(mod)
    layers = [m for m in model.modules()
              if isinstance(m, torch.nn.Linear)
              or (isinstance(m, torch.nn.Conv2d) and m.groups == 1)]
    groups = []
    for group in graph_order(graph):
        modules = [_torch_layer(layers, consts[(ref.binding, ref.arg)], ref.axis, group.name)
                   for ref in group.producers]
        groups.append((group.name, modules))
    return groups


def _unit_rows(weight: np.ndarray, axis: int) -> np.ndarray:
    rows = np.moveaxis(np.asarray(weight, np.float64), axis, 0).reshape(weight.shape[axis], -1)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-30)


def _torch_layer(layers, weight: np.ndarray, axis: int, name: str):
    """The torch layer whose weight is `weight` (Relax keeps a linear weight as (K, N))."""
    target = _unit_rows(weight, axis)
    for m in layers:
        w = m.weight.detach().numpy()
        if w.shape[0] == target.shape[0] and w[0].size == target.shape[1]:
            if np.allclose(_unit_rows(w, 0), target, atol=1e-5):
                return m
    raise ValueError(f"no torch layer matches the weights of channel group {name}; masked "
                     "fine-tuning needs conv2d / linear layers whose weights the import keeps")


def _importance(modules) -> np.ndarray:
    """Per-channel L1 norm of the group's producer filters (summed over coupled layers)."""
    total = 0.0
    for m in modules:
        total = total + m.weight.detach().abs().reshape(m.weight.shape[0], -1).sum(dim=1).numpy()
    return total


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



    config = config or FinetuneConfig()
    if not isinstance(config, FinetuneConfig):
        raise TypeError(f"config must be a FinetuneConfig, got {type(config).__name__}")
    torch.manual_seed(config.seed)
    x, y = load_fashion_mnist("train", limit=config.limit)
    groups = _prunable_layers(model, torch.from_numpy(x[:1]))
    channels = {name: ms[0].weight.shape[0] for name, ms in groups}
    keep = {name: kept_channels(channels[name], config.ratio) for name, _ in groups}
    masks = {name: np.zeros(channels[name], bool) for name, _ in groups}
    for name, ms in groups:  # prepare: magnitude masks
        masks[name][np.argsort(-_importance(ms), kind="stable")[:keep[name]]] = True
    tensors = {name: torch.ones(channels[name]) for name, _ in groups}

    def hook_for(name):
        def hook(module, inputs, out):
            shape = (1, -1) + (1,) * (out.dim() - 2)
            m = tensors[name].reshape(shape)
            return out * m + (out - out.detach()) * (1 - m)  # straight-through gradient
        return hook

    hooks = [m.register_forward_hook(hook_for(name)) for name, ms in groups for m in ms]
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
                for name, ms in groups:
                    new = _update_mask(masks[name], _importance(ms), keep[name],
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
        for name, ms in groups:
            for m in ms:
                m.weight[~torch.from_numpy(masks[name])] = 0
                if m.bias is not None:
                    m.bias[~torch.from_numpy(masks[name])] = 0
    log(f"masked fine-tuning: {steps} steps, {spliced} channels spliced back")
    return model.eval(), ChannelMasks(masks)
