"""Runtime adapters for the LiDAR sources and the BEV rasteriser: kinds `lidar_files`, `velodyne`,
`synthetic_lidar` (sources) and `bev` (operator); the sink `bev_writer` is registered from
`sensors.lidar.bev_writer` when this module is imported.

Sources emit the point-cloud payload of `sensors.lidar.scan` ({"points", "time", "ring"}) with
meta {"frame_id", "source", "stamp_ns"}; `bev` emits {"bev": (T*C, H, W) float32} (numpy on CPU,
a torch tensor on a GPU) with the grid in meta. See docs/sensors.md.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal

import numpy as np

from sensors.lidar import bev_writer  # noqa: F401  (registers the sink kind)
from sensors.lidar.bev import CHANNELS, BEVConfig, rasterise
from sensors.lidar.bev_stack import BEVStack
from sensors.lidar.scan import LidarScan, points_from_payload
from sensors.lidar.sequence import CloudFormat, PointCloudSequence
from sensors.lidar.synthetic_track import BeamPattern, SyntheticTrack, TrackConfig
from sensors.lidar.velodyne_pcap import PcapPackets, batched
from sensors.lidar.velodyne_scans import VelodyneOptions, VelodyneScans
from sensors.lidar.velodyne_sim import synthetic_packets
from sensors.lidar.velodyne_udp import UdpPackets
from stream.frame import Frame
from stream.node import NodeContext, Operator, Source
from stream.registry import register
from stream.state import StreamStates
from stream.ports import BEV, POINTS

logger = logging.getLogger("costream.sensors.lidar.nodes")


def _doc(default: Any, doc: str) -> Any:
    return field(default=default, metadata={"doc": doc})


class _Pacer:
    """Replays sensor or file times in real time (scaled by `speed`); interruptible by `stop`."""

    def __init__(self, speed: float, stop: threading.Event) -> None:
        self.speed = speed
        self.stop = stop
        self._anchor: tuple[int, float] | None = None

    def restart(self) -> None:
        self._anchor = None

    def wait(self, stamp_ns: int | None) -> None:
        if stamp_ns is None:
            return
        now = time.monotonic()
        if self._anchor is None:
            self._anchor = (stamp_ns, now)
            return
        due = self._anchor[1] + (stamp_ns - self._anchor[0]) / 1e9 / self.speed
        if due > now:
            self.stop.wait(due - now)


class _LidarSource(Source):
    """Common parts: stop flag, max_frames, frame meta and the frame payload."""
    produces = POINTS

    def __init__(self, params: Any = None) -> None:
        super().__init__(params)
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def _frame(self, scan: LidarScan, meta: dict[str, Any]) -> Frame:
        p = self.params
        meta = {"frame_id": p.frame_id, "source": scan.source, "stamp_ns": scan.stamp_ns, **meta}
        if not scan.complete:
            meta["partial"] = True
        return self.make_frame(scan.as_payload(), p.stream or self.name, meta=meta)


# -- lidar_files ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class LidarFilesParams:
    path: str = _doc("", "a point-cloud file, a directory of them, or a glob such as 'velodyne/*.bin'")
    format: CloudFormat = _doc("auto", "auto (by suffix: .bin KITTI, .pcd.bin nuScenes, .npy, .pcd, .ply) or one of them")
    timing: Literal["free", "timestamps"] = _doc(
        "free", "free: as fast as the pipeline takes them (or rate_hz); timestamps: at the files' own times")
    speed: float = _doc(1.0, "playback speed for timing: timestamps (2.0 = twice real time)")
    loop: bool = _doc(False, "start again after the last file")
    max_frames: int | None = _doc(None, "stop after this many scans")
    on_bad_file: Literal["skip", "raise"] = _doc("skip", "an unreadable file: count, log and skip it, or stop")
    stream: str | None = _doc(None, "stream id of the frames (default: the node name)")
    frame_id: str = _doc("lidar", "meta['frame_id'] of the frames")

    def __post_init__(self) -> None:
        if not str(self.path).strip():
            raise ValueError("path is required: a point-cloud file, a directory of them or a glob")
        if not self.speed > 0:
            raise ValueError(f"speed must be positive, got {self.speed}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"max_frames must be positive or null, got {self.max_frames}")


@register("lidar_files")
class LidarFilesSource(_LidarSource):
    """Point clouds from files (KITTI, nuScenes, .npy, .pcd, .ply), replayed as one stream."""

    Params = LidarFilesParams

    def setup(self, context: NodeContext) -> None:
        super().setup(context)
        p = self.params
        self.sequence = PointCloudSequence(p.path, p.format, p.loop, p.on_bad_file)
        if p.timing == "timestamps" and self.sequence.stamps_ns is None:
            raise ValueError(f"node {self.name!r}: timing 'timestamps' needs the files' times, but {p.path!r} has no "
                             "times.txt / timestamps.txt and its file names hold no time; use timing 'free' "
                             "with rate_hz instead")

    @property
    def native_rate_hz(self) -> float | None:
        stamps = getattr(getattr(self, "sequence", None), "stamps_ns", None)
        if not stamps or len(stamps) < 2:
            return None
        step = float(np.median(np.diff(stamps)))
        return 1e9 / step if step > 0 else None

    @property
    def length(self) -> int | None:
        seq = getattr(self, "sequence", None)
        if seq is None or self.params.loop:
            return self.params.max_frames
        return len(seq) if self.params.max_frames is None else min(len(seq), self.params.max_frames)

    def stats(self) -> dict[str, int]:
        seq = getattr(self, "sequence", None)
        return {} if seq is None else seq.counters.as_dict()

    def frames(self) -> Iterator[Frame]:
        p = self.params
        pacer = _Pacer(p.speed, self._stop)
        loops = 0
        for emitted, scan in enumerate(self.sequence, start=1):
            if self._stop.is_set():
                return
            meta: dict[str, Any] = {}
            if self.sequence.counters.loops != loops:
                loops = self.sequence.counters.loops
                meta["discontinuity"] = True
                pacer.restart()
            if p.timing == "timestamps":
                pacer.wait(scan.stamp_ns)
            yield self._frame(scan, meta)
            if p.max_frames is not None and emitted >= p.max_frames:
                return


# -- velodyne ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VelodyneParams:
    pcap: str | None = _doc(None, "replay this pcap/pcapng capture; null: listen live on host:port")
    host: str = _doc("0.0.0.0", "live: the local address to listen on (the sensor sends to this host)")
    port: int = _doc(2368, "UDP data port (the sensor's default is 2368)")
    model: Literal["auto", "vlp16", "vlp16_hires", "hdl32e"] = _doc("auto", "sensor model; auto: from each packet's product id")
    returns: Literal["all", "strongest", "last"] = _doc("all", "dual-return mode: keep all returns, the strongest or the last")
    min_range_m: float = _doc(0.0, "drop returns nearer than this")
    max_range_m: float = _doc(1000.0, "drop returns farther than this")
    cut_angle_deg: float = _doc(0.0, "azimuth at which one rotation ends and the next begins (0 = straight ahead)")
    max_gap_s: float = _doc(0.1, "a pause in the packets longer than this ends the scan in progress")
    keep_partial: bool = _doc(False, "also emit partial rotations (first, cut by a gap, last), marked meta['partial']")
    timing: Literal["capture", "free"] = _doc("capture", "pcap: replay at the capture's timing, or as fast as taken")
    speed: float = _doc(1.0, "pcap replay speed with timing: capture")
    loop: bool = _doc(False, "pcap: start again at the end")
    max_frames: int | None = _doc(None, "stop after this many scans")
    stream: str | None = _doc(None, "stream id of the frames (default: the node name)")
    frame_id: str = _doc("velodyne", "meta['frame_id'] of the frames")

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, got {self.port}")
        if not self.speed > 0:
            raise ValueError(f"speed must be positive, got {self.speed}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"max_frames must be positive or null, got {self.max_frames}")
        self.options()

    def options(self) -> VelodyneOptions:
        return VelodyneOptions(self.model, self.returns, self.min_range_m, self.max_range_m,
                               self.cut_angle_deg, self.max_gap_s, self.keep_partial)


@register("velodyne")
class VelodyneSource(_LidarSource):
    """Velodyne VLP-16 / Puck Hi-Res / HDL-32E scans, live over UDP or replayed from a capture.

    Bad packets (wrong size, not Velodyne, unknown model) are counted by reason in the node's
    counters and skipped; partial rotations are dropped and counted unless `keep_partial`."""
    @classmethod
    def is_live(cls, params: Any) -> bool:
        return params.pcap is None  # a live sensor on UDP, not a capture replay

    Params = VelodyneParams

    def __init__(self, params: VelodyneParams | None = None) -> None:
        super().__init__(params)
        self._udp: UdpPackets | None = None
        self._scans: VelodyneScans | None = None
        self._captures: list[PcapPackets] = []

    def setup(self, context: NodeContext) -> None:
        super().setup(context)
        p = self.params
        if p.pcap is None:
            self._udp = UdpPackets(p.host, p.port)  # bind now: a taken port stops the pipeline before it starts
        else:
            PcapPackets(p.pcap, p.port).check()  # a missing or foreign file stops the pipeline before it starts

    @property
    def address(self) -> tuple[Any, ...] | None:
        """The bound (host, port) when listening live (port 0 binds a free one)."""
        return None if self._udp is None else self._udp.address

    def stop(self) -> None:
        super().stop()
        if self._udp is not None:
            self._udp.stop()

    def teardown(self) -> None:
        if self._udp is not None:
            self._udp.close()

    def stats(self) -> dict[str, int]:
        out = {} if self._scans is None else self._scans.counters()
        for capture in self._captures[-1:]:
            out.update(capture.counters.as_dict())
        if self._udp is not None:
            out["udp_datagrams"] = self._udp.datagrams
        return out

    def _packet_batches(self) -> Iterator[list[tuple[int, bytes]]]:
        p = self.params
        if self._udp is not None:
            yield from self._udp
            return
        while not self._stop.is_set():
            capture = PcapPackets(p.pcap, p.port)  # type: ignore[arg-type]
            self._captures.append(capture)
            yield from batched(iter(capture))
            if not p.loop:
                return

    def frames(self) -> Iterator[Frame]:
        p = self.params
        source = p.pcap or f"udp://{p.host}:{p.port}"
        self._scans = VelodyneScans(self._packet_batches(), p.options(), source=source)
        pacer = _Pacer(p.speed, self._stop)
        last_stamp: int | None = None
        for emitted, scan in enumerate(self._scans, start=1):
            if self._stop.is_set():
                return
            meta: dict[str, Any] = {}
            if p.pcap is not None and last_stamp is not None and scan.stamp_ns is not None and scan.stamp_ns < last_stamp:
                meta["discontinuity"] = True  # the capture looped
                pacer.restart()
            last_stamp = scan.stamp_ns
            if p.pcap is not None and p.timing == "capture":
                pacer.wait(scan.stamp_ns)
            yield self._frame(scan, meta)
            if p.max_frames is not None and emitted >= p.max_frames:
                return


# -- synthetic_lidar -----------------------------------------------------------------------------
@dataclass(frozen=True)
class SyntheticLidarParams:
    frames: int | None = _doc(200, "scans to produce; null: endless")
    seed: int = _doc(0, "scene and noise seed (same seed, same scans)")
    beams: BeamPattern = _doc("vlp16", "vlp16 (its 16 elevations), 64 or 128 uniformly spread beams")
    columns: int = _doc(1800, "azimuth steps per turn (raycast mode)")
    rate_hz: float = _doc(10.0, "scans per second of the simulated sensor (the native rate)")
    cars: int = _doc(4, "other cars lapping the track")
    range_noise_m: float = _doc(0.01, "range noise (standard deviation, metres)")
    max_range_m: float = _doc(100.0, "longest return")
    mode: Literal["raycast", "packets"] = _doc(
        "raycast", "raycast: scans straight from the ray caster; packets: through encoded VLP-16 packets and the decoder")
    stream: str | None = _doc(None, "stream id of the frames (default: the node name)")
    frame_id: str = _doc("lidar", "meta['frame_id'] of the frames")

    def __post_init__(self) -> None:
        if self.frames is not None and self.frames < 0:
            raise ValueError(f"frames must be >= 0 or null, got {self.frames}")
        if self.mode == "packets" and self.beams != "vlp16":
            raise ValueError("mode 'packets' simulates a VLP-16: set beams: vlp16")
        self.track_config()

    def track_config(self) -> TrackConfig:
        return TrackConfig(seed=self.seed, beams=self.beams, columns=self.columns, rate_hz=self.rate_hz,
                           cars=self.cars, range_noise_m=self.range_noise_m, max_range_m=self.max_range_m)


@register("synthetic_lidar")
class SyntheticLidarSource(_LidarSource):
    """Deterministic scans of a synthetic race track (Open3D ray casting); see `synthetic_track`."""

    Params = SyntheticLidarParams

    def setup(self, context: NodeContext) -> None:
        super().setup(context)
        self.track = SyntheticTrack(self.params.track_config())

    @property
    def native_rate_hz(self) -> float | None:
        return self.params.rate_hz

    @property
    def length(self) -> int | None:
        return self.params.frames

    def _scans(self) -> Iterator[LidarScan]:
        p = self.params
        if p.mode == "raycast":
            index = 0
            while p.frames is None or index < p.frames:
                yield self.track.scan(index)
                index += 1
            return
        packets = synthetic_packets(self.track)
        batches = batched((round(us * 1e3), payload) for us, payload in packets)
        yield from VelodyneScans(batches, VelodyneOptions(model="vlp16"), source=f"synthetic_vlp16(seed={p.seed})")

    def frames(self) -> Iterator[Frame]:
        p = self.params
        if p.frames == 0:
            return
        for index, scan in enumerate(self._scans()):
            if self._stop.is_set():
                return
            yield self._frame(scan, {"frame_index": index})
            if p.frames is not None and index + 1 >= p.frames:
                return


# -- bev -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BEVParams:
    preset: Literal["ppn", "none"] = _doc(
        "none", "ppn: the Parallel Perception Network's map (occupancy of z in [0, 5) m, 0.2 m cells, 16 frames)")
    grid: int | None = _doc(None, "cells per side of a square grid centred on the sensor (preset ppn: 1000)")
    cell_size: float = _doc(0.2, "cell side in metres")
    x_range: tuple[float, float] | None = _doc(None, "[min, max] metres forward (instead of grid)")
    y_range: tuple[float, float] | None = _doc(None, "[min, max] metres left (instead of grid)")
    z_range: tuple[float, float] = _doc((0.0, 5.0), "points kept: z_min <= z < z_max (metres)")
    channels: tuple[str, ...] = _doc(("occupancy",), "any of occupancy, max_height, mean_intensity, density")
    density_max: int = _doc(64, "points per cell at which the density channel reaches 1")
    history: int | None = _doc(None, "maps stacked per stream, oldest first (preset ppn: 16; else 1)")
    backend: Literal["auto", "numpy", "torch", "cupy"] = _doc(
        "auto", "auto: numpy on a CPU device, torch on a GPU; cupy needs CuPy and a GPU")
    idle_timeout_s: float | None = _doc(60.0, "forget a stream's stack after this long without frames")
    reset_on_gap: bool = _doc(True, "a jump in a stream's seq (or meta['discontinuity']) empties its stack")
    max_streams: int | None = _doc(64, "stacks held at most (the least recently seen stream is evicted)")

    def __post_init__(self) -> None:
        if self.history is not None and self.history < 1:
            raise ValueError(f"history must be at least 1 map, got {self.history}")
        if (self.x_range is None) != (self.y_range is None):
            raise ValueError("give both x_range and y_range, or neither (then grid)")
        if self.x_range is not None and self.grid is not None:
            raise ValueError("give either grid or x_range/y_range, not both")
        unknown = [c for c in self.channels if c not in CHANNELS]
        if unknown:
            raise ValueError(f"unknown BEV channel(s) {unknown}; choose from {list(CHANNELS)}")
        self.config()

    @property
    def frames(self) -> int:
        return self.history if self.history is not None else (16 if self.preset == "ppn" else 1)

    def config(self) -> BEVConfig:
        if self.preset == "ppn":
            return BEVConfig.ppn(self.grid or 1000, self.cell_size)
        if self.x_range is not None and self.y_range is not None:
            return BEVConfig(tuple(self.x_range), tuple(self.y_range), tuple(self.z_range), self.cell_size,
                             tuple(self.channels), self.density_max)
        return BEVConfig.centred(self.grid or 512, self.cell_size, tuple(self.z_range), tuple(self.channels),
                                 self.density_max)


@register("bev")
class BEVNode(Operator):
    """Point clouds to BEV maps, with a per-stream temporal stack of the last `history` maps.

    One map is rasterised per frame; the stack is continual state (`BEVStack`), never rebuilt
    from N clouds. On a GPU device the map is made there (torch, or CuPy) and stays there."""
    consumes = POINTS
    produces = BEV

    Params = BEVParams
    outputs_follow_inputs = True

    def setup(self, context: NodeContext) -> None:
        super().setup(context)
        p = self.params
        self.config = p.config()
        device = context.device
        on_gpu = device.startswith("cuda")
        backend = p.backend if p.backend != "auto" else ("torch" if on_gpu else "numpy")
        if backend == "numpy" and on_gpu:
            raise ValueError(f"node {self.name!r}: backend numpy runs on the CPU but the node's device is {device!r}; "
                             "use backend torch or cupy, or device cpu")
        if backend == "torch":
            from sensors.lidar.bev_torch import TorchRasteriser

            self._rasterise = TorchRasteriser(self.config, device if on_gpu else "cpu")
        elif backend == "cupy":
            from sensors.lidar.bev_cupy import CupyRasteriser

            index = int(device.partition(":")[2] or 0) if on_gpu else 0
            self._rasterise = CupyRasteriser(self.config, index)
        else:
            self._rasterise = lambda points: rasterise(points, self.config)
        self.backend = backend
        self.maps_rasterised = 0
        self.stacks: StreamStates[BEVStack] = StreamStates(
            factory=lambda stream: BEVStack(p.frames), idle_timeout_s=p.idle_timeout_s,
            reset_on_gap=p.reset_on_gap, max_streams=p.max_streams, owner=f"node {self.name!r}")
        cfg = self.config
        self._meta = {"bev_x_range": cfg.x_range, "bev_y_range": cfg.y_range, "bev_z_range": cfg.z_range,
                      "bev_cell_size": cfg.cell_size, "bev_channels": cfg.channels, "bev_history": p.frames}

    def process(self, frame: Frame) -> Frame:
        points = points_from_payload(frame.data, f"node {self.name!r} stream {frame.stream!r} seq {frame.seq}")
        bev = self._rasterise(points)
        self.maps_rasterised += 1
        if frame.meta.get("discontinuity") and frame.stream in self.stacks:
            self.stacks.reset(frame.stream)
        stack = self.stacks.get(frame).push(bev)
        return frame.derive({"bev": stack}, meta=self._meta)

    def stats(self) -> dict[str, int]:
        stacks = getattr(self, "stacks", None)
        if stacks is None:
            return {}
        c = stacks.counters
        return {"maps_rasterised": self.maps_rasterised, "streams": len(stacks), "gap_resets": c.gap_resets,
                "evicted_idle": c.evicted, "evicted_for_room": c.evicted_for_room}
