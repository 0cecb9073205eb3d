"""Write `executor_bench.py`'s results: JSON, a markdown table and a latency plot."""

from __future__ import annotations

from pathlib import Path

from bench import common

PATHS = ("plain", "vm-call", "zero-copy")


def _kb(n: float) -> str:
    return f"{n / 1024:,.1f} KiB" if n < 2**20 else f"{n / 2**20:,.2f} MiB"


def host_table(host: list) -> list[str]:
    """Latency, allocations, copies and memory per model and host path."""
    lines = ["| model | path | median latency | vs plain | VM data allocations / run "
             "(bytes) | tensor headers / run | host copies / run (bytes) | peak RSS above "
             "start | RSS growth after warm-up |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in host:
        base = r["latency"]["plain"]["median_ms"]
        for p in PATHS:
            lat, al, cp, rss = (r["latency"][p], r["allocations"][p], r["copies"][p],
                                r["rss"][p])
            allocs = al["vm.builtin.alloc_storage"]
            headers = al["vm.builtin.alloc_tensor"] + al["tensor_views"]
            lines.append(
                f"| {r['model']} | {p} | {lat['median_ms']:.4g} ms ({lat['runs']} runs) | "
                f"{lat['median_ms'] / base:.2f}x | {allocs:g} ({_kb(al['alloc_storage_bytes'])}) "
                f"| {headers:g} | {cp['copies']} ({_kb(cp['bytes'])}) | "
                f"{rss['peak_rss_mb'] - rss['start_mb']:.1f} MiB | "
                f"{rss['growth_after_warmup_mb']:+.2f} MiB |")
    return lines


def phone_tables(phone: dict) -> list[str]:
    """Instructions and device allocations per runner mode; wall and device time over RPC."""
    lines = ["", "### Emulated phone (qemu-aarch64, aarch64 TVM runtime)", "",
             "| model | runner mode | instructions / inference | vs plain | VM data "
             "allocations / run (on the device) |", "|---|---|---:|---:|---:|"]
    for name, d in phone["device"].items():
        base = d["modes"]["plain"]["insns_per_inference"]
        for mode, v in d["modes"].items():
            n = v["insns_per_inference"]
            lines.append(f"| {name} | {mode} | {n:,} | {n / base:.4f}x | "
                         f"{v['device_alloc_calls_per_run']['vm.builtin.alloc_storage']:g} |")
    lines += ["", "Outputs of the three modes identical on the device: " + ", ".join(
        f"{k}: {v['outputs_identical']}" for k, v in phone["device"].items()), ""]
    lines += ["| model | over RPC | wall ms / inference (host: upload, run, download) | "
              "device ms / run (time_evaluator) |", "|---|---|---:|---:|"]
    for name, r in phone["rpc"].items():
        for p in ("plain", "zero-copy"):
            lines.append(f"| {name} | {p} | {r['wall_ms'][p]:.3g} | {r['device_ms'][p]:.3g} |")
    return lines


def markdown(result: dict) -> str:
    """The whole report."""
    cpu = result["cpu"]
    lines = [f"## Zero-copy executor vs the plain Relax VM ({result['date']})", "",
             f"Host: {cpu['machine']}, {cpu['cpus']} CPUs, TVM_NUM_THREADS="
             f"{cpu['tvm_num_threads']}, load {cpu['loadavg_1min']:.2f}. Command: "
             f"`{result.get('command', 'python bench/executor_bench.py')}`.", "",
             "*plain*: `CompiledModel.run(x)` (copy in, `main`, copy out); *vm-call*: "
             "`vm['main'](x_tensor)` on an input made once; *zero-copy*: "
             "`ZeroCopyExecutor.run()` (`main_zc` on preset buffers). Allocations counted "
             "by a VM instrument over 100 runs after warm-up; a tensor header is a small "
             "object describing existing memory (`alloc_tensor` on a storage, a view, or "
             "`ensure_zero_offset`), no tensor data. Peak RSS: a fresh process "
             "(runtime-only TVM, as on a device) that loads the exported library and runs "
             "one path; shown above the process's RSS before loading.", ""]
    lines += host_table(result["host"])
    lines += ["", "Workspace (all intermediates, one buffer): " + ", ".join(
        f"{r['model']} {_kb(r['workspace_bytes'])} in {r['storages']} planned storages"
        for r in result["host"])]
    if result.get("phone"):
        lines += phone_tables(result["phone"])
    else:
        lines += ["", "Phone: not measured in this run (`--no-phone`)."]
    lines += ["", result.get("note", "")]
    return "\n".join(lines) + "\n"


def plot(result: dict):
    """Median latency of the three host paths, one panel per model.

    Returns
    -------
    matplotlib.figure.Figure
    """
    plt = common.pyplot()
    host = result["host"]
    fig, axes = plt.subplots(1, len(host), figsize=(4 * len(host), 3.4), squeeze=False)
    for ax, r in zip(axes[0], host, strict=True):
        vals = [r["latency"][p]["median_ms"] for p in PATHS]
        bars = ax.bar(PATHS, vals, color=["#999999", "#6699cc", "#cc6633"])
        ax.bar_label(bars, labels=[f"{v:.3g}" for v in vals], fontsize=8)
        ax.set_title(f"{r['model']} {tuple(r['input_shape'])}", fontsize=9)
        ax.set_ylabel("median ms / inference (host)")
    fig.suptitle("Zero-copy executor vs plain Relax VM call path", fontsize=10)
    fig.tight_layout()
    return fig


def write_results(result: dict, results_dir: Path) -> str:
    """Write ``executor.json``, ``executor.md`` and ``executor.png`` (atomically); returns
    the markdown."""
    text = markdown(result)
    common.write_results("executor", result, text, plot(result), out=results_dir)
    return text
