"""Errors of the peer engines."""

from mdl_tvm.core.errors import MdlError


class EngineRefused(MdlError, ValueError):
    """An engine (or its converter) cannot take a model; the message names the op."""
