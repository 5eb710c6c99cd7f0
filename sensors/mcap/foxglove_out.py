"""Pipeline outputs as Foxglove messages: what the `mcap_record` and `foxglove_live` sinks publish.

A `FoxglovePublisher` logs each frame on channels of a Foxglove SDK `Context`; the context's sink (an
MCAP file or the WebSocket server) decides where the messages go, so a recording and the live view
carry the same topics and schemas. Per stream `s` (slashes kept, e.g. `/costream/camera/image`):

| frame data | topic | schema |
|---|---|---|
| `image` uint8 (H, W, 3) BGR (labels and latency drawn on it) | `{prefix}/s/image` | foxglove.CompressedImage (or RawImage) |
| `points` float32 (N, >=3) x, y, z[, intensity] | `{prefix}/s/points` | foxglove.PointCloud |
| `bev` (or another `map_keys` entry) float (C, H, W) or (H, W), rows along x | `{prefix}/s/bev`, `{prefix}/s/bev_image` | foxglove.Grid, foxglove.CompressedImage |
| `scores` (num_classes,) | `{prefix}/s/labels` | costream.Labels (JSON: top-k labels and scores) |
| every frame | `{prefix}/s/latency` | costream.Latency (JSON: end-to-end latency in ms) |

Joined inputs (`join:` on the sink, e.g. a scan and its BEV map) are published as one frame.
Message time: the frame's recorded header stamp (`meta["stamp_ns"]`, set by the `mcap` source), so a
replay lines up with its input bag; otherwise its capture time on the wall clock.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import cv2
import foxglove
import numpy as np
from foxglove.channels import CompressedImageChannel, GridChannel, PointCloudChannel, RawImageChannel
from foxglove.messages import (
    CompressedImage, Grid, PackedElementField, PackedElementFieldNumericType, PointCloud, Pose, Quaternion,
    RawImage, Timestamp, Vector2, Vector3,
)

from sensors.sinks.annotate import draw_lines
from sensors.labels import load_labels
from sensors.sinks.labels import ScoresKind, predict, scores_of
from stream.frame import Frame, now_ns

logger = logging.getLogger("costream.sensors.foxglove")

LABELS_SCHEMA = {
    "title": "costream.Labels",
    "type": "object",
    "description": "Top-k class predictions of one frame",
    "properties": {
        "stream": {"type": "string"}, "seq": {"type": "integer"},
        "labels": {"type": "array", "items": {"type": "string"}},
        "scores": {"type": "array", "items": {"type": "number"}},
        "indices": {"type": "array", "items": {"type": "integer"}},
        "top_label": {"type": "string"}, "top_score": {"type": "number"},
        "latency_ms": {"type": "number"}, "model": {"type": ["string", "null"]},
        "labelset": {"type": ["string", "null"]},
    },
}
LATENCY_SCHEMA = {
    "title": "costream.Latency",
    "type": "object",
    "description": "End-to-end latency of one frame: from its capture (or replay) to this sink",
    "properties": {"stream": {"type": "string"}, "seq": {"type": "integer"}, "latency_ms": {"type": "number"}},
}
_FLOAT32 = PackedElementFieldNumericType.Float32


@dataclass(frozen=True)
class FoxgloveOutputParams:
    """What a Foxglove sink publishes and how (shared by `mcap_record` and `foxglove_live`)."""

    prefix: str = "/costream"  # topic prefix: topics are {prefix}/{stream}/{image|points|labels|latency|...}
    image_format: Literal["jpeg", "png", "raw"] = "jpeg"  # images as CompressedImage (jpeg, png) or RawImage
    jpeg_quality: int = 85  # 1..100
    overlay: bool = True  # draw the top labels and the latency on images (as video_writer does)
    k: int = 3  # labels per prediction
    labelset: str | None = None  # kinetics400 | ntu60 | ntu120 | a label file; default: the frame's meta
    scores: ScoresKind = "auto"  # how to read data['scores']: auto | probabilities | logits
    map_keys: tuple[str, ...] = ("bev",)  # data keys holding 2-D float maps (C, H, W) or (H, W)
    map_channel: int | None = -1  # channel of a (C, H, W) map to publish (-1: the last, the newest scan); null: max over C
    map_as: Literal["grid", "image", "both"] = "both"  # maps as foxglove.Grid (3D panel), a colour image, or both
    # cell side in metres of maps whose frame has no meta['bev_cell_size'] (such maps are centred on their frame)
    cell_size_m: float = 0.2
    frame_id: str = "base_link"  # frame of points and maps whose frame carries no meta['frame_id']
    latency: bool = True  # publish each frame's end-to-end latency

    def __post_init__(self) -> None:
        if not self.prefix.startswith("/") and self.prefix:
            raise ValueError(f"prefix must start with '/' (e.g. '/costream') or be empty, got {self.prefix!r}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        if self.k < 1:
            raise ValueError(f"k must be at least 1, got {self.k}")
        if self.labelset is not None:
            load_labels(self.labelset)
        if not self.cell_size_m > 0:
            raise ValueError(f"cell_size_m must be positive, got {self.cell_size_m}")


@dataclass
class PublishCounters:
    frames: int = 0
    messages: int = 0  # messages handed to the Foxglove sink
    unsubscribed: int = 0  # messages not built because no client subscribed to their channel (live view)
    empty_frames: int = 0  # frames with nothing to publish (no image, points, map or scores)
    by_kind: dict[str, int] = field(default_factory=dict)


def as_array(value: Any) -> np.ndarray:
    """A numpy array from an ndarray or a (possibly CUDA) tensor."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def wall_offset_ns() -> int:
    """time.time_ns() - now_ns(): turns monotonic capture times into wall-clock times."""
    return time.time_ns() - now_ns()


def frame_time_ns(frame: Frame, offset_ns: int) -> int:
    """The time a frame's outputs are logged at: its header stamp, its log time, or its capture time."""
    for key in ("stamp_ns", "log_time_ns"):
        value = frame.meta.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return frame.t_capture + offset_ns


def _timestamp(t_ns: int) -> Timestamp:
    return Timestamp(sec=t_ns // 1_000_000_000, nsec=t_ns % 1_000_000_000)


def _topic_part(stream: str) -> str:
    return "/".join(p for p in stream.split("/") if p) or "stream"


class FoxglovePublisher:
    """Logs frames on Foxglove channels of `context` (created per stream and output on first use)."""

    def __init__(self, params: FoxgloveOutputParams, context: foxglove.Context, *,
                 clock: Callable[[], int] = now_ns) -> None:
        self.params = params
        self.context = context
        self.counters = PublishCounters()
        self._clock = clock
        self._offset_ns = wall_offset_ns()
        self._channels: dict[str, Any] = {}
        self._warned_empty = False
        self._advertising = False

    # -- channels -----------------------------------------------------------------------------------

    def topic(self, stream: str, output: str) -> str:
        return f"{self.params.prefix}/{_topic_part(stream)}/{output}"

    def _channel(self, topic: str, make: Callable[[str], Any]) -> Any:
        channel = self._channels.get(topic)
        if channel is None:
            channel = self._channels[topic] = make(topic)
        return channel

    def _image_channel(self, topic: str) -> Any:
        if self.params.image_format == "raw":
            return self._channel(topic, lambda t: RawImageChannel(t, context=self.context))
        return self._channel(topic, lambda t: CompressedImageChannel(t, context=self.context))

    def _json_channel(self, topic: str, schema: dict[str, Any]) -> Any:
        return self._channel(topic, lambda t: foxglove.Channel(t, schema=schema, context=self.context))

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()

    @property
    def topics(self) -> list[str]:
        return sorted(self._channels)

    # -- publishing ---------------------------------------------------------------------------------

    def advertise(self, frame: Frame) -> None:
        """Create (and so advertise to live clients) the channels of the frame's outputs, logging nothing."""
        self._advertising = True
        try:
            self._publish(frame)
        finally:
            self._advertising = False

    def publish(self, frame: Frame) -> int:
        """Log every output the frame carries; returns the number of messages logged."""
        self.counters.frames += 1
        return self._publish(frame)

    def _publish(self, frame: Frame) -> int:
        now = self._clock()
        t_ns = frame_time_ns(frame, self._offset_ns)
        data = frame.data if isinstance(frame.data, dict) else {"scores": frame.data}
        if data and all(isinstance(part, dict) for part in data.values()):  # joined inputs: {input: data}
            data = {key: value for part in data.values() for key, value in part.items()}
            frame = frame.derive(data)
        logged = 0
        record = None
        if scores_of(frame) is not None and data.get("scores") is not None:
            record = predict(frame, self.params.k, self.params.labelset, self.params.scores, now)
            logged += self._log_json(self.topic(frame.stream, "labels"), LABELS_SCHEMA, t_ns, "labels", {
                **record.as_json(), "top_label": record.predictions[0].label,
                "top_score": round(record.predictions[0].score, 6)})
        if data.get("image") is not None:
            logged += self._log_image(frame, as_array(data["image"]), record, now, t_ns)
        if data.get("points") is not None:
            logged += self._log_points(frame, as_array(data["points"]), t_ns)
        for key in self.params.map_keys:
            if data.get(key) is not None:
                logged += self._log_map(frame, key, as_array(data[key]), t_ns)
        if not self._advertising and not self._has_known_output(data):
            self.counters.empty_frames += 1
            if not self._warned_empty:
                self._warned_empty = True
                logger.warning(
                    "frame %s carries nothing a Foxglove sink shows (data keys: %s); it publishes 'image' (set "
                    "keep_image: true on video sources), 'points', 'scores' and the maps in map_keys %s",
                    frame.key, ", ".join(map(str, data)), list(self.params.map_keys))
        if self.params.latency:
            logged += self._log_json(self.topic(frame.stream, "latency"), LATENCY_SCHEMA, t_ns, "latency", {
                "stream": frame.stream, "seq": frame.seq, "latency_ms": round((now - frame.t_capture) / 1e6, 3)})
        return logged

    def _has_known_output(self, data: dict[str, Any]) -> bool:
        return any(data.get(k) is not None for k in ("image", "points", "scores", *self.params.map_keys))

    def _count(self, kind: str) -> int:
        self.counters.messages += 1
        self.counters.by_kind[kind] = self.counters.by_kind.get(kind, 0) + 1
        return 1

    def _wanted(self, channel: Any) -> bool:
        if self._advertising:
            return False
        if channel.has_sinks():
            return True
        self.counters.unsubscribed += 1
        return False

    def _log_json(self, topic: str, schema: dict[str, Any], t_ns: int, kind: str, message: dict[str, Any]) -> int:
        channel = self._json_channel(topic, schema)
        if not self._wanted(channel):
            return 0
        channel.log(message, log_time=t_ns)
        return self._count(kind)

    def _log_image(self, frame: Frame, image: np.ndarray, record: Any, now: int, t_ns: int) -> int:
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"data['image'] of frame {frame.key} must be uint8 (H, W, 3) BGR, got {image.dtype} "
                             f"{image.shape}")
        channel = self._image_channel(self.topic(frame.stream, "image"))
        if not self._wanted(channel):
            return 0
        if self.params.overlay and (record is not None or self.params.latency):
            lines = [f"{p.label}: {p.score:.1%}" for p in record.predictions] if record is not None else []
            lines.append(f"latency {(now - frame.t_capture) / 1e6:.1f} ms")
            image = draw_lines(image.copy(), lines)  # frames are shared: never draw on the original
        channel.log(self._image_message(image, frame.meta.get("frame_id", ""), t_ns), log_time=t_ns)
        return self._count("image")

    def _image_message(self, image: np.ndarray, frame_id: str, t_ns: int) -> Any:
        if self.params.image_format == "raw":
            height, width = image.shape[:2]
            return RawImage(timestamp=_timestamp(t_ns), frame_id=frame_id, width=width, height=height,
                            encoding="bgr8", step=width * 3, data=np.ascontiguousarray(image).tobytes())
        ext, options = ((".jpg", [cv2.IMWRITE_JPEG_QUALITY, self.params.jpeg_quality])
                        if self.params.image_format == "jpeg" else (".png", []))
        ok, encoded = cv2.imencode(ext, image, options)
        if not ok:
            raise RuntimeError(f"OpenCV could not encode a {image.shape} image as {self.params.image_format}")
        return CompressedImage(timestamp=_timestamp(t_ns), frame_id=frame_id, data=encoded.tobytes(),
                               format=self.params.image_format)

    def _log_points(self, frame: Frame, points: np.ndarray, t_ns: int) -> int:
        if points.ndim != 2 or points.shape[1] < 3:
            raise ValueError(f"data['points'] of frame {frame.key} must be (N, 3) or (N, 4) x, y, z[, intensity], "
                             f"got {points.shape}")
        channel = self._channel(self.topic(frame.stream, "points"),
                                lambda t: PointCloudChannel(t, context=self.context))
        if not self._wanted(channel):
            return 0
        columns = min(points.shape[1], 4)
        names = ("x", "y", "z", "intensity")[:columns]
        packed = np.ascontiguousarray(points[:, :columns], dtype=np.float32)
        message = PointCloud(
            timestamp=_timestamp(t_ns), frame_id=str(frame.meta.get("frame_id") or self.params.frame_id),
            pose=_identity_pose(), point_stride=4 * columns,
            fields=[PackedElementField(name=n, offset=4 * i, type=_FLOAT32) for i, n in enumerate(names)],
            data=packed.tobytes(),
        )
        channel.log(message, log_time=t_ns)
        return self._count("points")

    def _log_map(self, frame: Frame, key: str, values: np.ndarray, t_ns: int) -> int:
        # A map's rows run along x (forward) and its columns along y (left), as the `bev` node makes them;
        # its extent comes from the bev node's meta (bev_x_range, bev_y_range, bev_cell_size), else it is
        # centred on its frame with cell_size_m cells.
        plane = self._map_plane(frame, key, values)
        rows_x, columns_y = plane.shape
        meta = frame.meta
        cell = float(meta.get("bev_cell_size") or self.params.cell_size_m)
        x_min = float(meta["bev_x_range"][0]) if meta.get("bev_x_range") else -rows_x * cell / 2
        y_min = float(meta["bev_y_range"][0]) if meta.get("bev_y_range") else -columns_y * cell / 2
        logged = 0
        if self.params.map_as in ("grid", "both"):
            channel = self._channel(self.topic(frame.stream, key), lambda t: GridChannel(t, context=self.context))
            if self._wanted(channel):
                # foxglove.Grid: data row-major with rows along the pose's y and columns along its x
                pose = Pose(position=Vector3(x=x_min, y=y_min, z=0.0), orientation=Quaternion(x=0.0, y=0.0, z=0.0, w=1.0))
                message = Grid(
                    timestamp=_timestamp(t_ns), frame_id=str(meta.get("frame_id") or self.params.frame_id),
                    pose=pose, column_count=rows_x, cell_size=Vector2(x=cell, y=cell), row_stride=4 * rows_x,
                    cell_stride=4, fields=[PackedElementField(name=key, offset=0, type=_FLOAT32)],
                    data=np.ascontiguousarray(plane.T, dtype=np.float32).tobytes(),
                )
                channel.log(message, log_time=t_ns)
                logged += self._count("grid")
        if self.params.map_as in ("image", "both"):
            channel = self._image_channel(self.topic(frame.stream, f"{key}_image"))
            if self._wanted(channel):
                # seen from above with forward up and left to the left: flip both axes
                picture = colourise(plane[::-1, ::-1])
                channel.log(self._image_message(picture, str(meta.get("frame_id", "")), t_ns), log_time=t_ns)
                logged += self._count("map_image")
        return logged

    def _map_plane(self, frame: Frame, key: str, values: np.ndarray) -> np.ndarray:
        if values.ndim == 2:
            return values.astype(np.float32, copy=False)
        if values.ndim != 3:
            raise ValueError(f"data[{key!r}] of frame {frame.key} must be a (C, H, W) or (H, W) map, got {values.shape}")
        channel = self.params.map_channel
        if channel is None:
            return values.max(axis=0).astype(np.float32, copy=False)
        if not -values.shape[0] <= channel < values.shape[0]:
            raise ValueError(f"map_channel {channel} is out of range for data[{key!r}] with {values.shape[0]} channels")
        return values[channel].astype(np.float32, copy=False)


def colourise(plane: np.ndarray) -> np.ndarray:
    """A BGR picture of a 2-D map: finite min..max to the viridis colour map."""
    finite = plane[np.isfinite(plane)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    scale = 255.0 / (high - low) if high > low else 0.0
    grey = np.clip(np.nan_to_num((plane - low) * scale), 0, 255).astype(np.uint8)
    return cv2.applyColorMap(grey, cv2.COLORMAP_VIRIDIS)


def _identity_pose() -> Pose:
    return Pose(position=Vector3(x=0.0, y=0.0, z=0.0), orientation=Quaternion(x=0.0, y=0.0, z=0.0, w=1.0))
