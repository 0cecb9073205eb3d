"""The apps on the pipeline: style-transfer and poem-step latency on this machine against
PyTorch eager and ONNX Runtime, and aarch64 instructions on the emulated phone.

    flock /tmp/mdl_heavy.lock python bench/apps_bench.py
    python bench/apps_bench.py --size 256 --repeat 20 --threads 1 --phone-size 128
    python bench/apps_bench.py --size 64 --repeat 3 --skip-phone --out /tmp/a   # smallest

Host: every runtime in its own process, the same thread count (``TVM_NUM_THREADS``,
``torch.set_num_threads``, ONNX Runtime's ``intra_op_num_threads``), warm-up runs, then the
median of ``--repeat`` runs. Style transfer runs the shipped network on a real photo
(``apps/style_transfer/examples/chelsea.png``) resized to ``--size`` x ``--size``; "ours
compressed" is ``compress="kmeans:0.5"``. The poem step is one character: token, h, c in
-> logits, h', c' out, numpy in and out for every runtime.

Phone: instructions per inference from `deploy.emulator.count_instructions` (QEMU TCG
plugin, deterministic) for the arm64 builds, style transfer at ``--phone-size``, through
`bench.phone_build.build_on_phone` (the style outputs checked against PyTorch).

Writes ``bench/results/apps.json``, ``apps.md`` and ``apps.png`` (``--out``: another
directory).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

if not __package__:  # run as `python bench/apps_bench.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common, runtimes  # noqa: E402
from bench.models import style_input  # noqa: E402
from bench.phone_build import build_on_phone  # noqa: E402
from mdl_tvm.core.numerics import median_ms  # noqa: E402

STYLE_RUNTIMES = ("ours", "ours_kmeans", "torch", "onnxruntime")
POEM_RUNTIMES = ("ours", "ours_zero_copy", "torch", "onnxruntime")


def _poem_inputs():
    import numpy as np

    from apps.poem.model import LSTMStep, load_model

    net, vocab = load_model()
    step = LSTMStep(net).eval()
    h, c = step.zero_state()
    token = np.array([vocab.index("春")], np.int64)
    return step, (token, h, c)


def measure(what: str, runtime: str, args) -> dict:
    """Time one runtime on one app (in its own process)."""
    import numpy as np
    import torch

    import mdl_tvm

    torch.set_num_threads(args.threads)
    if what == "style":
        from apps.style_transfer.model import load_transformer

        module, inputs, names = load_transformer(), (style_input(args.size),), ("x",)
    else:
        module, inputs, names = (*_poem_inputs(), ("token", "h", "c"))
    tensors = tuple(torch.from_numpy(a) for a in inputs)
    if runtime == "torch":  # numpy in, numpy out, like the other runtimes
        return {"ms": median_ms(lambda: runtimes.torch_outputs(
            module, [torch.from_numpy(a) for a in inputs]), args.repeat, args.warmup)}
    if runtime == "onnxruntime":
        session = runtimes.ort_from_torch(module, inputs, names, args.threads)
        feed = dict(zip(names, inputs, strict=True))
        return {"ms": median_ms(lambda: session.run(None, feed), args.repeat, args.warmup)}
    compress = "kmeans:0.5" if runtime == "ours_kmeans" else None
    if runtime == "ours_zero_copy":  # the poem's stepper: h, c stay in preset buffers
        from apps.poem.stepper import ZeroCopyStepper

        compiled = mdl_tvm.compile(module, "host", example_inputs=tensors)
        stepper = ZeroCopyStepper(compiled.executor())
        stepper.start(*inputs[1:])
        token = int(inputs[0][0])
        return {"ms": median_ms(lambda: stepper(token), args.repeat, args.warmup)}
    start = time.perf_counter()
    compiled = mdl_tvm.compile(module, "host", example_inputs=tensors, compress=compress)
    row = {"compile_s": round(time.perf_counter() - start, 2),
           "gmac": round(compiled.stats.macs / 1e9, 4)}
    with torch.no_grad():
        ref = module(*tensors)
    ref = (ref[0] if isinstance(ref, tuple) else ref).numpy()
    out = compiled.run(*inputs)[0]
    row["max_abs_diff_vs_torch"] = float(np.abs(out - ref).max())
    row["ms"] = median_ms(lambda: compiled.run(*inputs), args.repeat, args.warmup)
    return row


def _worker(what: str, runtime: str, args) -> dict:
    return common.run_worker(__file__, "--measure", f"{what}:{runtime}",
                             *common.forward(args, "size", "repeat", "warmup", "threads"),
                             threads=args.threads)


def phone_counts(args) -> dict:
    """aarch64 instructions per inference for the style net (plain, k-means) and poem step."""
    import torch

    from apps.style_transfer.model import load_transformer

    rows = {}
    x = style_input(args.phone_size)
    net = load_transformer()
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    step, poem_inputs = _poem_inputs()
    jobs = [("style", None, net, (x,)), ("style", "kmeans:0.5", net, (x,)),
            ("poem_step", None, step, poem_inputs)]
    with tempfile.TemporaryDirectory() as tmp:
        for name, compress, module, inputs in jobs:
            style = name == "style"
            b = build_on_phone(module, "arm64", inputs, tmp,
                                      f"{name}-{compress or 'plain'}", runs=args.phone_runs,
                                      reference=ref if style else None, example_inputs=True,
                                      compress=compress)
            key = f"{name}{'_kmeans' if compress else ''}"
            rows[key] = {"instructions": b.instructions, "gmac": round(b.model.stats.macs / 1e9, 4),
                         "weight_bytes": b.model.stats.weight_bytes,
                         "count_seconds": round(b.count_s, 1)}
            if style:
                rows[key]["psnr_vs_torch_db"] = round(_psnr(b.output, ref), 2)
                rows[key]["rel_error_vs_torch"] = b.rel_error
            print(json.dumps({key: rows[key]}), flush=True)
    rows["style_input"] = [1, 3, args.phone_size, args.phone_size]
    return rows


def _psnr(a, b) -> float:
    """Peak signal-to-noise ratio of `a` against `b` for images in [0, 1], dB."""
    import numpy as np

    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def markdown(r: dict) -> str:
    """Host latency tables and, when measured, the phone's instruction counts."""
    s, p = r["style"], r["poem_step"]
    size = r["size"]
    lines = [
        "# Apps: style transfer and Tang poem step",
        "",
        f"{r['host']}, {r['threads']} thread(s), median of {r['repeat']} runs, load average "
        f"{r['loadavg_before']} → {r['loadavg_after']}.",
        "",
        f"## Style transfer, host, 1x3x{size}x{size} ({s['ours']['gmac']} GMAC; "
        f"k-means 0.5: {s['ours_kmeans']['gmac']} GMAC)",
        "",
        "| runtime | median ms | vs PyTorch eager |",
        "|---|---:|---:|",
    ]
    names = {"ours": "MobileDL (ours)", "ours_kmeans": "MobileDL + kmeans:0.5",
             "ours_zero_copy": "MobileDL, zero-copy stepper (state in preset buffers)",
             "torch": "PyTorch eager", "onnxruntime": "ONNX Runtime"}
    for key in STYLE_RUNTIMES:
        ms = s[key]["ms"]
        lines.append(f"| {names[key]} | {ms:.1f} | {s['torch']['ms'] / ms:.2f}x |")
    lines += ["", "## Poem: one character (LSTM step), host", "",
              "| runtime | median ms per character |", "|---|---:|"]
    for key in POEM_RUNTIMES:
        lines.append(f"| {names[key]} | {p[key]['ms']:.4f} |")
    if "phone" in r:
        lines += phone_table(r["phone"])
    return "\n".join(lines) + "\n"


def phone_table(ph: dict) -> list[str]:
    """Instructions per inference of the style net (plain, k-means) and the poem step."""
    ps = ph["style_input"][2]
    ratio = ph["style_kmeans"]["instructions"] / ph["style"]["instructions"]
    return ["", "## Emulated arm64 phone: instructions per inference (QEMU plugin)", "",
            "| network | instructions | GMAC | PSNR vs PyTorch (dB) |", "|---|---:|---:|---:|",
            f"| style {ps}x{ps} | {ph['style']['instructions']:,} | {ph['style']['gmac']} "
            f"| {ph['style']['psnr_vs_torch_db']} |",
            f"| style {ps}x{ps} + kmeans:0.5 | {ph['style_kmeans']['instructions']:,} "
            f"| {ph['style_kmeans']['gmac']} | {ph['style_kmeans']['psnr_vs_torch_db']} |",
            f"| poem step | {ph['poem_step']['instructions']:,} | {ph['poem_step']['gmac']} "
            "| — |",
            "",
            f"k-means 0.5 retires {ratio:.2f}x the instructions of the uncompressed network."]


def plot(r: dict):
    """Host latency bars of both apps.

    Returns
    -------
    matplotlib.figure.Figure
    """
    plt = common.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    names = ["ours", "kmeans", "torch", "ORT"]
    axes[0].bar(names, [r["style"][k]["ms"] for k in STYLE_RUNTIMES],
                color=["C0", "C0", "C1", "C2"])
    axes[0].set_title(f"style transfer {r['size']}x{r['size']} (ms)")
    axes[1].bar(["ours", "zero-copy", "torch", "ORT"],
                [r["poem_step"][k]["ms"] for k in POEM_RUNTIMES], color=["C0", "C0", "C1", "C2"])
    axes[1].set_title("poem: ms per character")
    fig.tight_layout()
    return fig


def main(argv=None) -> int:
    """Command-line entry point (see the module docstring); returns the exit status."""
    parser = common.parser(__doc__, "python bench/apps_bench.py", repeat=30, warmup=3,
                           threads=2)
    parser.add_argument("--size", type=int, default=512, help="style input side on the host")
    parser.add_argument("--phone-size", type=int, default=256, help="style input side, phone")
    parser.add_argument("--phone-runs", type=int, default=1, help="N of count_instructions")
    parser.add_argument("--skip-phone", action="store_true")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # worker: "app:runtime"
    args = common.parse_args(parser, argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    if common.measure_mode(args, measure):
        return 0
    result = {"host": common.cpu_model(), "threads": args.threads, "repeat": args.repeat,
              "size": args.size, "command": args.command, "loadavg_before": common.loadavg()}
    for what, names in (("style", STYLE_RUNTIMES), ("poem", POEM_RUNTIMES)):
        key = "style" if what == "style" else "poem_step"
        result[key] = {}
        for runtime in names:
            result[key][runtime] = _worker(what, runtime, args)
            print(f"[apps_bench] {what} {runtime}: {json.dumps(result[key][runtime])}", flush=True)
    result["loadavg_after"] = common.loadavg()
    if not args.skip_phone:
        result["phone"] = phone_counts(args)
    common.write_results("apps", result, markdown(result), plot(result), out=args.out, dpi=90)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
