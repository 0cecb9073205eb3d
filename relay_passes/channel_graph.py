"""One channel-dependency analysis over a Relax graph, shared by every channel pruner.

What it computes
----------------
A *channel space* is born at each layer that creates channels: a conv2d with constant
weights that is not depthwise (output axis 0 of its OIHW weight) or a matmul with a
constant ``(K, N)`` weight (axis 1). A grouped conv (``groups = G``) cuts both its
outputs and its input channels into ``G`` equal *blocks* (`ChannelGroup.blocks`): a pruner
keeps the same number of channels in each block, so the conv stays a ``G``-group conv, and
its input side is a consumer (``WeightRef.groups = G``) whose edits must not mix channels
of different blocks (k-means clusters and compensation stay inside a block). The analysis
follows each space forward through the graph and records everything indexed by its
channels:

* ``producers``  the weight rows that create the channels;
* ``params``     per-channel constants met on the way (bias adds, folded BatchNorm scales
                 and shifts, depthwise filters), which must keep the same channels;
* ``consumers``  weights that read the channels: conv2d (input axis 1), matmul (axis 0),
                 including dense after flatten, where one channel spans ``H*W`` rows.

Spaces that meet in a residual ``add`` (or any binary element-wise op) are *coupled*:
their channels must change together, so they are joined into one `ChannelGroup`
(union-find, as Torch-Pruning's dependency graph does). ``concatenate`` along the channel
axis lays its inputs' spaces side by side at offsets; depthwise conv, element-wise ops,
pooling, spatial ``mean`` and flatten pass channels through. ``split``, ``strided_slice``
and ``take`` along the channel axis (a channel shuffle, after `shuffle_as_take`; GhostNet's
``out[:, :oup]``) cut spaces into runs; the
channels of a group that then go different ways become separate groups, one per *class*
(`channel_classes`), named ``conv3>conv5+conv8`` (conv3's channels read by conv5 and conv8).

A group is *frozen* — never changed — when a space reaches the function's output, meets
a graph input, or flows into an op the analysis does not understand; the reason names the
op, so a pruner can warn instead of producing a silently wrong graph.

Preconditions: a Relax ``main`` made of one dataflow block, NCHW / OIHW layouts, weights
bound as constants (``mdl_tvm``'s prepare stage does this).
"""

from __future__ import annotations

import math

from mdl_tvm.core.relax_utils import constant_value, main_bindings, static_shape, vars_in
from relay_passes.channel_classes import RawGroup, move_data, move_pieces, split_classes
from relay_passes.channel_layout import (
    ChannelGraph,
    Layout,
    Move,
    Segment,
    WeightRef,
)

UNARY_PASSTHROUGH = {
    "relax.nn.relu", "relax.clip", "relax.sigmoid", "relax.tanh", "relax.nn.gelu",
    "relax.nn.silu", "relax.nn.leakyrelu", "relax.nn.dropout", "relax.astype", "relax.exp",
    "relax.nn.max_pool2d", "relax.nn.avg_pool2d", "relax.nn.adaptive_avg_pool2d",
    "relax.negative", "relax.abs", "relax.sqrt", "relax.square",
}
BINARY_ELEMENTWISE = {
    "relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.maximum",
    "relax.minimum",
}


class _Analysis:
    def __init__(self):
        self.parent: list[int] = []  # union-find over spaces
        self.space_info: list[dict] = []
        self.layouts: dict[int, Layout | None] = {}  # keyed by hash(var): object identity
        self.tuples: dict[int, list] = {}  # tuple-valued binding -> the vars it holds
        self.tuple_layouts: dict[int, list] = {}  # a split's binding -> its outputs' layouts
        self.moves: dict[int, tuple] = {}  # binding -> (kind, input channel ids, data)
        self.flatten_reshapes: list[int] = []
        self.producer_names: dict[int, str] = {}
        self.counts = {"conv": 0, "dense": 0}

    # -- union-find -------------------------------------------------------------------
    def new_space(self, binding: int, kind: str, channels: int) -> int:
        name = f"{kind}{self.counts[kind]}"
        self.counts[kind] += 1
        self.producer_names[binding] = name
        self.parent.append(len(self.parent))
        self.space_info.append({"name": name, "channels": channels, "producers": [],
                                "params": [], "consumers": [], "depthwise": [],
                                "frozen": None, "blocks": 1, "passes": {}})
        return len(self.parent) - 1

    def find(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def freeze_all(self, var, reason: str) -> None:
        """Freeze the channels of `var`, or of every field when it is a tuple."""
        self.freeze(self.layouts.get(hash(var)), reason)
        for field_var in self.tuples.get(hash(var), []):
            self.freeze_all(field_var, reason)
        for layout in self.tuple_layouts.get(hash(var), []):
            self.freeze(layout, reason)

    def freeze(self, layout: Layout | None, reason: str) -> None:
        for seg in layout.segments if layout else ():
            if seg.space is not None and self.space_info[seg.space]["frozen"] is None:
                self.space_info[seg.space]["frozen"] = reason

    # -- recording --------------------------------------------------------------------
    def record(self, kind: str, layout: Layout, binding: int, arg: int, axis: int) -> None:
        for offset, seg in layout.offsets():
            if seg.space is not None:
                self.space_info[seg.space][kind].append(WeightRef(
                    binding, arg, axis, offset, seg.length, layout.span, start=seg.start))

    def layout_of(self, expr) -> Layout | None:
        from tvm import relax

        return self.layouts.get(hash(expr)) if isinstance(expr, relax.Var) else None

    # -- per binding ------------------------------------------------------------------
    def visit(self, index: int, var, value) -> None:
        import tvm
        from tvm import relax

        key = hash(var)
        if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op):
            layout = self.visit_call(index, value.op.name, value)
            if isinstance(layout, list):  # a split: one layout per output
                self.tuple_layouts[key], layout = layout, None
            self.layouts[key] = layout
        elif isinstance(value, relax.Tuple):
            self.tuples[key] = [v for f in value.fields for v in vars_in(f)]
            self.layouts[key] = None
        elif isinstance(value, relax.Var):
            self.layouts[key] = self.layout_of(value)
            self.tuples[key] = self.tuples.get(hash(value), [])
            self.tuple_layouts[key] = self.tuple_layouts.get(hash(value), [])
        elif isinstance(value, relax.TupleGetItem) and isinstance(value.tuple_value, relax.Var):
            self.layouts[key] = self.visit_item(value.tuple_value, int(value.index))
        else:
            for used in vars_in(value):
                self.freeze_all(used, f"expression {type(value).__name__}")
            self.layouts[key] = None

    def visit_call(self, name: int, op: str, call) -> Layout | None:
        args = list(call.args)
        in_layout = self.layout_of(args[0]) if args else None
        out_shape = static_shape(call)
        if op == "relax.nn.conv2d":
            return self.visit_conv(name, call, in_layout, out_shape)
        if op == "relax.matmul":
            return self.visit_matmul(name, args, in_layout, out_shape)
        if op in UNARY_PASSTHROUGH:
            if op.startswith("relax.nn.") and "pool" in op and call.attrs.layout != "NCHW":
                self.freeze(in_layout, f"{op} with layout {call.attrs.layout}")
                return None
            return in_layout
        if op in BINARY_ELEMENTWISE:
            return self.visit_binary(name, op, args, out_shape)
        if op == "relax.reshape":
            return self.visit_reshape(name, args[0], in_layout, out_shape)
        if op == "relax.mean":
            return self.visit_mean(call, in_layout, out_shape)
        if op == "relax.concat":
            return self.visit_concat(call, out_shape)
        if op in ("relax.take", "relax.split", "relax.strided_slice"):
            return self.visit_move(name, op, call, in_layout)
        for arg in args:  # an op the analysis does not know: freeze what flows in
            for var in vars_in(arg):
                self.freeze_all(var, f"op {op}")
        return None

    def visit_conv(self, name, call, in_layout, out_shape):
        attrs = call.attrs
        weight = constant_value(call.args[1])
        if (attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW" or weight is None
                or out_shape is None):
            self.freeze(in_layout, f"conv2d {attrs.data_layout}/{attrs.kernel_layout} "
                        "or with non-constant weight")
            return None
        groups, c_out, c_in = int(attrs.groups), weight.shape[0], static_shape(call.args[0])[1]
        if groups == c_in == c_out and weight.shape[1] == 1:  # depthwise: channels pass
            if in_layout is None:
                return None
            self.record("params", in_layout, name, 1, 0)
            for _, seg in in_layout.offsets():
                if seg.space is not None:
                    self.space_info[seg.space]["depthwise"].append(name)
            return in_layout
        # a grouped conv's group g reads input block g and writes output block g
        seg = in_layout.segments[0] if in_layout is not None else None
        if groups == 1 and in_layout is not None:
            self.record("consumers", in_layout, name, 1, 1)
        elif seg is not None and seg.space is not None and len(in_layout.segments) == 1 \
                and in_layout.span == 1 and self.whole(seg):
            info = self.space_info[seg.space]
            info["consumers"].append(WeightRef(name, 1, 1, 0, c_in, 1, groups))
            info["blocks"] = math.lcm(info["blocks"], groups)
        elif groups > 1:
            self.freeze(in_layout, f"the input of grouped conv2d (groups={groups}) made of "
                        "several tensors")
        space = self.new_space(name, "conv", c_out)
        self.space_info[space]["producers"].append(WeightRef(name, 1, 0, 0, c_out))
        self.space_info[space]["blocks"] = groups
        return Layout(1, (Segment(space, c_out),))

    def visit_matmul(self, name, args, in_layout, out_shape):
        weight = constant_value(args[1])
        if weight is None or weight.ndim != 2 or out_shape is None:
            for arg in args:
                self.freeze(self.layout_of(arg), "matmul without a constant 2-D weight")
            return None
        if in_layout is not None:
            if in_layout.axis != len(static_shape(args[0])) - 1:
                self.freeze(in_layout, "matmul over a non-channel axis")
            else:
                self.record("consumers", in_layout, name, 1, 0)
        space = self.new_space(name, "dense", weight.shape[1])
        self.space_info[space]["producers"].append(WeightRef(name, 1, 1, 0, weight.shape[1]))
        return Layout(len(out_shape) - 1, (Segment(space, weight.shape[1]),))

    def visit_binary(self, name, op, args, out_shape):
        layouts = [self.layout_of(a) for a in args]
        tracked = [lay for lay in layouts if lay is not None]
        if not tracked:
            return None
        out = tracked[0]
        rank = len(out_shape) if out_shape else 0
        for i, (arg, lay) in enumerate(zip(args, layouts, strict=True)):
            const = constant_value(arg)
            if lay is not None:
                if lay.axis != out.axis or len(lay.segments) != len(out.segments) or any(
                        a.length != b.length for a, b in zip(lay.segments, out.segments,
                                                             strict=True)):
                    self.freeze(lay, f"{op} of tensors with different channel layouts")
                    self.freeze(out, f"{op} of tensors with different channel layouts")
                    continue
                for a, b in zip(lay.segments, out.segments, strict=True):
                    if (a.space is None) != (b.space is None):
                        self.freeze(lay, f"{op} with a fixed-channel tensor")
                        self.freeze(out, f"{op} with a fixed-channel tensor")
                    elif a == b:
                        continue
                    elif a.space is not None and self.whole(a) and self.whole(b):
                        self.union(a.space, b.space)
                    elif a.space is not None:
                        self.freeze(lay, f"{op} of parts of channel spaces")
                        self.freeze(out, f"{op} of parts of channel spaces")
            elif const is not None:
                axis = out.axis - (rank - const.ndim)
                if axis >= 0 and const.shape[axis] != 1:
                    if const.shape[axis] != out.channels * out.span or out.span != 1:
                        self.freeze(out, f"{op} with a constant not per-channel")
                    else:
                        self.record("params", out, name, i, axis)
            else:
                self.freeze(out, f"{op} with a graph input")
        return out

    def whole(self, seg: Segment) -> bool:  # all channels of its space, in order
        return seg.start == 0 and seg.length == self.space_info[seg.space]["channels"]

    def visit_item(self, tuple_var, index: int) -> Layout | None:
        layouts = self.tuple_layouts.get(hash(tuple_var))
        if layouts and index < len(layouts):
            return layouts[index]
        self.freeze_all(tuple_var, "expression TupleGetItem")
        return None

    def visit_move(self, name, op, call, in_layout):
        """A gather (``take``), ``split`` or ``strided_slice`` along the channel axis: the
        channels follow; recorded (`ChannelGraph.moves`) so a rewrite can recompute them."""
        if in_layout is None:
            return None
        kind, ids = op.split(".")[1], in_layout.channel_ids()
        data = move_data(kind, call, in_layout.axis, len(ids)) if in_layout.span == 1 else None
        pieces = None if data is None else move_pieces(kind, name, len(ids), data)
        taken = [p for _, part in pieces or () for p in part if ids[p] is not None]
        if not pieces or len(set(taken)) != len(taken):
            self.freeze(in_layout, f"{op} of channels other than a selection (unknown, "
                        "repeated or out-of-range indices, or strides)")
            return None
        seen, copy = {}, []  # a channel met twice: which copy each position holds
        for item in ids:
            copy.append(seen.get(item, 0))
            seen[item] = copy[-1] + 1
        for site, part in pieces:  # (cat(x, dw(x))): which copy passes, too
            for p in (p for p in part if ids[p] is not None):
                self.space_info[ids[p][0]]["passes"].setdefault(ids[p][1], []).append(
                    (*site, copy[p]))
        self.moves[name] = (kind, ids, data)
        layouts = [Layout.of_ids(in_layout.axis, [ids[p] for p in part])
                   for _, part in pieces]
        return layouts if kind == "split" else layouts[0]

    def visit_reshape(self, name, data, in_layout, out_shape):
        if in_layout is None:
            return None
        in_shape = static_shape(data)
        if (in_shape and out_shape and len(in_shape) == 4 and in_layout.axis == 1
                and len(out_shape) == 2 and out_shape[0] == in_shape[0]):
            self.flatten_reshapes.append(name)
            return Layout(1, in_layout.segments, in_shape[2] * in_shape[3] * in_layout.span)
        self.freeze(in_layout, "reshape other than flatten")
        return None

    def visit_mean(self, call, in_layout, out_shape):
        if in_layout is None:
            return None
        rank = len(static_shape(call.args[0]) or ())
        axes = sorted(int(a) % rank for a in call.attrs.axis) if call.attrs.axis else []
        if in_layout.axis == 1 and axes == [2, 3] and rank == 4:
            return in_layout
        self.freeze(in_layout, f"mean over axes {axes}")
        return None

    def visit_concat(self, call, out_shape):
        from tvm import relax

        tensors = call.args[0]
        if isinstance(tensors, relax.Tuple):
            fields = list(tensors.fields)
        else:
            fields = self.tuples.get(hash(tensors))
        if fields is None or out_shape is None:
            return None
        axis = int(call.attrs.axis) % len(out_shape)
        layouts = [self.layout_of(f) for f in fields]
        if all(lay is None for lay in layouts):
            return None
        segments: list[Segment] = []
        for f, lay in zip(fields, layouts, strict=True):
            if lay is not None and (lay.axis != axis or lay.span != 1):
                self.freeze(lay, "concat along a non-channel axis")
                lay = None
            segments += list(lay.segments) if lay else [Segment(None, static_shape(f)[axis])]
        return Layout(axis, tuple(segments))

    # -- results ----------------------------------------------------------------------
    def raw_groups(self) -> dict[int, RawGroup]:
        raws: dict[int, RawGroup] = {}
        for s, info in enumerate(self.space_info):
            root = self.find(s)
            raw = raws.get(root)
            if raw is None:
                root_info = self.space_info[root]
                raw = raws[root] = RawGroup(root_info["name"], root_info["channels"])
            raw.refs += [(kind, ref) for kind in ("producers", "params", "consumers")
                         for ref in info[kind]]
            raw.depthwise += info["depthwise"]
            for c, sites in info["passes"].items():
                raw.passes.setdefault(c, []).extend(sites)
            if info["frozen"] and not raw.frozen:
                raw.frozen = info["frozen"]
            raw.blocks = math.lcm(raw.blocks, info["blocks"])
        for raw in raws.values():
            if raw.channels % raw.blocks and not raw.frozen:
                raw.frozen = (f"grouped convs whose groups ({raw.blocks} in all) do not "
                              f"divide its {raw.channels} channels")
        return raws

    def result(self) -> ChannelGraph:
        groups, where = {}, {}
        for root, raw in self.raw_groups().items():
            for group, chans in split_classes(raw, self.producer_names):
                groups[group.name] = group
                for rank, c in enumerate(chans):
                    where[(root, int(c))] = (group.name, rank)
        moves = {b: Move(kind, tuple(None if i is None else where[(self.find(i[0]), i[1])]
                                     for i in ids), data)
                 for b, (kind, ids, data) in self.moves.items()}
        return ChannelGraph(groups, self.flatten_reshapes, self.producer_names, moves)


def analyze(mod, func_name: str = "main") -> ChannelGraph:
    """Group the channels of `mod[func_name]` that must change together."""
    bindings, func = main_bindings(mod, func_name)
    analysis = _Analysis()
    for param in func.params:
        analysis.layouts[hash(param)] = None
    for index, binding in enumerate(bindings):
        analysis.visit(index, binding.var, binding.value)
    for var in vars_in(func.body.body):
        analysis.freeze_all(var, "the model output")
    return analysis.result()
