"""Encode firings into real Velodyne data packets (the inverse of `velodyne_decode`).

Used by the tests (known points must survive real packets and a real UDP socket) and by the
synthetic Velodyne stream, which turns synthetic scans into the packets a sensor would send. A
firing block is one block azimuth (0.01 deg) and 32 channel records (distance in metres, quantised
to 2 mm, 0 or NaN = no return; reflectivity 0..255). In dual-return mode the blocks come in pairs
with equal azimuths: the last return, then the strongest (or second strongest).
"""
from __future__ import annotations

from typing import Literal

import numpy as np

from sensors.lidar.velodyne_models import (
    AZIMUTH_UNITS, BLOCK_FLAG, BLOCKS, CHANNELS, DISTANCE_UNIT_M, HOUR_US, PACKET_DTYPE, RETURN_MODE_BYTES,
    VLP16, VelodyneModel,
)

ReturnMode = Literal["strongest", "last", "dual"]
MAX_DISTANCE_M = 65535 * DISTANCE_UNIT_M


class VelodyneEncoder:
    """`packets(azimuths, distances, reflectivity)` -> list of 1206-byte payloads."""

    def __init__(self, model: VelodyneModel = VLP16, mode: ReturnMode = "strongest") -> None:
        if mode not in RETURN_MODE_BYTES:
            raise ValueError(f"mode must be one of {sorted(RETURN_MODE_BYTES)}, got {mode!r}")
        self.model = model
        self.mode = mode

    @property
    def packet_us(self) -> float:
        """Time one packet's firings take (its timestamp step)."""
        firings = BLOCKS // 2 if self.mode == "dual" else BLOCKS
        return firings * self.model.block_us

    def packets(self, azimuths: np.ndarray, distances_m: np.ndarray, reflectivity: np.ndarray,
                start_us: float = 0.0) -> list[bytes]:
        """Blocks (B,) azimuths in 0.01 deg units, (B, 32) distances and reflectivities, B a multiple of
        12; packet p is stamped start_us + p * packet_us (microseconds past the hour, wrapping)."""
        azimuths = np.asarray(azimuths)
        distances_m = np.asarray(distances_m, dtype=np.float64)
        reflectivity = np.asarray(reflectivity)
        blocks = len(azimuths)
        if blocks % BLOCKS or distances_m.shape != (blocks, CHANNELS) or reflectivity.shape != (blocks, CHANNELS):
            raise ValueError(f"need B block azimuths (B a multiple of {BLOCKS}) and (B, {CHANNELS}) distances "
                             f"and reflectivities; got {azimuths.shape}, {distances_m.shape}, {reflectivity.shape}")
        if np.any((azimuths < 0) | (azimuths >= AZIMUTH_UNITS)):
            raise ValueError(f"block azimuths must be in [0, {AZIMUTH_UNITS}) (0.01 deg units)")
        if self.mode == "dual" and np.any(azimuths[0::2] != azimuths[1::2]):
            raise ValueError("dual-return blocks come in pairs with equal azimuths (last, then strongest)")
        if np.any((reflectivity < 0) | (reflectivity > 255)):
            raise ValueError("reflectivity must be in 0..255")
        units = np.where(np.isfinite(distances_m) & (distances_m > 0), distances_m / DISTANCE_UNIT_M, 0.0)
        units = np.rint(units)
        if units.max(initial=0) > 65535:
            raise ValueError(f"distances beyond {MAX_DISTANCE_M:.2f} m cannot be encoded")
        n = blocks // BLOCKS
        out = np.zeros(n, dtype=PACKET_DTYPE)
        out["blocks"]["flag"] = BLOCK_FLAG
        out["blocks"]["azimuth"] = azimuths.reshape(n, BLOCKS)
        out["blocks"]["channels"]["distance"] = units.reshape(n, BLOCKS, CHANNELS).astype(np.uint16)
        out["blocks"]["channels"]["reflectivity"] = reflectivity.reshape(n, BLOCKS, CHANNELS).astype(np.uint8)
        stamps = np.mod(np.rint(start_us + np.arange(n) * self.packet_us), HOUR_US)
        out["timestamp"] = stamps.astype(np.uint32)
        out["return_mode"] = RETURN_MODE_BYTES[self.mode]
        out["product_id"] = self.model.product_id
        raw = out.tobytes()
        size = PACKET_DTYPE.itemsize
        return [raw[i * size:(i + 1) * size] for i in range(n)]


def rotation_block_azimuths(blocks: int, block_us: float, rpm: float = 600.0, start: float = 0.0) -> np.ndarray:
    """Azimuths (0.01 deg units) of `blocks` consecutive firing blocks of a sensor spinning at `rpm`,
    starting at `start` units: what a real sensor reports, rounded to its resolution."""
    if rpm <= 0:
        raise ValueError(f"rpm must be positive, got {rpm}")
    units_per_us = AZIMUTH_UNITS * rpm / 60e6
    return np.mod(np.rint(start + np.arange(blocks) * block_us * units_per_us), AZIMUTH_UNITS).astype(np.int64)
