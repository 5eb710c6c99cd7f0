"""sensor_msgs Image and CompressedImage payloads to numpy arrays, and arrays to BGR camera images.

`decode_image` keeps what the camera recorded: the encoding's dtype and channels, in native byte order,
row padding (`step`) removed. `to_bgr8` turns any of those into the uint8 (H, W, 3) BGR frame that
OpenCV, the video sources and the video models use. Encodings follow ROS's sensor_msgs/image_encodings.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import cv2
import numpy as np


class ImageDecodeError(ValueError):
    """An image message whose fields do not describe its data (malformed, or an unknown encoding)."""


# encoding -> (dtype, channels)
_ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    "rgb8": (np.dtype(np.uint8), 3), "bgr8": (np.dtype(np.uint8), 3),
    "rgba8": (np.dtype(np.uint8), 4), "bgra8": (np.dtype(np.uint8), 4),
    "mono8": (np.dtype(np.uint8), 1), "mono16": (np.dtype(np.uint16), 1),
    "rgb16": (np.dtype(np.uint16), 3), "bgr16": (np.dtype(np.uint16), 3),
    "rgba16": (np.dtype(np.uint16), 4), "bgra16": (np.dtype(np.uint16), 4),
    "bayer_rggb8": (np.dtype(np.uint8), 1), "bayer_bggr8": (np.dtype(np.uint8), 1),
    "bayer_gbrg8": (np.dtype(np.uint8), 1), "bayer_grbg8": (np.dtype(np.uint8), 1),
    "bayer_rggb16": (np.dtype(np.uint16), 1), "bayer_bggr16": (np.dtype(np.uint16), 1),
    "bayer_gbrg16": (np.dtype(np.uint16), 1), "bayer_grbg16": (np.dtype(np.uint16), 1),
    "yuv422": (np.dtype(np.uint8), 2), "uyvy": (np.dtype(np.uint8), 2),
    "yuv422_yuy2": (np.dtype(np.uint8), 2), "yuyv": (np.dtype(np.uint8), 2),
}
_CV_DEPTHS = {"8U": np.uint8, "8S": np.int8, "16U": np.uint16, "16S": np.int16, "32S": np.int32,
              "32F": np.float32, "64F": np.float64}
for _depth, _dtype in _CV_DEPTHS.items():  # OpenCV-style encodings: 8UC1 ... 64FC4
    for _channels in (1, 2, 3, 4):
        _ENCODINGS[f"{_depth}C{_channels}"] = (np.dtype(_dtype), _channels)

SUPPORTED_ENCODINGS = tuple(sorted(_ENCODINGS))

# ROS Bayer names to OpenCV's (OpenCV names the pattern by the second row's first two pixels).
_BAYER = {"rggb": cv2.COLOR_BayerBG2BGR, "bggr": cv2.COLOR_BayerRG2BGR,
          "gbrg": cv2.COLOR_BayerGR2BGR, "grbg": cv2.COLOR_BayerGB2BGR}
_YUV = {"yuv422": cv2.COLOR_YUV2BGR_UYVY, "uyvy": cv2.COLOR_YUV2BGR_UYVY,
        "yuv422_yuy2": cv2.COLOR_YUV2BGR_YUY2, "yuyv": cv2.COLOR_YUV2BGR_YUY2}


def encoding_layout(encoding: str) -> tuple[np.dtype, int]:
    """(dtype, channels) of a sensor_msgs/Image encoding; ImageDecodeError for unknown ones."""
    layout = _ENCODINGS.get(encoding) or _ENCODINGS.get(encoding.lower())
    if layout is None:
        raise ImageDecodeError(
            f"image encoding {encoding!r} is not supported; supported: {', '.join(SUPPORTED_ENCODINGS)}"
        )
    return layout


def decode_image(height: int, width: int, encoding: str, is_bigendian: int | bool, step: int,
                 data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """The pixels of a sensor_msgs/Image: (H, W) or (H, W, C) in the encoding's dtype, native byte order.

    Without row padding and byte swapping the result is a read-only view of `data` (no copy)."""
    dtype, channels = encoding_layout(encoding)
    row_bytes = width * channels * dtype.itemsize
    if height < 0 or width < 0:
        raise ImageDecodeError(f"image has negative size {width}x{height}")
    if step < row_bytes:
        raise ImageDecodeError(
            f"image step {step} is smaller than one row of {width} {encoding} pixels ({row_bytes} bytes)"
        )
    buffer = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.view(np.uint8).ravel()
    needed = step * (height - 1) + row_bytes if height else 0
    if buffer.size < needed:
        raise ImageDecodeError(
            f"image data has {buffer.size} bytes but {height} rows of step {step} need {needed} "
            f"({width}x{height} {encoding}); the message is truncated"
        )
    if height == 0 or width == 0:
        shape = (height, width) if channels == 1 else (height, width, channels)
        return np.zeros(shape, dtype=dtype)
    # rows of `step` bytes; the first row_bytes of each are pixels (the rest is padding)
    padded = buffer[: step * height] if buffer.size >= step * height else np.concatenate(
        [buffer, np.zeros(step * height - buffer.size, np.uint8)])
    rows = padded.reshape(height, step)[:, :row_bytes]
    order = ">" if is_bigendian else "<"
    pixels = np.ascontiguousarray(rows).view(dtype.newbyteorder(order) if dtype.itemsize > 1 else dtype)
    pixels = pixels.reshape(height, width, channels)
    if dtype.itemsize > 1:
        pixels = pixels.astype(dtype, copy=False)  # native byte order
    return pixels[:, :, 0] if channels == 1 else pixels


def to_bgr8(image: np.ndarray, encoding: str, depth_range: tuple[float, float] | None = None) -> np.ndarray:
    """A uint8 (H, W, 3) BGR view of a decoded image, as the video sources emit.

    Colour and mono images convert directly (16-bit ones keep their top 8 bits). Single-channel
    images of other types (depth in mm as 16UC1, in metres as 32FC1) are mapped linearly from
    `depth_range` (min, max) to 0..255, or from their finite min..max when it is None.
    """
    key = encoding if encoding in _ENCODINGS else encoding.lower()
    if key.startswith("bayer_"):
        raw = image if image.dtype == np.uint8 else (image >> 8).astype(np.uint8)
        return cv2.cvtColor(raw, _BAYER[key[6:10]])
    if key in _YUV:
        return cv2.cvtColor(np.ascontiguousarray(image), _YUV[key])
    photometric = key in ("mono8", "mono16") or key.startswith(("rgb", "bgr"))
    if image.dtype == np.uint8:
        pixels = image
    elif photometric and image.dtype == np.uint16:
        pixels = (image >> 8).astype(np.uint8)
    else:  # depth, disparity and other measurements
        pixels = _scaled_to_uint8(image, depth_range)
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.ndim == 2:
        return cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR)
    rgb_order = key.startswith("rgb")
    channels = pixels.shape[2]
    if channels == 3:
        return cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR) if rgb_order else np.ascontiguousarray(pixels)
    if channels == 4:
        return cv2.cvtColor(pixels, cv2.COLOR_RGBA2BGR if rgb_order else cv2.COLOR_BGRA2BGR)
    raise ImageDecodeError(f"cannot show a {channels}-channel {encoding} image as BGR; use 1, 3 or 4 channels")


def _scaled_to_uint8(image: np.ndarray, value_range: tuple[float, float] | None) -> np.ndarray:
    values = image.astype(np.float32, copy=False)
    if value_range is None:
        finite = values[np.isfinite(values)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    else:
        low, high = value_range
    scale = 255.0 / (high - low) if high > low else 0.0
    out = np.nan_to_num((values - low) * scale, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(out, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class CameraImage:
    """Decoded pixels and their sensor_msgs/Image encoding (a CompressedImage gets the raw encoding
    its payload decodes to: bgr8, mono8, mono16, bgr16, or 32FC1 for compressedDepth)."""

    pixels: np.ndarray
    encoding: str

    def bgr8(self, depth_range: tuple[float, float] | None = None) -> np.ndarray:
        """uint8 (H, W, 3) BGR, as the video sources emit (see `to_bgr8`)."""
        return to_bgr8(self.pixels, self.encoding, depth_range)


def decode_compressed(format_: str, data: bytes | bytearray | memoryview | np.ndarray) -> CameraImage:
    """Decode a CompressedImage's JPEG or PNG payload (also image_transport's `compressedDepth`)."""
    buffer = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.view(np.uint8).ravel()
    fmt = format_.lower()
    depth_params: tuple[float, float] | None = None
    if "compresseddepth" in fmt:
        # image_transport's compressedDepth: a 12-byte ConfigHeader (int32 format, float32 depthParam[2])
        # before the PNG; 32FC1 depth is quantised as value = a / (depth - b).
        if buffer.size < 12:
            raise ImageDecodeError(f"compressedDepth payload of {buffer.size} bytes is shorter than its 12-byte header")
        _, quant_a, quant_b = struct.unpack("<iff", buffer[:12].tobytes())
        buffer = buffer[12:]
        if fmt.startswith("32fc1"):
            depth_params = (quant_a, quant_b)
    if buffer.size == 0:
        raise ImageDecodeError(f"compressed image ({format_!r}) has no data")
    image = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageDecodeError(
            f"compressed image of format {format_!r} ({buffer.size} bytes) could not be decoded as JPEG or PNG; "
            f"the payload is corrupt or in another format"
        )
    if depth_params is not None:
        quantised = image.astype(np.float32)
        with np.errstate(divide="ignore"):
            depth = np.where(quantised > 0, depth_params[0] / (quantised - depth_params[1]), np.nan)
        return CameraImage(depth.astype(np.float32), "32FC1")
    if image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.ndim == 2:
        return CameraImage(image, "mono16" if image.dtype == np.uint16 else "mono8")
    if image.dtype == np.uint16:
        return CameraImage(image, "bgr16")
    return CameraImage(image, "bgr8")
