"""Bird's-eye-view (BEV) maps of a point cloud: the grid, the channels, and the numpy rasteriser.

A map is (C, H, W) float32: row i covers x in [x_min + i*cell, x_min + (i+1)*cell) (forward), column
j covers y in [y_min + j*cell, ...) (left), as the Parallel Perception Network's released code
indexes its maps (`bev[x_cell, y_cell]`). A point is kept when its cell lies inside the grid and
z_min <= z < z_max; everything else (outside the extent, NaN, inf) is dropped, never clipped into
a border cell. Channels:

- `occupancy`: 1 where a kept point falls, else 0 (PPN's single channel, with z in [0, 5) m);
- `max_height`: the highest kept point's z - z_min (metres above the bottom of the z range), 0 where empty;
- `mean_intensity`: mean intensity of the kept points, 0 where empty;
- `density`: min(1, log(1 + n) / log(1 + density_max)) for n kept points.

The numpy, torch (`bev_torch`) and CuPy (`bev_cupy`) rasterisers give identical maps: every
backend computes the cell as floor((x - x_min) * (1 / cell)) with float32 operands rounded the
same way, counts and maxima are exact, the density comes from one float32 table, and intensity
sums are accumulated in float64 (exact for the integer intensities a Velodyne reports; for other
floats the sum may round differently in rare cells, by one float32 step).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CHANNELS = ("occupancy", "max_height", "mean_intensity", "density")
MAX_CELLS = 8192  # per side; a larger map is almost certainly a wrong cell size


@dataclass(frozen=True)
class BEVConfig:
    """Grid extent (metres, sensor frame), cell size, kept z range and channels."""

    x_range: tuple[float, float] = (-100.0, 100.0)
    y_range: tuple[float, float] = (-100.0, 100.0)
    z_range: tuple[float, float] = (0.0, 5.0)
    cell_size: float = 0.2
    channels: tuple[str, ...] = ("occupancy",)
    density_max: int = 64

    def __post_init__(self) -> None:
        if not self.cell_size > 0:
            raise ValueError(f"cell_size must be positive metres, got {self.cell_size}")
        for name in ("x_range", "y_range", "z_range"):
            lo, hi = getattr(self, name)
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ValueError(f"{name} must be [min, max] with min < max, got {[lo, hi]}")
        for name in ("x_range", "y_range"):
            lo, hi = getattr(self, name)
            cells = (hi - lo) / self.cell_size
            if abs(cells - round(cells)) > 1e-6 * max(1.0, cells):
                raise ValueError(f"{name} {[lo, hi]} is not a whole number of {self.cell_size} m cells "
                                 f"({cells:.4f}); adjust the range or the cell size")
            if round(cells) > MAX_CELLS:
                raise ValueError(f"{name} {[lo, hi]} at {self.cell_size} m is {round(cells)} cells; at most "
                                 f"{MAX_CELLS} are allowed (is the cell size in metres?)")
        if not self.channels:
            raise ValueError(f"channels must name at least one of {list(CHANNELS)}")
        unknown = [c for c in self.channels if c not in CHANNELS]
        if unknown or len(set(self.channels)) != len(self.channels):
            raise ValueError(f"channels must be distinct names from {list(CHANNELS)}, got {list(self.channels)}")
        if self.density_max < 1:
            raise ValueError(f"density_max must be at least 1 point, got {self.density_max}")

    @classmethod
    def centred(cls, grid: int, cell_size: float = 0.2, z_range: tuple[float, float] = (0.0, 5.0),
                channels: tuple[str, ...] = ("occupancy",), density_max: int = 64) -> "BEVConfig":
        """A square grid of `grid` x `grid` cells centred on the sensor."""
        if grid < 1:
            raise ValueError(f"grid must be at least 1 cell, got {grid}")
        half = grid * cell_size / 2
        return cls((-half, half), (-half, half), z_range, cell_size, tuple(channels), density_max)

    @classmethod
    def ppn(cls, grid: int = 1000, cell_size: float = 0.2) -> "BEVConfig":
        """The Parallel Perception Network's map: binary occupancy of points with z in [0, 5) m,
        0.2 m cells, 1000 x 1000 (200 m square) centred on the sensor."""
        return cls.centred(grid, cell_size, (0.0, 5.0), ("occupancy",))

    @property
    def height(self) -> int:
        """H: cells along x (rows)."""
        return round((self.x_range[1] - self.x_range[0]) / self.cell_size)

    @property
    def width(self) -> int:
        """W: cells along y (columns)."""
        return round((self.y_range[1] - self.y_range[0]) / self.cell_size)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.channels), self.height, self.width)

    def density_table(self) -> np.ndarray:
        """float32 density value for 0..density_max points (counts above are clipped)."""
        n = np.arange(self.density_max + 1, dtype=np.float64)
        return (np.log1p(n) / math.log1p(self.density_max)).astype(np.float32)

    def float32_constants(self) -> tuple[np.float32, np.float32, np.float32, np.float32, np.float32]:
        """x_min, y_min, 1 / cell, z_min, z_max as float32: the same numbers on every backend."""
        return (np.float32(self.x_range[0]), np.float32(self.y_range[0]), np.float32(1.0 / self.cell_size),
                np.float32(self.z_range[0]), np.float32(self.z_range[1]))


def rasterise(points: np.ndarray, config: BEVConfig) -> np.ndarray:
    """The (C, H, W) float32 map of (N, >=3) float32 points x, y, z[, intensity] (numpy, CPU)."""
    if points.ndim != 2 or points.shape[1] < 3:
        raise ValueError(f"points must be (N, 4) x, y, z, intensity; got shape {points.shape}")
    if "mean_intensity" in config.channels and points.shape[1] < 4:
        raise ValueError("the mean_intensity channel needs an intensity column (N, 4)")
    pts = np.asarray(points, dtype=np.float32)
    x_min, y_min, inv_cell, z_min, z_max = config.float32_constants()
    h, w = config.height, config.width
    fi = np.floor((pts[:, 0] - x_min) * inv_cell)
    fj = np.floor((pts[:, 1] - y_min) * inv_cell)
    z = pts[:, 2]
    keep = (fi >= 0) & (fi < h) & (fj >= 0) & (fj < w) & (z >= z_min) & (z < z_max)
    cell = fi[keep].astype(np.int64) * w + fj[keep].astype(np.int64)
    out = np.zeros((len(config.channels), h * w), np.float32)
    counts = None
    for c, name in enumerate(config.channels):
        if name == "occupancy":
            out[c, cell] = 1.0
            continue
        if counts is None and name in ("mean_intensity", "density"):
            counts = np.bincount(cell, minlength=h * w)
        if name == "max_height":
            np.maximum.at(out[c], cell, z[keep] - z_min)
        elif name == "mean_intensity":
            sums = np.bincount(cell, weights=pts[keep, 3].astype(np.float64), minlength=h * w)
            out[c] = np.divide(sums, counts, out=np.zeros(h * w), where=counts > 0).astype(np.float32)
        elif name == "density":
            out[c] = config.density_table()[np.minimum(counts, config.density_max)]
    return out.reshape(len(config.channels), h, w)
