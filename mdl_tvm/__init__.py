"""MobileDL on TVM: compile, compress and run neural networks on 64-bit ARM phones.

>>> import mdl_tvm
>>> model = mdl_tvm.compile(torch_module, target="arm64", input_shapes=[(1, 1, 28, 28)])
>>> model.export("lenet.so")          # one library for the phone
>>> mdl_tvm.load("host.so").run(x)    # runtime only: the compiler is not imported

Names are imported on first use, so ``import mdl_tvm`` (and ``mdl_tvm.load``) stays light;
``mdl_tvm.compile`` imports the compiler. Importing it sets ``TVM_NUM_THREADS`` to the
number of physical cores when it is unset (`mdl_tvm.core.threads`: TVM alone would use half
the cores of an x86 machine without SMT) and ``TVM_BIND_THREADS`` to 0 (TVM's pinned threads
stall on a core another process uses). Layers, bottom to top: `mdl_tvm.core` → `deploy`
→ `relay_passes`, `schedules` → `mdl_tvm.compiler` → `schedules.tuning` → `mdl_tvm.cli`.
"""

from mdl_tvm.core.lazy import lazy_exports
from mdl_tvm.core.threads import default_affinity, default_threads

default_threads()  # one TVM thread per physical core unless TVM_NUM_THREADS says otherwise
default_affinity()  # threads not pinned to cores unless TVM_BIND_THREADS says otherwise

_ERRORS = ("MdlError", "DatasetMissingError", "DeviceError", "InputSpecError", "OutputPathError",
           "ModelFormatError", "PrecisionError", "ToolchainError", "UnknownTargetError",
           "UnsupportedOpError")
_EXPORTS = {
    "compile": "mdl_tvm.compiler.compiled",
    "CompiledModel": "mdl_tvm.compiler.compiled",
    "load": "deploy.host_model",
    "HostModel": "deploy.host_model",
    "PROFILES": "mdl_tvm.core.targets",
    "TargetProfile": "mdl_tvm.core.targets",
    "get_profile": "mdl_tvm.core.targets",
    **{name: "mdl_tvm.core.errors" for name in _ERRORS},
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
