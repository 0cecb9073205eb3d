"""Cut coupled channels into classes that travel together, and move splits and gathers along.

Why
---
Without splits or gathers every consumer reads all channels of a group, in order. A
ShuffleNet unit splits its input in two halves and interleaves its output (a channel
shuffle, made a ``take`` by `shuffle_as_take`), so the channels one layer creates go
different ways: a quarter to the next unit's branch, a quarter further on, ... Pruning
them as one group would need every consumer to read every channel.

What it does
------------
Each channel of a group gets a *signature*: the weight sites that hold it (producer,
parameters, consumers, with multiplicity) and the split outputs and gathers it passes.
Channels with equal signatures form a *class*, pruned as a group of its own: every ref of
a class covers all its channels, so k-means, masks and recovery need nothing new. A ref
whose channels are not consecutive rows lists them (`WeightRef.rows`).

The rewrite convention that makes the graph stay consistent: a class that keeps ``k``
channels puts its new channel ``j`` where its channel ``j`` was (every ref, in class
order), so the positions of its first ``k`` channels survive in every tensor, and
`moved_attrs` recomputes each split's indices and each gather's indices from that.
Because a class passes the same split outputs, no output of a split is ever emptied.

Python and numpy (`move_data` reads a call's arguments); `channel_graph` calls
`split_classes` for every coupled group.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mdl_tvm.core.relax_utils import constant_value, int_values, static_shape
from relay_passes.channel_layout import CLASS_SEP, ChannelGroup, Move, WeightRef

KINDS = ("producers", "params", "consumers")


@dataclass
class RawGroup:
    """A coupled group as the analysis found it: refs in group channel coordinates
    (``start``: first channel, ``offset``: its row), and the splits / gathers each channel
    passes (``passes[c]``)."""

    name: str
    channels: int
    refs: list[tuple[str, WeightRef]] = field(default_factory=list)
    depthwise: list[int] = field(default_factory=list)
    frozen: str | None = None
    blocks: int = 1
    passes: dict[int, list] = field(default_factory=dict)


def move_data(kind: str, call, axis: int, n: int) -> tuple | None:
    """What a move of `n` channels on `axis` keeps: a ``take``'s indices, a ``split``'s
    points, a ``strided_slice``'s ``(begin, end, axis)``; None when the call is not a
    plain selection of channels (another axis, unknown or out-of-range indices, a step)."""
    rank = len(static_shape(call.args[0]) or ())
    if kind in ("take", "split") and int(call.attrs.axis) % rank != axis:
        return None
    if kind == "take":
        indices = constant_value(call.args[1])
        if indices is None or indices.ndim != 1 or not all(-n <= i < n for i in
                                                            indices.tolist()):
            return None
        return tuple(int(i) % n for i in indices)
    if kind == "split":
        sections = call.attrs.indices_or_sections
        return (tuple(int(i) for i in sections) if hasattr(sections, "__len__") else
                tuple(n // int(sections) * i for i in range(1, int(sections))))
    axes = [a % rank for a in int_values(call.args[1])]
    if axis not in axes:
        return (0, n, axis)  # slices other axes only: all channels pass
    i = axes.index(axis)
    begin, end = int_values(call.args[2])[i], int_values(call.args[3])[i]
    step = int_values(call.args[4])[i] if len(call.args) > 4 else 1
    begin, end = (min(max(v + n if v < 0 else v, 0), n) for v in (begin, end))
    return (begin, end, axis) if step == 1 and end > begin else None


def move_pieces(kind: str, name: int, n: int, data: tuple) -> list[tuple[tuple, list]]:
    """``[(site, input positions of that output)]`` of a move (`move_data`) of `n`
    channels."""
    if kind == "take":
        return [(("take", name), list(data))]
    if kind == "strided_slice":
        return [(("strided_slice", name), list(range(data[0], data[1])))]
    bounds = (0, *data, n)
    return [(("split", name, k), list(range(lo, hi)))
            for k, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True))]


def _site(kind: str, ref: WeightRef) -> tuple:
    return (kind, ref.binding, ref.arg, ref.axis, ref.span, ref.groups)


def _whole(raw: RawGroup) -> bool:
    return not any(raw.passes.values()) and all(
        r.start == 0 and r.length == raw.channels and r.rows is None for _, r in raw.refs)


def split_classes(raw: RawGroup, layer_names: dict[int, str]) -> list[tuple[ChannelGroup,
                                                                          np.ndarray]]:
    """The classes of `raw`: ``(group, its channels in raw's coordinates)`` each."""
    if _whole(raw):
        group = ChannelGroup(raw.name, raw.channels, depthwise=list(raw.depthwise),
                             frozen=raw.frozen, blocks=raw.blocks)
        for kind, ref in raw.refs:
            getattr(group, kind).append(ref)
        return [(group, np.arange(raw.channels))]
    positions: dict[tuple, dict[int, list[int]]] = {}  # site -> channel -> positions
    signature: list[list] = [list(raw.passes.get(c, ())) for c in range(raw.channels)]
    for kind, ref in raw.refs:
        key = _site(kind, ref)
        site = positions.setdefault(key, {})
        for i in range(ref.length):
            c = ref.start + i
            site.setdefault(c, []).append(ref.offset + i)
            signature[c].append(key)
    members: dict[tuple, list[int]] = {}
    for c, sig in enumerate(signature):
        members.setdefault(tuple(sorted(sig, key=repr)), []).append(c)
    classes = [np.array(c) for c in members.values()]
    return _cut(raw, layer_names, positions, classes, plain=len(classes) == 1)


def _cut(raw: RawGroup, layer_names: dict, positions: dict, classes: list, plain: bool):
    """One group per class, its refs gathered site by site (a class that is the whole
    group keeps the group's name)."""
    out, names = [], {}
    for chans in classes:
        group = ChannelGroup("", len(chans), frozen=raw.frozen, blocks=raw.blocks)
        for site, by_channel in positions.items():
            counts = {len(by_channel.get(int(c), ())) for c in chans}
            for k in range(max(counts)):
                rows = [by_channel[int(c)][k] for c in chans]
                contiguous = rows == list(range(rows[0], rows[0] + len(rows)))
                getattr(group, site[0]).append(WeightRef(
                    site[1], site[2], site[3], rows[0], len(rows), site[4], site[5],
                    rows=None if contiguous else tuple(rows)))
        params = {r.binding for r in group.params}
        group.depthwise = [b for b in raw.depthwise if b in params]
        readers = sorted({r.binding for r in group.consumers})
        readers_name = "+".join(layer_names.get(b, str(b)) for b in readers) or "out"
        base = f"{raw.name}{CLASS_SEP}{readers_name}"
        names[base] = names.get(base, 0) + 1
        group.name = raw.name if plain else (
            base if names[base] == 1 else f"{base}#{names[base]}")
        if raw.blocks > 1 and not plain and not group.frozen:
            group.frozen = ("channels of a grouped conv's input that flow to different "
                            "layers")
        out.append((group, chans))
    return out


def moved_attrs(moves: dict[int, Move], kept: dict[str, int]) -> dict[int, tuple]:
    """New indices of every gather and split of `moves` once class ``name`` keeps
    ``kept[name]`` channels (its first ones' positions; classes not in `kept` keep all)."""
    out = {}
    for binding, move in moves.items():
        alive = np.array([i is None or i[0] not in kept or i[1] < kept[i[0]]
                          for i in move.ids], bool)
        if alive.all():
            continue
        new_pos = np.cumsum(alive) - 1
        if move.kind == "take":
            out[binding] = tuple(int(new_pos[i]) for i in move.data if alive[i])
        elif move.kind == "strided_slice":
            begin, end, axis = move.data
            out[binding] = (int(alive[:begin].sum()), int(alive[:end].sum()), axis)
            if out[binding][1] <= out[binding][0]:
                raise ValueError(f"pruning empties the channel slice at binding {binding}; "
                                 "keep more channels there")
        else:
            cuts = tuple(int(alive[:b].sum()) for b in move.data)
            if any(b <= a for a, b in zip((0, *cuts), (*cuts, int(alive.sum())),
                                          strict=True)):
                raise ValueError(f"pruning empties an output of the split at binding "
                                 f"{binding}; keep more channels there")
            out[binding] = cuts
    return out
