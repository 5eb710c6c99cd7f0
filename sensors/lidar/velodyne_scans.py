"""Packets to scans: validate and decode runs of UDP payloads, then assemble whole rotations.

`VelodyneScans(batches)` is a plain iterator of `LidarScan` over any source of packet batches (a
capture file, a live socket), each batch a list of (receive or capture time in ns, UDP payload).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

from sensors.lidar.rotation import RotationAssembler
from sensors.lidar.scan import LidarScan
from sensors.lidar.velodyne_decode import ReturnFilter, VelodyneDecoder

Packet = tuple[int, bytes]


@dataclass(frozen=True)
class VelodyneOptions:
    """How packets become scans (see `VelodyneDecoder` and `RotationAssembler`)."""

    model: str = "auto"
    returns: ReturnFilter = "all"
    min_range_m: float = 0.0
    max_range_m: float = float("inf")
    cut_angle_deg: float = 0.0
    max_gap_s: float = 0.1
    keep_partial: bool = False

    def __post_init__(self) -> None:
        self.decoder()  # validate now: errors before a socket or file is opened
        self.assembler()

    def decoder(self) -> VelodyneDecoder:
        return VelodyneDecoder(self.model, self.returns, self.min_range_m, self.max_range_m)

    def assembler(self, source: str = "velodyne") -> RotationAssembler:
        return RotationAssembler(self.cut_angle_deg, self.max_gap_s, self.keep_partial, source)


class VelodyneScans:
    """Iterate the scans of `batches`; `counters()` gives the packet and rotation counters."""

    def __init__(self, batches: Iterable[list[Packet]], options: VelodyneOptions = VelodyneOptions(),
                 source: str = "velodyne") -> None:
        self._batches = batches
        self.decoder = options.decoder()
        self.assembler = options.assembler(source)

    def __iter__(self) -> Iterator[LidarScan]:
        for batch in self._batches:
            if not batch:
                continue
            stamps = [stamp for stamp, _ in batch]
            payloads = [payload for _, payload in batch]
            for run in self.decoder.decode(payloads, stamps):
                yield from self.assembler.add(run)
        yield from self.assembler.flush()

    def counters(self) -> dict[str, int]:
        return {**self.decoder.counters.as_dict(), **self.assembler.counters.as_dict()}
