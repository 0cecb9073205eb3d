"""The fast import of TVM's tensor intrinsics (`mdl_tvm.core.tvm_imports`): the stack
records TVMScript's parser reads are the ones `inspect.stack` gives, and the import
registers the intrinsics and leaves `inspect` as it was."""

import inspect

from mdl_tvm.core import tvm_imports


def _nested(depth: int):
    if depth:
        return _nested(depth - 1)
    return inspect.stack(), tvm_imports._stack()  # one line: the same frames and lines


def test_fast_stack_gives_the_records_the_parser_reads():
    real, fast = _nested(5)
    assert len(real) == len(fast)
    for a, b in zip(real, fast, strict=True):
        assert a.frame is b.frame and (a.lineno, a.function) == (b.lineno, b.function)
        assert a.filename == b.filename
        assert a.code_context == b.code_context  # is_defined_in_class reads frame 2's line


def test_import_registers_the_intrinsics_and_restores_inspect():
    original = inspect.stack
    tvm_imports.import_tensor_intrinsics()
    tvm_imports.import_tensor_intrinsics()  # a second call is free
    assert inspect.stack is original
    from tvm.s_tir import TensorIntrin
    from tvm.s_tir.tensor_intrin import arm_cpu

    intrin = TensorIntrin.get(arm_cpu.ARM_DOT_4x4_i8_NEON_INTRIN)  # parsed and registered
    assert intrin.desc.params and intrin.impl.params
