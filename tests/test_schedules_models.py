"""Default schedules on whole models: the zoo against PyTorch with every PrimFunc scheduled,
a pruned-width network, and arm64 builds that use NEON."""

import pytest
import torch
import tvm
from helpers import count_insns, disassemble, rules_used
from tvm import relax

import mdl_tvm
import schedules
from mdl_tvm import zoo
from mdl_tvm.compiler.importers import import_model
from mdl_tvm.compiler.pipeline import BuildOptions, BuildState, run_pipeline
from mdl_tvm.core.numerics import relative_error
from mdl_tvm.core.targets import get_profile

SMALL_SHAPES = {"resnet18": (1, 3, 64, 64), "mobilenetv2": (1, 3, 64, 64)}


def _build(model, shape, target="host", **options):
    mod, _, _ = import_model(model, [shape], None, "float32")
    state = BuildState(mod=mod, profile=get_profile(target), options=BuildOptions(**options))
    return run_pipeline(state)


def _run(state, x):
    vm = relax.VirtualMachine(state.executable, tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x))
    return (out[0] if not hasattr(out, "numpy") else out).numpy()


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow)
                                  if n == "mobilenetv2" else n for n in zoo.MODELS])
def test_zoo_model_scheduled_and_matches_pytorch(name, rng):
    model = zoo.build(name)
    shape = SMALL_SHAPES.get(name, zoo.INPUT_SHAPES[name])
    x = rng.standard_normal(shape).astype("float32")
    state = _build(model, shape)
    rules = rules_used(state.mod)
    assert all(rules.values()), f"unscheduled functions: {rules}"
    assert {"gemm_conv", "winograd"} & set(rules.values()) and "dense" in rules.values()
    assert not [n for n in rules if "pack" in n], "weight packing was not folded into constants"
    if name == "mobilenetv2":
        assert "depthwise_rows" in rules.values()
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert relative_error(_run(state, x), expected) < 1e-4


class _Pruned(torch.nn.Module):
    """Channel counts a pruning pass leaves behind: 13 -> 37 -> 13, plus a 37-wide dense."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(13, 37, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(37, 13, 1)
        self.dense = torch.nn.Linear(13 * 9 * 11, 37)

    def forward(self, x):
        y = torch.relu(self.conv1(x))
        return self.dense(torch.flatten(self.conv2(y) + x, 1))


def test_odd_channel_conv_is_scheduled_and_correct(rng):
    torch.manual_seed(0)
    model = _Pruned().eval()
    x = rng.standard_normal((1, 13, 9, 11)).astype("float32")
    state = _build(model, x.shape)
    rules = rules_used(state.mod)
    convs = [r for n, r in rules.items() if "conv2d" in n]
    assert convs and all(r in ("gemm_conv", "winograd", "winograd_input") for r in convs), rules
    assert any("dense" in n and r == "dense" for n, r in rules.items()), rules
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert relative_error(_run(state, x), expected) < 1e-5


def test_grouped_convs_run_on_packed_kernels(rng):
    """RegNet / ResNeXt-style grouped convs (3x3 stride 1 and 2, grouped 1x1): one packed
    kernel for all groups, or per-group convs on the GEMM / Winograd paths where a group is
    narrower than a register block; none is left to the generic fallback."""
    from schedules.coverage import slow_paths

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(32, 64, 3, padding=1, groups=4), torch.nn.ReLU(),
        torch.nn.Conv2d(64, 64, 3, stride=2, padding=1, groups=8), torch.nn.ReLU(),
        torch.nn.Conv2d(64, 32, 1, groups=2)).eval()
    x = rng.standard_normal((1, 32, 20, 20)).astype("float32")
    state = _build(model, x.shape)
    rules = rules_used(state.mod)
    convs = [r for n, r in rules.items() if "conv2d" in n]
    assert convs and set(convs) <= {"conv2d", "gemm_conv", "winograd", "winograd_input"}, rules
    assert any("grouped" in n for n in rules), rules
    assert slow_paths(state.mod) == []
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert relative_error(_run(state, x), expected) < 1e-5


def test_plain_zero_pipeline_is_still_available(rng):
    model = zoo.build("lenet5")
    x = rng.standard_normal((1, 1, 28, 28)).astype("float32")
    plain = _build(model, x.shape, default_schedules=False)
    assert not any(rules_used(plain.mod).values())
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert relative_error(_run(plain, x), expected) < 1e-5
    public = mdl_tvm.compile(model, "host", input_shapes=[x.shape], default_schedules=False)
    assert relative_error(public.run(x)[0], expected) < 1e-5
    with pytest.raises(TypeError, match="default_schedules must be True or False"):
        mdl_tvm.compile(model, "host", input_shapes=[x.shape], default_schedules="no")


@pytest.mark.parametrize("name", ["lenet5", "resnet18"])
def test_arm64_build_uses_neon(name, arm64_zoo_library):
    dis = disassemble(arm64_zoo_library(name))
    vector_fmla = count_insns(dis, r"\tfmla\tv\d+\.4s")
    assert vector_fmla > 50, f"{vector_fmla} NEON fmla instructions"


def test_arm64_fp16_profile_gets_eight_lane_kernels(tmp_path):
    cfg = schedules.MachineConfig.from_profile(get_profile("arm64-fp16"))
    assert cfg.lanes("float16") == 8
    model = mdl_tvm.compile(zoo.build("lenet5"), "arm64-fp16", input_shapes=[(1, 1, 28, 28)],
                            graph_passes=[relax.transform.ToMixedPrecision(out_dtype="float16")])
    dis = disassemble(model.export(str(tmp_path / "lenet-fp16.so")))
    assert count_insns(dis, r"\tfmla\tv\d+\.8h") > 50
