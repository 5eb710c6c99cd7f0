"""JPEG/PNG tensors on the wire: encode with OpenCV, and decode only after reading the image size
from the file header, so a small compressed payload cannot make the server allocate a huge image.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from stream.zmq.wire import BAD_SHAPE, DECODE_FAILED, TENSOR_TOO_LARGE, Limits, ProtocolError, TensorSpec

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def encode_image(arr: np.ndarray, encoding: str, quality: int = 90) -> bytes:
    """JPEG (uint8) or PNG (uint8/uint16) bytes of an HxW or HxWxC image (OpenCV channel order)."""
    import cv2

    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise ValueError(f"{encoding} encoding needs an HxW or HxWxC image (C in 1, 3, 4), got shape {arr.shape}")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if encoding == "jpeg" else []
    ok, buf = cv2.imencode(".jpg" if encoding == "jpeg" else ".png", arr, params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {arr.dtype} array of shape {arr.shape} as {encoding}")
    return buf.tobytes()


def image_size(data: memoryview, encoding: str) -> tuple[int, int]:
    """(height, width) read from a JPEG SOF segment or the PNG IHDR chunk, without decoding."""
    b = bytes(data[:65536]) if encoding == "jpeg" else bytes(data[:32])
    if encoding == "png":
        if len(b) < 24 or b[:8] != _PNG_SIGNATURE or b[12:16] != b"IHDR":
            raise ProtocolError(DECODE_FAILED, "payload is not a PNG file (signature/IHDR missing)")
        return int.from_bytes(b[20:24], "big"), int.from_bytes(b[16:20], "big")
    if len(b) < 4 or b[:2] != b"\xff\xd8":
        raise ProtocolError(DECODE_FAILED, "payload is not a JPEG file (SOI marker missing)")
    i = 2
    while i + 4 <= len(b):
        if b[i] != 0xFF:
            raise ProtocolError(DECODE_FAILED, f"JPEG marker expected at byte {i}")
        marker = b[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):
            i += 2
            continue
        length = int.from_bytes(b[i + 2:i + 4], "big")
        if marker in _JPEG_SOF and i + 9 <= len(b):
            return int.from_bytes(b[i + 5:i + 7], "big"), int.from_bytes(b[i + 7:i + 9], "big")
        if marker == 0xDA:
            break
        i += 2 + length
    raise ProtocolError(DECODE_FAILED, "JPEG frame header (SOF) not found in the first 64 KiB")


def decode_image(data: Any, spec: TensorSpec, limits: Limits) -> np.ndarray:
    """Decode `data` and check it matches the declared dtype and shape."""
    import cv2

    view = memoryview(data)
    height, width = image_size(view, spec.encoding)
    channels = spec.shape[2] if len(spec.shape) == 3 else 1
    if len(spec.shape) not in (2, 3) or (height, width) != tuple(spec.shape[:2]):
        raise ProtocolError(BAD_SHAPE, f"tensor {spec.name!r}: declared shape {list(spec.shape)} but the "
                            f"{spec.encoding} image is {height}x{width}")
    itemsize = 2 if spec.dtype == "uint16" else 1
    if height * width * channels * itemsize > limits.max_tensor_bytes or height * width * channels > limits.max_elements:
        raise ProtocolError(TENSOR_TOO_LARGE, f"tensor {spec.name!r}: a {height}x{width} image exceeds the limits")
    arr = cv2.imdecode(np.frombuffer(view, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ProtocolError(DECODE_FAILED, f"tensor {spec.name!r}: OpenCV could not decode the {spec.encoding} data")
    if arr.ndim == 2 and len(spec.shape) == 3 and spec.shape[2] == 1:
        arr = arr[:, :, None]
    if tuple(arr.shape) != spec.shape or arr.dtype.name != spec.dtype:
        raise ProtocolError(BAD_SHAPE, f"tensor {spec.name!r}: declared {spec.dtype}{list(spec.shape)} but the "
                            f"image decodes to {arr.dtype}{list(arr.shape)}")
    arr.setflags(write=False)
    return arr
