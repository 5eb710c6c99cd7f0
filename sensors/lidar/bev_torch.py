"""The BEV rasteriser in torch, on any device (CPU or a GPU): the same maps as `bev.rasterise`.

Every step mirrors the numpy version operation for operation (float32 subtract, multiply by the
float32 reciprocal of the cell, floor; exact counts and maxima; float64 intensity sums; the same
density table), so that the maps are identical; see `sensors.lidar.bev`.
"""
from __future__ import annotations

import numpy as np
import torch

from sensors.lidar.bev import BEVConfig


class TorchRasteriser:
    """Rasterise on `device`; constants and the density table are moved there once."""

    def __init__(self, config: BEVConfig, device: str | torch.device = "cpu") -> None:
        self.config = config
        self.device = torch.device(device)
        x_min, y_min, inv_cell, z_min, z_max = config.float32_constants()
        # 0-d float32 tensors, not Python floats: a Python scalar divisor or factor may be applied
        # in another precision (CUDA turns a scalar division into a multiplication by its inverse).
        as_t = lambda v: torch.tensor(v, dtype=torch.float32, device=self.device)  # noqa: E731
        self._x_min, self._y_min, self._inv_cell = as_t(x_min), as_t(y_min), as_t(inv_cell)
        self._z_min, self._z_max = as_t(z_min), as_t(z_max)
        self._density = torch.from_numpy(config.density_table()).to(self.device)

    def __call__(self, points: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(C, H, W) float32 map on this device from (N, >=3) points (tensor or array, any device)."""
        cfg = self.config
        pts = torch.as_tensor(points).to(device=self.device, dtype=torch.float32, non_blocking=True)
        if pts.dim() != 2 or pts.shape[1] < 3:
            raise ValueError(f"points must be (N, 4) x, y, z, intensity; got shape {tuple(pts.shape)}")
        if "mean_intensity" in cfg.channels and pts.shape[1] < 4:
            raise ValueError("the mean_intensity channel needs an intensity column (N, 4)")
        h, w = cfg.height, cfg.width
        fi = torch.floor((pts[:, 0] - self._x_min) * self._inv_cell)
        fj = torch.floor((pts[:, 1] - self._y_min) * self._inv_cell)
        z = pts[:, 2]
        keep = (fi >= 0) & (fi < h) & (fj >= 0) & (fj < w) & (z >= self._z_min) & (z < self._z_max)
        idx = keep.nonzero().squeeze(1)
        cell = fi[idx].long() * w + fj[idx].long()
        out = torch.zeros((len(cfg.channels), h * w), dtype=torch.float32, device=self.device)
        counts = None
        for c, name in enumerate(cfg.channels):
            if name == "occupancy":
                out[c].index_fill_(0, cell, 1.0)
                continue
            if counts is None and name in ("mean_intensity", "density"):
                counts = torch.bincount(cell, minlength=h * w)
            if name == "max_height":
                out[c].scatter_reduce_(0, cell, z[idx] - self._z_min, reduce="amax", include_self=True)
            elif name == "mean_intensity":
                sums = torch.zeros(h * w, dtype=torch.float64, device=self.device)
                sums.index_add_(0, cell, pts[idx, 3].double())
                out[c] = torch.where(counts > 0, sums / counts.clamp(min=1), 0.0).float()
            elif name == "density":
                out[c] = self._density[counts.clamp(max=cfg.density_max)]
        return out.view(len(cfg.channels), h, w)
