"""Turn a decoded BGR frame into the normalised float tensor a video model expects.

Pipeline per frame: resize the short side, centre-crop, BGR->RGB, scale to [0, 1], subtract the mean
and divide by the std, lay out as (C, H, W) float32. The presets are X3D's test-time settings
(PyTorchVideo/SlowFast): mean 0.45, std 0.225, 160 px for X3D-XS/S, 224 for M, 312 for L.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

X3D_MEAN = (0.45, 0.45, 0.45)
X3D_STD = (0.225, 0.225, 0.225)
X3D_SIZES = {"x3d_xs": 160, "x3d_s": 160, "x3d_m": 224, "x3d_l": 312}


@dataclass(frozen=True)
class VideoTransform:
    """Frozen preprocessing settings; call the instance on a uint8 HxWx3 BGR image.

    short_side: resize so the shorter side has this many pixels (aspect kept); None keeps the size.
    crop: (height, width) of the centre crop; None keeps the resized frame whole.
    """

    short_side: int | None = 160
    crop: tuple[int, int] | None = (160, 160)
    mean: tuple[float, float, float] = X3D_MEAN
    std: tuple[float, float, float] = X3D_STD
    rgb: bool = True  # convert OpenCV's BGR to RGB (what PyTorchVideo models were trained on)

    def __post_init__(self) -> None:
        if self.short_side is not None and self.short_side < 1:
            raise ValueError(f"short_side must be a positive number of pixels or None, got {self.short_side}")
        if self.crop is not None:
            crop = (self.crop, self.crop) if isinstance(self.crop, int) else tuple(int(c) for c in self.crop)
            if len(crop) != 2 or min(crop) < 1:
                raise ValueError(f"crop must be (height, width) with positive sizes or None, got {self.crop}")
            object.__setattr__(self, "crop", crop)
        for name in ("mean", "std"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 3:
                raise ValueError(f"{name} must have 3 values (one per channel), got {len(value)}")
            object.__setattr__(self, name, value)
        if min(self.std) <= 0:
            raise ValueError(f"std values must be positive, got {self.std}")

    @classmethod
    def preset(cls, name: str | None) -> "VideoTransform":
        """X3D settings by model name (`x3d_xs`, `x3d_s`, `x3d_m`, `x3d_l`). `none` (or None) is no
        preset: the frame keeps its size and is normalised with X3D's mean and std, like every preset
        (to only scale to [0, 1], give mean (0, 0, 0) and std (1, 1, 1))."""
        key = "none" if name is None else name.lower().replace("-", "_")
        if key == "none":
            return cls(short_side=None, crop=None)
        if key not in X3D_SIZES:
            raise ValueError(
                f"unknown video preset {name!r}; expected one of {', '.join(sorted(X3D_SIZES))} or 'none'"
            )
        size = X3D_SIZES[key]
        return cls(short_side=size, crop=(size, size))

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(H, W) of the tensor produced for an input frame of the given size."""
        if self.crop is not None:
            return self.crop
        if self.short_side is None:
            return height, width
        return resized_size(height, width, self.short_side)

    def __call__(self, image_bgr: np.ndarray) -> torch.Tensor:
        """(C, H, W) float32 tensor from a uint8 HxWx3 BGR image."""
        if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8:
            raise ValueError(
                f"expected a uint8 image of shape (H, W, 3) in BGR order, got dtype {image_bgr.dtype} "
                f"shape {image_bgr.shape}"
            )
        image = image_bgr
        if self.short_side is not None:
            image = resize_short_side(image, self.short_side)
        if self.crop is not None:
            image = center_crop(image, self.crop)
        if self.rgb:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        # (H, W, C) uint8 -> (C, H, W) float32 normalised
        out = image.astype(np.float32)
        scale = np.float32(1.0 / 255.0)
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        out = (out * scale - mean) / std
        return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))


def resized_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(H, W) after scaling so the shorter side equals `short_side` (rounded like SlowFast)."""
    if height <= width:
        return short_side, max(1, int(round(width * short_side / height)))
    return max(1, int(round(height * short_side / width))), short_side


def resize_short_side(image: np.ndarray, short_side: int) -> np.ndarray:
    """Resize keeping the aspect ratio; area interpolation when shrinking, bilinear when growing."""
    height, width = image.shape[:2]
    new_h, new_w = resized_size(height, width, short_side)
    if (new_h, new_w) == (height, width):
        return image
    interp = cv2.INTER_AREA if new_h < height else cv2.INTER_LINEAR
    return cv2.resize(image, (new_w, new_h), interpolation=interp)


def center_crop(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The centre (height, width) window; refuses crops larger than the image."""
    height, width = image.shape[:2]
    crop_h, crop_w = size
    if crop_h > height or crop_w > width:
        raise ValueError(
            f"crop {crop_h}x{crop_w} is larger than the frame {height}x{width}; set short_side to at least "
            f"{max(crop_h, crop_w)} or reduce crop"
        )
    top = (height - crop_h) // 2
    left = (width - crop_w) // 2
    return image[top : top + crop_h, left : left + crop_w]


def preview(image_bgr: np.ndarray, max_width: int) -> np.ndarray:
    """A downscaled uint8 BGR copy (at most `max_width` wide) for annotated output."""
    height, width = image_bgr.shape[:2]
    if width <= max_width:
        return image_bgr.copy()
    new_h = max(1, int(round(height * max_width / width)))
    return cv2.resize(image_bgr, (max_width, new_h), interpolation=cv2.INTER_AREA)
