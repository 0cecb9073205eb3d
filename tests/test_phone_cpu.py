"""The phone's CPU model: each profile names a real core, a library is checked against it,
an fp16 library is refused by an ARMv8.0 phone, and a forced run fails cleanly."""

import numpy as np
import pytest
import torch
from helpers import seeded

import mdl_tvm
from deploy import cpus
from deploy.emulator import count_instructions, library_cpu, run_on_emulator
from mdl_tvm.core.errors import DeviceError
from mdl_tvm.core.targets import PROFILES


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8 * 6 * 6, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


@pytest.fixture(scope="module")
def libs(tmp_path_factory):
    """(fp16 library for arm64-fp16, fp32 library for sd835, input)."""
    net = seeded(Tiny)
    x = np.random.default_rng(0).standard_normal((1, 2, 6, 6)).astype("float32")
    d = tmp_path_factory.mktemp("cpu")
    fp16 = mdl_tvm.compile(net, "arm64-fp16", input_shapes=[x.shape], precision="fp16")
    fp32 = mdl_tvm.compile(net, "sd835", input_shapes=[x.shape])
    return fp16.export(str(d / "fp16.so")), fp32.export(str(d / "fp32.so")), x


def test_every_arm_profile_names_a_qemu_core_and_never_max():
    cores = {name: p.qemu_cpu for name, p in PROFILES.items() if p.is_arm64}
    assert cores == {"arm64": "cortex-a72", "arm64-fp16": "cortex-a76",
                     "cortex-a55": "cortex-a76", "cortex-a76": "cortex-a76",
                     "sd835": "cortex-a72", "rpi4": "cortex-a72", "android-arm64": "cortex-a72"}
    assert PROFILES["host"].qemu_cpu == ""
    assert "QEMU has no A55 model" in PROFILES["cortex-a55"].description


def test_hwcap_features_and_what_a_library_needs():
    a72, a76 = cpus.cpu_features("cortex-a72"), cpus.cpu_features("cortex-a76")
    assert a72 == {"fp", "asimd", "aes", "pmull", "sha1", "sha2", "crc32", "cpuid"}
    assert a76 - a72 == {"atomics", "fphp", "asimdhp", "asimdrdm", "lrcpc", "dcpop", "asimddp"}
    fp16 = {"target": "arm64-fp16", "mattr": ["+neon", "+fullfp16"]}
    assert cpus.missing_features(fp16, a76) == []
    assert cpus.missing_features(fp16, a72) == ["fp16 arithmetic (ARMv8.2-A) [+fullfp16]"]
    assert cpus.missing_features({"mattr": ["+neon"]}, a72) == []
    with pytest.raises(ValueError, match="unknown CPU model 'cortex-a55'.*cortex-a76"):
        cpus.check_cpu("cortex-a55")


def test_library_cpu_defaults_to_its_profile_core_and_refuses_before_running(libs):
    fp16, fp32, _ = libs
    assert library_cpu(fp16)[0] == "cortex-a76"
    assert library_cpu(fp32)[0] == "cortex-a72"
    assert library_cpu(fp32, "cortex-a76")[0] == "cortex-a76"  # an ARMv8.2 core runs v8.0 code
    with pytest.raises(DeviceError, match=r"needs fp16 arithmetic .* \(cortex-a72\) does not "
                       r"have; compile it for an ARMv8.0 profile"):
        count_instructions(fp16, [libs[2]], cpu="cortex-a72")


@pytest.mark.phone
def test_forced_fp16_library_on_an_armv8_0_core_is_an_illegal_instruction_error(libs):
    fp16, _, x = libs
    with pytest.raises(DeviceError, match=r"illegal instruction: the library \(built for "
                       r"'arm64-fp16'.* the cortex-a72 CPU does not have"):
        run_on_emulator(fp16, [x], cpu="cortex-a72", force=True)
    out = run_on_emulator(fp16, [x])  # on its own core (cortex-a76) it runs
    assert out[0].shape == (1, 5)


@pytest.mark.phone
@pytest.mark.slow
def test_rpc_phone_refuses_then_survives_a_forced_crash(libs, tmp_path):
    """An sd835-like phone (cortex-a72): the fp16 library is refused before upload; forced,
    its SIGILL comes back as a DeviceError; the phone then serves the next request."""
    from deploy import procs
    from deploy.remote import RemoteDevice

    fp16, fp32, x = libs
    tracker = procs.start_tracker(rundir=tmp_path)
    procs.start_phone(tracker=tracker, key="sd835", rundir=tmp_path, cpu="cortex-a72")
    try:
        with RemoteDevice.connect(tracker, key="sd835") as dev:
            assert dev.phone_info()["cpu"] == "cortex-a72"
            assert "asimdhp" not in dev.phone_info()["features"]
            with pytest.raises(DeviceError, match="does not have; compile it for an ARMv8.0"):
                dev.load(fp16)
            with pytest.raises(DeviceError, match="illegal instruction"):
                with dev.load(fp16, force=True) as model:
                    model.run([x])
        with RemoteDevice.connect(tracker, key="sd835", timeout=60) as dev:
            with dev.load(fp32) as model:
                y = model.run([x])[0]
        host = mdl_tvm.compile(seeded(Tiny), "host", input_shapes=[x.shape]).run(x)[0]
        np.testing.assert_allclose(y, host, rtol=1e-5, atol=1e-5)
    finally:
        procs.stop_phone(rundir=tmp_path)
        procs.stop_tracker(rundir=tmp_path)
