"""The project's exceptions.

Every error a user can cause names the problem and the fix. Errors about a bad argument
are `ValueError` / `TypeError` subclasses so callers can catch them the usual way.
"""

from __future__ import annotations


class MdlError(Exception):
    """Base class of every MobileDL error."""


class UnknownTargetError(MdlError, ValueError):
    """A target profile name that is not in `mdl_tvm.core.targets.PROFILES`."""


class UnsupportedOpError(MdlError, ValueError):
    """The importer met an operator it cannot translate."""


class ModelFormatError(MdlError, ValueError):
    """A model file that cannot be read (corrupt, truncated, wrong format)."""


class InputSpecError(MdlError, ValueError):
    """Missing or inconsistent input shapes / dtypes."""


class ToolchainError(MdlError, RuntimeError):
    """A compiler or SDK the target needs is not installed."""


class DeviceError(MdlError, RuntimeError):
    """The device (RPC tracker, server, emulated phone) is unreachable or failed."""


class DatasetMissingError(MdlError, FileNotFoundError):
    """A data set the project reads from a Debian package is not installed."""


class PrecisionError(MdlError, ValueError):
    """A precision the target cannot compute in at full speed (fp16 on an ARMv8.0 core)."""


class OutputPathError(MdlError, ValueError):
    """An output path that cannot be written (a directory, read-only, a full disk)."""


class NonFiniteError(MdlError, FloatingPointError):
    """NaN or Inf in a run's inputs or outputs (``run(..., check_finite=True)``)."""


class ConcurrentUseError(MdlError, RuntimeError):
    """An object that holds one set of buffers used from two threads at once."""


def one_line(err: BaseException) -> str:
    """An error as one line: its first non-empty line (TVM's errors carry tracebacks)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = lines[0] if lines else type(err).__name__
    return text if len(text) <= 500 else text[:497] + "..."
