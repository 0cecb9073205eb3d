"""Instructions retired per inference on the emulated arm64 phone: fp32, fp16, compressed.

fp32 is built for ``arm64`` (ARMv8.0-A), fp16 for ``arm64-fp16`` (+fullfp16), the
compressed variants (``kmeans:0.5``, ``mask:0.5``) for ``arm64`` in fp32. Counts come from
`deploy.emulator.count_instructions` (QEMU TCG plugin, deterministic) through
`bench.phone_build.build_on_phone`. fp32 and fp16 counts already in
``bench/results/precision.json`` (`bench/precision_bench.py`, same builds) are reused
instead of counted again.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from bench.common import RESULTS, error_text
from bench.models import ModelCase
from bench.phone_build import build_on_phone

# (key, target profile, precision, compress); precision.json build labels for reuse
VARIANTS = (("fp32", "arm64", "fp32", None), ("fp16", "arm64-fp16", "fp16", None),
            ("kmeans", "arm64", "fp32", "kmeans:0.5"), ("mask", "arm64", "fp32", "mask:0.5"))
PRECISION_BUILDS = {"fp32": "fp32", "fp16": "fp16"}


def _from_precision(path: Path) -> dict:
    """{(model, key): instructions} from precision.json, when present."""
    try:
        builds = json.loads(path.read_text())["builds"]
    except (OSError, ValueError, KeyError):
        return {}
    found = {}
    for row in builds:
        for key, label in PRECISION_BUILDS.items():
            if row.get("build") == label:
                found[(row["model"], key)] = row["instructions"]
    return found


def count_case(case: ModelCase, workdir: Path, runs: int, variants=None,
               precision_json: Path = RESULTS / "precision.json") -> dict:
    """Count each variant's instructions per inference for `case` (batch 1).

    Parameters
    ----------
    case : ModelCase
    workdir : pathlib.Path
        Where the libraries and the compiler's log (``phone.log``) go.
    runs : int
        N of the count.
    variants : collection of str, optional
        Keys of `VARIANTS` to count (default: all).
    precision_json : pathlib.Path
        Counts of the same fp32 / fp16 builds to reuse.

    Returns
    -------
    dict
        Per variant key: ``instructions``, ``source`` (``counted`` or ``precision.json``),
        ``weight_bytes`` and ``count_s``; or ``error``.
    """
    known = _from_precision(precision_json)
    rows = {}
    for key, target, precision, compress in VARIANTS:
        if variants is not None and key not in variants:
            continue
        if (case.name, key) in known:
            rows[key] = {"instructions": known[(case.name, key)], "source": "precision.json"}
        else:
            start = time.perf_counter()
            try:
                build = build_on_phone(case.module, target, case.inputs, workdir,
                                       f"{case.name}-phone-{key}", runs=runs,
                                       example_inputs=True, log=workdir / "phone.log",
                                       precision=precision, compress=compress)
                rows[key] = {"instructions": build.instructions, "source": "counted",
                             "runs": runs, "weight_bytes": build.model.stats.weight_bytes,
                             "count_s": round(time.perf_counter() - start, 1)}
            except Exception as err:  # noqa: BLE001 - reported per variant
                rows[key] = {"error": error_text(err)}
        print(f"[bench] phone {case.name} {key}: {json.dumps(rows[key])}", flush=True)
    return rows
