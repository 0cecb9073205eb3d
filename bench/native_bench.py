"""The native runner against the Python runner and the peers: phone figures, bundles, host memory.

    flock /tmp/mdl_heavy.lock python bench/native_bench.py      # lenet5 mobilenetv2 resnet18
    python bench/native_bench.py --models lenet5 --runs 2

Phone (QEMU ``-cpu cortex-a76``, one thread, batch 1, seeded inputs, zoo weights seeded
with ``torch.manual_seed(0)``): each model is compiled for ``cortex-a76`` (fp32) and run by
the native runner (``mdl_run``, ``main_zc`` on preset buffers) and by the Python runner
(``device_runner.py --mode zero-copy``, the same ``main_zc``): outputs compared bit for bit,
instructions per inference (N / 2N method) and start-up instructions (``count(N) - N`` x
per inference, from the same counts), and the guest process's peak memory (QEMU's
``VmHWM`` at exit, `deploy.guest_memory`, minus the same reading for ``/usr/bin/true``).
NCNN and ONNX Runtime (their aarch64 wheels through their Python API, `deploy.peers`) are
measured the same way. Bundles: ``mdl-tvm deploy-bundle`` of LeNet-5 and MobileNetV2
against the peers' runtime libraries. Host: peak memory of "load an exported LeNet-5 and
run it 10 times" in a fresh process. Writes ``bench/results/native.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

if not __package__:  # run as `python bench/native_bench.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common  # noqa: E402
from bench.models import LABELS  # noqa: E402
from bench.phone_build import build_on_phone  # noqa: E402

CPU = "cortex-a76"
BUNDLED = ("lenet5", "mobilenetv2")
PEERS = ("ncnn", "ort")
NAMES = {"native": "MobileDL, native runner", "python": "MobileDL, Python runner",
         "ncnn": "NCNN (Python API)", "ort": "ONNX Runtime (Python API)"}
PEER_LIBS = {"NCNN: ncnn extension (ncnn linked in)": "ncnn/ncnn*.so",
             "ONNX Runtime: libonnxruntime.so (full build)": "onnxruntime/capi/libonnxruntime.so*",
             "TFLite / LiteRT: libLiteRtRuntimeCApi.so": "ai_edge_litert/libLiteRtRuntimeCApi.so"}
PUBLISHED = {"NCNN": "< 1 MB", "TFLite, selective build": "~0.4 MB",
             "ONNX Runtime, minimal build": "~1.3 MB"}  # as issue #19 quotes them


def _mib(kib: int) -> float:
    return round(kib / 1024, 1)


def mobiledl_rows(lib: str, ref, runs: int, env) -> dict:
    """Native and Python runner rows of one library; the native row says whether its
    outputs equal the Python runner's bit for bit."""
    from deploy.emulator import count_instructions, recording, run_on_emulator, start_up
    from deploy.guest_memory import guest_peak_rss
    from mdl_tvm.core.numerics import relative_error

    rows, outputs = {}, {}
    for runner, mode in (("native", None), ("python", "zero-copy")):
        inputs = list(ref.inputs)
        outputs[runner] = run_on_emulator(lib, inputs, runner=runner, mode=mode, cpu=CPU, env=env)
        with recording() as counts:
            n = count_instructions(lib, inputs, runs=runs, runner=runner, mode=mode, cpu=CPU,
                                   env=env)
        memory = guest_peak_rss(lib, inputs, runner=runner, mode=mode, cpu=CPU, env=env)
        rows[runner] = {"instructions": n, "start_up": start_up(counts, n), "counts": counts,
                        "guest_mib": _mib(memory["guest_kib"]), "qemu_kib": memory["qemu_kib"],
                        "baseline_kib": memory["baseline_kib"],
                        "rel_error": relative_error(outputs[runner][0], ref.reference[0])}
        print(f"[native] {runner}: {json.dumps(rows[runner])}", flush=True)
    rows["native"]["identical_to_python"] = all(
        np.array_equal(a, b) for a, b in zip(outputs["native"], outputs["python"], strict=True))
    return rows


def peer_row(engine: str, ref, work: Path, runs: int, env) -> dict:
    """One peer engine's row: the same figures through its Python API on the phone."""
    from deploy.emulator import counting_workdir, recording, start_up
    from deploy.guest_memory import peak_rss_kib, qemu_baseline_kib
    from deploy.peers.convert import prepare_peer
    from deploy.peers.count import RUNNER, count_peer, run_peer
    from mdl_tvm.core.numerics import relative_error

    peer = prepare_peer(engine, ref.onnx, work / engine, env, [a.shape for a in ref.inputs])
    out = run_peer(peer, ref.inputs, CPU, env)[0]
    with recording() as counts:
        n = count_peer(peer, ref.inputs, CPU, runs=runs, env=env)
    spec = work / engine / "spec.json"
    spec.write_text(json.dumps(peer.spec))
    files = {"peer_runner.py": RUNNER, "spec.json": spec,
             **{Path(f).name: Path(f) for f in peer.files}}
    with counting_workdir(env, files, ref.inputs) as (wd, names):
        argv = ["peer_runner.py", "spec.json", "--inputs", *names, "--outputs-dir", "out",
                "--repeat", f"{1:09d}"]
        qemu = peak_rss_kib(env, wd, argv, CPU, pythonpath=[env.peers])
    base = qemu_baseline_kib(env, CPU)
    row = {"instructions": n, "start_up": start_up(counts, n), "counts": counts,
           "guest_mib": _mib(qemu - base), "qemu_kib": qemu, "baseline_kib": base,
           "rel_error": relative_error(np.asarray(out).reshape(ref.reference[0].shape),
                                       ref.reference[0]),
           "model_bytes": peer.weight_bytes}
    print(f"[native] {engine}: {json.dumps(row)}", flush=True)
    return row


def phone_python(env) -> dict:
    """The phone's ``python3 -c "import numpy"``: start-up instructions and guest peak memory
    (what the Python runner and the peers' Python APIs carry before any engine)."""
    from deploy.emulator import count_guest, counting_workdir
    from deploy.guest_memory import peak_rss_kib, qemu_baseline_kib

    argv = ["-c", "import numpy"]
    with counting_workdir(env, {}, []) as (work, _):
        instructions = int(count_guest(env, work, argv, 900.0, CPU).read_text())
        qemu = peak_rss_kib(env, work, argv, CPU)
    return {"start_up": instructions, "guest_mib": _mib(qemu - qemu_baseline_kib(env, CPU))}


def phone_model(name: str, work: Path, runs: int, env) -> tuple[dict, str]:
    """All rows of zoo model `name` and the path of its cortex-a76 library."""
    import torch

    from deploy.engines import resolve

    torch.manual_seed(0)
    ref = resolve(name, work / name)
    build = build_on_phone(ref.module, CPU, ref.inputs, work, f"{name}-a76",
                                  log=work / "compile.log")
    rows = mobiledl_rows(build.library, ref, runs, env)
    for key in ("native", "python"):
        rows[key]["model_bytes"] = build.library_bytes
    for engine in PEERS:
        try:
            rows[engine] = peer_row(engine, ref, work / name, runs, env)
        except Exception as err:  # noqa: BLE001 - reported in the row
            rows[engine] = {"error": common.error_text(err)}
    return rows, build.library


def bundles(libraries: dict, work: Path, env) -> dict:
    """``{model: {"files", "model_bytes", "runtime_bytes", "total_bytes"}}`` of the bundles."""
    from deploy.native.bundle import make_bundle

    out = {}
    for name, lib in libraries.items():
        b = make_bundle(lib, work / f"bundle-{name}", env=env)
        out[name] = {"files": b.files, "model_bytes": b.files[b.model],
                     "runtime_bytes": b.runtime_bytes, "total_bytes": b.total_bytes}
    return out


def peer_libraries(env) -> dict:
    """Bytes of the peers' aarch64 runtime libraries from their wheels, stripped."""
    from deploy.native.build import TOOLCHAINS, tool

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, pattern in PEER_LIBS.items():
            found = sorted(env.peers.glob(pattern))
            if not found:
                continue
            copy = Path(tmp) / found[0].name
            subprocess.run([tool(TOOLCHAINS["aarch64"].strip), "--strip-unneeded", "-o",
                            str(copy), str(found[0])], check=True, capture_output=True)
            out[label] = {"file": found[0].name, "bytes": found[0].stat().st_size,
                          "stripped_bytes": copy.stat().st_size}
    return out


def measure(kind: str, path: str, args) -> dict:
    """Worker: this fresh process's peak memory after loading `path` and 10 runs."""
    from bench.worker import peak_rss_mib

    x = np.random.default_rng(0).standard_normal((1, 1, 28, 28)).astype(np.float32)
    if kind == "mobiledl":
        import mdl_tvm

        ex = mdl_tvm.load(path).executor()
        for _ in range(10):
            ex(x)
    elif kind == "ort":
        from bench.runtimes import ort_session

        session = ort_session(path, 1)
        for _ in range(10):
            session.run(None, {session.get_inputs()[0].name: x})
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tvm", "torch"))
    return {"peak_mib": round(peak_rss_mib(), 1), "heavy_modules": heavy[:5]}


def host_memory(work: Path) -> dict:
    """Peak memory of loading and running an exported LeNet-5 on this machine, per path."""
    import torch

    import mdl_tvm
    from deploy.engines import resolve
    from deploy.native.build import ensure_build

    torch.manual_seed(0)
    ref = resolve("lenet5", work / "host")
    lib = mdl_tvm.compile(ref.module, "host", input_shapes=[(1, 1, 28, 28)]).export(
        str(work / "lenet5-host.so"))
    out = {kind: common.run_worker(__file__, "--measure", f"{kind}:{path}", cwd=common.ROOT)
           for kind, path in (("mobiledl", lib), ("ort", ref.onnx), ("numpy", "-"))}
    res = subprocess.run([str(ensure_build("host").runner), lib, "-n", "10", "--memory"],
                         capture_output=True, text=True, check=True)
    out["native"] = {"peak_mib": round(int(res.stdout.split("peak memory ")[1].split()[0])
                                       / 1024, 1)}
    return out


def markdown(data: dict) -> str:
    """The report: phone table, bundle table, host memory."""
    meta = data["meta"]
    lines = [f"# Native runner vs Python runner vs peers ({meta['date']})", "",
             f"Command: `{meta['command']}` ({meta['wall_s']} s, {meta['cpu']}). Phone: QEMU "
             f"`-cpu {CPU}`, 1 thread, batch 1; MobileDL fp32 built for `{CPU}`. Instructions "
             "per inference: (count(2N) - count(N)) / N, N = "
             f"{meta['runs']}; start-up: count(N) - N x per inference (loading the runtime, the "
             "model, Python and its imports where there are any). Guest peak memory: QEMU's "
             "VmHWM when the guest exits minus QEMU's own on `/usr/bin/true` "
             f"({meta['baseline_mib']} MiB); it includes QEMU's translated code, which grows "
             "with the code the guest runs.", "",
             "| model | engine | output | instructions / inference | start-up instructions "
             "| guest peak memory | model file |", "|---|---|---|---:|---:|---:|---:|"]
    py = data["phone_python"]
    lines.append(f"| – | the phone's `python3 -c \"import numpy\"` (no model) | – | – "
                 f"| {py['start_up']:,} | {py['guest_mib']} MiB | – |")
    for name, rows in data["phone"].items():
        for key, row in rows.items():
            if "error" in row:
                lines.append(f"| {LABELS[name]} | {NAMES[key]} | {row['error']} | | | | |")
                continue
            same = ("identical to Python" if row.get("identical_to_python") else
                    "DIFFERS" if key == "native" else f"rel. err. {row['rel_error']:.1e}")
            lines.append(f"| {LABELS[name]} | {NAMES[key]} | {same} | {row['instructions']:,} "
                         f"| {row['start_up']:,} | {row['guest_mib']} MiB "
                         f"| {row['model_bytes']:,} |")
    lines += ["", "## What an app ships (aarch64)", "",
              "`mdl-tvm deploy-bundle MODEL.so -o DIR`: the model library as exported, "
              "`mdl_run`, `libmdl_runtime.so` + `mdl_runtime.h`, stripped "
              "`libtvm_ffi.so` and `libtvm_runtime.so`. Bytes:", "",
              "| model | model library | runtime (runner, C API, TVM) | bundle |",
              "|---|---:|---:|---:|"]
    for name, b in data["bundles"].items():
        lines.append(f"| {LABELS[name]} | {b['model_bytes']:,} | {b['runtime_bytes']:,} "
                     f"| {b['total_bytes']:,} |")
    lines += ["", "Peers' aarch64 runtime libraries, from the wheels the phone runs (full "
              "builds), stripped with `aarch64-linux-gnu-strip --strip-unneeded`:", "",
              "| library | bytes | stripped |", "|---|---:|---:|"]
    lines += [f"| {k} | {v['bytes']:,} | {v['stripped_bytes']:,} |"
              for k, v in data["peer_libraries"].items()]
    lines += ["", "Minimal builds as issue #19 quotes them (not measured here): "
              + ", ".join(f"{k} {v}" for k, v in PUBLISHED.items()) + ".", "",
              "## Host: load an exported LeNet-5 and run it 10 times, fresh process", "",
              "| | peak memory (VmHWM) |", "|---|---:|"]
    labels = {"native": "MobileDL native runner (`mdl_run --memory`)",
              "mobiledl": "MobileDL `mdl_tvm.load(...).executor()` (Python)",
              "ort": "ONNX Runtime `InferenceSession` (Python)",
              "numpy": "Python + numpy alone"}
    lines += [f"| {labels[k]} | {v['peak_mib']} MiB |" for k, v in data["host"].items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    """Command-line entry point (see the module docstring); returns the exit status."""
    parser = common.parser(__doc__, "python bench/native_bench.py",
                           models=("lenet5", "mobilenetv2", "resnet18"), runs=2)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = common.parse_args(parser, argv)
    if common.measure_mode(args, measure):
        return 0
    from deploy.device import setup

    start = time.perf_counter()
    env = setup(peers=True)
    data: dict = {"phone": {}, "bundles": {}, "phone_python": phone_python(env)}
    libraries = {}
    with tempfile.TemporaryDirectory(prefix="mdl_native_") as tmp:
        work = Path(tmp)
        for name in args.models:
            data["phone"][name], lib = phone_model(name, work, args.runs, env)
            if name in BUNDLED:
                libraries[name] = lib
        data["bundles"] = bundles(libraries, work, env)
        data["peer_libraries"] = peer_libraries(env)
        data["host"] = host_memory(work)
        shutil.rmtree(work, ignore_errors=True)
    base = next(iter(next(iter(data["phone"].values())).values()))["baseline_kib"]
    data["meta"] = common.run_meta(args, start, runs=args.runs, baseline_mib=_mib(base))
    paths = common.write_results("native", data, markdown(data), out=args.out)
    print(f"[native] wrote {paths['md']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
