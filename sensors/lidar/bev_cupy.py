"""The BEV rasteriser in CuPy (NVIDIA GPUs): the same maps as `bev.rasterise`, for pipelines that
keep point clouds as CuPy arrays. Importing this module needs no GPU; `available()` says whether
CuPy and a device are there, and `CupyRasteriser` refuses to start without them.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from sensors.lidar.bev import BEVConfig


def _cupy() -> Any:
    try:
        import cupy
    except ImportError as exc:
        raise ImportError("the CuPy rasteriser needs CuPy: pip install cupy-cuda12x (and an NVIDIA GPU); "
                          "use backend 'torch' or 'numpy' otherwise") from exc
    return cupy


def available() -> bool:
    """True when CuPy imports and sees at least one GPU."""
    try:
        cupy = _cupy()
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no CuPy, no driver, no device: all mean "not here"
        return False


class CupyRasteriser:
    """Rasterise on GPU `device_id`; maps come back as CuPy arrays on that GPU."""

    def __init__(self, config: BEVConfig, device_id: int = 0) -> None:
        cupy = _cupy()
        if not available():
            raise RuntimeError("CuPy sees no GPU; use backend 'torch' or 'numpy'")
        import cupyx  # ships with CuPy

        self.cupy = cupy
        self.cupyx = cupyx
        self.config = config
        self.device_id = device_id
        with cupy.cuda.Device(device_id):
            self._consts = [cupy.asarray(v, dtype=cupy.float32) for v in config.float32_constants()]
            self._density = cupy.asarray(config.density_table())

    def __call__(self, points: Any) -> Any:
        cp, cfg = self.cupy, self.config
        with cp.cuda.Device(self.device_id):
            pts = cp.asarray(points, dtype=cp.float32)
            if pts.ndim != 2 or pts.shape[1] < 3:
                raise ValueError(f"points must be (N, 4) x, y, z, intensity; got shape {pts.shape}")
            x_min, y_min, inv_cell, z_min, z_max = self._consts
            h, w = cfg.height, cfg.width
            fi = cp.floor(cp.multiply(cp.subtract(pts[:, 0], x_min), inv_cell))
            fj = cp.floor(cp.multiply(cp.subtract(pts[:, 1], y_min), inv_cell))
            z = pts[:, 2]
            keep = (fi >= 0) & (fi < h) & (fj >= 0) & (fj < w) & (z >= z_min) & (z < z_max)
            cell = fi[keep].astype(cp.int64) * w + fj[keep].astype(cp.int64)
            out = cp.zeros((len(cfg.channels), h * w), cp.float32)
            counts = None
            for c, name in enumerate(cfg.channels):
                if name == "occupancy":
                    out[c, cell] = 1.0
                    continue
                if counts is None and name in ("mean_intensity", "density"):
                    counts = cp.bincount(cell, minlength=h * w)
                if name == "max_height":  # a view of out: scattered in place
                    self.cupyx.scatter_max(out[c], cell, cp.subtract(z[keep], z_min))
                elif name == "mean_intensity":
                    sums = cp.zeros(h * w, cp.float64)
                    self.cupyx.scatter_add(sums, cell, pts[keep, 3].astype(cp.float64))
                    safe = cp.maximum(counts, 1)
                    out[c] = cp.where(counts > 0, sums / safe, 0.0).astype(cp.float32)
                elif name == "density":
                    out[c] = self._density[cp.minimum(counts, cfg.density_max)]
            return out.reshape(len(cfg.channels), h, w)


def to_numpy(array: Any) -> np.ndarray:
    """A CuPy map back on the host (for tests and sinks)."""
    return array.get() if hasattr(array, "get") else np.asarray(array)
