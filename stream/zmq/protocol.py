"""The costream ZeroMQ wire protocol, version 1 (specified in docs/zmq-protocol.md).

A message is a multipart ZeroMQ message: part 0 is the header, then one raw buffer per tensor.
The header is an 8-byte binary prefix followed by a UTF-8 JSON object::

    offset 0  4 bytes  magic  b"CSTM"
    offset 4  uint8    protocol version (1)
    offset 5  uint8    message type (1 FRAME, 2 RESULT, 3 PING)
    offset 6  uint16   reserved, little-endian, must be 0
    offset 8  ...      JSON (UTF-8), the rest of the part

Decoding checks every limit before allocating anything and raises `ProtocolError` with a stable
`code` that error replies carry. Nothing here is pickled; tensors decode with `np.frombuffer` on the
received ZeroMQ buffers (no copy).
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import zmq

from stream.zmq.wire import (  # noqa: F401  (re-exported: `protocol.ProtocolError`, `protocol.TIMEOUT`, ...)
    BAD_DTYPE, BAD_ENCODING, BAD_MAGIC, BAD_SHAPE, BAD_TYPE, DECODE_FAILED, MALFORMED_HEADER, MESSAGE_TOO_LARGE,
    NODE_FAILED, OVERLOADED, PART_COUNT, SHUTTING_DOWN, SIZE_MISMATCH, TENSOR_TOO_LARGE, TIMEOUT,
    UNSUPPORTED_VERSION, Limits, ProtocolError, TensorSpec,
)

try:  # several times faster than the stdlib json for these small headers; optional
    import orjson
except ImportError:  # pragma: no cover - exercised where orjson is not installed
    orjson = None

MAGIC = b"CSTM"
VERSION = 1
PREFIX = struct.Struct("<4sBBH")  # magic, version, type, reserved
MSG_FRAME = 1
MSG_RESULT = 2
MSG_PING = 3
MSG_TYPES = {MSG_FRAME: "frame", MSG_RESULT: "result", MSG_PING: "ping"}

DTYPES: dict[str, np.dtype] = {
    name: np.dtype(name).newbyteorder("<") if np.dtype(name).itemsize > 1 else np.dtype(name)
    for name in ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64",
                 "float16", "float32", "float64", "bool")
}
ENCODINGS = ("raw", "jpeg", "png")
DTYPE_NAMES: dict[np.dtype, str] = {dt: name for name, dt in DTYPES.items()}  # dtype.name is slow on the hot path
_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (RFC 8259)")


_JSON_DECODE = json.JSONDecoder(parse_constant=_no_constant).decode
_SCALARS = (str, int, float, bool, type(None))
_SCALAR_CLASSES = frozenset(_SCALARS)
_FRAME = zmq.Frame
_PREFIXES = {t: PREFIX.pack(MAGIC, VERSION, t, 0) for t in MSG_TYPES}
_PREFIX_TYPES = {prefix: t for t, prefix in _PREFIXES.items()}  # valid prefixes, for the fast check

@dataclass(frozen=True)
class Message:
    """A decoded message: its type, the JSON header and the tensors (numpy, read-only, zero-copy)."""

    msg_type: int
    header: Mapping[str, Any]
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    specs: tuple[TensorSpec, ...] = ()


def _dumps(header: Mapping[str, Any], strict: bool) -> bytes:
    """Compact UTF-8 JSON. orjson writes NaN/inf as null where the stdlib raises, so values that did not
    come through `json_safe` (a client's meta) take the strict path; so does anything orjson refuses
    (integers beyond 64 bits, subclassed keys), and the stdlib then gives its result or its error."""
    if orjson is not None and not strict:
        try:
            return orjson.dumps(header)
        except TypeError:
            pass
    return _JSON.encode(header).encode("utf-8")


def _loads(body: bytes) -> Any:
    """Parse UTF-8 JSON; ValueError (UnicodeDecodeError, JSONDecodeError) on anything invalid."""
    if orjson is not None:
        return orjson.loads(body)  # checks UTF-8; integers beyond 64 bits become floats (rejected)
    return _JSON_DECODE(body.decode("utf-8"))


def pack_header(msg_type: int, header: Mapping[str, Any], *, strict: bool = True) -> bytes:
    """Header part: the 8-byte prefix and compact JSON. `strict` (the default) refuses NaN and
    infinities with ValueError; the hot paths pass False for headers that cannot hold them."""
    body = _dumps(header, strict)
    prefix = _PREFIXES.get(msg_type)
    return (PREFIX.pack(MAGIC, VERSION, msg_type, 0) if prefix is None else prefix) + body


def to_numpy(value: Any) -> np.ndarray:
    """A C-contiguous numpy array for a numpy array or torch tensor (moved to CPU)."""
    if value.__class__ is np.ndarray and value.dtype in DTYPE_NAMES and value.flags.c_contiguous:
        return value  # the common case, checked first (this runs for every tensor of every message)
    if type(value).__module__.startswith("torch"):
        value = value.detach().cpu().numpy()
    arr = value if isinstance(value, np.ndarray) else np.asarray(value)
    if arr.dtype not in DTYPE_NAMES:
        if arr.dtype.byteorder == ">" and arr.dtype.newbyteorder("<") in DTYPE_NAMES:
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        else:
            raise TypeError(f"dtype {arr.dtype} cannot be sent; supported: {', '.join(DTYPES)}")
    return arr if arr.flags.c_contiguous else arr.copy(order="C")  # (ascontiguousarray turns 0-d into 1-d)


def received_frame(arr: np.ndarray) -> zmq.Frame | None:
    """The received zmq.Frame that `arr` views in full (a pass-through tensor), else None.

    Sending that Frame again shares its buffer inside libzmq (as a raw echo does), which is cheaper
    than wrapping the array in a new zero-copy message (pyzmq then needs its garbage-collector
    thread to release the buffer once libzmq is done with it).
    """
    base = arr.base
    if base is None or not arr.flags.c_contiguous:
        return None
    while isinstance(base, np.ndarray):
        if base.base is None:
            return None
        root = base
        base = base.base
    else:
        root = arr
    if isinstance(base, _FRAME):  # np.frombuffer(frame): decode's arrays
        frame, size = base, len(base)
    elif isinstance(base, memoryview) and isinstance(base.obj, _FRAME):
        frame, size = base.obj, base.nbytes
        if size != len(frame):  # a slice of the frame's buffer
            return None
    else:
        return None
    # A C-contiguous view as large as the whole buffer it lies in starts where the buffer starts.
    if arr.nbytes != size or root.nbytes != size:
        return None
    return frame


def raw_buffer(arr: np.ndarray) -> Any:
    """The bytes of a C-contiguous array without a copy: the received zmq.Frame it views in full (a
    pass-through tensor), else a flat memoryview."""
    if not arr.size:
        return b""
    frame = received_frame(arr)
    return frame if frame is not None else memoryview(arr).cast("B")


def raw_descriptor(name: str, arr: np.ndarray, nbytes: int) -> dict[str, Any]:
    """The header entry of a raw tensor (`arr` C-contiguous, of a dtype in DTYPE_NAMES)."""
    return {"name": name, "dtype": DTYPE_NAMES[arr.dtype], "shape": list(arr.shape), "encoding": "raw",
            "nbytes": nbytes}


def encode_tensors(arrays: Mapping[str, Any], encodings: Mapping[str, str] | None = None,
                   quality: int = 90) -> tuple[list[dict[str, Any]], list[Any]]:
    """Tensor descriptors and buffers (no copy for `raw`: memoryviews of the arrays, or the received
    zmq.Frame itself for a tensor that is a full view of one)."""
    descriptors: list[dict[str, Any]] = []
    buffers: list[Any] = []
    for name, value in arrays.items():
        arr = to_numpy(value)
        encoding = (encodings or {}).get(name, "raw")
        if encoding == "raw":
            buf: Any = raw_buffer(arr)
        elif encoding in ("jpeg", "png"):
            from stream.zmq.images import encode_image

            buf = encode_image(arr, encoding, quality)
        else:
            raise ValueError(f"encoding {encoding!r} for tensor {name!r} is unknown; use one of {ENCODINGS}")
        descriptors.append({"name": str(name), "dtype": DTYPE_NAMES[arr.dtype], "shape": list(arr.shape),
                            "encoding": encoding, "nbytes": len(buf)})
        buffers.append(buf)
    return descriptors, buffers


def _buffer_len(part: Any) -> int:
    """Bytes in a part: len() of a zmq.Frame or bytes, the byte size of any other buffer."""
    cls = part.__class__
    if cls is _FRAME or cls is bytes:
        return len(part)
    return memoryview(part).nbytes


def _buffer(part: Any) -> Any:
    return part.buffer if isinstance(part, _FRAME) else part


def _check_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(MALFORMED_HEADER, f"{what} must be an integer, got {value!r}")
    return value


def parse_prefix(part0: bytes, limits: Limits) -> tuple[int, dict[str, Any]]:
    """Check the 8-byte prefix and parse the JSON header; returns (message type, header).
    (The usual message never gets here: `_decode_common` reads its prefix inline.)"""
    if len(part0) > limits.max_header_bytes:
        raise ProtocolError(MESSAGE_TOO_LARGE, f"header is {len(part0)} bytes; the limit is "
                            f"{limits.max_header_bytes} (max_header_bytes)")
    if len(part0) < PREFIX.size or part0[:4] != MAGIC:
        raise ProtocolError(BAD_MAGIC, f"part 0 must start with the magic {MAGIC!r}; got {bytes(part0[:4])!r} "
                            "(is the peer speaking the costream protocol? see docs/zmq-protocol.md)")
    _, version, msg_type, _ = PREFIX.unpack_from(part0)
    if version != VERSION:
        raise ProtocolError(UNSUPPORTED_VERSION, f"protocol version {version} is not supported; this "
                            f"server speaks version {VERSION}")
    if msg_type not in MSG_TYPES:
        raise ProtocolError(BAD_TYPE, f"message type {msg_type} is unknown; expected one of "
                            f"{sorted(MSG_TYPES)} ({', '.join(MSG_TYPES.values())})")
    try:
        if len(part0) > PREFIX.size:
            body = part0[PREFIX.size:]
            header = _loads(body if body.__class__ is bytes else bytes(body))
        else:
            header = {}
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(MALFORMED_HEADER, f"header JSON does not parse: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError(MALFORMED_HEADER, f"header JSON must be an object, got {type(header).__name__}")
    return msg_type, header


def _tensor_spec(item: Any, index: int, limits: Limits) -> TensorSpec:
    """Validate one tensor descriptor, including overflow-safe size arithmetic (Python ints)."""
    if not isinstance(item, dict):
        raise ProtocolError(MALFORMED_HEADER, f"tensors[{index}] must be an object, got {item!r}")
    name = item.get("name", f"t{index}")
    dtype = item.get("dtype")
    encoding = item.get("encoding", "raw")
    shape = item.get("shape")
    nbytes = _check_int(item.get("nbytes"), f"tensors[{index}].nbytes")
    if not isinstance(name, str):
        raise ProtocolError(MALFORMED_HEADER, f"tensors[{index}].name must be a string, got {name!r}")
    if dtype not in DTYPES:
        raise ProtocolError(BAD_DTYPE, f"tensors[{index}] ({name!r}) has dtype {dtype!r}; expected one of "
                            f"{', '.join(DTYPES)} (little-endian)")
    if encoding not in ENCODINGS:
        raise ProtocolError(BAD_ENCODING, f"tensors[{index}] ({name!r}) has encoding {encoding!r}; expected "
                            f"one of {', '.join(ENCODINGS)}")
    if not isinstance(shape, list):
        raise ProtocolError(BAD_SHAPE, f"tensors[{index}] ({name!r}) shape must be a list of integers, "
                            f"got {shape!r}")
    if len(shape) > limits.max_dims:
        raise ProtocolError(BAD_SHAPE, f"tensors[{index}] ({name!r}) has {len(shape)} dimensions; the limit "
                            f"is {limits.max_dims} (max_dims)")
    elements = 1
    for dim in shape:
        dim = _check_int(dim, f"tensors[{index}].shape entry")
        if dim < 0:
            raise ProtocolError(BAD_SHAPE, f"tensors[{index}] ({name!r}) has a negative dimension in {shape}")
        elements *= dim  # Python ints do not overflow; checked against the limit right after
        if elements > limits.max_elements:
            raise ProtocolError(TENSOR_TOO_LARGE, f"tensors[{index}] ({name!r}) shape {shape} exceeds "
                                f"max_elements={limits.max_elements}")
    raw_bytes = elements * DTYPES[dtype].itemsize
    if raw_bytes > limits.max_tensor_bytes or nbytes > limits.max_tensor_bytes:
        raise ProtocolError(TENSOR_TOO_LARGE, f"tensors[{index}] ({name!r}) needs {max(raw_bytes, nbytes)} "
                            f"bytes; the limit is {limits.max_tensor_bytes} (max_tensor_bytes)")
    if encoding == "raw" and nbytes != raw_bytes:
        raise ProtocolError(SIZE_MISMATCH, f"tensors[{index}] ({name!r}): dtype {dtype} and shape {shape} "
                            f"need {raw_bytes} bytes but nbytes says {nbytes}")
    if encoding != "raw" and dtype not in ("uint8", "uint16"):
        raise ProtocolError(BAD_DTYPE, f"tensors[{index}] ({name!r}): {encoding} images decode to uint8 "
                            f"(or uint16 for png), not {dtype}")
    return TensorSpec(name, dtype, tuple(shape), encoding, nbytes)


_SPEC_CACHE_SIZE = 256
_INT_ONLY = {int}


def _spec_key(item: dict, limits: Limits) -> tuple | None:
    """The cache key of a descriptor whose fields have exact types (str names, int sizes), else None:
    `True` or `2.0` equal 1 and 2 as dict keys, so they must meet the full checks every time."""
    name = item.get("name")
    dtype = item.get("dtype")
    encoding = item.get("encoding", "raw")
    shape = item.get("shape")
    nbytes = item.get("nbytes")
    if (name.__class__ is str and dtype.__class__ is str and encoding.__class__ is str
            and nbytes.__class__ is int and shape.__class__ is list and len(shape) <= limits.max_dims
            and (not shape or set(map(type, shape)) == _INT_ONLY)):
        return (name, dtype, tuple(shape), encoding, nbytes)
    return None


def _remember(key: tuple | None, index: int, spec: TensorSpec, limits: Limits) -> TensorSpec:
    if key is not None:
        cache = limits._specs
        if len(cache) >= _SPEC_CACHE_SIZE:
            cache.clear()
        cache[key + (index,)] = spec
    return spec


def _spec(item: Any, index: int, limits: Limits) -> TensorSpec:
    """The validated spec of one descriptor, remembered per Limits for exact-typed descriptors."""
    key = _spec_key(item, limits) if item.__class__ is dict else None
    if key is not None:
        spec = limits._specs.get(key + (index,))
        if spec is not None:
            return spec
    return _remember(key, index, _tensor_spec(item, index, limits), limits)


def decode(parts: Sequence[Any], limits: Limits = Limits()) -> Message:
    """Decode a multipart message (bytes or zmq.Frame parts) after checking every limit."""
    return Message(*decode_fields(parts, limits))


def decode_fields(parts: Sequence[Any], limits: Limits = Limits()
                  ) -> tuple[int, dict[str, Any], dict[str, np.ndarray], tuple[TensorSpec, ...]]:
    """`decode` as a plain (msg_type, header, tensors, specs) tuple, for the per-message hot paths."""
    decoded = _decode_common(parts, limits)
    return decoded if decoded is not None else _decode_checked(parts, limits)


def _decode_common(parts: Sequence[Any], limits: Limits
                   ) -> tuple[int, dict[str, Any], dict[str, np.ndarray], tuple[TensorSpec, ...]] | None:
    """The usual message in one function (a round trip runs this code cold, so fewer calls pay):
    zmq.Frame parts, a valid prefix, raw tensors whose exact-typed descriptors were checked before.
    Every limit is still enforced here; anything unusual returns None and `_decode_checked` decides,
    with its error messages."""
    n = len(parts)
    if n == 0 or n > limits.max_tensors + 1:
        return None
    total = 0
    for part in parts:
        if part.__class__ is not _FRAME:
            return None
        total += len(part)
    part0 = parts[0].bytes
    msg_type = _PREFIX_TYPES.get(part0[:8])
    if (msg_type is None or total > limits.max_message_bytes or len(part0) > limits.max_header_bytes
            or len(part0) == 8 or orjson is None):
        return None
    try:
        header = orjson.loads(part0[8:])
    except ValueError:
        return None
    if header.__class__ is not dict:
        return None
    items = header.get("tensors", _NO_TENSORS)
    if items.__class__ is not list or len(items) != n - 1:
        return None
    specs = []
    tensors: dict[str, np.ndarray] = {}
    known = limits._specs
    for i, item in enumerate(items):
        # Only descriptors checked before (cached by `_decode_checked`) and raw: a dict lookup on their
        # exact fields (a shape of ints, no bools) is the whole check.
        if item.__class__ is not dict:
            return None
        shape = item.get("shape")
        nbytes = item.get("nbytes")
        if (shape.__class__ is not list or nbytes.__class__ is not int  # (True == 1, 1.0 == 1 as keys)
                or (shape and set(map(type, shape)) != _INT_ONLY)):
            return None
        spec = known.get((item.get("name"), item.get("dtype"), tuple(shape), item.get("encoding", "raw"), nbytes, i))
        if spec is None or spec.encoding != "raw" or spec.name in tensors:
            return None
        part = parts[i + 1]
        if len(part) != spec.nbytes:
            return None
        # A view of the part's own buffer (no copy): its base is the zmq.Frame (see `received_frame`).
        tensors[spec.name] = np.ndarray(spec.shape, DTYPES[spec.dtype], part)
        specs.append(spec)
    return msg_type, header, tensors, tuple(specs)


_NO_TENSORS: list = []


def _decode_checked(parts: Sequence[Any], limits: Limits
                    ) -> tuple[int, dict[str, Any], dict[str, np.ndarray], tuple[TensorSpec, ...]]:
    """Decode any message with every check in order, raising the specific ProtocolError."""
    if not parts:
        raise ProtocolError(PART_COUNT, "empty message; expected a header part")
    sizes = [_buffer_len(p) for p in parts]
    total = sum(sizes)
    if total > limits.max_message_bytes:
        raise ProtocolError(MESSAGE_TOO_LARGE, f"message is {total} bytes; the limit is "
                            f"{limits.max_message_bytes} (max_message_bytes)")
    part0 = parts[0]
    part0 = part0.bytes if part0.__class__ is _FRAME else bytes(part0)
    msg_type, header = parse_prefix(part0, limits)
    items = header.get("tensors", [])
    if items.__class__ is not list:
        raise ProtocolError(MALFORMED_HEADER, f"'tensors' must be a list, got {type(items).__name__}")
    if len(items) > limits.max_tensors:
        raise ProtocolError(PART_COUNT, f"{len(items)} tensors; the limit is {limits.max_tensors} (max_tensors)")
    if len(parts) != 1 + len(items):
        raise ProtocolError(PART_COUNT, f"header lists {len(items)} tensors, so the message needs "
                            f"{1 + len(items)} parts; got {len(parts)}")
    specs = tuple([_spec(item, i, limits) for i, item in enumerate(items)])
    if len(specs) > 1:
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ProtocolError(MALFORMED_HEADER, f"tensor names must be unique, got {names}")
    tensors: dict[str, np.ndarray] = {}
    for i, spec in enumerate(specs, 1):
        part, size = parts[i], sizes[i]
        if size != spec.nbytes:
            raise ProtocolError(SIZE_MISMATCH, f"tensor {spec.name!r}: header says nbytes={spec.nbytes} but "
                                f"its part holds {size} bytes")
        if spec.encoding == "raw":
            # A view of the part's own buffer (no copy); the array's base is the zmq.Frame, which is how
            # `received_frame` finds it again. Its size was checked against dtype and shape above.
            arr = np.ndarray(spec.shape, DTYPES[spec.dtype], part)
        else:
            from stream.zmq.images import decode_image

            arr = decode_image(_buffer(part), spec, limits)
        tensors[spec.name] = arr
    return msg_type, header, tensors, specs


def header_field(header: Mapping[str, Any], name: str, kind: type, default: Any) -> Any:
    """A typed optional header field, or a MALFORMED_HEADER error naming it."""
    value = header.get(name, default)
    if value is None or value is default:
        return value
    if kind is int:
        return _check_int(value, name)
    if not isinstance(value, kind):
        raise ProtocolError(MALFORMED_HEADER, f"header field {name!r} must be {kind.__name__}, got {value!r}")
    return value


MAX_CLIENT_NAME = 128


def client_name(value: Any) -> str:
    """The FRAME header's optional `client` field: a non-empty string of at most 128 characters."""
    if value.__class__ is not str or not 0 < len(value) <= MAX_CLIENT_NAME:
        raise ProtocolError(MALFORMED_HEADER, f"header field 'client' must be a non-empty string of at most "
                            f"{MAX_CLIENT_NAME} characters (a name for the sending robot or process), got {value!r:.80}")
    return value


def json_safe(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON-serialisable entries of a meta mapping, skipping reserved `zmq.` keys."""
    out: dict[str, Any] = {}
    for key, value in meta.items():
        if key.__class__ is not str and not isinstance(key, str) or key.startswith("zmq."):
            continue
        cls = value.__class__
        if cls is float or isinstance(value, float):
            if math.isfinite(value):  # NaN and infinities are not JSON
                out[key] = value
            continue
        if cls in _SCALAR_CLASSES or isinstance(value, _SCALARS):
            out[key] = value
            continue
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            continue
        out[key] = value
    return out
