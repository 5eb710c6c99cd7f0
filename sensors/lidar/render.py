"""Pictures of BEV maps: forward up, left on the left, with a network's output overlaid.

`render_panels` puts side by side the current map (grey), the same map with the segmentation
output overlaid in red, and the reconstruction output (green); `None` panels are left out. A
network output is shown as a mask above `threshold`, or, without a threshold, min-max scaled (an
untrained network's raw outputs still show their structure).
"""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np


def to_numpy(value: Any) -> np.ndarray:
    """A map from numpy, torch (any device) or CuPy as a float32 numpy array."""
    if hasattr(value, "detach"):
        value = value.detach().float().cpu().numpy()
    elif hasattr(value, "get"):
        value = value.get()
    return np.asarray(value, dtype=np.float32)


def _view(map2d: np.ndarray) -> np.ndarray:
    """Rows are +x (forward) and columns +y (left) from the grid's minimum: flip both so that
    forward is up and left is on the left of the picture."""
    return map2d[::-1, ::-1]


def _unit(values: np.ndarray, threshold: float | None) -> np.ndarray:
    if threshold is not None:
        return (values > threshold).astype(np.float32)
    lo, hi = float(values.min()), float(values.max())
    return np.zeros_like(values) if hi <= lo else (values - lo) / (hi - lo)


def render_panels(bev: Any, seg: Any = None, recon: Any = None, threshold: float | None = None,
                  scale: int = 2) -> np.ndarray:
    """uint8 BGR image: [map | map + segmentation | reconstruction], each panel `scale` x the grid."""
    base = to_numpy(bev)
    base = base if base.ndim == 2 else base[-1]  # the current (newest) map of a stack
    grey = _view(np.clip(base, 0.0, 1.0))
    panels = [np.repeat(grey[..., None], 3, axis=2)]
    if seg is not None:
        mask = _view(_unit(to_numpy(seg).reshape(grey.shape), threshold))
        overlay = panels[0] * 0.6
        overlay[..., 2] = np.maximum(overlay[..., 2], mask)  # red (BGR)
        panels.append(overlay)
    if recon is not None:
        rec = _view(_unit(to_numpy(recon).reshape(grey.shape), threshold))
        panels.append(np.stack([np.zeros_like(rec), rec, np.zeros_like(rec)], axis=2))
    gap = np.full((grey.shape[0], max(2, grey.shape[1] // 64), 3), 0.25, np.float32)
    image = np.concatenate([p for panel in panels for p in (panel, gap)][:-1], axis=1)
    image = (image * 255).round().astype(np.uint8)
    if scale != 1:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    return image
