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


def peak_rss_mib() -> float:
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


def adaptive_median_ms(fn, repeat: int, warmup: int, min_time: float) -> tuple[float, int]:
    """Median ms of at least `repeat` runs and about `min_time` seconds of runs (so a
    0.02 ms model is not judged on 0.6 ms of samples; at most 20,000), after `warmup` runs
    (at least one), which size the run count.

    Returns
    -------
    tuple of (float, int)
        The median in milliseconds and the number of timed runs.
    """
    from mdl_tvm.core.numerics import median_ms, time_calls

    warm = time_calls(fn, max(warmup, 1), warmup=0)
    each = sum(warm) / 1e3 / len(warm)
    runs = max(repeat, min(20000, int(min_time / max(each, 1e-7))))
    return median_ms(fn, runs, warmup=0), runs


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
        base = peak_rss_mib()
        from bench.runtimes import torch_outputs

        module = torch.load(path, weights_only=False).eval()
        tensors = [torch.from_numpy(a) for a in inputs]
        return base, lambda: torch_outputs(module, tensors)
    if engine == "onnxruntime":
        import onnxruntime  # noqa: F401 - in the baseline

        base = peak_rss_mib()
        from bench.runtimes import ort_session

        session = ort_session(path, threads)
        feed = dict(zip(spec["input_names"], inputs, strict=True))
        return base, lambda: session.run(None, feed)
    if engine == "ncnn":
        import ncnn

        base = peak_rss_mib()
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

    base = peak_rss_mib()
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
    from mdl_tvm.core.numerics import relative_error  # after the baseline reading

    out = np.asarray(run()[0], np.float64).reshape(-1)
    ref = np.asarray(next(iter(np.load(spec["reference"]).values())), np.float64).reshape(-1)
    start = time.perf_counter()
    ms, runs = adaptive_median_ms(run, spec["repeat"], spec["warmup"],
                                  spec.get("min_time", 0.0))
    return {"ms": ms, "runs": runs, "warmup": spec["warmup"],
            "rss_base_mib": round(base, 1), "rss_peak_mib": round(peak_rss_mib(), 1),
            "rel_err_vs_torch": relative_error(out, ref),
            "timed_s": round(time.perf_counter() - start, 2)}


def main(argv=None) -> int:
    """Command-line entry point (see the module docstring); returns the exit status."""
    spec = json.loads((argv or sys.argv[1:])[0])
    os.environ["TVM_NUM_THREADS"] = str(spec["threads"])
    print(json.dumps(measure(spec)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
