"""TVM modules whose import is slow for a reason of no concern to us, imported fast.

``tvm.s_tir.tensor_intrin`` (imported by every MetaSchedule ``TuneContext``) parses about
500 TVMScript functions, and TVMScript's ``prim_func`` calls ``inspect.stack()`` for each.
`inspect.stack` resolves the source file of every frame on the stack, and for frames
without a file on disk (``<frozen importlib._bootstrap>``: every frame of an import chain)
it scans all of ``sys.modules``: with torch loaded and a deep stack (pytest, a CLI) the
import took 30-50 s on a 2-core machine. The parser only reads the frames' locals and the
source line of a frame (`tvm.script.parser.core.utils.is_defined_in_class`), so during
that import `inspect.stack` is replaced by one that builds the same ``FrameInfo`` records
from ``linecache`` (about 5 s).
"""

from __future__ import annotations

import importlib
import inspect
import linecache
import sys
import threading

_LOCK = threading.Lock()


def _stack(context: int = 1) -> list[inspect.FrameInfo]:
    """`inspect.stack` without per-frame source-file resolution (one source line each)."""
    frame, records = sys._getframe(1), []
    while frame is not None:
        code = frame.f_code
        line = linecache.getline(code.co_filename, frame.f_lineno) if context > 0 else ""
        records.append(inspect.FrameInfo(frame, code.co_filename, frame.f_lineno,
                                         code.co_name, [line] if line else None,
                                         0 if line else None))
        frame = frame.f_back
    return records


def import_tensor_intrinsics() -> None:
    """Import ``tvm.s_tir.tensor_intrin`` (once per process) with the fast stack."""
    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules:
        return
    with _LOCK:
        real = inspect.stack
        inspect.stack = _stack
        try:
            importlib.import_module(name)
        finally:
            inspect.stack = real
