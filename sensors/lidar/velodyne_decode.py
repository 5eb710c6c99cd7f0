"""Decode Velodyne data packets (see `velodyne_models`) into points, vectorised over packets.

Every firing slot of a packet is decoded in firing-time order (in dual-return mode the two returns
of a firing are adjacent), with its own azimuth interpolated between its block's azimuth and the
next firing block's by its firing time, as the manuals prescribe. Slots without a return keep
`valid = False`; the rotation assembler still sees their azimuth, so a scan splits exactly where
the azimuth wraps even when nothing was hit there.

Packets that are not Velodyne data packets (wrong size, missing block flags, an azimuth beyond
359.99 deg, an unknown return mode or product id) are counted by reason and skipped; the first of
each reason is logged as a warning that says what was wrong.

Frame: x forward, y left, z up (ROS): x = r cos(w) cos(a), y = -r cos(w) sin(a), z = r sin(w) + v,
with w the laser's elevation, v its vertical offset (see `velodyne_models`) and a the azimuth
(clockwise seen from above, 0 = forward). A return at 0 distance is no return and has no point.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np

from sensors.lidar.velodyne_models import (
    AZIMUTH_UNITS, BLOCK_FLAG, BLOCKS, CHANNELS, DISTANCE_UNIT_M, MODELS_BY_PRODUCT, PACKET_DTYPE, PACKET_SIZE,
    RETURN_MODES, VelodyneModel, model_named, slot_azimuths,
)

logger = logging.getLogger("costream.sensors.lidar.velodyne")

ReturnFilter = Literal["all", "strongest", "last"]
REJECT_REASONS = ("wrong_size", "bad_flag", "bad_azimuth", "unknown_return_mode", "unknown_product")


@dataclass
class PacketCounters:
    """Packets seen and decoded, packets rejected by reason, and dual-return duplicates dropped."""

    packets: int = 0
    decoded: int = 0
    rejected: dict[str, int] = field(default_factory=lambda: {r: 0 for r in REJECT_REASONS})
    duplicate_returns: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"packets": self.packets, "packets_decoded": self.decoded,
                **{f"packets_{k}": v for k, v in self.rejected.items()},
                "duplicate_returns": self.duplicate_returns}


@dataclass(frozen=True, eq=False)
class DecodedPackets:
    """Every firing slot of a run of packets in firing order (M = packets x 384 slots).

    `points` (M, 4) float32, `azimuth` (M,) float64 in 0.01 deg [0, 36000), `time_us` (M,) float64
    microseconds past the hour (may pass 3.6e9 at the hour's end), `ring` (M,) uint16, `valid` (M,)
    bool (a return that passes the filters), `packet` (M,) index into `host_ns` (P,), the receive
    or capture time of each packet."""

    points: np.ndarray
    azimuth: np.ndarray
    time_us: np.ndarray
    ring: np.ndarray
    valid: np.ndarray
    packet: np.ndarray
    host_ns: np.ndarray
    model: VelodyneModel
    return_mode: str

    def __len__(self) -> int:
        return len(self.azimuth)


class VelodyneDecoder:
    """Validates and decodes packets. `model="auto"` takes the model from each packet's product id;
    naming one (`vlp16`, `vlp16_hires`, `hdl32e`) accepts any product id (older firmware sends 0).
    `returns` keeps, in dual-return mode, all returns, only the strongest or only the last."""

    def __init__(self, model: str = "auto", returns: ReturnFilter = "all",
                 min_range_m: float = 0.0, max_range_m: float = float("inf")) -> None:
        self.model = None if model == "auto" else model_named(model)
        if returns not in ("all", "strongest", "last"):
            raise ValueError(f"returns must be 'all', 'strongest' or 'last', got {returns!r}")
        if not 0 <= min_range_m < max_range_m:
            raise ValueError(f"need 0 <= min_range_m < max_range_m, got {min_range_m}, {max_range_m}")
        self.returns = returns
        self.min_range_m = min_range_m
        self.max_range_m = max_range_m
        self.counters = PacketCounters()
        self._warned: set[str] = set()

    def decode(self, payloads: Sequence[bytes], host_ns: Sequence[int]) -> list[DecodedPackets]:
        """Decode a run of UDP payloads (with their receive times); bad ones are counted and skipped.
        Returns one DecodedPackets per run of consecutive packets sharing model and return mode."""
        self.counters.packets += len(payloads)
        keep = [i for i, p in enumerate(payloads) if len(p) == PACKET_SIZE]
        if len(keep) != len(payloads):
            bad = next(p for p in payloads if len(p) != PACKET_SIZE)
            self._reject("wrong_size", len(payloads) - len(keep),
                         f"a {len(bad)}-byte UDP payload is not a {PACKET_SIZE}-byte Velodyne data packet "
                         "(position packets go to port 8308; is another device sending to this port?)")
        if not keep:
            return []
        raw = np.frombuffer(b"".join(payloads[i] for i in keep), dtype=PACKET_DTYPE)
        stamps = np.asarray(host_ns, dtype=np.int64)[keep]
        good = self._check(raw)
        raw, stamps = raw[good], stamps[good]
        if not len(raw):
            return []
        products = raw["product_id"].astype(np.int64)
        modes = raw["return_mode"].astype(np.int64)
        key = modes * 256 + (products if self.model is None else 0)
        cuts = np.flatnonzero(np.diff(key)) + 1
        out = []
        for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(raw)]):
            model = self.model or MODELS_BY_PRODUCT[int(products[lo])]
            out.append(self._decode_run(raw[lo:hi], stamps[lo:hi], model, RETURN_MODES[int(modes[lo])]))
        self.counters.decoded += len(raw)
        return out

    # Validation ----------------------------------------------------------------------------------
    def _check(self, raw: np.ndarray) -> np.ndarray:
        ok = np.ones(len(raw), bool)
        checks = [
            ("bad_flag", (raw["blocks"]["flag"] != BLOCK_FLAG).any(axis=1),
             "a packet whose blocks do not all start with the flag FF EE is not a Velodyne data packet"),
            ("bad_azimuth", (raw["blocks"]["azimuth"] >= AZIMUTH_UNITS).any(axis=1),
             f"a block azimuth of {AZIMUTH_UNITS} or more (0.01 deg units) is corrupt"),
            ("unknown_return_mode", ~np.isin(raw["return_mode"], list(RETURN_MODES)),
             "the return-mode byte is none of 0x37 strongest, 0x38 last, 0x39 dual"),
        ]
        if self.model is None:
            checks.append(("unknown_product", ~np.isin(raw["product_id"], list(MODELS_BY_PRODUCT)),
                           "the product id is none of "
                           + ", ".join(f"0x{p:02x} {m.name}" for p, m in MODELS_BY_PRODUCT.items())
                           + "; set the model explicitly if your sensor reports another id"))
        for reason, bad, why in checks:
            bad = bad & ok
            if bad.any():
                self._reject(reason, int(bad.sum()), why)
                ok &= ~bad
        return ok

    def _reject(self, reason: str, count: int, why: str) -> None:
        self.counters.rejected[reason] += count
        level = logging.DEBUG if reason in self._warned else logging.WARNING
        self._warned.add(reason)
        logger.log(level, "skipped %d Velodyne packet(s) (%s, %d so far): %s", count, reason,
                   self.counters.rejected[reason], why)

    # Decoding ------------------------------------------------------------------------------------
    def _decode_run(self, raw: np.ndarray, host_ns: np.ndarray, model: VelodyneModel,
                    mode: str) -> DecodedPackets:
        dual = mode == "dual"
        step = 2 if dual else 1
        n = len(raw)
        blocks = raw["blocks"]
        slot_az = slot_azimuths(blocks["azimuth"], model, dual)  # (P, 12, 32)
        offsets = model.channel_offsets_us()  # (32,)
        firing_block = np.arange(BLOCKS) // step
        slot_time = (raw["timestamp"].astype(np.float64)[:, None, None]
                     + (firing_block * model.block_us)[None, :, None] + offsets[None, None, :])
        distance = blocks["channels"]["distance"].astype(np.float64) * DISTANCE_UNIT_M  # (P, 12, 32)
        reflectivity = blocks["channels"]["reflectivity"]
        valid = (distance > 0) & (distance >= self.min_range_m) & (distance <= self.max_range_m)
        if dual:
            valid = self._filter_returns(valid, distance, reflectivity)
        laser = np.arange(CHANNELS) % model.lasers
        elevation = np.deg2rad(np.asarray(model.elevations_deg))[laser]  # (32,)
        azimuth_rad = np.deg2rad(slot_az * 0.01)
        horizontal = distance * np.cos(elevation)
        points = np.empty((n, BLOCKS, CHANNELS, 4), np.float32)
        points[..., 0] = horizontal * np.cos(azimuth_rad)
        points[..., 1] = -horizontal * np.sin(azimuth_rad)
        points[..., 2] = distance * np.sin(elevation) + model.vertical_offsets_m[laser]
        points[..., 3] = reflectivity
        ring = np.broadcast_to(model.rings[laser], (n, BLOCKS, CHANNELS))
        packet = np.broadcast_to(np.arange(n)[:, None, None], (n, BLOCKS, CHANNELS))
        arrays = [points, slot_az, slot_time, ring, valid, packet]
        if dual:  # (P, 6 firings, 2 returns, 32) -> (P, 6, 32, 2): both returns of a firing adjacent
            arrays = [a.reshape(n, BLOCKS // 2, 2, CHANNELS, *a.shape[3:]).swapaxes(2, 3) for a in arrays]
        points, slot_az, slot_time, ring, valid, packet = (np.ascontiguousarray(a) for a in arrays)
        return DecodedPackets(points.reshape(-1, 4), slot_az.reshape(-1), slot_time.reshape(-1),
                              ring.reshape(-1), valid.reshape(-1), packet.reshape(-1), host_ns, model, mode)

    def _filter_returns(self, valid: np.ndarray, distance: np.ndarray, reflectivity: np.ndarray) -> np.ndarray:
        """Dual mode: blocks 2k hold the last return, 2k+1 the strongest (or second strongest)."""
        last_valid, other_valid = valid[:, 0::2], valid[:, 1::2]
        same = ((distance[:, 0::2] == distance[:, 1::2]) & (reflectivity[:, 0::2] == reflectivity[:, 1::2])
                & last_valid & other_valid)  # one echo reported in both blocks
        self.counters.duplicate_returns += int(same.sum())
        out = valid.copy()
        if self.returns == "all":
            out[:, 1::2] = other_valid & ~same
        elif self.returns == "last":
            out[:, 1::2] = False
        else:  # strongest: the brighter of the two (the second block on a tie, where the sensor puts it)
            other_brighter = reflectivity[:, 1::2] >= reflectivity[:, 0::2]
            use_other = other_valid & (other_brighter | ~last_valid)
            out[:, 0::2] = last_valid & ~use_other
            out[:, 1::2] = use_other
        return out
