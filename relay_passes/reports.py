"""Per-layer-group compression reports: channels, weights and MACs before and after.

Shared by every channel pass (k-means, mask pruning): one `GroupReport` per coupled group.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

from mdl_tvm.core.graph_stats import binding_costs
from relay_passes.channel_layout import CLASS_SEP
from relay_passes.config import CompressConfig


@dataclass(frozen=True)
class GroupReport:
    """One line of the per-layer report."""

    name: str
    channels_before: int
    channels_after: int
    note: str = ""
    weights_before: int = 0  # elements of the group's producer weights
    weights_after: int = 0
    macs_before: int = 0  # multiply-accumulates of the group's producer layers
    macs_after: int = 0


def finish_reports(reports, graph, before, after) -> list[GroupReport]:
    """Fill in producer weights and MACs before/after, sorted in layer order. A layer
    whose channels form several classes (`channel_classes`) is shared out among them by
    their channels, so the reports still add up to the network's totals."""
    cost_before, cost_after = binding_costs(before), binding_costs(after)
    widths: dict[int, list[int]] = {}  # producer binding -> channels before, after
    for r in reports:
        for b in {ref.binding for ref in graph.groups[r.name].producers}:
            width = widths.setdefault(b, [0, 0])
            width[0], width[1] = width[0] + r.channels_before, width[1] + r.channels_after
    done = []
    for r in reports:
        bindings = {ref.binding for ref in graph.groups[r.name].producers}
        share0 = {b: r.channels_before / max(widths[b][0], 1) for b in bindings}
        share1 = {b: r.channels_after / max(widths[b][1], 1) for b in bindings}
        w0, m0 = (round(sum(cost_before.get(b, (0, 0))[i] * share0[b] for b in bindings))
                  for i in (0, 1))
        w1, m1 = (round(sum(cost_after.get(b, (0, 0))[i] * share1[b] for b in bindings))
                  for i in (0, 1))
        done.append(replace(r, weights_before=w0, weights_after=w1, macs_before=m0,
                            macs_after=m1))
    return sorted(done, key=lambda r: _layer_order(r.name))


def report_frozen(graph, config: CompressConfig) -> list[GroupReport]:
    reports = []
    for group in graph.groups.values():
        if group.prunable and not config.skips(group.name):
            continue
        note = "skipped" if config.skips(group.name) else (group.frozen or "no consumer")
        if group.frozen and group.frozen != "the model output" and not config.skips(group.name):
            warnings.warn(f"channel group {group.name} left untouched: it flows into "
                          f"{group.frozen}, which the channel analysis does not handle",
                          stacklevel=3)
        reports.append(GroupReport(group.name, group.channels, group.channels, note))
    return reports


def _layer_order(name: str):
    layer, _, reader = name.partition(CLASS_SEP)  # a class: its layer, then by readers
    kind = layer.rstrip("0123456789")
    return (kind != "conv", int(layer[len(kind):] or 0), reader)


def recovery_note(criterion: str, choices: dict | None, recovery: str) -> str:
    """``"redundancy; recovery ls: compensation x3, ls(0.001) x1 (held-out error 0.012)"``:
    the criterion, what each consumer kept and the worst held-out error of the winners."""
    if not choices:
        return f"{criterion}, recovery {recovery}" if recovery == "none" else (
            f"{criterion}, nothing removed")
    counts: dict[str, int] = {}
    worst = 0.0
    for choice, errors in choices.values():
        counts[choice] = counts.get(choice, 0) + 1
        value = errors.get(choice, float("nan"))
        worst = max(worst, value) if value == value else worst
    kept = ", ".join(f"{c} x{n}" for c, n in counts.items())
    tail = f" (held-out error <= {worst:.3g})" if recovery != "none" else ""
    return f"{criterion}; recovery {recovery}: {kept}{tail}"
