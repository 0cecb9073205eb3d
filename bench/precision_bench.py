"""fp32 vs fp16 vs fp16-storage on the emulated arm64 phone: instructions per inference,
library and weight sizes, and top-1 agreement with fp32.

    python bench/precision_bench.py                      # lenet5 alexnet resnet18 mobilenetv2
    python bench/precision_bench.py --models lenet5 --phone-images 200 --host-images 2000
    python bench/precision_bench.py --models lenet5 --runs 1 --no-agreement --out /tmp/p

Builds, per model (batch 1):

* ``fp32``          on ``arm64`` (ARMv8.0-A) and on ``arm64-fp16`` (the fp16 build's peer);
* ``fp16``          on ``arm64-fp16`` (+fullfp16, fp16 accumulation, last layer fp32);
* ``fp16-storage``  on ``arm64`` (fp16 weights, fp32 arithmetic).

Instructions retired per inference are counted by `deploy.emulator.count_instructions`
(QEMU TCG plugin, deterministic; ``--runs`` inferences for the 28x28 models, ``--runs-big``
for the 224x224 ones, whose counting runs take minutes). Each build's output on one input,
run on the phone, is compared with the fp32 phone output (relative error: max |diff| /
max |fp32|). Each build is made, counted and run by `bench.phone_build.build_on_phone`.

Top-1 agreement with fp32 (trained LeNet-5 and AlexNet-style, Fashion-MNIST test set):

* on the phone: the first ``--phone-images`` test images as one batch, each precision's
  native build (fp32 arm64, fp16 arm64-fp16, fp16-storage arm64) under QEMU;
* on the host, the whole test set: fp32 and fp16-storage natively, fp16 with
  ``PrecisionConfig(emulate=True)`` (x86 has no fp16 arithmetic; LLVM rounds every fp16
  operation). The phone subset checks that emulation: agreement of the host-emulated and
  the phone fp16 predictions, and their largest logit difference.

Writes ``bench/results/precision.json``, ``precision.md`` and ``precision.png`` (``--out``:
another directory).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

if not __package__:  # run as `python bench/precision_bench.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common  # noqa: E402
from bench.phone_build import build_on_phone  # noqa: E402
from mdl_tvm.core.numerics import relative_error  # noqa: E402

DEFAULT_MODELS = ("lenet5", "alexnet", "resnet18", "mobilenetv2")
TRAINED = ("lenet5", "alexnet")
# (label, target profile, precision)
BUILDS = (
    ("fp32", "arm64", "fp32"),
    ("fp32 (arm64-fp16)", "arm64-fp16", "fp32"),
    ("fp16", "arm64-fp16", "fp16"),
    ("fp16-storage", "arm64", "fp16-storage"),
)


def _model(name):
    from mdl_tvm import train, zoo

    if name in TRAINED:
        return train.trained_model(name)
    return zoo.build(name)


def bench_builds(name, net, args, workdir: Path) -> list[dict]:
    """Sizes, instructions per inference and output error of each build (batch 1)."""
    from mdl_tvm import zoo

    shape = zoo.INPUT_SHAPES[name]
    x = np.random.default_rng(0).standard_normal(shape).astype("float32")
    runs = args.runs if shape[-1] <= 32 else args.runs_big
    rows, fp32 = [], None
    for label, target, precision in BUILDS:
        b = build_on_phone(net, target, [x], workdir, f"{name}-{label.replace(' ', '_')}",
                                  runs=runs, run=True, reference=fp32, precision=precision)
        fp32 = b.output if fp32 is None else fp32  # BUILDS[0] is the fp32 reference
        phone_s = b.run_s + b.count_s
        rows.append({"model": name, "build": label, "target": target, "precision": precision,
                     "instructions": b.instructions, "runs": runs,
                     "library_bytes": b.library_bytes,
                     "weight_bytes": b.model.stats.weight_bytes,
                     "compile_s": round(b.compile_s, 1), "phone_s": round(phone_s, 1),
                     "rel_error_vs_fp32": b.rel_error or 0.0})
        print(f"{name:12s} {label:18s} {b.instructions:>14,} insns  lib {b.library_bytes:>11,} B"
              f"  weights {b.model.stats.weight_bytes:>11,} B  ({phone_s:.0f} s)", flush=True)
    return rows


def _host_logits(model, images, batch):
    """Logits of a host model over `images`, `batch` at a time."""
    out = []
    for i in range(0, len(images), batch):
        out.append(model.run(images[i:i + batch])[0])
    return np.concatenate(out)


def bench_agreement(name, net, args, workdir: Path) -> dict:
    """Top-1 agreement of fp16 / fp16-storage with fp32 on Fashion-MNIST test images."""
    import mdl_tvm
    from mdl_tvm import data
    from mdl_tvm.compiler.precision import PrecisionConfig

    images, labels = data.load_fashion_mnist("test", limit=args.host_images)
    n = args.phone_images
    sub = images[:n]
    phone = {}
    for label, target, precision in (BUILDS[0], BUILDS[2], BUILDS[3]):
        b = build_on_phone(net, target, [sub], workdir, f"{name}-batch-{precision}",
                                  run=True, timeout=7200, precision=precision)
        phone[label] = b.output
        print(f"{name:12s} phone {label:13s} {n} images in {b.run_s:.0f} s", flush=True)
    batch = args.host_batch
    host = {}
    for label, precision in (("fp32", "fp32"), ("fp16", PrecisionConfig("fp16", emulate=True)),
                             ("fp16-storage", "fp16-storage")):
        model = mdl_tvm.compile(net, "host", input_shapes=[(batch, *images.shape[1:])],
                                precision=precision)
        host[label] = _host_logits(model, images, batch)
    top1 = {k: v.argmax(1) for k, v in host.items()}
    ptop1 = {k: v.argmax(1) for k, v in phone.items()}
    result = {"model": name, "phone_images": n, "host_images": len(images)}
    for label in ("fp16", "fp16-storage"):
        result[label] = {
            "phone_agreement": float(np.mean(ptop1[label] == ptop1["fp32"])),
            "phone_rel_error": relative_error(phone[label], phone["fp32"]),
            "host_agreement": float(np.mean(top1[label] == top1["fp32"])),
            "host_accuracy": float(np.mean(top1[label] == labels)),
            "host_vs_phone_agreement": float(np.mean(top1[label][:n] == ptop1[label])),
            "host_vs_phone_max_diff": float(np.abs(host[label][:n] - phone[label]).max()),
        }
    result["fp32_host_accuracy"] = float(np.mean(top1["fp32"] == labels))
    result["fp32_host_vs_phone_max_diff"] = float(np.abs(host["fp32"][:n] - phone["fp32"]).max())
    print(f"{name:12s} agreement {json.dumps(result)}", flush=True)
    return result


def _by(rows, model, build):
    """The row of `build` of `model`."""
    return next(r for r in rows if r["model"] == model and r["build"] == build)


def markdown(rows, agreement, meta) -> str:
    """Tables of the builds (instructions, sizes, error) and of top-1 agreement."""
    lines = [f"Precision on the emulated arm64 phone ({meta['date']}, `{meta['command']}`, "
             f"{meta['wall_s']} s). Instructions retired per inference (QEMU plugin); ratios "
             "against the fp32 build on the same profile; error = max |out - fp32| / "
             "max |fp32| on one input.", "",
             "| model | build | target | instructions | vs fp32 | library bytes | "
             "weight bytes | weights vs fp32 | rel. error |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        peer = _by(rows, r["model"], "fp32 (arm64-fp16)" if r["target"] == "arm64-fp16"
                   else "fp32")
        lines.append(
            f"| {r['model']} | {r['build']} | {r['target']} | {r['instructions']:,} | "
            f"{r['instructions'] / peer['instructions']:.3f}x | {r['library_bytes']:,} | "
            f"{r['weight_bytes']:,} | {r['weight_bytes'] / peer['weight_bytes']:.3f}x | "
            f"{r['rel_error_vs_fp32']:.1e} |")
    if agreement:
        lines += ["", "Top-1 agreement with fp32 on Fashion-MNIST test images (trained models). "
                  "Phone: each precision's arm64 build under QEMU, one batch. Host: the whole "
                  "test set, fp16 emulated on x86 (`emulate=True`); the last two columns check "
                  "that emulation against the phone on the phone's images.", "",
                  "| model | precision | phone images | phone agreement | phone rel. error | "
                  "host images | host agreement | host top-1 (fp32) | host = phone top-1 | "
                  "host - phone max |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for a in agreement:
            for label in ("fp16", "fp16-storage"):
                r = a[label]
                lines.append(
                    f"| {a['model']} | {label} | {a['phone_images']:,} | "
                    f"{r['phone_agreement']:.2%} | {r['phone_rel_error']:.1e} | "
                    f"{a['host_images']:,} | {r['host_agreement']:.2%} | "
                    f"{r['host_accuracy']:.2%} ({a['fp32_host_accuracy']:.2%}) | "
                    f"{r['host_vs_phone_agreement']:.2%} | {r['host_vs_phone_max_diff']:.1e} |")
    return "\n".join(lines) + "\n"


def plot(rows):
    """Instructions and weight bytes of fp16 and fp16-storage against fp32, per model
    (None without matplotlib)."""
    if (plt := common.pyplot()) is None:
        return None
    models = list(dict.fromkeys(r["model"] for r in rows))
    builds = ("fp16", "fp16-storage")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.38
    for i, build in enumerate(builds):
        ins, wts = [], []
        for m in models:
            r = _by(rows, m, build)
            peer = _by(rows, m, "fp32 (arm64-fp16)" if r["target"] == "arm64-fp16" else "fp32")
            ins.append(r["instructions"] / peer["instructions"])
            wts.append(r["weight_bytes"] / peer["weight_bytes"])
        xs = np.arange(len(models)) + (i - 0.5) * width
        axes[0].bar(xs, ins, width, label=build)
        axes[1].bar(xs, wts, width, label=build)
    for ax, title in zip(axes, ("instructions per inference vs fp32",
                                "weight bytes vs fp32"), strict=True):
        ax.set_xticks(np.arange(len(models)), models)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
        ax.legend()
    axes[0].axhline(0.6, color="r", ls="--", lw=0.8)
    axes[0].axhline(0.5, color="r", ls=":", lw=0.8)
    fig.tight_layout()
    return fig


def main(argv=None) -> int:
    """Command-line entry point (see the module docstring); returns the exit status."""
    parser = common.parser(__doc__, "python bench/precision_bench.py", models=DEFAULT_MODELS,
                           runs=10)
    parser.add_argument("--runs-big", type=int, default=1, help="counted runs, 224x224")
    parser.add_argument("--phone-images", type=int, default=1000)
    parser.add_argument("--host-images", type=int, default=None,
                        help="test images for the host agreement (default: all 10,000)")
    parser.add_argument("--host-batch", type=int, default=500)
    parser.add_argument("--no-agreement", action="store_true")
    args = common.parse_args(parser, argv)
    import torch

    torch.set_num_threads(1)
    start = time.perf_counter()
    rows, agreement = [], []
    with tempfile.TemporaryDirectory(prefix="mdl_precision_") as tmp:
        for name in args.models:
            net = _model(name)
            rows += bench_builds(name, net, args, Path(tmp))
            if name in TRAINED and not args.no_agreement:
                agreement.append(bench_agreement(name, net, args, Path(tmp)))
    meta = common.run_meta(args, start, bars={
        "schedules issue": "fp16 <= 0.6x fp32 instructions",
        "precision issue": "fp16 <= 0.5x fp32 instructions; storage halves weight bytes; "
                           "top-1 agreement >= 99.5 %"})
    common.write_results("precision", {"meta": meta, "builds": rows, "agreement": agreement},
                         markdown(rows, agreement, meta), plot(rows), out=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
