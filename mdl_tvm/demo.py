"""`mdl-tvm demo`: the embedded default job, end to end with no arguments.

1. Train LeNet-5 briefly on Fashion-MNIST (or load the weights trained before, cached).
2. Compile it for this machine and for arm64 with the MobileDL pipeline.
3. Run the host build on the 10,000 test images: accuracy and latency, next to PyTorch.
4. Compress it (``mask:0.5``, least-squares recovery on 256 training images) and compile
   that for the host, for arm64 and, in fp16, for ARMv8.2-A (``arm64-fp16``).
5. Export the arm64 libraries; when the emulated phone is available, run them there, compare
   with the host outputs, classify test images with the fp16 one and count the ARM
   instructions per inference of each.
6. Print the run table and the headline: uncompressed fp32 against compressed with
   recovery, fp32 and fp16 -- top-1, weights, MACs, phone instructions, speed-up -- beside
   the seed's claim (~3x faster at ~1 % top-1 loss).
"""

from __future__ import annotations

import os
import tempfile

from deploy import demo_phone
from mdl_tvm import zoo
from mdl_tvm.compiler.compiled import compile as compile_model
from mdl_tvm.core.io import cache_root
from mdl_tvm.core.numerics import median_ms
from mdl_tvm.data import load_fashion_mnist
from mdl_tvm.train import RECIPES, TrainConfig, evaluate, trained_model

MODEL = "lenet5"
COMPRESS = "mask:0.5"
CALIBRATION = 256  # training images for the recovery
PHONE_IMAGES = 500  # test images the fp16 library classifies on the phone
SEED = "seed: ~3x faster at ~1 % top-1 loss"


def _tvm_accuracy(compiled, images, labels) -> float:
    correct = 0
    for image, label in zip(images, labels, strict=True):
        correct += int(compiled.run(image[None])[0].argmax() == label)
    return correct / len(images)


def _torch_latency_ms(model, x, repeat=50) -> float:
    import torch

    with torch.no_grad():
        tx = torch.from_numpy(x)
        return median_ms(lambda: model(tx), repeat=repeat, warmup=5)


def _table(header, rows, log) -> None:
    widths = [max(len(str(r[i])) for r in [*rows, header]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        log("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def headline(base: dict, comp: dict, half: dict, log) -> None:
    """Print the headline table: uncompressed fp32, compressed + recovery fp32 and fp16.

    Each argument holds ``top1`` (text), ``acc`` (float or None), ``weights``, ``macs``
    and ``insns`` (None without the phone)."""
    def speed(r):
        return f"{base['insns'] / r['insns']:.2f}x" if base["insns"] and r["insns"] else "-"

    rows = [(name, r["top1"], f"{r['weights']:,}", f"{r['macs']:,}",
             f"{r['insns']:,}" if r["insns"] else "-", speed(r))
            for name, r in (("uncompressed, fp32", base),
                            (f"{COMPRESS} + least squares, fp32", comp),
                            (f"{COMPRESS} + least squares, fp16", half))]
    log("")
    log(f"What MobileDL is for: {MODEL} on the phone, uncompressed vs compressed ({SEED})")
    _table(("build", "top-1", "weight bytes", "MACs", "ARM insns/inf", "speed-up"), rows, log)
    lost = (base["acc"] - comp["acc"]) * 100
    best = next((r for r in (half, comp) if r["insns"]), None)
    if best is not None:
        log(f"-> {speed(best)} fewer instructions at {lost:.1f} points of top-1 lost "
            f"(seed: ~3x at ~1 point)")
    else:
        log(f"-> {base['macs'] / comp['macs']:.2f}x fewer MACs at {lost:.1f} points of top-1 "
            "lost (instructions need the phone)")


def run_demo(phone: bool = True, epochs: int = 2, log=print) -> int:
    """Run the demo and print its tables; returns a process exit code."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    config = TrainConfig(epochs=epochs)
    where = ("the shipped weights" if config == RECIPES.get(MODEL)
             else f"trained now, cached in {cache_root('weights')}")
    log(f"[1/5] LeNet-5 on Fashion-MNIST ({epochs} epochs; {where})")
    model = trained_model(MODEL, config, log=lambda m: log("      " + m))
    x_test, y_test = load_fashion_mnist("test")
    calibration = load_fashion_mnist("train")[0][:CALIBRATION]
    shape = zoo.INPUT_SHAPES[MODEL]

    log("[2/5] compile for host and arm64")
    host = compile_model(model, "host", input_shapes=[shape])
    arm = compile_model(model, "arm64", input_shapes=[shape])
    log(f"[3/5] compress ({COMPRESS}, least-squares recovery on {len(calibration)} training "
        "images) and compile for host, arm64 and arm64-fp16")
    packed = {"input_shapes": [shape], "compress": COMPRESS, "calibration": calibration}
    host_c = compile_model(model, "host", **packed)
    arm_c = host_c.for_target("arm64")  # compressed once, compiled for each target
    arm_h = host_c.for_target("arm64-fp16", precision="fp16")

    out_dir = tempfile.mkdtemp(prefix="mdl-tvm-demo-")  # export before running: saving a VM
    # that has run makes TVM warn "Scope Saving" once per function
    paths = {name: lib.export(os.path.join(out_dir, f"{MODEL}-{name}.so")) for name, lib in
             (("arm64", arm), ("host", host), ("mask-arm64", arm_c), ("mask-arm64-fp16", arm_h))}

    log(f"[4/5] evaluate on the {len(y_test):,} test images")
    acc_torch = evaluate(model, x_test, y_test)
    acc_tvm = _tvm_accuracy(host, x_test, y_test)
    acc_comp = _tvm_accuracy(host_c, x_test, y_test)
    sample = x_test[:1]
    host_out = host.run(sample)[0]
    lat_tvm = host.benchmark(sample, repeat=100)["median_ms"]
    lat_torch = _torch_latency_ms(model, sample)

    log("[5/5] run on the emulated phone" if phone else "[5/5] the phone is skipped")
    rows = [
        ("PyTorch eager", "host", f"{acc_torch:.4f}", f"{lat_torch:.3f}", "-", "-"),
        ("MobileDL", "host", f"{acc_tvm:.4f}", f"{lat_tvm:.3f}",
         f"{os.path.getsize(paths['host']):,}", "-"),
    ]
    phone_note, result = "skipped (--no-phone)", None
    images, labels = x_test[:PHONE_IMAGES], y_test[:PHONE_IMAGES]
    if phone:
        result = demo_phone.run(paths["arm64"], sample, host_out, log,
                                count=(paths["mask-arm64"], paths["mask-arm64-fp16"]),
                                classify=(paths["mask-arm64-fp16"],), images=images,
                                labels=labels)
        phone_note = result.note
        if result.cells:
            rows.append(result.cells)
    if result is None or not result.cells:
        rows.append(("MobileDL", "arm64", "-", "-", f"{os.path.getsize(paths['arm64']):,}", "-"))

    log("")
    log(f"LeNet-5, Fashion-MNIST test set, batch 1, weights {host.stats.weight_bytes:,} bytes, "
        f"{host.stats.macs:,} MACs")
    _table(("engine", "target", "top-1 acc", "latency ms", "library bytes", "ARM insns/inf"),
           rows, log)
    log(f"phone: {phone_note}")

    insns = result.insns if result is not None else {}
    hits = (result.top1 if result is not None else {}).get(paths["mask-arm64-fp16"])
    if hits:
        same = _tvm_accuracy(host_c, images, labels)
        half_top1 = f"{hits[0] / hits[1]:.4f} ({hits[1]} imgs; fp32 {same:.4f})"
    else:
        half_top1 = "not run (no phone)"

    def row(lib, top1, acc, name):
        return {"top1": top1, "acc": acc, "weights": lib.stats.weight_bytes,
                "macs": lib.stats.macs, "insns": insns.get(paths[name])}

    headline(row(host, f"{acc_tvm:.4f}", acc_tvm, "arm64"),
             row(host_c, f"{acc_comp:.4f}", acc_comp, "mask-arm64"),
             row(arm_h, half_top1, None, "mask-arm64-fp16"), log)
    log(f"artifacts in {out_dir}")
    agree = abs(acc_tvm - acc_torch) <= 1e-3
    return 0 if agree else 1
