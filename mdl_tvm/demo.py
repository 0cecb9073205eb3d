"""`mdl-tvm demo`: the embedded default job, end to end with no arguments.

1. Train LeNet-5 briefly on Fashion-MNIST (or load the weights trained before, cached).
2. Compile it for this machine and for arm64 with the MobileDL pipeline.
3. Run the host build on the 10,000 test images: accuracy and latency, next to PyTorch.
4. Export the arm64 library; when the emulated phone is available, run it there, compare
   with the host outputs and count the ARM instructions per inference.
5. Print one table.
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
from mdl_tvm.train import TrainConfig, evaluate, trained_model

MODEL = "lenet5"


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


def _phone_rows(arm_path, sample, host_out, log):
    """Run the arm64 library on the emulated phone; returns table cells or a reason."""
    return demo_phone.run(arm_path, sample, host_out, log)


def run_demo(phone: bool = True, epochs: int = 2, log=print) -> int:
    """Run the demo and print its table; returns a process exit code."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    log(f"[1/4] LeNet-5 on Fashion-MNIST ({epochs} epochs, cached in {cache_root('weights')})")
    model = trained_model(MODEL, TrainConfig(epochs=epochs), log=lambda m: log("      " + m))
    x_test, y_test = load_fashion_mnist("test")
    shape = zoo.INPUT_SHAPES[MODEL]

    log("[2/4] compile for host and arm64")
    host = compile_model(model, "host", input_shapes=[shape])
    arm = compile_model(model, "arm64", input_shapes=[shape])

    log("[3/4] evaluate on the 10,000 test images")
    acc_torch = evaluate(model, x_test, y_test)
    acc_tvm = _tvm_accuracy(host, x_test, y_test)
    sample = x_test[:1]
    host_out = host.run(sample)[0]
    lat_tvm = host.benchmark(sample, repeat=100)["median_ms"]
    lat_torch = _torch_latency_ms(model, sample)

    log("[4/4] export for arm64")
    out_dir = tempfile.mkdtemp(prefix="mdl-tvm-demo-")
    arm_path = arm.export(os.path.join(out_dir, f"{MODEL}-arm64.so"))
    host_path = host.export(os.path.join(out_dir, f"{MODEL}-host.so"))

    rows = [
        ("PyTorch eager", "host", f"{acc_torch:.4f}", f"{lat_torch:.3f}", "-", "-"),
        ("MobileDL", "host", f"{acc_tvm:.4f}", f"{lat_tvm:.3f}",
         f"{os.path.getsize(host_path):,}", "-"),
    ]
    phone_note = "skipped (--no-phone)"
    if phone:
        cells, phone_note = _phone_rows(arm_path, sample, host_out, log)
        if cells:
            rows.append(cells)
    else:
        rows.append(("MobileDL", "arm64", "-", "-", f"{os.path.getsize(arm_path):,}", "-"))

    header = ("engine", "target", "top-1 acc", "latency ms", "library bytes", "ARM insns/inf")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    log("")
    log(f"LeNet-5, Fashion-MNIST test set, batch 1, weights {host.stats.weight_bytes:,} bytes, "
        f"{host.stats.macs:,} MACs")
    for row in [header, tuple("-" * w for w in widths)] + rows:
        log("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))
    log(f"phone: {phone_note}")
    log(f"artifacts in {out_dir}")
    agree = abs(acc_tvm - acc_torch) <= 1e-3
    return 0 if agree else 1
