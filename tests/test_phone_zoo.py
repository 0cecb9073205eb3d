"""Every zoo CNN compiled by `mdl_tvm.compile` for arm64 runs on the emulated phone (real
tracker, real QEMU aarch64 TVM runtime) and matches the host fp32 build."""

import numpy as np
import pytest

import mdl_tvm
from mdl_tvm import zoo
from mdl_tvm.core.numerics import relative_error

ZOO = [pytest.param(name, marks=pytest.mark.slow) if name in ("resnet18", "mobilenetv2")
       else name for name in zoo.MODELS]


@pytest.mark.phone
@pytest.mark.parametrize("name", ZOO)
def test_zoo_model_on_phone_matches_host(name, phone, tmp_path):
    from deploy.remote import RemoteDevice

    model = zoo.build(name)
    shape = zoo.INPUT_SHAPES[name]
    x = np.random.default_rng(7).standard_normal(shape).astype("float32")
    expected = mdl_tvm.compile(model, "host", input_shapes=[shape]).run(x)[0]
    so = mdl_tvm.compile(model, "arm64", input_shapes=[shape]).export(str(tmp_path / "m.so"))
    with RemoteDevice.connect(phone["tracker"], key=phone["key"], timeout=60) as device:
        (actual,) = device.run(so, [x])
    assert actual.shape == expected.shape
    assert relative_error(actual, expected) < 1e-4
