"""Lazy package attributes: ``import pkg`` stays cheap, ``pkg.name`` imports on first use.

>>> __getattr__, __dir__ = lazy_exports(__name__, {"compile": "mdl_tvm.compiler.compiled"})
"""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable, Callable]:
    """``(__getattr__, __dir__)`` for a package whose names live in submodules.

    Parameters
    ----------
    package : str
        The package's ``__name__`` (for error messages).
    exports : dict
        ``{attribute: module that defines it}``.
    """

    def __getattr__(name: str):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
