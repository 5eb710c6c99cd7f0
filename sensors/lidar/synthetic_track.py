"""Synthetic LiDAR scans of a small race track, cast with Open3D's RaycastingScene.

The track is a stadium oval (two straights joined by half circles) with a low inner wall, a high
outer wall with catch fence, cones along the inner edge, and cars that lap at their own speeds. The
sensor rides on an ego car driving the centre line. Scans are cast with a VLP-16 beam pattern (its
16 elevations and vertical offsets), or 64 or 128 uniformly spread beams; `firings` casts exactly
the rays a real VLP-16 fires, so that encoded packets decode to the same points. Everything is
deterministic per seed and frame index: no randomness depends on call order.

Frame: sensor frame of each scan (x forward, y left, z up); intensities are integer reflectivities
per material (cones are retro-reflective), as a Velodyne reports them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from sensors.lidar.scan import LidarScan
from sensors.lidar.velodyne_models import VLP16, VelodyneModel, slot_azimuths

BeamPattern = Literal["vlp16", "64", "128"]
# reflectivity (0..255) per material
GROUND, INNER_WALL, OUTER_WALL, CONE, CAR = 12, 60, 45, 230, 90


@dataclass(frozen=True)
class TrackConfig:
    """Track geometry, traffic, sensor and beam pattern. Distances in metres, speeds in m/s."""

    seed: int = 0
    straight_m: float = 60.0
    radius_m: float = 22.0
    width_m: float = 12.0
    inner_wall_height_m: float = 1.0
    outer_wall_height_m: float = 3.0
    cone_spacing_m: float = 12.0
    cars: int = 4
    ego_speed: float = 30.0
    sensor_height_m: float = 0.8
    rate_hz: float = 10.0
    beams: BeamPattern = "vlp16"
    columns: int = 1800  # azimuth steps per turn (0.2 deg at 1800)
    max_range_m: float = 100.0
    range_noise_m: float = 0.01

    def __post_init__(self) -> None:
        for name in ("straight_m", "radius_m", "width_m", "rate_hz", "max_range_m", "sensor_height_m"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.width_m >= 2 * self.radius_m:
            raise ValueError(f"width_m ({self.width_m}) must be less than twice radius_m ({self.radius_m})")
        if self.beams not in ("vlp16", "64", "128"):
            raise ValueError(f"beams must be 'vlp16', '64' or '128', got {self.beams!r}")
        if self.cars < 0 or self.columns < 8 or self.range_noise_m < 0 or self.cone_spacing_m <= 0:
            raise ValueError("cars >= 0, columns >= 8, range_noise_m >= 0 and cone_spacing_m > 0 are required")

    @property
    def lap_m(self) -> float:
        return 2 * self.straight_m + 2 * math.pi * self.radius_m

    def elevations_deg(self) -> np.ndarray:
        if self.beams == "vlp16":
            return np.asarray(VLP16.elevations_deg, np.float64)
        if self.beams == "64":
            return np.linspace(-24.9, 2.0, 64)
        return np.linspace(-25.0, 15.0, 128)

    def vertical_offsets_m(self) -> np.ndarray:
        return VLP16.vertical_offsets_m if self.beams == "vlp16" else np.zeros(len(self.elevations_deg()))


def centre_line(config: TrackConfig, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) and heading (rad) of the centre line at arc lengths `s` (counter-clockwise laps)."""
    L, R = config.straight_m, config.radius_m
    s = np.mod(np.asarray(s, np.float64), config.lap_m)
    arc = math.pi * R
    xy = np.zeros(s.shape + (2,))
    heading = np.zeros(s.shape)
    seg1 = s < L  # bottom straight, heading +x
    seg2 = (s >= L) & (s < L + arc)  # right half circle
    seg3 = (s >= L + arc) & (s < 2 * L + arc)  # top straight, heading -x
    seg4 = s >= 2 * L + arc  # left half circle
    xy[seg1] = np.stack([s[seg1] - L / 2, np.full(seg1.sum(), -R)], -1)
    heading[seg1] = 0.0
    a = (s[seg2] - L) / R
    xy[seg2] = np.stack([L / 2 + R * np.sin(a), -R * np.cos(a)], -1)
    heading[seg2] = a
    u = s[seg3] - L - arc
    xy[seg3] = np.stack([L / 2 - u, np.full(seg3.sum(), R)], -1)
    heading[seg3] = math.pi
    a = (s[seg4] - 2 * L - arc) / R
    xy[seg4] = np.stack([-L / 2 - R * np.sin(a), R * np.cos(a)], -1)
    heading[seg4] = math.pi + a
    return xy, heading


def _offset(xy: np.ndarray, heading: np.ndarray, lateral: np.ndarray | float) -> np.ndarray:
    """Points `lateral` metres to the left of the centre line."""
    left = np.stack([-np.sin(heading), np.cos(heading)], -1)
    return xy + left * np.asarray(lateral)[..., None]


def _wall(xy: np.ndarray, height: float) -> tuple[np.ndarray, np.ndarray]:
    """A closed vertical ribbon along polyline `xy` (K, 2): vertices and triangles."""
    k = len(xy)
    bottom = np.concatenate([xy, np.zeros((k, 1))], 1)
    top = np.concatenate([xy, np.full((k, 1), height)], 1)
    vertices = np.concatenate([bottom, top])
    i = np.arange(k)
    j = (i + 1) % k
    triangles = np.concatenate([np.stack([i, j, i + k], 1), np.stack([j, j + k, i + k], 1)])
    return vertices, triangles


def _box(centre: np.ndarray, heading: float, size: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    lx, ly, lz = size
    corners = np.array([[sx * lx / 2, sy * ly / 2, z] for z in (0.0, lz) for sy in (-1, 1) for sx in (-1, 1)])
    c, s = math.cos(heading), math.sin(heading)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    vertices = corners @ rot.T + np.array([centre[0], centre[1], 0.0])
    faces = [(0, 1, 3), (0, 3, 2), (4, 6, 7), (4, 7, 5), (0, 4, 5), (0, 5, 1),
             (2, 3, 7), (2, 7, 6), (0, 2, 6), (0, 6, 4), (1, 5, 7), (1, 7, 3)]
    return vertices, np.array(faces)


def _cone(centre: np.ndarray, radius: float = 0.18, height: float = 0.7, sides: int = 8) -> tuple[np.ndarray, np.ndarray]:
    a = np.linspace(0, 2 * math.pi, sides, endpoint=False)
    base = np.stack([centre[0] + radius * np.cos(a), centre[1] + radius * np.sin(a), np.zeros(sides)], 1)
    apex = np.array([[centre[0], centre[1], height]])
    i = np.arange(sides)
    return np.concatenate([base, apex]), np.stack([i, (i + 1) % sides, np.full(sides, sides)], 1)


class SyntheticTrack:
    """`scan(index)` -> LidarScan of frame `index`; `firings(index, ...)` -> VLP-16 firing ranges."""

    def __init__(self, config: TrackConfig = TrackConfig()) -> None:
        try:
            import open3d as o3d
        except ImportError as exc:
            raise ImportError("synthetic LiDAR scans need Open3D: pip install open3d (or open3d-cpu)") from exc
        self._o3d: Any = o3d
        self.config = config
        rng = np.random.default_rng([config.seed, 0])
        step = 1.0
        s = np.arange(0.0, config.lap_m, step)
        xy, heading = centre_line(config, s)
        half = config.width_m / 2
        self._static: list[tuple[np.ndarray, np.ndarray, int]] = [
            (*_wall(_offset(xy, heading, half), config.inner_wall_height_m), INNER_WALL),  # left = inside
            (*_wall(_offset(xy, heading, -half), config.outer_wall_height_m), OUTER_WALL),
        ]
        extent = config.straight_m / 2 + config.radius_m + 2 * config.max_range_m
        ground = np.array([[-extent, -extent, 0], [extent, -extent, 0], [extent, extent, 0], [-extent, extent, 0]])
        self._static.append((ground, np.array([[0, 1, 2], [0, 2, 3]]), GROUND))
        cone_s = np.arange(0.0, config.lap_m, config.cone_spacing_m) + rng.uniform(0, config.cone_spacing_m / 2)
        cone_xy, cone_h = centre_line(config, cone_s)
        cone_xy = _offset(cone_xy, cone_h, half - 0.8 + rng.uniform(-0.3, 0.3, len(cone_s)))
        for c in cone_xy:
            self._static.append((*_cone(c), CONE))
        self._car_start = rng.uniform(0, config.lap_m, config.cars)
        self._car_speed = rng.uniform(0.6, 1.3, config.cars) * config.ego_speed
        self._car_lane = rng.uniform(-half + 1.5, half - 1.5, config.cars)
        self._ego_start = float(rng.uniform(0, config.lap_m))

    def ego_pose(self, t: float) -> tuple[np.ndarray, float]:
        """Sensor position (x, y, z) and heading in the track frame at time `t` seconds."""
        xy, heading = centre_line(self.config, np.array([self._ego_start + self.config.ego_speed * t]))
        return np.array([xy[0, 0], xy[0, 1], self.config.sensor_height_m]), float(heading[0])

    def _scene(self, t: float) -> tuple[Any, dict[int, int]]:
        o3d = self._o3d
        scene = o3d.t.geometry.RaycastingScene()
        reflect: dict[int, int] = {}
        meshes = list(self._static)
        if self.config.cars:
            s = self._car_start + self._car_speed * t
            xy, heading = centre_line(self.config, s)
            xy = _offset(xy, heading, self._car_lane)
            meshes += [(*_box(c, h, (4.6, 1.9, 1.25)), CAR) for c, h in zip(xy, heading)]
        for vertices, triangles, reflectivity in meshes:
            gid = scene.add_triangles(o3d.core.Tensor(vertices.astype(np.float32)),
                                      o3d.core.Tensor(triangles.astype(np.uint32)))
            reflect[int(gid)] = reflectivity
        return scene, reflect

    def cast(self, t: float, directions: np.ndarray, origins: np.ndarray,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Ranges (inf = no hit within max range) and reflectivities of sensor-frame rays at time `t`."""
        position, heading = self.ego_pose(t)
        c, s = math.cos(heading), math.sin(heading)
        rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
        rays = np.concatenate([origins @ rot.T + position, directions @ rot.T], 1).astype(np.float32)
        scene, reflect = self._scene(t)
        hits = scene.cast_rays(self._o3d.core.Tensor(rays))
        rng_m = hits["t_hit"].numpy().astype(np.float64)
        gid = hits["geometry_ids"].numpy().astype(np.int64)
        hit = np.isfinite(rng_m) & (rng_m <= self.config.max_range_m)
        rng_m = np.where(hit, rng_m + rng.normal(0, self.config.range_noise_m, rng_m.shape), np.inf)
        table = np.zeros(max(reflect) + 2, np.int64)
        for k, v in reflect.items():
            table[k] = v
        refl = np.where(hit, table[np.clip(gid, 0, len(table) - 1)], 0)
        return rng_m, refl

    def scan(self, index: int) -> LidarScan:
        """Frame `index` (time index / rate_hz) with the configured beam pattern."""
        cfg = self.config
        elev = np.deg2rad(self.config.elevations_deg())
        voff = self.config.vertical_offsets_m()
        col = np.arange(cfg.columns)
        az = col * (2 * math.pi / cfg.columns)  # clockwise from forward, as a spinning sensor
        e, a = np.meshgrid(elev, az, indexing="xy")  # (columns, beams)
        directions = np.stack([np.cos(e) * np.cos(a), -np.cos(e) * np.sin(a), np.sin(e)], -1).reshape(-1, 3)
        origins = np.zeros_like(directions)
        origins[:, 2] = np.tile(voff, cfg.columns)
        rng = np.random.default_rng([cfg.seed, 1, index])
        t0 = index / cfg.rate_hz
        ranges, refl = self.cast(t0, directions, origins, rng)
        hit = np.isfinite(ranges)
        xyz = origins[hit] + directions[hit] * ranges[hit, None]
        points = np.concatenate([xyz, refl[hit, None]], 1).astype(np.float32)
        time = np.repeat(col / cfg.columns / cfg.rate_hz, len(elev))[hit].astype(np.float32)
        rings = np.argsort(np.argsort(elev, kind="stable"), kind="stable").astype(np.uint16)
        ring = np.tile(rings, cfg.columns)[hit]
        return LidarScan(points=points, time=time, ring=ring, stamp_ns=round(t0 * 1e9),
                         source=f"synthetic_track(seed={cfg.seed})")

    def firings(self, t: float, block_azimuths: np.ndarray, model: VelodyneModel = VLP16,
                seed_index: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(B, 32) distances (inf = no return) and reflectivities of B firing blocks (B a multiple of
        12, single return) at the block azimuths a sensor reports, cast along the exact rays the
        decoder reconstructs (`slot_azimuths`)."""
        blocks = np.asarray(block_azimuths).reshape(-1, 12)
        az = np.deg2rad(slot_azimuths(blocks, model, dual=False).reshape(-1, 32) * 0.01)  # (B, 32)
        laser = np.arange(32) % model.lasers
        elev = np.deg2rad(np.asarray(model.elevations_deg))[laser]
        directions = np.stack([np.cos(elev) * np.cos(az), -np.cos(elev) * np.sin(az),
                               np.broadcast_to(np.sin(elev), az.shape)], -1).reshape(-1, 3)
        origins = np.zeros_like(directions)
        origins[:, 2] = np.tile(model.vertical_offsets_m[laser], len(az))
        rng = np.random.default_rng([self.config.seed, 2, seed_index])
        ranges, refl = self.cast(t, directions, origins, rng)
        return ranges.reshape(-1, 32), refl.reshape(-1, 32)
