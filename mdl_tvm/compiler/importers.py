"""Stage 1 of the pipeline: turn a user's model into a Relax `IRModule`.

Accepted models
---------------
* a `torch.nn.Module` (with `example_inputs` or `input_shapes`), through `torch.export`
  and `tvm.relax.frontend.torch.from_exported_program`;
* an ONNX file path or `onnx.ModelProto`, through `tvm.relax.frontend.onnx.from_onnx`;
* a Relax `tvm.IRModule` with a `main` function, used as it is.

Weights become constants of the module (the device library carries them).
"""

from __future__ import annotations

import math
import os
import re
import warnings

import numpy as np

from mdl_tvm.compiler.onnx_fold import fold_shape_arithmetic
from mdl_tvm.core.errors import InputSpecError, ModelFormatError, UnsupportedOpError
from mdl_tvm.core.relax_utils import bound_constants
from mdl_tvm.core.specs import SUPPORTED_DTYPES, InputSpec

MAX_ELEMENTS = 2**31


def import_model(model, input_shapes=None, example_inputs=None, input_dtype="float32"):
    """Import `model` and return ``(IRModule, [InputSpec], source_kind)``.

    Parameters
    ----------
    model : torch.nn.Module, str, os.PathLike, onnx.ModelProto or tvm.IRModule
        The model to compile.
    input_shapes : dict or list, optional
        ``{"name": shape}`` or a list of shapes. Required for a torch module without
        `example_inputs` and for ONNX models whose inputs have symbolic dimensions.
    example_inputs : tuple of torch.Tensor, optional
        Inputs that `torch.export` traces the module with.
    input_dtype : str
        Dtype of inputs made from `input_shapes`.
    """
    if input_dtype not in SUPPORTED_DTYPES:
        raise InputSpecError(
            f"input_dtype {input_dtype!r} is not supported; use one of {SUPPORTED_DTYPES}"
        )
    import tvm

    if isinstance(model, tvm.IRModule):
        check_finite_weights({f"constant {k}": v for k, v in bound_constants(model).items()}
                             if "main" in [g.name_hint for g in model.get_global_vars()]
                             else {})
        return model, _specs_from_irmodule(model), "relax"
    if isinstance(model, (str, os.PathLike)):
        return _import_onnx_path(os.fspath(model), input_shapes)
    kind = type(model).__module__.split(".")[0]
    if kind == "onnx":
        return _import_onnx_proto(model, input_shapes) + ("onnx",)
    if kind == "torch" or _is_torch_module(model):
        return _import_torch(model, input_shapes, example_inputs, input_dtype)
    raise TypeError(
        "model must be a torch.nn.Module, an ONNX path or ModelProto, or a tvm.IRModule; "
        f"got {type(model).__name__}"
    )


def _is_torch_module(model) -> bool:
    try:
        import torch
    except ImportError:
        return False
    return isinstance(model, torch.nn.Module)


def _specs_from_irmodule(mod) -> list[InputSpec]:
    import tvm

    if "main" not in [gv.name_hint for gv in mod.get_global_vars()]:
        raise InputSpecError("the IRModule has no 'main' function; name the entry function main")
    specs = []
    for p in mod["main"].params:
        ty = p.ty
        shape = getattr(ty, "shape", None)
        if shape is None or not all(isinstance(d, tvm.tirx.IntImm) for d in shape):
            raise InputSpecError(
                f"input {p.name!r} of main has no static shape; bind its shape before compiling"
            )
        specs.append(InputSpec(p.name, tuple(int(d) for d in shape), str(ty.dtype)))
    return specs


def _normalise_shapes(input_shapes, names=None) -> list[tuple[str | None, tuple[int, ...]]]:
    if input_shapes is None:
        return []
    if isinstance(input_shapes, dict):
        items = list(input_shapes.items())
    elif isinstance(input_shapes, (list, tuple)):
        if input_shapes and all(isinstance(d, int) for d in input_shapes):
            input_shapes = [input_shapes]  # one bare shape
        items = [(names[i] if names and i < len(names) else None, s)
                 for i, s in enumerate(input_shapes)]
    else:
        raise InputSpecError(
            "input_shapes must be a dict {name: shape} or a list of shapes, "
            f"got {type(input_shapes).__name__}"
        )
    out = []
    for i, (name, shape) in enumerate(items):
        label = repr(name) if name is not None else f"#{i}"
        try:
            if any(isinstance(d, bool) or not float(d).is_integer() for d in shape):
                raise ValueError
            dims = tuple(int(d) for d in shape)
        except (TypeError, ValueError, OverflowError):
            raise InputSpecError(
                f"shape of input {label} must be a sequence of ints: {shape!r}"
            ) from None
        if any(d <= 0 for d in dims):
            raise InputSpecError(f"shape of input {label} has non-positive dims: {dims}")
        elements = math.prod(dims)  # Python ints: exact, no overflow
        if elements >= MAX_ELEMENTS:
            raise InputSpecError(
                f"input {label} of shape {dims} has {_count(elements)} "
                f"elements; MobileDL's kernels index with 32 bits (at most {MAX_ELEMENTS - 1:,} "
                "per tensor): use a smaller batch")
        out.append((name, dims))
    return out


def _count(n: int) -> str:
    """``12,345,678`` or, past 15 digits, ``about 10^k``."""
    return f"{n:,}" if n < 10**15 else f"about 10^{len(str(n)) - 1}"


def check_finite_weights(named) -> None:
    """Raise `ModelFormatError` naming the first weight that holds NaN or Inf.

    A network with non-finite weights compiles and runs but computes nothing meaningful;
    it is refused at compile time instead of surfacing as odd outputs on the phone.
    """
    for name, value in named.items():
        array = np.asarray(value)
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            bad = int(array.size - np.isfinite(array).sum())
            raise ModelFormatError(
                f"weight {name!r} {tuple(array.shape)} holds {bad:,} NaN/Inf value(s); fix the "
                "model (a diverged training run or a damaged checkpoint) before compiling")


def _import_torch(model, input_shapes, example_inputs, input_dtype):
    import torch
    from tvm.relax.frontend.torch import from_exported_program

    if example_inputs is None:
        shapes = _normalise_shapes(input_shapes)
        if not shapes:
            raise InputSpecError(
                "a torch model needs example_inputs or input_shapes, e.g. "
                "compile(model, input_shapes=[(1, 1, 28, 28)])"
            )
        example_inputs = tuple(
            torch.zeros(s, dtype=getattr(torch, input_dtype)) for _, s in shapes
        )
    elif isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    model = model.eval()
    check_finite_weights({k: v.detach().cpu().numpy() for k, v in model.state_dict().items()
                          if v.is_floating_point()})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exported = torch.export.export(model, tuple(example_inputs))
            mod = from_exported_program(exported)
    except (AssertionError, KeyError, NotImplementedError, ValueError) as err:
        raise _unsupported_op_error(err, "PyTorch") from err
    return mod, _specs_from_irmodule(mod), "torch"


def _unsupported_op_error(err, frontend: str) -> Exception:
    text = str(err)
    patterns = (
        r"[Uu]nsupported[^\[]*\[([^\]]+)\]",  # torch: Unsupported function types ['op']
        r"not supported[^:]*:\s*([^\n]+)",  # onnx: operators are not supported ...: Op
        r"[Uu]nsupported (?:op|operator)s?:?\s*([\w.:]+)",
    )
    match = next((m for m in (re.search(p, text) for p in patterns) if m), None)
    if match is None:
        return err
    return UnsupportedOpError(
        f"the {frontend} model uses an operator TVM's Relax importer does not support: "
        f"{match.group(1).strip()}. Replace it in the model (or decompose it) before compiling"
    )


def _load_onnx(path: str):
    try:
        import onnx
    except ImportError as err:
        raise ImportError("ONNX models need the onnx package: pip install 'mdl-tvm[onnx]'") from err
    if not os.path.isfile(path):
        raise ModelFormatError(f"no model file at {path!r}")
    try:
        proto = onnx.load(path)
        onnx.checker.check_model(proto)
    except Exception as err:  # onnx raises DecodeError / ValidationError / ...
        raise ModelFormatError(
            f"{path!r} is not a valid ONNX model ({type(err).__name__}: {str(err)[:200]}); "
            "re-export it, e.g. with torch.onnx.export"
        ) from err
    return proto


def _import_onnx_path(path, input_shapes):
    return _import_onnx_proto(_load_onnx(path), input_shapes) + ("onnx",)


def _import_onnx_proto(proto, input_shapes):
    from onnx import numpy_helper
    from tvm.relax.frontend.onnx import from_onnx

    check_finite_weights({t.name: numpy_helper.to_array(t) for t in proto.graph.initializer})
    initializers = {t.name for t in proto.graph.initializer}
    graph_inputs = [i for i in proto.graph.input if i.name not in initializers]
    names = [i.name for i in graph_inputs]
    given = dict(_normalise_shapes(input_shapes, names))
    unknown = [n for n in given if n not in names]
    if unknown:
        raise InputSpecError(f"input_shapes names {unknown} are not model inputs; inputs: {names}")
    shape_dict, dtype_dict = {}, {}
    for inp in graph_inputs:
        tensor_type = inp.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
        shape = given.get(inp.name) or tuple(dims)
        if any(d is None for d in shape):
            raise InputSpecError(
                f"ONNX input {inp.name!r} has symbolic dims {dims}; pass input_shapes="
                f"{{{inp.name!r}: (1, ...)}}"
            )
        shape_dict[inp.name] = list(shape)
        dtype_dict[inp.name] = _onnx_dtype(tensor_type.elem_type)
    proto = fold_shape_arithmetic(proto, shape_dict)
    try:
        mod = from_onnx(proto, shape_dict=shape_dict, dtype_dict=dtype_dict)
    except Exception as err:
        raise _unsupported_op_error(err, "ONNX") from err
    return mod, _specs_from_irmodule(mod)


def _onnx_dtype(elem_type: int) -> str:
    import onnx

    return str(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)))
