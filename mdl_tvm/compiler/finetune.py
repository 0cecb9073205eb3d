"""Masked fine-tuning in PyTorch with splice-back (Dynamic Network Surgery, channel level).

Life cycle, as in ``torch.ao.pruning``: **prepare** (a keep-mask per prunable channel group:
given, e.g. by a post-training compression, or by importance), **update** (every
`interval` steps the masks are re-chosen from the dense weights, which keep receiving
gradients; a pruned channel is spliced back when its importance beats the weakest kept one
by `splice_margin`; ``update_masks=False`` keeps the masks fixed), **commit** (the masks
are returned as `relay_passes.ChannelMasks`, and ``compile(model,
compress=MaskPruning(masks=...))`` removes the channels from the graph).

A channel is masked *where it is consumed*: a forward pre-hook zeroes it in the input of
every layer that reads it (conv, dense after a flatten or a global pool, both sides of a
residual add), after its BatchNorm and activation. A BatchNorm shift or a residual stream
therefore cannot leak a masked channel downstream, and at the end the consumers' masked
input columns are zeroed, so the returned model computes exactly what the committed graph
computes. Gradients pass the mask straight through to the producers (Guo et al., "Dynamic
Network Surgery", NeurIPS 2016), which is what lets a wrongly pruned channel regain
importance. A channel's importance is what its consumers read from it: the mean absolute
input times the norm of the consumer's weights on it.

`consume` starts the fine-tuning from a post-training recovery: each consumer's weights on
the kept channels become ``W Gᵀ`` with the compensation matrices the compression pass chose
(``pass.consume``), so fine-tuning starts where compensation ended.

Preconditions: the channel groups and their names (``conv0``, ``dense0``) are those of
`relay_passes.channel_graph.analyze` on the imported model, as the compressors see them;
each consumer binding is matched to the torch layer whose weight it is (same shape, rows
equal up to a per-row scale, which BatchNorm folding may apply); the output layer is never
pruned.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mdl_tvm.compiler.importers import import_model
from mdl_tvm.compiler.pipeline import BuildState, run_pipeline
from mdl_tvm.core.relax_utils import bound_constants
from mdl_tvm.core.targets import get_profile
from mdl_tvm.data import load_fashion_mnist
from mdl_tvm.train import augment
from relay_passes.channel_graph import analyze
from relay_passes.channel_layout import WeightRef, channel_rows
from relay_passes.channel_masks import ChannelMasks, keep_top
from relay_passes.channel_rewrite import Edit, apply_edit
from relay_passes.config import kept_channels
from relay_passes.layerwise import graph_order
from relay_passes.shuffle_as_take import shuffle_as_take

OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning settings (masked or plain).

    Attributes
    ----------
    ratio : float
        Fraction of each group's channels masked (when no masks are given).
    epochs : float
        Passes over the training images (fractions allowed).
    lr, batch_size, seed, limit : peak learning rate, batch, seed, training images used
    optimizer : str
        ``"adam"`` (constant lr) or ``"sgd"`` (Nesterov momentum 0.9, cosine decay to 0).
    weight_decay : float
        SGD weight decay on weights (not on BatchNorm / bias).
    augment : bool
        Random crops of 2-pixel padded images and horizontal flips (`mdl_tvm.train.augment`).
    update_masks : bool
        Re-choose the masks every `interval` steps (DNS splice-back); False keeps them.
    interval, splice_margin : mask update period and the hysteresis of a splice-back
    threads : int
        Torch threads (0: leave as set).
    """

    ratio: float = 0.5
    epochs: float = 2.0
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    batch_size: int = 128
    augment: bool = False
    update_masks: bool = True
    interval: int = 50
    splice_margin: float = 1.1
    seed: int = 0
    limit: int | None = None
    threads: int = 0

    def __post_init__(self):
        if not 0.0 <= self.ratio < 1.0:
            raise ValueError(f"ratio must be in [0, 1), got {self.ratio}")
        if self.epochs <= 0 or self.interval < 1 or self.splice_margin < 1.0:
            raise ValueError("epochs > 0, interval >= 1 and splice_margin >= 1 are required")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {OPTIMIZERS}")


@dataclass
class ConsumerLayer:
    """A torch layer reading channels ``[offset, offset + length)`` of a group (or at
    `rows`, after a channel shuffle; each spanning `span` inputs after a flatten), at
    consumer binding `binding`."""

    module: object
    offset: int
    length: int
    span: int
    binding: int
    groups: int = 1  # a grouped conv: its weight holds each group's columns only
    rows: tuple[int, ...] | None = None

    @property
    def ref(self) -> WeightRef:
        return WeightRef(self.binding, 0, 1, self.offset, self.length, self.span,
                         self.groups, rows=self.rows)


def _graph(model, example):
    state = BuildState(mod=import_model(model, None, (example,))[0], profile=get_profile("host"))
    mod = shuffle_as_take(run_pipeline(state, until="graph_passes").mod)  # as compressors do
    return analyze(mod), bound_constants(mod)


def _torch_layers(model):
    import torch

    return [m for m in model.modules() if isinstance(m, torch.nn.Linear)
            or (isinstance(m, torch.nn.Conv2d)  # any conv but a plain depthwise one
                and not 1 < m.groups == m.in_channels == m.out_channels)]


def _prunable_layers(model, example):
    """``[(group name, [producer modules])]`` of the channel graph's prunable groups."""
    graph, consts = _graph(model, example)
    layers = _torch_layers(model)
    return [(g.name, [_torch_layer(layers, consts[(r.binding, r.arg)], r.axis, g.name)
                      for r in g.producers]) for g in graph_order(graph)]


def consumer_layers(model, example):
    """``[(group name, channels, [ConsumerLayer], blocks)]`` of the prunable groups, in graph
    order: where each group's channels are read (`blocks`: equal runs that keep equal
    counts, the groups of a grouped conv)."""
    graph, consts = _graph(model, example)
    layers = _torch_layers(model)
    out = []
    for g in graph_order(graph):
        readers = [ConsumerLayer(_torch_layer(layers, consts[(r.binding, r.arg)],
                                              1 - r.axis, g.name), r.offset, r.length,
                                 r.span, r.binding, r.groups, r.rows) for r in g.consumers]
        out.append((g.name, g.channels, readers, g.blocks))
    return out


def _unit_rows(weight: np.ndarray, axis: int) -> np.ndarray:
    rows = np.moveaxis(np.asarray(weight, np.float64), axis, 0).reshape(weight.shape[axis], -1)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-30)


def _torch_layer(layers, weight: np.ndarray, axis: int, name: str):
    """The torch layer whose weight is `weight` (output channels on `axis`; Relax keeps a
    linear weight as (K, N))."""
    target = _unit_rows(weight, axis)
    for m in layers:
        w = m.weight.detach().numpy()
        if w.shape[0] == target.shape[0] and w[0].size == target.shape[1]:
            if np.allclose(_unit_rows(w, 0), target, atol=1e-5):
                return m
    raise ValueError(f"no torch layer matches the weights of channel group {name}; masked "
                     "fine-tuning needs conv2d / linear layers whose weights the import keeps")


def _update_mask(mask: np.ndarray, scores: np.ndarray, k: int, margin: float,
                 blocks: int = 1) -> np.ndarray:
    """Keep the top-k (``k / blocks`` per block), but a pruned channel only enters when it
    beats the weakest kept one by `margin` (hysteresis, so masks do not flicker)."""
    return keep_top(scores * np.where(mask, margin, 1.0), k, blocks)


def _column_norms(layer: ConsumerLayer) -> np.ndarray:
    w = layer.module.weight.detach().numpy()
    if layer.groups > 1:  # row block g holds channel block g's columns
        return np.concatenate([np.sqrt((rows.astype(np.float64) ** 2).sum(axis=(0, 2, 3)))
                               for rows in np.split(w, layer.groups)])
    block = w[:, channel_rows(layer.ref)]
    return np.linalg.norm(block.reshape(len(w), layer.length, -1), axis=(0, 2))


def _edit_consumer(layer: ConsumerLayer, matrix: np.ndarray) -> None:
    """Apply a ``(C, C)`` consume matrix to the layer's input columns, in place."""
    import torch

    with torch.no_grad():
        w = layer.module.weight
        w.copy_(torch.from_numpy(apply_edit(w.detach().numpy(), Edit(layer.ref, matrix))))


def train_loop(model, config: FinetuneConfig, log=print, on_step=None):
    """Train `model` in place on the Fashion-MNIST training split for ``config.epochs``
    (the loop every fine-tuning shares, masked or not); returns it in eval mode."""
    import torch

    if not isinstance(config, FinetuneConfig):
        raise TypeError(f"config must be a FinetuneConfig, got {type(config).__name__}")
    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    x, y = load_fashion_mnist("train", limit=config.limit)
    rng = np.random.default_rng(config.seed)
    if config.optimizer == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    else:
        params = list(model.parameters())
        optimizer = torch.optim.SGD(
            [{"params": [p for p in params if p.ndim > 1], "weight_decay": config.weight_decay},
             {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}],
            lr=config.lr, momentum=0.9, nesterov=True)
    steps = max(1, int(config.epochs * len(x) / config.batch_size))
    order = np.concatenate([rng.permutation(len(x)) for _ in range(int(config.epochs) + 1)])
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    for step in range(steps):
        if on_step is not None:
            on_step(step)
        if config.optimizer == "sgd":
            for group in optimizer.param_groups:
                group["lr"] = 0.5 * config.lr * (1 + np.cos(np.pi * step / steps))
        idx = order[step * config.batch_size : (step + 1) * config.batch_size]
        batch = augment(x[idx], rng) if config.augment else x[idx]
        optimizer.zero_grad()
        loss = loss_fn(model(torch.from_numpy(batch)), torch.from_numpy(y[idx]))
        loss.backward()
        optimizer.step()
        if step % 100 == 0:
            log(f"step {step}/{steps}: loss {loss.item():.4f}")
    return model.eval()


def masked_finetune(model, config: FinetuneConfig | None = None, log=print, *,
                    masks: ChannelMasks | None = None, consume: dict | None = None):
    """Fine-tune `model` (in place) under channel masks; returns ``(model, ChannelMasks)``.

    `masks` (``{group: keep mask}``) start the masks, else the least important channels
    are masked; `consume` (``{group: {consumer binding: [(k, C) matrix per ref]}}``, a
    compression pass's ``.consume``) starts the consumers from the compensated weights.
    The returned model still has every channel (the masked ones unread: their consumer
    columns are zero); commit with ``mdl_tvm.compile(model,
    compress=relay_passes.MaskPruning(masks=masks, ...))``.
    """
    import torch

    config = config or FinetuneConfig()
    if not isinstance(config, FinetuneConfig):
        raise TypeError(f"config must be a FinetuneConfig, got {type(config).__name__}")
    x, _ = load_fashion_mnist("train", limit=512)
    groups = consumer_layers(model, torch.from_numpy(x[:1]))
    if masks is not None:
        ChannelMasks(masks).check({name: _Channels(c, b) for name, c, _, b in groups})
    usage = {(name, i): np.zeros(lay.length) for name, _, ls, _ in groups
             for i, lay in enumerate(ls)}
    tensors = {name: torch.ones(c) for name, c, _, _ in groups}

    def hook_for(name, i, layer):
        index = torch.from_numpy(channel_rows(layer.ref))  # the layer's input columns

        def hook(module, inputs):
            x = inputs[0]
            shape = (1, -1) + (1,) * (x.dim() - 2)
            seg = x.index_select(1, index)
            seen = seg.detach().abs().reshape(len(x), layer.length, -1).mean(dim=(0, 2))
            usage[(name, i)] = 0.9 * usage[(name, i)] + 0.1 * seen.numpy()
            m = tensors[name].repeat_interleave(layer.span).reshape(shape)
            masked = seg * m + (seg - seg.detach()) * (1 - m)  # straight-through gradient
            return (x.index_copy(1, index, masked), *inputs[1:])
        return hook

    def importance(name, layers):
        return sum(_column_norms(lay) * usage[(name, i)] / max(usage[(name, i)].mean(), 1e-12)
                   for i, lay in enumerate(layers))

    hooks = [lay.module.register_forward_pre_hook(hook_for(name, i, lay))
             for name, _, ls, _ in groups for i, lay in enumerate(ls)]
    try:
        model.eval()
        with torch.no_grad():  # measure what each consumer reads, all channels on
            for _ in range(10):
                model(torch.from_numpy(x))
        keep = {name: kept_channels(c, config.ratio, b) for name, c, _, b in groups}
        current = {}
        for name, c, layers, blocks in groups:
            given = masks is not None and name in masks
            current[name] = (np.asarray(masks[name], bool) if given
                             else keep_top(importance(name, layers), keep[name], blocks))
            keep[name] = int(current[name].sum())
            tensors[name].copy_(torch.from_numpy(current[name].astype(np.float32)))
            for lay in layers:
                mixes = (consume or {}).get(name, {}).get(lay.binding)
                if mixes:
                    select = np.eye(c)[np.flatnonzero(current[name])]
                    index = [r for r in layers if r.binding == lay.binding].index(lay)
                    _edit_consumer(lay, select.T @ mixes[index])
        spliced = [0]

        def on_step(step):
            if not config.update_masks or step == 0 or step % config.interval:
                return
            for name, _, layers, blocks in groups:
                new = _update_mask(current[name], importance(name, layers), keep[name],
                                   config.splice_margin, blocks)
                spliced[0] += int((new & ~current[name]).sum())
                current[name] = new
                tensors[name].copy_(torch.from_numpy(new.astype(np.float32)))

        train_loop(model, config, log, on_step)
    finally:
        for h in hooks:
            h.remove()
    for name, _c, layers, _b in groups:  # commit: the masked columns read nothing
        _edit_consumer_columns(layers, current[name])
    log(f"masked fine-tuning: {spliced[0]} channels spliced back")
    return model.eval(), ChannelMasks(current)


def _edit_consumer_columns(layers, mask: np.ndarray) -> None:
    for lay in layers:
        _edit_consumer(lay, np.diag(mask.astype(np.float64)))


class _Channels:
    """Stands in for a channel group in `ChannelMasks.check`."""

    def __init__(self, channels: int, blocks: int):
        self.channels, self.blocks = channels, blocks
