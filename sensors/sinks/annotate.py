"""Draw text overlays (label, confidence, latency) onto BGR images with OpenCV."""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np


def draw_lines(
    image: np.ndarray,
    lines: Sequence[str],
    font_scale: float = 0.5,
    color: tuple[int, int, int] = (255, 255, 255),
    background: tuple[int, int, int] = (0, 0, 0),
) -> np.ndarray:
    """Write `lines` top-left on a dark box so they stay readable on any content; draws in place."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (H, W, 3) BGR image, got dtype {image.dtype} shape {image.shape}")
    font = cv2.FONT_HERSHEY_SIMPLEX
    thickness = 1
    margin = 4
    y = margin
    for text in lines:
        (width, height), baseline = cv2.getTextSize(text, font, font_scale, thickness)
        top, bottom = y, y + height + baseline + 2 * margin // 2
        cv2.rectangle(image, (0, top), (min(image.shape[1] - 1, width + 2 * margin), bottom), background, -1)
        cv2.putText(image, text, (margin, y + height + margin // 2), font, font_scale, color, thickness, cv2.LINE_AA)
        y = bottom
    return image
