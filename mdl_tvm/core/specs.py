"""Input and output specs: what a model takes and returns (name, shape, dtype)."""

from __future__ import annotations

from dataclasses import dataclass

SUPPORTED_DTYPES = ("float32", "float16", "int64", "int32", "int8", "uint8")
# bytes: TVM kernels assume their buffers' data is this aligned, and tvm-ffi's DLPack import
# of a host array requires it
ALIGN = 64


@dataclass(frozen=True)
class InputSpec:
    """Name, shape and dtype of one model input."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, item: dict) -> InputSpec:
        return cls(item["name"], tuple(item["shape"]), item["dtype"])


@dataclass(frozen=True)
class OutputSpec:
    """Shape and dtype of one model output."""

    shape: tuple[int, ...]
    dtype: str

    def to_json(self) -> dict:
        return {"shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, item: dict) -> OutputSpec:
        return cls(tuple(item["shape"]), item["dtype"])
