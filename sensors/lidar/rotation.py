"""Assemble decoded Velodyne firings into whole rotations (one scan per turn of the sensor).

A scan ends exactly where the azimuth, measured from the cut angle, wraps: the first firing slot
whose azimuth is more than half a turn below the previous slot's starts the next scan (small
backward steps are the sensor's azimuth jitter, not a wrap). A pause in the packets longer than
`max_gap_s` (lost packets, a stopped capture) also ends the scan. A scan that did not both start
and end at a wrap (the first one, usually, and one cut by a gap or by the end of the stream) is
partial: it is dropped and counted unless `keep_partial`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from sensors.lidar.scan import LidarScan
from sensors.lidar.velodyne_decode import DecodedPackets
from sensors.lidar.velodyne_models import AZIMUTH_UNITS, HOUR_US

logger = logging.getLogger("costream.sensors.lidar.velodyne")
HALF_TURN = AZIMUTH_UNITS // 2


@dataclass
class RotationCounters:
    scans: int = 0
    partial_scans: int = 0  # emitted with keep_partial
    partial_dropped: int = 0
    gaps: int = 0  # pauses longer than max_gap_s inside the stream

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class RotationAssembler:
    """`add(decoded)` returns the scans completed by these firings; `flush()` ends the stream."""

    def __init__(self, cut_angle_deg: float = 0.0, max_gap_s: float = 0.1, keep_partial: bool = False,
                 source: str = "velodyne") -> None:
        if not 0.0 <= cut_angle_deg < 360.0:
            raise ValueError(f"cut_angle_deg must be in [0, 360), got {cut_angle_deg}")
        if max_gap_s <= 0:
            raise ValueError(f"max_gap_s must be positive, got {max_gap_s}")
        self.cut_units = cut_angle_deg * 100.0
        self.max_gap_us = max_gap_s * 1e6
        self.keep_partial = keep_partial
        self.source = source
        self.counters = RotationCounters()
        self._pieces: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # points, time_us, ring
        self._start: tuple[float, int] | None = None  # (time_us, host_ns) of the scan's first slot
        self._started_at_wrap = False
        self._last: tuple[float, float] | None = None  # (relative azimuth, time_us) of the last slot
        self._told_first = False

    def add(self, decoded: DecodedPackets) -> list[LidarScan]:
        if len(decoded) == 0:
            return []
        rel = np.mod(decoded.azimuth - self.cut_units, AZIMUTH_UNITS)
        t = decoded.time_us
        prev_rel = np.empty_like(rel)
        prev_t = np.empty_like(t)
        prev_rel[1:], prev_t[1:] = rel[:-1], t[:-1]
        if self._last is None:  # the stream's first slot starts a scan, but not at a wrap
            prev_rel[0], prev_t[0] = rel[0], t[0]
        else:
            prev_rel[0], prev_t[0] = self._last
        wrap = rel < prev_rel - HALF_TURN
        gap = np.mod(t - prev_t, HOUR_US) > self.max_gap_us
        self._last = (float(rel[-1]), float(t[-1]))
        scans: list[LidarScan] = []
        bounds = np.flatnonzero(wrap | gap)
        lo = 0
        for b in [*bounds.tolist(), len(rel)]:
            if b > lo:
                self._append(decoded, lo, b)
            if b == len(rel):
                break
            if gap[b]:
                self.counters.gaps += 1
                logger.warning("%s: %.1f ms without packets; the scan in progress ends there (partial)",
                               self.source, np.mod(t[b] - prev_t[b], HOUR_US) / 1e3)
            scans.extend(self._close(ended_at_wrap=bool(wrap[b]) and not gap[b]))
            self._started_at_wrap = bool(wrap[b]) and not gap[b]
            lo = b
        return scans

    def flush(self) -> list[LidarScan]:
        """The stream ended: the scan in progress is partial."""
        out = self._close(ended_at_wrap=False)
        self._last = None
        self._started_at_wrap = False
        return out

    def _append(self, decoded: DecodedPackets, lo: int, hi: int) -> None:
        if self._start is None:
            self._start = (float(decoded.time_us[lo]), int(decoded.host_ns[decoded.packet[lo]]))
        keep = decoded.valid[lo:hi]
        self._pieces.append((decoded.points[lo:hi][keep], decoded.time_us[lo:hi][keep], decoded.ring[lo:hi][keep]))

    def _close(self, ended_at_wrap: bool) -> list[LidarScan]:
        if self._start is None:
            return []
        t0, host_ns = self._start
        pieces, self._pieces, self._start = self._pieces, [], None
        complete = self._started_at_wrap and ended_at_wrap
        if not complete and not self.keep_partial:
            self.counters.partial_dropped += 1
            level = logging.DEBUG if self._told_first else logging.INFO
            self._told_first = True
            logger.log(level, "%s: dropped a partial rotation (%d so far; the first one usually starts "
                       "mid-turn; keep_partial keeps them)", self.source, self.counters.partial_dropped)
            return []
        points = np.concatenate([p[0] for p in pieces]) if pieces else np.zeros((0, 4), np.float32)
        time_us = np.concatenate([p[1] for p in pieces]) if pieces else np.zeros(0)
        ring = np.concatenate([p[2] for p in pieces]) if pieces else np.zeros(0, np.uint16)
        time = (np.mod(time_us - t0, HOUR_US) * 1e-6).astype(np.float32)
        self.counters.scans += 1
        if not complete:
            self.counters.partial_scans += 1
        return [LidarScan(points=np.ascontiguousarray(points), time=time, ring=np.ascontiguousarray(ring),
                          stamp_ns=host_ns, source=self.source, complete=complete)]
