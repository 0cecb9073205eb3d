"""The apps on the pipeline: style-transfer and poem-step latency on this machine against
PyTorch eager and ONNX Runtime, and aarch64 instructions on the emulated phone.

    flock /tmp/mdl_heavy.lock python bench/apps_bench.py
    python bench/apps_bench.py --size 256 --repeat 20 --threads 1 --phone-size 128

Host: every runtime in its own process, the same thread count (``TVM_NUM_THREADS``,
``torch.set_num_threads``, ONNX Runtime's ``intra_op_num_threads``), warm-up runs, then the
median of ``--repeat`` runs. Style transfer runs the shipped network on a real photo
(``apps/style_transfer/examples/chelsea.png``) resized to ``--size`` x ``--size``; "ours
compressed" is ``compress="kmeans:0.5"``. The poem step is one character: token, h, c in
-> logits, h', c' out, numpy in and out for every runtime.

Phone: instructions per inference from `deploy.emulator.count_instructions` (QEMU TCG
plugin, deterministic) for the arm64 builds, style transfer at ``--phone-size``.

Writes ``bench/results/apps.json``, ``apps.md`` and ``apps.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PHOTO = ROOT / "apps" / "style_transfer" / "examples" / "chelsea.png"
STYLE_RUNTIMES = ("ours", "ours_kmeans", "torch", "onnxruntime")
POEM_RUNTIMES = ("ours", "ours_zero_copy", "torch", "onnxruntime")


def _median_ms(fn, repeat: int, warmup: int) -> float:
    import numpy as np

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def _style_input(size: int):
    from apps.style_transfer.data import read_image, resize
    from apps.style_transfer.stylize import to_tensor

    return to_tensor(resize(read_image(PHOTO), size, size))


def _poem_inputs():
    import numpy as np

    from apps.poem.model import LSTMStep, load_model

    net, vocab = load_model()
    step = LSTMStep(net).eval()
    h, c = step.zero_state()
    token = np.array([vocab.index("春")], np.int64)
    return step, (token, h, c)


def _onnx_session(module, inputs, names, threads):
    import onnxruntime as ort
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.onnx")
        torch.onnx.export(module, tuple(torch.from_numpy(a) for a in inputs), path,
                          dynamo=False, input_names=list(names))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def measure(what: str, runtime: str, args) -> dict:
    """Time one runtime on one app (in its own process)."""
    import numpy as np
    import torch

    import mdl_tvm

    torch.set_num_threads(args.threads)
    if what == "style":
        from apps.style_transfer.model import load_transformer

        module, inputs, names = load_transformer(), (_style_input(args.size),), ("x",)
    else:
        module, inputs, names = (*_poem_inputs(), ("token", "h", "c"))
    tensors = tuple(torch.from_numpy(a) for a in inputs)
    if runtime == "torch":
        def call():  # numpy in, numpy out, like the other runtimes
            with torch.no_grad():
                outs = module(*(torch.from_numpy(a) for a in inputs))
            return [o.numpy() for o in (outs if isinstance(outs, tuple) else (outs,))]

        return {"ms": _median_ms(call, args.repeat, args.warmup)}
    if runtime == "onnxruntime":
        session = _onnx_session(module, inputs, names, args.threads)
        feed = dict(zip(names, inputs, strict=True))
        return {"ms": _median_ms(lambda: session.run(None, feed), args.repeat, args.warmup)}
    compress = "kmeans:0.5" if runtime == "ours_kmeans" else None
    if runtime == "ours_zero_copy":  # the poem's stepper: h, c stay in preset buffers
        from apps.poem.stepper import ZeroCopyStepper

        compiled = mdl_tvm.compile(module, "host", example_inputs=tensors)
        stepper = ZeroCopyStepper(compiled.executor())
        stepper.start(*inputs[1:])
        token = int(inputs[0][0])
        return {"ms": _median_ms(lambda: stepper(token), args.repeat, args.warmup)}
    start = time.perf_counter()
    compiled = mdl_tvm.compile(module, "host", example_inputs=tensors, compress=compress)
    row = {"compile_s": round(time.perf_counter() - start, 2),
           "gmac": round(compiled.stats.macs / 1e9, 4)}
    with torch.no_grad():
        ref = module(*tensors)
    ref = (ref[0] if isinstance(ref, tuple) else ref).numpy()
    out = compiled.run(*inputs)[0]
    row["max_abs_diff_vs_torch"] = float(np.abs(out - ref).max())
    row["ms"] = _median_ms(lambda: compiled.run(*inputs), args.repeat, args.warmup)
    return row


def _worker(what: str, runtime: str, args) -> dict:
    cmd = [sys.executable, __file__, "--measure", f"{what}:{runtime}", "--size", str(args.size),
           "--repeat", str(args.repeat), "--warmup", str(args.warmup),
           "--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                         env={**os.environ, "TVM_NUM_THREADS": str(args.threads)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def phone_counts(args) -> dict:
    """aarch64 instructions per inference for the style net (plain, k-means) and poem step."""
    import torch

    import mdl_tvm
    from apps.style_transfer.model import load_transformer
    from deploy.emulator import count_instructions, run_on_emulator

    rows = {}
    x = _style_input(args.phone_size)
    net = load_transformer()
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    step, poem_inputs = _poem_inputs()
    jobs = [("style", None, net, (x,)), ("style", "kmeans:0.5", net, (x,)),
            ("poem_step", None, step, poem_inputs)]
    with tempfile.TemporaryDirectory() as tmp:
        for name, compress, module, inputs in jobs:
            compiled = mdl_tvm.compile(module, "arm64", compress=compress,
                                       example_inputs=tuple(torch.from_numpy(a) for a in inputs))
            so = compiled.export(os.path.join(tmp, f"{name}-{compress or 'plain'}.so"))
            key = f"{name}{'_kmeans' if compress else ''}"
            start = time.perf_counter()
            insns = count_instructions(so, list(inputs), runs=args.phone_runs)
            rows[key] = {"instructions": insns, "gmac": round(compiled.stats.macs / 1e9, 4),
                         "weight_bytes": compiled.stats.weight_bytes,
                         "count_seconds": round(time.perf_counter() - start, 1)}
            if name == "style":
                out = run_on_emulator(so, [x])[0]
                rows[key]["psnr_vs_torch_db"] = round(_psnr(out, ref), 2)
            print(json.dumps({key: rows[key]}), flush=True)
    rows["style_input"] = [1, 3, args.phone_size, args.phone_size]
    return rows


def _psnr(a, b) -> float:
    import numpy as np

    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def _markdown(r: dict) -> str:
    s, p, ph = r["style"], r["poem_step"], r["phone"]
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
    ps = ph["style_input"][2]
    ratio = ph["style_kmeans"]["instructions"] / ph["style"]["instructions"]
    lines += ["", "## Emulated arm64 phone: instructions per inference (QEMU plugin)", "",
              "| network | instructions | GMAC | PSNR vs PyTorch (dB) |", "|---|---:|---:|---:|",
              f"| style {ps}x{ps} | {ph['style']['instructions']:,} | {ph['style']['gmac']} "
              f"| {ph['style']['psnr_vs_torch_db']} |",
              f"| style {ps}x{ps} + kmeans:0.5 | {ph['style_kmeans']['instructions']:,} "
              f"| {ph['style_kmeans']['gmac']} | {ph['style_kmeans']['psnr_vs_torch_db']} |",
              f"| poem step | {ph['poem_step']['instructions']:,} | {ph['poem_step']['gmac']} "
              "| — |",
              "",
              f"k-means 0.5 retires {ratio:.2f}x the instructions of the uncompressed network."]
    return "\n".join(lines) + "\n"


def _plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    names = ["ours", "kmeans", "torch", "ORT"]
    axes[0].bar(names, [r["style"][k]["ms"] for k in STYLE_RUNTIMES],
                color=["C0", "C0", "C1", "C2"])
    axes[0].set_title(f"style transfer {r['size']}x{r['size']} (ms)")
    axes[1].bar(["ours", "zero-copy", "torch", "ORT"],
                [r["poem_step"][k]["ms"] for k in POEM_RUNTIMES], color=["C0", "C0", "C1", "C2"])
    axes[1].set_title("poem: ms per character")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="style input side on the host")
    parser.add_argument("--phone-size", type=int, default=256, help="style input side, phone")
    parser.add_argument("--phone-runs", type=int, default=1, help="N of count_instructions")
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-phone", action="store_true")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # worker: "app:runtime"
    args = parser.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    sys.path.insert(0, str(ROOT))
    if args.measure:
        what, runtime = args.measure.split(":")
        print(json.dumps(measure(what, runtime, args)))
        return 0
    from schedules_bench import _cpu_info, _loadavg

    info = _cpu_info()
    result = {"host": info.get("model", info["machine"]), "threads": args.threads,
              "repeat": args.repeat, "size": args.size, "loadavg_before": _loadavg()}
    for what, runtimes in (("style", STYLE_RUNTIMES), ("poem", POEM_RUNTIMES)):
        key = "style" if what == "style" else "poem_step"
        result[key] = {}
        for runtime in runtimes:
            result[key][runtime] = _worker(what, runtime, args)
            print(f"[apps_bench] {what} {runtime}: {json.dumps(result[key][runtime])}", flush=True)
    result["loadavg_after"] = _loadavg()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.skip_phone:
        result["phone"] = phone_counts(args)
        (out / "apps.md").write_text(_markdown(result))
        print(_markdown(result))
    (out / "apps.json").write_text(json.dumps(result, indent=2) + "\n")
    _plot(result, out / "apps.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
