"""Time one engine on one prepared model, alone in this process, and report its memory.

    python -m bench.worker '{"engine": "onnxruntime", "artifact": ".../m.onnx", ...}'

The spec (JSON) names the engine, its artifact (made by `bench.engines.prepare`), the
inputs ``.npz``, the reference outputs ``.npz``, runs, warm-up runs and threads. The
process imports only what the engine needs, reads its peak RSS (``VmHWM``; the baseline: an idle
interpreter with those imports), loads the artifact, checks the first output against the
PyTorch reference, times ``warmup`` runs, then at least ``repeat`` runs and ``min_time``
seconds of runs, reads the peak RSS again and prints one JSON line: median ms, both RSS
figures in MiB and the relative error.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time


def _rss_mib() -> float:
    """Peak resident set of this process so far, MiB.

    ``VmHWM`` of /proc/self/status: the high-water mark of this process's own address space.
    ``getrusage(RUSAGE_SELF).ru_maxrss`` is not used where /proc exists because Linux carries
    it over ``fork`` + ``exec`` from the parent, so a worker started by a big benchmark
    process would report the parent's peak.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _median_ms(fn, repeat: int, warmup: int, min_time: float) -> tuple[float, int]:
    """Median of at least `repeat` runs and at least `min_time` seconds of runs (so a
    0.02 ms model is not judged on 0.6 ms of samples), after `warmup` runs."""
    from bench.schedules_bench import _median_ms as median

    start = time.perf_counter()
    for _ in range(max(warmup, 1)):
        fn()
    each = (time.perf_counter() - start) / max(warmup, 1)
    runs = max(repeat, min(20000, int(min_time / max(each, 1e-7))))
    return median(fn, runs, 0)[0], runs


def _load(engine: str, spec: dict, inputs: list):
    """Import the engine, return (baseline MiB, callable returning a list of numpy outputs)."""
    import numpy as np

    threads = spec["threads"]
    path = spec["artifact"]
    if engine == "torch":
        import torch

        for name in spec.get("preimport", []):
            __import__(name)
        torch.set_num_threads(threads)
        base = _rss_mib()
        module = torch.load(path, weights_only=False).eval()
        tensors = [torch.from_numpy(a) for a in inputs]

        def run():
            with torch.no_grad():
                outs = module(*tensors)
            return [o.numpy() for o in (outs if isinstance(outs, tuple) else (outs,))]

        return base, run
    if engine == "onnxruntime":
        import onnxruntime as ort

        base = _rss_mib()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        feed = dict(zip(spec["input_names"], inputs, strict=True))
        return base, lambda: session.run(None, feed)
    if engine == "ncnn":
        import ncnn

        base = _rss_mib()
        net = ncnn.Net()
        net.opt.num_threads = threads
        net.opt.use_fp16_storage = net.opt.use_fp16_packed = False
        net.opt.use_fp16_arithmetic = False
        if net.load_param(path + ".param") or net.load_model(path + ".bin"):
            raise ValueError(f"ncnn cannot load {path}.param/.bin")
        mats = [ncnn.Mat(a).clone() for a in inputs]
        in_names, out_names = net.input_names(), net.output_names()

        def run():
            with net.create_extractor() as ex:
                for name, mat in zip(in_names, mats, strict=True):
                    ex.input(name, mat)
                return [np.array(ex.extract(name)[1]) for name in out_names]

        return base, run
    import tvm  # noqa: F401 - every TVM variant: an exported host library; runtime in base

    import mdl_tvm

    base = _rss_mib()
    executor = mdl_tvm.load(path).executor()  # preset buffers: the library's fast path

    def run():  # numpy in (copied into the preset inputs), numpy out, like the others
        for buf, a in zip(executor.inputs, inputs, strict=True):
            buf[...] = a
        return executor.run()

    return base, run


def measure(spec: dict) -> dict:
    """Run `spec` (see the module docstring) and return the result row."""
    import numpy as np

    inputs = list(np.load(spec["inputs"]).values())
    base, run = _load(spec["engine"], spec, inputs)
    out = np.asarray(run()[0], np.float64).reshape(-1)
    ref = np.asarray(next(iter(np.load(spec["reference"]).values())), np.float64).reshape(-1)
    start = time.perf_counter()
    ms, runs = _median_ms(run, spec["repeat"], spec["warmup"], spec.get("min_time", 0.0))
    return {"ms": ms, "runs": runs, "warmup": spec["warmup"],
            "rss_base_mib": round(base, 1), "rss_peak_mib": round(_rss_mib(), 1),
            "rel_err_vs_torch": float(np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-12)),
            "timed_s": round(time.perf_counter() - start, 2)}


def main(argv=None) -> int:
    spec = json.loads((argv or sys.argv[1:])[0])
    os.environ["TVM_NUM_THREADS"] = str(spec["threads"])
    print(json.dumps(measure(spec)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
