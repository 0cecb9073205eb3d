"""The engines of the peer benchmark: prepare each one's artifact, then time it alone.

`prepare` turns a `bench.models.ModelCase` into what each engine loads — a pickled PyTorch
module, an ONNX file (``torch.onnx.export``, the TorchScript exporter), NCNN ``.param`` /
``.bin`` (``pnnx``, from TorchScript, fp32 weights), MobileDL host libraries (untuned,
tuned from a database, ``kmeans:0.5``, ``mask:0.5``) — and records weight bytes.
`run_engine` measures one artifact in a fresh process (`bench.worker`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from bench.common import error_text, quiet, run_worker, tuning_config
from bench.models import ROOT, ModelCase, ncnn_feed, weight_bytes_torch
from bench.runtimes import torch_outputs

ENGINES = ("torch", "onnxruntime", "ncnn", "tvm", "tvm_tuned", "ours_kmeans", "ours_mask",
           "ours_fp16")
LABELS = {"torch": "PyTorch eager", "onnxruntime": "ONNX Runtime", "ncnn": "NCNN",
          "tvm": "TVM untuned (MobileDL)", "tvm_tuned": "TVM tuned (DB)",
          "ours_kmeans": "ours kmeans:0.5", "ours_mask": "ours mask:0.5",
          "ours_fp16": "ours fp16"}
COMPRESS = {"ours_kmeans": "kmeans:0.5", "ours_mask": "mask:0.5"}
FP16_HOST = "n/a on host (no fp16 arithmetic)"


def _ncnn(case: ModelCase, base: Path, log: Path) -> dict:
    import pnnx
    import torch

    tensors = tuple(torch.from_numpy(a) for a in case.ncnn_inputs)
    with quiet(log):
        pnnx.export(case.ncnn_module, str(base) + ".pt", inputs=tensors,
                    ncnnparam=str(base) + ".param", ncnnbin=str(base) + ".bin", fp16=False)
    param = Path(str(base) + ".param").read_text()
    unsupported = sorted({line.split()[0] for line in param.splitlines()[2:]
                          if line.split()[0].startswith(("pnnx.", "torch.", "Tensor.", "F."))})
    if unsupported:
        raise ValueError(f"pnnx left ops NCNN has no layer for: {', '.join(unsupported)}")
    feed = base.parent / f"{base.name}-ncnn-inputs.npz"
    np.savez(feed, *ncnn_feed(case))
    return {"artifact": str(base), "inputs": str(feed),
            "weight_bytes": os.path.getsize(str(base) + ".bin")}


def prepare(case: ModelCase, engines, workdir: Path, tuning_db: Path | None) -> dict:
    """Make every engine's artifact for `case` in `workdir`.

    Returns
    -------
    dict
        Per engine: ``artifact``, ``inputs`` (.npz), ``weight_bytes``, ``prepare_s`` and,
        for MobileDL builds, ``compile_s``; or ``error`` (why the engine cannot run it).
    """
    import onnx
    import torch
    from onnx import numpy_helper

    import mdl_tvm

    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "prepare.log"
    stem = workdir / case.name
    inputs, ref = workdir / "inputs.npz", workdir / "reference.npz"
    np.savez(inputs, *case.inputs)
    tensors = tuple(torch.from_numpy(a) for a in case.inputs)
    np.savez(ref, *torch_outputs(case.module, tensors))
    out: dict = {"_reference": str(ref)}
    for engine in engines:
        start = time.perf_counter()
        row = {"inputs": str(inputs)}
        try:
            if engine == "torch":
                torch.save(case.module, f"{stem}.pt")
                row.update(artifact=f"{stem}.pt", weight_bytes=weight_bytes_torch(case.module),
                           preimport=[type(case.module).__module__])
            elif engine == "onnxruntime":
                with quiet(log):
                    torch.onnx.export(case.module, tensors, f"{stem}.onnx", dynamo=False,
                                      input_names=list(case.input_names))
                init = onnx.load(f"{stem}.onnx").graph.initializer
                row.update(artifact=f"{stem}.onnx",
                           weight_bytes=int(sum(numpy_helper.to_array(t).nbytes for t in init)))
            elif engine == "ncnn":
                row.update(_ncnn(case, workdir / f"{case.name}-ncnn", log))
            elif engine == "ours_fp16":
                row["error"] = FP16_HOST
            else:
                if engine == "tvm_tuned" and tuning_db is None:
                    raise ValueError("no tuning database for this model")
                with quiet(log):
                    model = mdl_tvm.compile(
                        case.module, "host", example_inputs=tensors,
                        compress=COMPRESS.get(engine),
                        tuning_db=str(tuning_db) if engine == "tvm_tuned" else None)
                row.update(artifact=model.export(f"{stem}-{engine}.so"),
                           weight_bytes=model.stats.weight_bytes,
                           compile_s=round(time.perf_counter() - start, 2))
                if engine == "tvm_tuned":
                    row["tuned_functions"] = len(model.tuned_functions)
        except Exception as err:  # noqa: BLE001 - an engine that cannot run this model
            row = {"error": error_text(err)}
        row["prepare_s"] = round(time.perf_counter() - start, 2)
        out[engine] = row
    return out


def run_engine(engine: str, prepared: dict, case: ModelCase, repeat: int, warmup: int,
               threads: int, min_time: float = 0.0, timeout: float = 900.0) -> dict:
    """Time `engine` on its prepared artifact in a fresh `bench.worker` process."""
    row = prepared[engine]
    if "error" in row:
        return {"error": row["error"]}
    spec = {"engine": engine, "artifact": row["artifact"], "inputs": row["inputs"],
            "reference": prepared["_reference"], "input_names": list(case.input_names),
            "repeat": repeat, "warmup": warmup, "threads": threads, "min_time": min_time,
            "preimport": row.get("preimport", [])}
    env = {**os.environ, "TVM_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                       os.environ.get("PYTHONPATH")]))}
    try:
        result = run_worker("-m", "bench.worker", json.dumps(spec), env=env, cwd=str(ROOT),
                            timeout=timeout)
    except RuntimeError as err:
        return {"error": f"worker failed: {str(err).strip().splitlines()[-1]}"[:300]}
    result["weight_bytes"] = row["weight_bytes"]
    for key in ("compile_s", "tuned_functions"):
        if key in row:
            result[key] = row[key]
    return result


def ensure_tuning_db(case: ModelCase, db: Path, trials: int, threads: int) -> dict:
    """Tune `case` on this host into `db` (resumed if it already holds the budget)."""
    import torch

    from schedules.tuning.driver import tune

    config = tuning_config(threads)
    start = time.perf_counter()
    report = tune(case.module, "host", trials=trials, db=db, model_name=case.name,
                  example_inputs=tuple(torch.from_numpy(a) for a in case.inputs),
                  config=config, progress=False)
    kept = report.to_json().get("verified", {}).get("kept", [])
    return {"db": str(db), "trials": report.trials, "budget": trials,
            "kept_tasks": len(kept), "wall_s": round(time.perf_counter() - start, 1)}
