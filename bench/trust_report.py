"""The report of `bench/trust_bench.py`: markdown table and plots of compression-trust.json."""

from __future__ import annotations

from bench import common

STEM = "compression-trust"


def write(data: dict, out) -> None:
    common.write_results(STEM, data, markdown(data), plot(data["rows"], data.get("phone", [])),
                         out=out)


def _label(r) -> str:
    if r["part"] == "finetune" or r["method"] in ("none",):
        notes = [f"seed {r['seed']}"] if r.get("seed") else []
        notes += ["Adam"] if r.get("recipe") == "adam" else []
        return r["method"] + (f" ({', '.join(notes)})" if notes else "")
    plan = f" ({r['speedup']:g}x MACs plan)" if r.get("speedup") else ""
    plan += f" + {r['sweeps']} refit sweep{'s' * (r['sweeps'] > 1)}" if r.get("sweeps") else ""
    plan += " + relaxed targets" if r.get("relaxed") else ""
    plan += " + residual targets" if r.get("residual") else ""
    plan += " + output-sensitivity plan" if r.get("sensitivity") and r.get("speedup") else ""
    plan += " + refit criterion" if r.get("criterion") == "refit" else ""
    return f"{r['method']}+{r['recovery']}{plan}"


PHONE_NOTE = (
    "Phone instructions: retired per inference by the point's architecture built for "
    "`arm64` (ARMv8.0-A, fp32, default rules, 1 thread) on the emulated phone (QEMU TCG "
    "plugin, (count(2N) - count(N)) / N, N = 10; `python bench/trust_phone.py`); points "
    "with the same model and MACs share one count (same channels per group). Ratio = the "
    "base's count / the point's. Instructions do not see cache misses, memory bandwidth or "
    "instruction latencies.")


def _phone(phone: dict, row: dict, base: dict) -> str:
    """``instructions | base / point`` of `row`'s architecture, blank when not counted."""
    point, ref = (phone.get((r["model"], r["macs"]), {}).get("instructions")
                  for r in (row, base))
    if not point:
        return " | "
    return f"{point:,} | " + (f"{ref / point:.2f}x" if ref else "")


def markdown(data: dict) -> str:
    rows = data["rows"]
    base = {r["model"]: r for r in rows if r["part"] == "base"}
    lines = ["# Compression you can trust (#18): Fashion-MNIST test top-1", ""]
    for part, meta in sorted(data["meta"].items()):
        lines.append(f"- `{part}`: last run `{meta.get('command')}` ({meta.get('date')}, "
                     f"{meta.get('wall_s')} s so far)")
        made = dict.fromkeys(r["command"] for r in rows if r["part"] == part
                             and r.get("command"))
        older = sum(not r.get("command") for r in rows if r["part"] == part)
        if made:
            lines.append("  - its rows come from " + "; ".join(f"`{c}`" for c in made)
                         + (f" ({older} earlier rows: commands in the README)" if older
                            else ""))
    phone = {(p["model"], p["macs"]): p for p in data.get("phone", [])}
    lines += ["", "| part | model | method | removed | calib. | ft epochs | top-1 | points lost"
              " | MACs | MACs reduction | weights (bytes) | host latency ratio |"
              " phone instructions | phone instructions ratio |"
              " held-out output error (recovered / data-free) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    order = {"base": 0, "curve": 1, "budget": 2, "calibration": 3, "finetune": 4}
    for r in sorted(rows, key=lambda r: (order[r["part"]], r["model"], r["ratio"], _label(r),
                                          r["calibration"])):
        b = base.get(r["model"], r)
        held = r.get("held_out") or {}
        held = (f"{held['recovered']:.3g} / {held['data_free']:.3g}" if "recovered" in held
                else "")
        lines.append(
            f"| {r['part']} | {r['model']} | {_label(r)} | {r['ratio']:.1%} | "
            f"{r['calibration'] or ''} | {r['epochs'] or ''} | {r['accuracy']:.4f} | "
            f"{(b['accuracy'] - r['accuracy']) * 100:+.2f} | {r['macs']:,} | "
            f"{b['macs'] / r['macs']:.2f}x | {r['weight_bytes']:,} | "
            f"{r['latency_ms'] / r.get('base_latency_ms', b['latency_ms']):.2f} | "
            f"{_phone(phone, r, b)} | {held} |")
    lines += ["", "Points lost = base top-1 minus the point's top-1, in percentage points "
              "(negative: better than the base). Host latency ratio: against the base "
              "measured in the same run (rows without one: the base row above). "
              + PHONE_NOTE]
    same = [(r["model"], r["method"], r["ratio"]) for r in rows if r["part"] == "curve"
            and r["recovery"] == "ls" and any(
                o["part"] == "curve" and o["recovery"] == "compensation"
                and (o["model"], o["method"], o["ratio"]) == (r["model"], r["method"], r["ratio"])
                and o["accuracy"] == r["accuracy"] for o in rows)]
    if same:
        lines.append(f"Least squares equalled compensation (same top-1) at {len(same)} curve "
                     "point(s): no least-squares refit was kept there (row-count or held-out "
                     "gate), so the two curves overlap in the plot.")
    missing = [f"`{part}` ({', '.join(models)})" for part, models in (
        ("curve", ("resnet20",)), ("calibration", ("resnet20",)),
        ("finetune", ("resnet20",))) if not any(
            r["part"] == part and r["model"] in models for r in rows)]
    if missing:
        lines.append("Not measured yet: " + "; ".join(missing) + ".")
    return "\n".join(lines) + "\n"


def _top1_panel(ax, rows, name, base, speedup, what: str) -> None:
    """Top-1 of `name`'s curve and fine-tuning points against ``speedup(row)`` (None: the
    point is left out), with the base, the 1-point line and the seed's claim."""
    curves = {}
    for r in rows:
        if r["model"] == name and r["part"] in ("curve", "finetune") and speedup(r):
            curves.setdefault(_label(r), []).append((speedup(r), r["accuracy"] * 100))
    for label, pts in sorted(curves.items()):
        ax.plot(*zip(*sorted(pts), strict=True), marker="o", label=label,
                linestyle="--" if "torch" in label or "ft" in label else "-")
    if base:
        b = base["accuracy"] * 100
        ax.axhline(b, color="k", lw=0.8, label="uncompressed")
        ax.axhline(b - 1, color="k", lw=0.8, ls=":", label="1 point lost")
        ax.scatter([3], [b - 1], marker="*", s=160, color="k", zorder=5,
                   label="seed: 3x faster at ~1 % loss")
    ax.set(title=f"{name}: top-1 vs {what}", xlabel=f"{what} (x)",
           ylabel="Fashion-MNIST test top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)


def plot(rows, phone=()):
    if (plt := common.pyplot()) is None or not rows:
        return None
    models = sorted({r["model"] for r in rows})
    counts = {(p["model"], p["macs"]): p.get("instructions") for p in phone}
    fig, axes = plt.subplots(3, len(models), figsize=(6.5 * len(models), 12.5), squeeze=False)
    for col, name in enumerate(models):
        base = next((r for r in rows if r["model"] == name and r["part"] == "base"), None)
        _top1_panel(axes[0][col], rows, name, base, lambda r, b=base: b["macs"] / r["macs"],
                    "MACs reduction")
        ref = counts.get((name, base["macs"])) if base else None

        def fewer(r, ref=ref):
            point = counts.get((r["model"], r["macs"]))
            return ref / point if ref and point else None

        _top1_panel(axes[2][col], rows, name, base, fewer, "fewer phone instructions")
        ax = axes[1][col]
        calib = {}
        for r in rows:
            if r["model"] == name and r["part"] == "calibration":
                calib.setdefault(r["ratio"], {})[r["calibration"]] = r["accuracy"] * 100
        for r in rows:  # the curve's mask + ls point counts too (same settings)
            if (r["model"] == name and r["part"] == "curve" and r["method"] == "mask"
                    and r["recovery"] == "ls" and r["ratio"] in calib):
                calib[r["ratio"]].setdefault(r["calibration"], r["accuracy"] * 100)
        calib = {ratio: list(points.items()) for ratio, points in calib.items()}
        for ratio, pts in sorted(calib.items()):
            ax.plot(*zip(*sorted(pts), strict=True), marker="o",
                    label=f"mask+ls, {ratio:.1%} removed")
        ax.set(title=f"{name}: top-1 vs calibration images", xscale="log",
               xlabel="calibration images", ylabel="top-1 (%)")
        ax.grid(alpha=0.3)
        if calib:  # models without a calibration sweep have nothing to label
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
