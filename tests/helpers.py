"""What the tests share: small models, graph builders and inspection helpers.

Test files import from here (``from helpers import ...``), never from each other; fixtures
live in conftest.py / phone_fixtures.py. Relative error is `mdl_tvm.core.numerics`'s.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import torch
from torch import nn

# -- small networks of the compression tests -------------------------------------------------


class ConvConv(nn.Module):
    """conv(3 -> 8) -> relu -> conv(8 -> 6): one prunable group of 8 channels."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 6, 3)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


class ConvDense(nn.Module):
    """conv -> relu -> flatten -> dense: one channel spans 6 * 6 dense rows."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 8, 3), nn.Linear(8 * 6 * 6, 5)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))


class Residual(nn.Module):
    """stem -> (conv, BN, relu, conv, BN) + skip -> head: the add couples three convs."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = torch.relu(self.stem(x))
        return self.head(torch.relu(self.body(y) + y))


class Depthwise(nn.Module):
    """expand 1x1 -> depthwise 3x3 -> project 1x1 (a MobileNetV2 block without the skip)."""

    def __init__(self, mid: int = 12, wide: int = 12, groups: int = 12):
        super().__init__()
        self.expand = nn.Conv2d(3, mid, 1)
        self.dw = nn.Conv2d(mid, wide, 3, padding=1, groups=groups)
        self.project = nn.Conv2d(wide, 4, 1)

    def forward(self, x):
        return self.project(torch.relu(self.dw(torch.relu(self.expand(x)))))


class Grouped(Depthwise):
    """expand 1x1 -> grouped 3x3 (4 groups of 2 in, 4 out) -> project 1x1 (a RegNet /
    ResNeXt block)."""

    def __init__(self):
        super().__init__(mid=8, wide=16, groups=4)


class Concat(nn.Module):
    """Two convs concatenated along channels, then one conv reading both."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(3, 10, 1)
        self.head = nn.Conv2d(16, 4, 3)

    def forward(self, x):
        return self.head(torch.relu(torch.cat([self.a(x), self.b(x)], dim=1)))


def seeded(cls, seed: int = 0, *args):
    """``cls(*args)`` built right after ``torch.manual_seed(seed)``, in eval mode: the same
    weights whatever ran before (never build test models at collection time)."""
    torch.manual_seed(seed)
    return cls(*args).eval()


def mlp(*widths, seed: int = 0) -> nn.Sequential:
    """Linear + ReLU layers of the given widths, seeded, in eval mode."""
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers).eval()


def torch_macs(model, shape) -> int:
    """Multiply-accumulates of the convolutions and linear layers of one forward pass,
    counted from PyTorch (forward hooks): what `GraphStats.macs` must report."""
    macs = []

    def hook(module, inputs, out):
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            macs.append(out.numel() * module.in_channels // module.groups * kh * kw)
        else:
            macs.append(out.numel() * module.in_features)

    hooks = [m.register_forward_hook(hook) for m in model.modules()
             if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model(torch.zeros(shape))
    finally:
        for h in hooks:
            h.remove()
    return sum(macs)


def folded_weight_count(model) -> int:
    """Weights left after BatchNorm folding: every conv / linear weight and bias, plus one
    bias per BatchNorm channel after a conv without one (the scale folds into the conv
    before it, the shift into that conv's bias when it has one)."""
    count, last = 0, None
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            count += m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)
            last = m
        elif isinstance(m, nn.BatchNorm2d):
            count += 0 if getattr(last, "bias", None) is not None else m.num_features
    return count


# -- Relax graphs ------------------------------------------------------------------------------


def prepared(model, shape):
    """The Relax graph the compile pipeline hands to graph passes (import + prepare)."""
    import mdl_tvm
    from mdl_tvm.compiler.importers import import_model
    from mdl_tvm.compiler.pipeline import BuildState, run_pipeline

    torch.manual_seed(0)
    mod, _, _ = import_model(model.eval(), [shape])
    return run_pipeline(BuildState(mod, mdl_tvm.get_profile("host")), until="graph_passes").mod


def relax_module(shape, body, dtype: str = "float32"):
    """``main(x)`` returning ``body(bb, x)``, in one dataflow block (BlockBuilder)."""
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(body(bb, x))
        bb.emit_func_output(out)
    return bb.get()


def bind_weights(mod, weights: dict, func_name: str = "main"):
    """`mod` with the named parameters of `func_name` bound to the `weights` arrays.

    The TVM test idiom for constants in an expected module: write it in TVMScript with
    the weights as parameters, then bind them (`relax.transform.BindParams`)."""
    from tvm import relax

    return relax.transform.BindParams(func_name, dict(weights))(mod)


def host_fn(mod):
    """Compile a Relax module for this machine once; ``f(x)`` runs it on one input."""
    import mdl_tvm

    compiled = mdl_tvm.compile(mod, "host")
    return lambda x: compiled.run(x)[0]


def host_out(mod, x):
    """First output of `mod` compiled for this machine, on one input `x`."""
    return host_fn(mod)(x)


def host_outs(mod, xs):
    """`mod` compiled once, run on every batch-1 sample of `xs`; outputs stacked."""
    run = host_fn(mod)
    return np.concatenate([run(x[None]) for x in xs])


def conv_shapes(mod):
    """Sorted shapes of the (non-depthwise-scalar) 4-D constants: the conv weights."""
    from mdl_tvm.core.relax_utils import bound_constants

    return sorted(a.shape for a in bound_constants(mod).values() if a.ndim == 4 and a.shape[0] > 1)


def masked_reference(mod, masks):
    """`mod` with the channels that `masks` drop set to zero on every producer and
    per-channel parameter, shapes unchanged. Without recovery, committing the masks (the
    channels removed) must compute exactly this function: a zero channel stays zero through
    ReLU, pooling and depthwise convs, so its consumers read nothing from it."""
    from relay_passes import analyze
    from relay_passes.channel_rewrite import Edit, rewrite

    groups = analyze(mod).groups
    edits = []
    for name, mask in masks.items():
        keep = np.diag(np.asarray(mask, dtype=np.float64))
        edits += [Edit(ref, keep) for ref in groups[name].producers + groups[name].params]
    return rewrite(mod, edits)


def op_dtypes(mod, func_name: str = "main") -> dict:
    """``{op name: set of result dtypes}`` of a Relax graph's single dataflow block."""
    from tvm import relax

    out: dict = {}
    for binding in mod[func_name].body.blocks[0].bindings:
        value = binding.value
        dtype = getattr(binding.var.ty, "dtype", None)  # None: a tuple (split)
        if isinstance(value, relax.Call) and hasattr(value.op, "name") and dtype is not None:
            out.setdefault(value.op.name, set()).add(str(dtype))
    return out


def rules_used(mod) -> dict:
    """``{PrimFunc name: schedule rule that scheduled it (None: none)}``."""
    from tvm import tirx

    import schedules

    return {gv.name_hint: (f.attrs.get(schedules.RULE_ATTR) if f.attrs else None)
            for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)}


def neon_config():
    """A phone-like `schedules.MachineConfig` (128-bit vectors, 32 registers, indexed FMAs,
    fp16 arithmetic, 2 cores) whose kernels build and run on the host."""
    from schedules.config import MachineConfig

    return MachineConfig(vector_bits=128, num_regs=32, num_cores=2, fp16_arith=True,
                         indexed_fma=True)


def lower_and_run(mod, inputs, cfg, rules=None):
    """Lower `mod` with `schedules.lowering_pipeline(cfg, rules)` (all default rules when
    None), build it for this machine and run ``main`` on `inputs`.

    `cfg` is a `schedules.MachineConfig`: a NEON-like one (128-bit vectors, indexed FMAs)
    makes the phone's lane counts and kernels on the host. Returns ``(lowered module,
    first output as numpy)``."""
    import tvm
    from tvm import relax

    import schedules
    from mdl_tvm.core.targets import get_profile

    target = get_profile("host").tvm_target()
    with target:
        lowered = schedules.lowering_pipeline(
            cfg, rules=schedules.DEFAULT_RULES if rules is None else rules)(mod)
    vm = relax.VirtualMachine(relax.build(lowered, target), tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(x) for x in inputs])
    out = out[0] if not hasattr(out, "numpy") else out
    return lowered, out.numpy()


def check_rule_numerics(mod, x, cfg, rule: str, dtype: str = "float32"):
    """Lower `mod` with and without the rules on `cfg` and run both on `x`: rule `rule`
    scheduled something, and the outputs agree (1e-5 in fp32, 1e-2 in fp16, relative to the
    largest value)."""
    _, expected = lower_and_run(mod, [x], cfg, rules=())
    lowered, actual = lower_and_run(mod, [x], cfg)
    assert rule in rules_used(lowered).values()
    tol = 1e-5 if dtype == "float32" else 1e-2
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * np.abs(expected).max())


# -- arm64 code --------------------------------------------------------------------------------


def disassemble(path) -> str:
    """``aarch64-linux-gnu-objdump -d`` of a shared library (fails with the fix when the
    tool is missing)."""
    objdump = shutil.which("aarch64-linux-gnu-objdump")
    if objdump is None:
        raise AssertionError("aarch64-linux-gnu-objdump is missing: run scripts/setup.sh "
                             "(apt-get install binutils-aarch64-linux-gnu)")
    return subprocess.run([objdump, "-d", str(path)], capture_output=True, text=True,
                          check=True).stdout


def count_insns(code: str, pattern: str) -> int:
    """How many lines of a disassembly match the regular expression `pattern`."""
    return len(re.findall(pattern, code))
