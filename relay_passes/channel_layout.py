"""The vocabulary of the channel analysis: where channels sit, and which weight rows hold them.

A *channel space* is the set of channels one layer creates (`channel_graph`). A tensor's
channel axis is a `Layout`: a run of `Segment`\\ s, each a run of consecutive channels of one
space (or of channels no pruner may touch). Concatenation lays segments side by side;
a split or a gather (``take``, a channel shuffle) cuts them into shorter runs, so a
segment can start anywhere in its space.

A `WeightRef` names the rows of one constant that hold some channels: a contiguous run
(``offset``, ``length``) or, after a shuffle, any positions (``rows``). Everything here is
pure data and numpy; the analysis that fills it in is `channel_graph`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

CLASS_SEP = ">"  # a class's group name: its layer, CLASS_SEP, the layers that read it


def layer_of(name: str) -> str:
    """The layer a group is named after (``conv3`` for the class ``conv3>conv5+conv8``)."""
    return name.partition(CLASS_SEP)[0]


@dataclass(frozen=True)
class Segment:
    """`length` channels of `space` from channel `start` on (space None: channels no
    pruner may touch)."""

    space: int | None
    length: int
    start: int = 0


@dataclass(frozen=True)
class Layout:
    """Where the channels of a tensor are: an axis, laid out as segments, each channel
    spanning `span` consecutive positions (``H*W`` after a flatten, else 1)."""

    axis: int
    segments: tuple[Segment, ...]
    span: int = 1

    @property
    def channels(self) -> int:
        return sum(s.length for s in self.segments)

    def offsets(self):
        offset = 0
        for seg in self.segments:
            yield offset, seg
            offset += seg.length

    def channel_ids(self) -> list:
        """One ``(space, channel)`` per position on the axis (None: untracked)."""
        return [None if s.space is None else (s.space, s.start + i)
                for s in self.segments for i in range(s.length)]

    @staticmethod
    def of_ids(axis: int, ids: list) -> Layout:
        """The layout whose `channel_ids` are `ids`: maximal runs of one space."""
        segments: list[Segment] = []
        for item in ids:
            last = segments[-1] if segments else None
            if item is None and last is not None and last.space is None:
                segments[-1] = Segment(None, last.length + 1)
            elif item is None:
                segments.append(Segment(None, 1))
            elif last is not None and last.space == item[0] \
                    and last.start + last.length == item[1]:
                segments[-1] = Segment(item[0], last.length + 1, last.start)
            else:
                segments.append(Segment(item[0], 1, item[1]))
        return Layout(axis, tuple(segments))


@dataclass(frozen=True)
class WeightRef:
    """The rows of `length` channels on `axis` of constant arg `arg` of binding number
    `binding`: channel i at row ``offset + i`` or, when `rows` is given, at ``rows[i]``
    (times `span`: each channel spans `span` rows). `start` is the group channel of row
    `offset` while the analysis runs."""

    binding: int
    arg: int
    axis: int
    offset: int
    length: int
    span: int = 1
    groups: int = 1  # a grouped conv: output row block g reads only channel block g
    start: int = 0
    rows: tuple[int, ...] | None = None


@dataclass
class ChannelGroup:
    """Coupled channels that must be pruned or clustered together."""

    name: str
    channels: int
    producers: list[WeightRef] = field(default_factory=list)
    params: list[WeightRef] = field(default_factory=list)
    consumers: list[WeightRef] = field(default_factory=list)
    depthwise: list[int] = field(default_factory=list)  # convs whose `groups` follows C
    frozen: str | None = None  # why the group must not change
    blocks: int = 1  # equal runs of channels that must keep equal counts (grouped convs)

    @property
    def prunable(self) -> bool:
        return self.frozen is None and bool(self.producers) and bool(self.consumers)


@dataclass(frozen=True)
class Move:
    """A split or gather on the channel axis: the class channel at each input position
    (``(class name, index)``; None: untracked), and its indices (``take``) or split
    points (``split``)."""

    kind: str
    ids: tuple
    data: tuple[int, ...]


@dataclass
class ChannelGraph:
    """The result of `analyze`: groups by name, and the flatten reshapes to rewrite.

    Bindings are named by their position in the dataflow block (Relax variable names
    need not be unique)."""

    groups: dict[str, ChannelGroup]
    flatten_reshapes: list[int]
    producer_names: dict[int, str]  # binding number -> layer name (conv0, dense1, ...)
    moves: dict[int, Move] = field(default_factory=dict)  # splits / gathers of channels


def channel_positions(ref: WeightRef) -> np.ndarray:
    """The position of each of `ref`'s channels on its axis (in channels, before span)."""
    if ref.rows is not None:
        return np.asarray(ref.rows, dtype=np.int64)
    return ref.offset + np.arange(ref.length)


def unit_columns(ref: WeightRef, unit: int) -> np.ndarray:
    """``(length, unit)`` indices: channel i of `ref` covers ``unit`` consecutive entries
    from ``position_i * unit``."""
    return channel_positions(ref)[:, None] * unit + np.arange(unit)[None, :]


def channel_rows(ref: WeightRef) -> np.ndarray:
    """Absolute indices on `ref.axis` covered by `ref` (all spans of its channels)."""
    return unit_columns(ref, ref.span).ravel()


def weight_rows(consts: dict, ref) -> np.ndarray:
    """The ``(C, D)`` matrix of `ref`'s channels: one row of parameters per channel."""
    array = np.moveaxis(consts[(ref.binding, ref.arg)], ref.axis, 0)
    rows = array[channel_rows(ref)]
    return rows.reshape(ref.length, -1).astype(np.float64)
