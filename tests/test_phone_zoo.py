"""Every zoo CNN compiled by `mdl_tvm.compile` for arm64 runs on the emulated phone (real
tracker, real QEMU aarch64 TVM runtime) and matches PyTorch (fp32, within 1e-4)."""

import numpy as np
import pytest
import torch

from mdl_tvm import zoo
from mdl_tvm.core.numerics import relative_error

ZOO = [pytest.param(name, marks=pytest.mark.slow) if name in ("resnet18", "mobilenetv2")
       else name for name in zoo.MODELS]


@pytest.mark.phone
@pytest.mark.parametrize("name", ZOO)
def test_zoo_model_on_phone_matches_pytorch(name, phone, arm64_zoo_library):
    from deploy.remote import RemoteDevice

    model = zoo.build(name)
    x = np.random.default_rng(7).standard_normal(zoo.INPUT_SHAPES[name]).astype("float32")
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    so = arm64_zoo_library(name)
    with RemoteDevice.connect(phone["tracker"], key=phone["key"], timeout=60) as device:
        (actual,) = device.run(so, [x])
    assert actual.shape == expected.shape
    assert relative_error(actual, expected) < 1e-4
