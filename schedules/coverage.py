"""No silent slow path: which heavy kernels of a lowered module no kernel rule scheduled.

A convolution, dense layer or matmul that no packed-kernel rule recognises falls to the
``reduction`` / ``fallback`` rules (vectorised loops around TVM's generic lowering) or stays
unscheduled: correct, but many times slower. `slow_paths` lists them after lowering, with
their FLOPs and buffer shapes, so `compile` can warn and ``mdl-tvm info`` can show them;
the user learns which op of the model needs a rule instead of guessing from a latency.
"""

from __future__ import annotations

from dataclasses import dataclass

HEAVY_NAMES = ("conv", "dense", "matmul", "linear")
# rules that do not build a register-tiled kernel: a heavy op under them is a slow path
GENERIC_RULES = ("reduction", "fallback", "")
MIN_FLOPS = 100_000  # below this, a generic loop costs little


@dataclass(frozen=True)
class SlowPath:
    """A heavy kernel left to a generic schedule."""

    function: str
    rule: str  # "reduction", "fallback" or "" (unscheduled)
    flops: int
    shapes: tuple[tuple[int, ...], ...]

    def to_json(self) -> dict:
        return {"function": self.function, "rule": self.rule or "none", "flops": self.flops,
                "shapes": [list(s) for s in self.shapes]}

    def __str__(self) -> str:
        shapes = " ".join("x".join(map(str, s)) for s in self.shapes)
        return (f"{self.function} ({self.flops / 1e6:.1f} MFLOP, buffers {shapes}) runs on "
                f"the {self.rule or 'unscheduled'} path")


def _shapes(func) -> tuple[tuple[int, ...], ...]:
    out = []
    for param in func.params:
        buf = func.buffer_map.get(param) if hasattr(func, "buffer_map") else None
        shape = getattr(buf, "shape", None) or getattr(getattr(param, "ty", None), "shape", None)
        try:
            out.append(tuple(int(d) for d in shape))
        except (TypeError, ValueError):
            continue
    return tuple(out)


def slow_paths(mod, rule_attr: str = "mdl.schedule_rule") -> list[SlowPath]:
    """Heavy PrimFuncs of a lowered module that no kernel rule scheduled, largest first.

    Parameters
    ----------
    mod : tvm.IRModule
        After `schedules.lowering_pipeline` (every PrimFunc carries its rule's name).
    """
    from tvm import tirx
    from tvm.s_tir.analysis import estimate_tir_flops

    found = []
    for gvar, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        name = gvar.name_hint
        if not any(key in name for key in HEAVY_NAMES):
            continue
        rule = str(func.attrs[rule_attr]) if func.attrs and rule_attr in func.attrs else ""
        if rule not in GENERIC_RULES:
            continue
        try:
            flops = int(estimate_tir_flops(tvm_module(func)))
        except Exception:  # noqa: BLE001 - an estimate we cannot make is not an error
            flops = 0
        if flops >= MIN_FLOPS:
            found.append(SlowPath(name, rule, flops, _shapes(func)))
    return sorted(found, key=lambda s: -s.flops)


def tvm_module(func):
    import tvm

    return tvm.IRModule({"main": func})
