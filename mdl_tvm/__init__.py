"""MobileDL on TVM: compile, compress and run neural networks on 64-bit ARM phones.

>>> import mdl_tvm
>>> model = mdl_tvm.compile(torch_module, target="arm64", input_shapes=[(1, 1, 28, 28)])
>>> model.export("lenet.so")          # one library for the phone
>>> mdl_tvm.compile(torch_module, target="host", input_shapes=[(1, 1, 28, 28)]).run(x)
"""

from .compiled import CompiledModel, compile, load
from .errors import (
    DatasetMissingError,
    DeviceError,
    InputSpecError,
    MdlError,
    ModelFormatError,
    ToolchainError,
    UnknownTargetError,
    UnsupportedOpError,
)
from .targets import PROFILES, TargetProfile, get_profile

__all__ = [
    "CompiledModel",
    "compile",
    "load",
    "PROFILES",
    "TargetProfile",
    "get_profile",
    "MdlError",
    "DatasetMissingError",
    "DeviceError",
    "InputSpecError",
    "ModelFormatError",
    "ToolchainError",
    "UnknownTargetError",
    "UnsupportedOpError",
]
__version__ = "0.1.0"
