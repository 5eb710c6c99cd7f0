"""Node kinds for ROS 2 recordings and Foxglove: the `mcap` source, the `mcap_record` and `foxglove_live` sinks.

`mcap` replays the images and point clouds of an MCAP recording, one stream per topic, in the
payloads of the other sources, so the same models run on them:
- images (Image, CompressedImage): `{"video": float32 (3, H, W) normalised, "image": uint8 BGR preview}`,
  exactly what the `video` source emits (same presets, `image` only with `keep_image: true`);
- point clouds (PointCloud2): `{"points": float32 (N, 4) x, y, z, intensity, "time": float32 (N,)
  seconds from scan start, "ring": uint16 (N,)}` (`time`/`ring` when the cloud has them).
`meta` carries `topic`, `frame_id`, `stamp_ns` (the header stamp), `log_time_ns` and `type`.
`t_capture` is the monotonic time the message was replayed, so latency is measured from the replay.

`mcap_record` writes outputs to an MCAP file and `foxglove_live` serves them to Foxglove over its
WebSocket protocol; both publish the same topics and schemas (`sensors.mcap.foxglove_out`).
"""
from __future__ import annotations

import ipaddress
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import foxglove
from foxglove.mcap import MCAPCompression, MCAPWriteOptions

from sensors.mcap.foxglove_out import FoxgloveOutputParams, FoxglovePublisher
from sensors.mcap.images import CameraImage, ImageDecodeError
from sensors.mcap.reader import McapReader, RosMessage
from sensors.video.nodes import TransformParams
from sensors.video.transforms import preview
from stream.frame import Frame, now_ns
from stream.node import NodeContext, Sink, Source
from stream.registry import register
from stream.ports import ANY, IMAGE, POINTS, VIDEO

logger = logging.getLogger("costream.sensors.mcap.nodes")


# ------------------------------------------------------------------------------------------- source


@dataclass(frozen=True)
class McapSourceParams(TransformParams):
    path: str = field(kw_only=True)  # an .mcap file or a rosbag2 directory of them
    # topics to replay, one stream each (default: every Image, CompressedImage and PointCloud2 topic)
    topics: tuple[str, ...] | None = None
    streams: dict[str, str] = field(default_factory=dict)  # stream id per topic (default: the topic name)
    pace: Literal["log_time", "free"] = "log_time"  # log_time: replay at the recorded timing; free: as fast as taken
    speed: float = 1.0  # with pace log_time: a multiple of the recorded rate (2.0 = twice as fast)
    loop: bool = False  # start again at the end (each stream's first frame of a pass is a discontinuity)
    max_frames: int | None = None  # stop after this many frames in total
    on_malformed: Literal["skip", "raise"] = "skip"  # a message that does not decode: count and skip, or stop
    on_truncated: Literal["raise", "read_available"] = "raise"  # a file cut short: refuse, or replay up to the cut
    keep_invalid_points: bool = False  # keep points with a NaN/inf x, y or z (dropped and counted by default)
    # single-channel depth images (16UC1, 32FC1): values mapped to 0..255 for the video path; null: per-frame min..max
    depth_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not str(self.path).strip():
            raise ValueError("path is required: an .mcap file or a rosbag2 directory")
        if not self.speed > 0:
            raise ValueError(f"speed must be positive (1.0 = recorded rate), got {self.speed}; use pace: free to "
                             f"replay as fast as the pipeline takes frames")
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"max_frames must be positive or null, got {self.max_frames}")
        if self.topics is not None and not self.topics:
            raise ValueError("topics must name at least one topic, or be null for every image and point-cloud topic")
        if self.depth_range is not None and not self.depth_range[1] > self.depth_range[0]:
            raise ValueError(f"depth_range must be (min, max) with max > min, got {self.depth_range}")


@register("mcap")
class McapSource(Source):
    """Images and point clouds from a ROS 2 recording (MCAP), one stream per topic, paced by log time.

    Leave the node's `rate_hz` unset: the source paces itself by the recorded log times (`pace`,
    `speed`). The file is opened and its topics checked in `setup`, so a missing, truncated or corrupt
    file or an unknown topic stops the pipeline before it starts.
    """
    produces = (VIDEO, POINTS, IMAGE, ANY)  # by topic: camera images, point clouds

    Params = McapSourceParams

    def __init__(self, params: McapSourceParams | None = None, *, clock: Callable[[], int] = now_ns,
                 wait: Callable[[float], bool] | None = None) -> None:
        super().__init__(params)
        self._transform = self.params.transform()
        self._clock = clock
        self._stop = threading.Event()
        self._wait = wait if wait is not None else self._stop.wait  # returns True when asked to stop
        self._reader: McapReader | None = None
        self.frames_out = 0
        self.passes = 0

    def setup(self, context: NodeContext) -> None:
        super().setup(context)
        p = self.params
        self._stop.clear()
        self._reader = McapReader(p.path, p.topics, on_truncated=p.on_truncated, on_malformed=p.on_malformed,
                                  keep_invalid_points=p.keep_invalid_points)
        unknown = [t for t in p.streams if t not in self._reader.selected]
        if unknown:
            raise ValueError(f"streams names topics that are not replayed: {unknown}; replayed topics: "
                             f"{list(self._reader.selected)}")
        if not self._reader.selected:
            raise ValueError(f"{p.path} has no Image, CompressedImage or PointCloud2 topic to replay; its topics: "
                             f"{self._reader.describe_topics()}")

    @property
    def reader(self) -> McapReader | None:
        return self._reader

    @property
    def length(self) -> int | None:
        count = None if self._reader is None or self.params.loop else self._reader.message_count
        limit = self.params.max_frames
        return limit if count is None else count if limit is None else min(count, limit)

    def stream_ids(self) -> list[str]:
        return [self.stream_of(t) for t in (self._reader.selected if self._reader else ())]

    def stream_of(self, topic: str) -> str:
        return self.params.streams.get(topic, topic)

    def stop(self) -> None:
        self._stop.set()

    def stats(self) -> dict[str, int]:
        counters = self._reader.counters.as_dict() if self._reader is not None else {}
        return {**{k: v for k, v in counters.items() if v}, "frames": self.frames_out, "passes": self.passes}

    def frames(self) -> Iterator[Frame]:
        if self._reader is None:
            raise RuntimeError("mcap source used before setup(); the runtime calls setup first")
        p = self.params
        while not self._stop.is_set():
            self.passes += 1
            first_log: int | None = None
            start = self._clock()
            fresh = set(self._reader.selected) if self.passes > 1 else set()
            emitted = 0
            for message in self._reader:
                if p.pace == "log_time":
                    first_log = message.log_time_ns if first_log is None else first_log
                    due = start + int((message.log_time_ns - first_log) / p.speed)
                    ahead = due - self._clock()
                    if ahead > 0 and self._wait(ahead / 1e9):
                        return
                if self._stop.is_set():
                    return
                try:
                    frame = self._frame(message, discontinuity=message.topic in fresh)
                except ImageDecodeError as exc:  # e.g. a 2-channel image has no BGR view
                    self._reader.reject(message, exc)
                    continue
                fresh.discard(message.topic)
                emitted += 1
                self.frames_out += 1
                yield frame
                if p.max_frames is not None and self.frames_out >= p.max_frames:
                    return
            if not p.loop or emitted == 0:
                return

    def _frame(self, message: RosMessage, discontinuity: bool) -> Frame:
        meta: dict[str, Any] = {"topic": message.topic, "frame_id": message.frame_id, "stamp_ns": message.stamp_ns,
                                "log_time_ns": message.log_time_ns, "type": message.type, "source": str(self.params.path)}
        if discontinuity:
            meta["discontinuity"] = True
        if isinstance(message.data, CameraImage):
            meta["encoding"] = message.data.encoding
            image = message.data.bgr8(self.params.depth_range)
            data: dict[str, Any] = {"video": self._transform(image)}
            if self.params.keep_image:
                data["image"] = preview(image, self.params.preview_width)
        else:
            data = message.data.as_payload()
            meta["invalid_points"] = message.data.invalid
        return self.make_frame(data, self.stream_of(message.topic), t_capture=self._clock(), meta=meta)


# --------------------------------------------------------------------------------------------- sinks


class _FoxgloveSink(Sink):
    """Shared by the two sinks: a Foxglove context and the publisher that logs frames onto it."""
    consumes = ANY  # images, point clouds, BEV maps, scores, latency

    def __init__(self, params: Any = None, *, clock: Callable[[], int] = now_ns) -> None:
        super().__init__(params)
        self._clock = clock
        self.foxglove_context: foxglove.Context | None = None
        self.publisher: FoxglovePublisher | None = None

    def _start_publisher(self) -> None:
        self.foxglove_context = foxglove.Context()
        self.publisher = FoxglovePublisher(self.params, self.foxglove_context, clock=self._clock)

    def process(self, frame: Frame) -> None:
        if self.publisher is None:
            raise RuntimeError(f"{self.kind} used before setup(); the runtime calls setup first")
        self.publisher.publish(frame)

    def stats(self) -> dict[str, int]:
        if self.publisher is None:
            return {}
        c = self.publisher.counters
        return {"frames": c.frames, "messages": c.messages, "unsubscribed": c.unsubscribed,
                "empty_frames": c.empty_frames}

    def _close_publisher(self) -> None:
        if self.publisher is not None:
            self.publisher.close()


@dataclass(frozen=True)
class McapRecordParams(FoxgloveOutputParams):
    path: str = "out/costream.mcap"  # the MCAP file to write; parent folders are created
    overwrite: bool = True  # replace an existing file (false: refuse to start)
    compression: Literal["zstd", "lz4", "none"] = "zstd"  # chunk compression

    def __post_init__(self) -> None:
        super().__post_init__()
        if not str(self.path).strip():
            raise ValueError("path is required: the .mcap file to write")


@register("mcap_record")
class McapRecord(_FoxgloveSink):
    """Writes outputs (images with labels, point clouds, BEV maps, labels and scores, latency) to an MCAP
    file with Foxglove's well-known schemas: open it in Foxglove to see them on a timeline."""

    Params = McapRecordParams

    def setup(self, context: NodeContext) -> None:
        super().setup(context)
        p = self.params
        path = Path(p.path).expanduser()
        if path.exists() and not p.overwrite:
            raise FileExistsError(f"{path} exists and overwrite is false; remove it or set overwrite: true")
        path.parent.mkdir(parents=True, exist_ok=True)
        compression = {"zstd": MCAPCompression.Zstd, "lz4": MCAPCompression.Lz4, "none": None}[p.compression]
        self._start_publisher()
        self._writer = foxglove.open_mcap(path, allow_overwrite=p.overwrite, context=self.foxglove_context,
                                          writer_options=MCAPWriteOptions(compression=compression))
        self._writer.write_metadata("costream", {"node": self.name, "prefix": p.prefix})
        self._path = path

    def teardown(self) -> None:
        self._close_publisher()
        writer = getattr(self, "_writer", None)
        if writer is not None:
            writer.close()
            self._writer = None
            logger.info("%s: wrote %d messages to %s", self.name,
                        self.publisher.counters.messages if self.publisher else 0, self._path)


@dataclass(frozen=True)
class FoxgloveLiveParams(FoxgloveOutputParams):
    host: str = "127.0.0.1"  # address to bind; anything but loopback serves the data to the network, unauthenticated
    port: int = 8765  # WebSocket port (Foxglove's default); 0 picks a free one (logged)
    name: str = "costream"  # server name shown in Foxglove
    wait_for_client_s: float = 0.0  # before the first frame: wait up to this long for a client to subscribe
    backlog: int = 1024  # messages buffered per client; a slow client loses the oldest

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if self.wait_for_client_s < 0:
            raise ValueError(f"wait_for_client_s must be >= 0, got {self.wait_for_client_s}")
        if self.backlog < 1:
            raise ValueError(f"backlog must be at least 1, got {self.backlog}")


class _Subscriptions:
    """Foxglove server listener: counts client subscriptions (called from the server's threads)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self.active = 0
        self.total = 0

    def on_subscribe(self, client: Any, channel: Any) -> None:
        with self._changed:
            self.active += 1
            self.total += 1
            self._changed.notify_all()

    def on_unsubscribe(self, client: Any, channel: Any) -> None:
        with self._changed:
            self.active = max(0, self.active - 1)
            self._changed.notify_all()

    def wait_for(self, active: int, timeout_s: float) -> bool:
        """Wait until at least `active` channel subscriptions are held; False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: self.active >= active, timeout_s)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@register("foxglove_live")
class FoxgloveLive(_FoxgloveSink):
    """Serves outputs live to Foxglove (Open connection > Foxglove WebSocket > ws://127.0.0.1:8765) with
    the same topics and schemas as `mcap_record`. Nothing is encoded for channels no client watches."""

    Params = FoxgloveLiveParams

    def __init__(self, params: FoxgloveLiveParams | None = None, *, clock: Callable[[], int] = now_ns) -> None:
        super().__init__(params, clock=clock)
        self.subscriptions = _Subscriptions()
        self.server: Any = None
        self._waited = False

    def setup(self, context: NodeContext) -> None:
        super().setup(context)
        p = self.params
        self._start_publisher()
        try:
            self.server = foxglove.start_server(name=p.name, host=p.host, port=p.port, context=self.foxglove_context,
                                                server_listener=self.subscriptions, message_backlog_size=p.backlog)
        except Exception as exc:  # the SDK raises a RuntimeError naming the OS error
            raise OSError(f"node {self.name!r}: cannot serve Foxglove WebSocket on {p.host}:{p.port} ({exc}); another "
                          f"program may hold the port: set port to another number, or 0 for any free one") from exc
        url = f"ws://{p.host}:{self.server.port}"
        if _is_loopback(p.host):
            logger.info("%s: Foxglove WebSocket at %s (Foxglove: Open connection > Foxglove WebSocket)", self.name, url)
        else:
            logger.warning("%s: Foxglove WebSocket at %s is reachable from the network without authentication",
                           self.name, url)

    @property
    def port(self) -> int:
        if self.server is None:
            raise RuntimeError("foxglove_live has no server before setup()")
        return int(self.server.port)

    def process(self, frame: Frame) -> None:
        if not self._waited and self.params.wait_for_client_s > 0 and self.publisher is not None:
            self._waited = True
            self.publisher.advertise(frame)  # clients see the channels and can subscribe
            if not self.subscriptions.wait_for(1, self.params.wait_for_client_s):
                logger.warning("%s: no Foxglove client subscribed within %.1f s; going on", self.name,
                               self.params.wait_for_client_s)
        super().process(frame)

    def stats(self) -> dict[str, int]:
        return {**super().stats(), "subscriptions": self.subscriptions.total}

    def teardown(self) -> None:
        self._close_publisher()
        if self.server is not None:
            self.server.stop()
            self.server = None
