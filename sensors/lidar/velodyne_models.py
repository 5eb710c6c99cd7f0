"""Velodyne sensor models whose data packets costream decodes, from the published user manuals.

A data packet (UDP payload, 1206 bytes) is 12 blocks of 100 bytes, then a 4-byte timestamp
(microseconds past the hour, little-endian) and two factory bytes: the return mode and the product
id. A block is the flag 0xFFEE (bytes FF EE), the azimuth (uint16 LE, 0.01 deg) and 32 channel
records of 3 bytes (distance uint16 LE in 2 mm units, 0 = no return; reflectivity uint8). The
16-laser pucks fire all lasers twice per block (two firing sequences); the HDL-32E fires its 32
lasers once. The pucks' manuals also give each laser's vertical offset from the sensor origin
(up to 11.2 mm); a point is that origin plus the distance along the beam. In dual-return mode consecutive block pairs hold the two returns of the same firings
(last, then strongest, or second strongest when the strongest is also the last).

The 64-laser HDL-64E is not decoded here: its lasers need the per-unit calibration file of each
sensor. velodyne-decoder (PyPI) reads it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PACKET_SIZE = 1206
BLOCKS = 12
BLOCK_SIZE = 100
CHANNELS = 32
BLOCK_FLAG = 0xEEFF  # bytes FF EE read as uint16 little-endian
DISTANCE_UNIT_M = 0.002
AZIMUTH_UNITS = 36000  # 0.01 deg per unit
UDP_DATA_PORT = 2368
HOUR_US = 3_600_000_000

RETURN_MODES = {0x37: "strongest", 0x38: "last", 0x39: "dual"}
RETURN_MODE_BYTES = {name: code for code, name in RETURN_MODES.items()}

PACKET_DTYPE = np.dtype([
    ("blocks", [("flag", "<u2"), ("azimuth", "<u2"),
                ("channels", [("distance", "<u2"), ("reflectivity", "u1")], (CHANNELS,))], (BLOCKS,)),
    ("timestamp", "<u4"), ("return_mode", "u1"), ("product_id", "u1"),
])
if PACKET_DTYPE.itemsize != PACKET_SIZE:  # a layout mistake here would decode garbage silently
    raise RuntimeError(f"Velodyne packet layout is {PACKET_DTYPE.itemsize} bytes, expected {PACKET_SIZE}")


@dataclass(frozen=True)
class VelodyneModel:
    """Geometry and timing of one model. `elevations_deg[i]` is laser i's vertical angle; a block
    holds `sequences` firing sequences of `lasers` lasers, fired `laser_us` apart, one sequence
    every `sequence_us`."""

    name: str
    product_id: int
    lasers: int
    sequences: int
    laser_us: float
    sequence_us: float
    elevations_deg: tuple[float, ...]
    vertical_offsets_mm: tuple[float, ...] | None = None  # each laser's height above the sensor origin

    def __post_init__(self) -> None:
        if len(self.elevations_deg) != self.lasers or self.lasers * self.sequences != CHANNELS:
            raise ValueError(f"{self.name}: {self.lasers} lasers x {self.sequences} sequences must fill "
                             f"{CHANNELS} channels, with one elevation per laser")
        if self.vertical_offsets_mm is not None and len(self.vertical_offsets_mm) != self.lasers:
            raise ValueError(f"{self.name}: one vertical offset per laser")

    @property
    def vertical_offsets_m(self) -> np.ndarray:
        """(lasers,) height of each laser's origin: a point is origin + r * beam direction."""
        if self.vertical_offsets_mm is None:
            return np.zeros(self.lasers)
        return np.asarray(self.vertical_offsets_mm) * 1e-3

    @property
    def block_us(self) -> float:
        """Time one block's firings take (the azimuth advances one block step in it)."""
        return self.sequences * self.sequence_us

    @property
    def rings(self) -> np.ndarray:
        """Ring of each laser: its rank by elevation, 0 = lowest beam (as ROS drivers number them)."""
        order = np.argsort(np.asarray(self.elevations_deg), kind="stable")
        rings = np.empty(self.lasers, np.uint16)
        rings[order] = np.arange(self.lasers, dtype=np.uint16)
        return rings

    def channel_offsets_us(self) -> np.ndarray:
        """(CHANNELS,) firing time of each channel record from the start of its block."""
        seq = np.repeat(np.arange(self.sequences), self.lasers)
        laser = np.tile(np.arange(self.lasers), self.sequences)
        return seq * self.sequence_us + laser * self.laser_us


VLP16 = VelodyneModel(
    "vlp16", 0x22, 16, 2, 2.304, 55.296,
    (-15, 1, -13, 3, -11, 5, -9, 7, -7, 9, -5, 11, -3, 13, -1, 15),
    (11.2, -0.7, 9.7, -2.2, 8.1, -3.7, 6.6, -5.1, 5.1, -6.6, 3.7, -8.1, 2.2, -9.7, 0.7, -11.2))
VLP16_HIRES = VelodyneModel(
    "vlp16_hires", 0x24, 16, 2, 2.304, 55.296,
    (-10.0, 0.67, -8.67, 2.0, -7.33, 3.33, -6.0, 4.67, -4.67, 6.0, -3.33, 7.33, -2.0, 8.67, -0.67, 10.0),
    (7.4, -0.9, 6.5, -1.8, 5.5, -2.7, 4.6, -3.7, 3.7, -4.6, 2.7, -5.5, 1.8, -6.5, 0.9, -7.4))
HDL32E = VelodyneModel(
    "hdl32e", 0x21, 32, 1, 1.152, 46.08,
    (-30.67, -9.33, -29.33, -8.0, -28.0, -6.67, -26.67, -5.33, -25.33, -4.0, -24.0, -2.67, -22.67, -1.33,
     -21.33, 0.0, -20.0, 1.33, -18.67, 2.67, -17.33, 4.0, -16.0, 5.33, -14.67, 6.67, -13.33, 8.0, -12.0,
     9.33, -10.67, 10.67))

MODELS: dict[str, VelodyneModel] = {m.name: m for m in (VLP16, VLP16_HIRES, HDL32E)}
MODELS_BY_PRODUCT: dict[int, VelodyneModel] = {m.product_id: m for m in MODELS.values()}


def model_named(name: str) -> VelodyneModel:
    if name not in MODELS:
        raise ValueError(f"unknown Velodyne model {name!r}; supported: {', '.join(MODELS)} (or 'auto' to take "
                         "it from each packet's product id)")
    return MODELS[name]


def slot_azimuths(block_azimuths: np.ndarray, model: VelodyneModel, dual: bool) -> np.ndarray:
    """(P, 12, 32) azimuth of every firing slot (0.01 deg units, [0, 36000)) from the (P, 12) block
    azimuths of P packets: each slot advances from its block's azimuth towards the next firing
    block's by its firing time; a packet's last firing block takes the step before it (the next
    packet is not known yet). The decoder and the synthetic scans (which cast their rays exactly
    where the decoder will put the points) share this."""
    step = 2 if dual else 1
    az = np.asarray(block_azimuths, dtype=np.float64)
    delta = np.mod(az[:, step:] - az[:, :-step], AZIMUTH_UNITS)
    delta = np.concatenate([delta, delta[:, -step:]], axis=1)
    fraction = model.channel_offsets_us() / model.block_us
    return np.mod(az[:, :, None] + delta[:, :, None] * fraction, AZIMUTH_UNITS)
