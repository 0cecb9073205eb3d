"""Winograd transform error per tile size and precision, on ResNet-18's 3x3 layer shapes.

    python bench/winograd_error.py             # F(2,3) / F(4,3) / F(6,3), fp32 and fp16
    python bench/winograd_error.py --seeds 5

For each ResNet-18 3x3 stride-1 layer shape (64 x 56, 128 x 28, 256 x 14, 512 x 7 channels x
map) and seeded N(0, 1) inputs with He-scaled weights, `schedules.wino_math.reference`
computes the Winograd convolution rounding to the precision after every stage, as the
kernels do (weight transform in float64 then rounded, input transform, per-frequency
products summed over channels, output transform); the error is ``max |y - ref| / max |ref|``
against the direct convolution in float64. Cells in italics are tiles the cost model never
picks (`schedules.algo.winograd_tile_sizes`: fp16 never F(6,3), F(6,3) only up to 128
channels).
The built kernels' whole-model errors on the phone are in ``phone_peers.md``. Writes
``bench/results/winograd_error.{json,md}``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common  # noqa: E402
from mdl_tvm.core.numerics import relative_error  # noqa: E402
from schedules import wino_math  # noqa: E402
from schedules.algo import winograd_tile_sizes  # noqa: E402

LAYERS = ((64, 56), (128, 28), (256, 14), (512, 7))  # ResNet-18: channels, map size
PRECISIONS = ("float32", "float16")


def direct(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """3x3 correlation, padding 1, in float64 (``x`` [C, H, W], ``w`` [K, C, 3, 3])."""
    c, h, wd = x.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1)))
    out = np.zeros((w.shape[0], h, wd))
    for ky in range(3):
        for kx in range(3):
            out += np.einsum("kc,chw->khw", w[:, :, ky, kx], xp[:, ky:ky + h, kx:kx + wd])
    return out


def measure(seeds: int) -> list[dict]:
    """One row per (layer, precision, tile size): the largest error over the seeds."""
    rows = []
    for c, hw in LAYERS:
        errors = {}
        for seed in range(seeds):
            rng = np.random.default_rng(seed)
            x = rng.standard_normal((c, hw, hw))
            w = rng.standard_normal((c, c, 3, 3)) * np.sqrt(2.0 / (9 * c))
            ref = direct(x, w)
            for dtype in PRECISIONS:
                for m in wino_math.TILE_SIZES:
                    y = wino_math.reference(x.astype(dtype), w, m, (1, 1, 1, 1), dtype)
                    key = (dtype, m)
                    errors[key] = max(errors.get(key, 0.0), relative_error(y, ref))
        for (dtype, m), err in errors.items():
            rows.append({"channels": c, "map": hw, "precision": dtype, "m": m,
                         "rel_error": err, "allowed": m in winograd_tile_sizes(dtype, c, c)})
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    """The table: one line per layer, one column per (precision, tile size)."""
    cols = [(d, m) for d in PRECISIONS for m in wino_math.TILE_SIZES]
    head = " | ".join(f"{'fp32' if d == 'float32' else 'fp16'} F({m},3)" for d, m in cols)
    lines = [
        "# Winograd transform error",
        "",
        f"`{meta['command']}` ({meta['date']}, {meta['wall_s']:.0f} s). Max relative error "
        "against the float64 direct convolution over the seeds; every stage rounded to the "
        "precision as the kernels round it. *italic*: a tile the cost model never picks for "
        "that precision and channel count.",
        "",
        f"| layer | {head} |",
        "|---|" + "---:|" * len(cols),
    ]
    for c, hw in LAYERS:
        cells = []
        for d, m in cols:
            row = next(r for r in rows if (r["channels"], r["map"], r["precision"], r["m"])
                       == (c, hw, d, m))
            cell = f"{row['rel_error']:.1e}"
            cells.append(cell if row["allowed"] else f"*{cell}*")
        lines.append(f"| {c} x {hw}x{hw} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    """Command-line entry point (see the module docstring); returns the exit status."""
    parser = common.parser(__doc__, "python bench/winograd_error.py")
    parser.add_argument("--seeds", type=int, default=3, help="seeded inputs per layer")
    args = common.parse_args(parser, argv)
    start = time.perf_counter()
    rows = measure(args.seeds)
    meta = common.run_meta(args, start)
    common.write_results("winograd_error", {"meta": meta, "rows": rows},
                         markdown(rows, meta), out=args.out)
    print(markdown(rows, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
