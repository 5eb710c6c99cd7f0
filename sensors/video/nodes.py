"""Video node kinds: `video` and `synthetic_video` (sources) and `video_preprocess` (a video source's
preprocessing as an operator, for camera images that arrive some other way).

Video sources emit `{"video": (C, H, W) float32 normalised, "image": uint8 (H', W', 3) BGR preview}`
(`image` only with `keep_image: true`; it is what `video_writer` annotates). The readers they adapt
(`sensors.video.reader`, `sensors.video.synthetic`, `sensors.video.transforms`) work without the
runtime.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import numpy as np

from sensors.video.background import BackgroundReader
from sensors.video.reader import ReconnectPolicy, VideoCounters, VideoFrame, VideoReader
from sensors.video.synthetic import SyntheticVideo, SyntheticVideoConfig
from sensors.video.transforms import VideoTransform, preview
from stream.frame import Frame
from stream.node import NodeContext, Operator, Source
from stream.registry import register

logger = logging.getLogger("costream.sensors.video")


def _doc(default: Any, doc: str) -> Any:
    """A dataclass field with its documentation for `costream list` and the editor schema."""
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class TransformParams:
    """Preprocessing shared by the video sources: a preset, optionally overridden field by field."""

    # Docs go into field metadata (not trailing comments) so that subclasses inherit them.
    preset: str | None = _doc("x3d_s", "x3d_xs | x3d_s | x3d_m | x3d_l; none or null: keep the frame size (X3D mean "
                              "and std either way; mean [0, 0, 0], std [1, 1, 1] only scale to [0, 1])")
    short_side: int | None = _doc(None, "overrides the preset's resize of the shorter side (pixels)")
    crop: int | None = _doc(None, "overrides the preset's square centre crop (pixels)")
    mean: tuple[float, float, float] | None = _doc(None, "overrides the preset's mean (RGB, 0..1 scale)")
    std: tuple[float, float, float] | None = _doc(None, "overrides the preset's std (RGB, 0..1 scale)")
    keep_image: bool = _doc(False, "also emit a uint8 BGR preview as data['image'] (for video_writer)")
    preview_width: int = _doc(320, "width of that preview (pixels)")

    def __post_init__(self) -> None:
        self.transform()  # validate now, so that config errors appear before the pipeline starts
        if self.preview_width < 16:
            raise ValueError(f"preview_width must be at least 16 pixels, got {self.preview_width}")

    def transform(self) -> VideoTransform:
        base = VideoTransform.preset(self.preset)  # None and "none" alike: no resize or crop
        return VideoTransform(
            short_side=self.short_side if self.short_side is not None else base.short_side,
            crop=(self.crop, self.crop) if self.crop is not None else base.crop,
            mean=self.mean or base.mean,
            std=self.std or base.std,
        )


def _video_data(image: np.ndarray, transform: VideoTransform, params: TransformParams) -> dict[str, Any]:
    data: dict[str, Any] = {"video": transform(image)}
    if params.keep_image:
        data["image"] = preview(image, params.preview_width)
    return data


def _transform_fields(params: TransformParams) -> dict[str, Any]:
    return {name: getattr(params, name) for name in TransformParams.__dataclass_fields__}


@dataclass(frozen=True)
class VideoPreprocessParams(TransformParams):
    key: str = "image"  # the image's key when frame data is a dict (a bare array is used as it is)


@register("video_preprocess")
class VideoPreprocess(Operator):
    """Camera images (uint8 HxWx3 BGR, as OpenCV or a ZeroMQ request delivers them) to the video
    sources' output, `{"video": normalised (3, crop, crop) float32}`: what `costream serve` puts
    behind the request socket in place of a video source, so robots send frames as their camera
    gives them (raw or JPEG)."""

    Params = VideoPreprocessParams
    outputs_follow_inputs = True

    def __init__(self, params: VideoPreprocessParams | None = None) -> None:
        super().__init__(params)
        self._transform = self.params.transform()

    def process(self, frame: Frame) -> Frame:
        data = frame.data
        image = data.get(self.params.key) if isinstance(data, dict) else data
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
            got = (f"{image.dtype} {tuple(image.shape)}" if isinstance(image, np.ndarray)
                   else sorted(data) if isinstance(data, dict) else type(image).__name__)
            raise ValueError(
                f"node {self.name!r} (video_preprocess) expects a uint8 (H, W, 3) BGR camera image (alone, or "
                f"as data[{self.params.key!r}]); frame {frame.key} has {got}"
            )
        return frame.derive(_video_data(image, self._transform, self.params))


@dataclass(frozen=True)
class VideoParams(TransformParams):
    uri: str | int = field(kw_only=True)  # file path, camera index (0) or URL (rtsp://..., http://...)
    loop: bool = False  # start a file again when it ends
    stream: str | None = None  # stream id of the frames; default: the node name
    max_frames: int | None = None  # stop after this many frames
    reconnect_attempts: int = 5  # camera/URL: opening attempts per outage before giving up
    reconnect_backoff_s: float = 0.5  # first wait between attempts (doubles each time)
    reconnect_max_backoff_s: float = 8.0  # longest wait between attempts

    def __post_init__(self) -> None:
        super().__post_init__()
        if not str(self.uri).strip():
            raise ValueError("uri is required: a video file path, a camera index such as 0, or a URL")
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"max_frames must be positive or null, got {self.max_frames}")
        self.reconnect_policy()

    def reconnect_policy(self) -> ReconnectPolicy:
        return ReconnectPolicy(
            max_attempts=self.reconnect_attempts,
            initial_backoff_s=self.reconnect_backoff_s,
            max_backoff_s=self.reconnect_max_backoff_s,
        )


@register("video")
class VideoSource(Source):
    """Frames from a video file, a camera or a network stream (OpenCV), preprocessed for a video model.

    The file's or camera's fps is the `native_rate_hz` (`rate_hz: native` plays a file in real time).
    Opening happens in `setup`, so a missing or corrupt file stops the pipeline before it starts.
    Cameras and URLs are read by a thread of their own (`BackgroundReader`), so that `stop()` ends
    `frames()` at once even while OpenCV waits for a frame or a reconnect backs off.
    """

    Params = VideoParams

    def __init__(self, params: VideoParams | None = None, **reader_options: Any) -> None:
        super().__init__(params)
        self._reader_options = reader_options  # capture_factory / sleep / clock for tests
        self._transform = self.params.transform()
        self._reader: VideoReader | None = None
        self._background: BackgroundReader | None = None
        self._stopping = threading.Event()

    def setup(self, context: NodeContext) -> None:
        super().setup(context)
        p = self.params
        self._reader = VideoReader(p.uri, loop=p.loop, reconnect=p.reconnect_policy(), **self._reader_options)
        self._reader.open()

    @property
    def native_rate_hz(self) -> float | None:
        return None if self._reader is None else self._reader.fps

    @property
    def length(self) -> int | None:
        reader, limit = self._reader, self.params.max_frames
        if self.params.loop or reader is None or reader.frame_count is None:
            return limit
        return reader.frame_count if limit is None else min(reader.frame_count, limit)

    @classmethod
    def preprocess_step(cls, params: VideoParams) -> tuple[str, Any]:
        return "video_preprocess", VideoPreprocessParams(**_transform_fields(params))

    @property
    def counters(self) -> VideoCounters | None:
        """Frames, reopen attempts, drop-outs and reconnects of the underlying reader."""
        return None if self._reader is None else self._reader.counters

    def frames(self) -> Iterator[Frame]:
        if self._reader is None:
            raise RuntimeError("video source used before setup(); the runtime calls setup first")
        p = self.params
        stream = p.stream or self.name
        counters = self._reader.counters
        breaks = counters.loops + counters.reconnects
        frames: Iterable[VideoFrame] = self._reader
        if self._reader.kind != "file":
            frames = self._background = BackgroundReader(self._reader)
            if self._stopping.is_set():  # stopped before the first frame was asked for
                self._background.stop()
        for image, t_ns, index in frames:
            if p.max_frames is not None and index >= p.max_frames:
                return
            meta: dict[str, Any] = {"source": str(p.uri), "frame_index": index}
            if counters.loops + counters.reconnects != breaks:  # the file restarted or the camera came back
                breaks = counters.loops + counters.reconnects
                meta["discontinuity"] = True
            yield self.make_frame(_video_data(image, self._transform, p), stream, t_capture=t_ns, meta=meta)

    def stop(self) -> None:
        """End `frames()` now, also while a camera blocks or a reconnect backs off (thread-safe)."""
        self._stopping.set()
        if self._reader is not None:
            self._reader.interrupt()
        background = self._background
        if background is not None:
            background.stop()

    def teardown(self) -> None:
        background, self._background = self._background, None
        if background is not None:
            background.stop()
            if not background.join(timeout=0.25):  # its thread releases the capture when OpenCV returns
                logger.warning("%s: %s is still blocked in OpenCV; it is released when the call returns",
                               self.name, self._reader.description if self._reader else "the capture")
                return
        if self._reader is not None:
            self._reader.close()


@dataclass(frozen=True)
class SyntheticVideoParams(TransformParams):
    preset: str | None = None  # none/null: frames are made at the model size, only normalised (X3D mean/std)
    width: int = 160  # pixels
    height: int = 160  # pixels
    frames: int | None = 300  # per stream; null: endless
    fps: float = 30.0  # per stream
    class_id: int = 0  # motion pattern of the first stream; stream i uses (class_id + i) % num_classes
    num_classes: int = 8  # number of distinct motion patterns
    streams: int = 1  # interleaved streams "<node>/0", "<node>/1", ... (one stream: the node name)
    seed: int = 0  # stream i uses seed + i
    noise: float = 0.0  # pixel noise std (0..255)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.streams < 1:
            raise ValueError(f"streams must be at least 1, got {self.streams}")
        self.video_config(0)

    def video_config(self, index: int) -> SyntheticVideoConfig:
        return SyntheticVideoConfig(
            width=self.width, height=self.height, frames=self.frames, fps=self.fps,
            class_id=(self.class_id + index) % self.num_classes, num_classes=self.num_classes,
            seed=self.seed + index, noise=self.noise,
        )


@register("synthetic_video")
class SyntheticVideoSource(Source):
    """Deterministic moving patterns in the same output format as `video` (160x160 for X3D-S by default).

    With several streams the frames are interleaved round-robin, so `native_rate_hz` is fps * streams.
    """

    Params = SyntheticVideoParams

    def __init__(self, params: SyntheticVideoParams | None = None) -> None:
        super().__init__(params)
        self._transform = self.params.transform()

    @property
    def native_rate_hz(self) -> float | None:
        return self.params.fps * self.params.streams

    @property
    def length(self) -> int | None:
        frames = self.params.frames
        return None if frames is None else frames * self.params.streams

    @classmethod
    def preprocess_step(cls, params: SyntheticVideoParams) -> tuple[str, Any]:
        fields = _transform_fields(params)
        no_preset = params.preset is None or params.preset.lower() == "none"
        if no_preset and params.short_side is None and params.crop is None and params.width == params.height:
            # the synthetic frames are made at the model size: bring camera images to that size
            fields.update(short_side=params.width, crop=params.width)
        return "video_preprocess", VideoPreprocessParams(**fields)

    def stream_ids(self) -> list[str]:
        n = self.params.streams
        return [self.name] if n == 1 else [f"{self.name}/{i}" for i in range(n)]

    def frames(self) -> Iterator[Frame]:
        p = self.params
        videos = [SyntheticVideo(p.video_config(i)) for i in range(p.streams)]
        index = 0
        while p.frames is None or index < p.frames:
            for stream, video in zip(self.stream_ids(), videos):
                yield self.make_frame(
                    _video_data(video.frame(index), self._transform, p), stream,
                    meta={"frame_index": index, "class_id": video.config.class_id},
                )
            index += 1
