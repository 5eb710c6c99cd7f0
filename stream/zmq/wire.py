"""The vocabulary of the wire protocol shared by the codec (`protocol`) and the image codecs
(`images`): the stable error codes, `ProtocolError`, the size `Limits` and `TensorSpec`. It imports
neither of them, so that they depend on it and not on each other.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

# Stable error codes carried in error replies (docs/zmq-protocol.md, "Errors").
BAD_MAGIC = "bad_magic"
UNSUPPORTED_VERSION = "unsupported_version"
BAD_TYPE = "bad_message_type"
MALFORMED_HEADER = "malformed_header"
PART_COUNT = "part_count_mismatch"
BAD_DTYPE = "bad_dtype"
BAD_ENCODING = "bad_encoding"
BAD_SHAPE = "bad_shape"
SIZE_MISMATCH = "size_mismatch"
MESSAGE_TOO_LARGE = "message_too_large"
TENSOR_TOO_LARGE = "tensor_too_large"
DECODE_FAILED = "decode_failed"
OVERLOADED = "overloaded"
TIMEOUT = "timeout"
SHUTTING_DOWN = "shutting_down"
NODE_FAILED = "node_failed"


class ProtocolError(ValueError):
    """A message that violates the protocol; `code` is one of the stable error codes."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"[{code}] {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Limits:
    """Size limits checked before any allocation (defaults suit 4K RGB frames)."""

    max_message_bytes: int = 64 * 1024 * 1024
    max_tensor_bytes: int = 48 * 1024 * 1024
    max_tensors: int = 16
    max_dims: int = 8
    max_elements: int = 64 * 1024 * 1024
    max_header_bytes: int = 64 * 1024

    def __post_init__(self) -> None:
        for name in ("max_message_bytes", "max_tensor_bytes", "max_tensors", "max_dims", "max_elements",
                     "max_header_bytes"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"limit {name} must be a positive integer, got {getattr(self, name)!r}")
        object.__setattr__(self, "_hash", hash(dataclasses.astuple(self)))
        # Descriptors already checked against these limits -> their spec (see `_spec`): a stream of
        # messages repeats the same few descriptors. Bounded; errors are never cached.
        object.__setattr__(self, "_specs", {})

    def __hash__(self) -> int:
        return self._hash


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int, ...]
    encoding: str
    nbytes: int

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape),
                "encoding": self.encoding, "nbytes": self.nbytes}
