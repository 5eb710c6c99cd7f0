"""Runtime adapters for the sensor sources: node kinds `video`, `synthetic_video`, `skeleton`, `synthetic_skeleton`,
and `video_preprocess` (a video source's preprocessing as an operator, for images that arrive otherwise).

Frame data conventions (shared with the model nodes):
- video sources emit `{"video": (C, H, W) float32 normalised, "image": uint8 (H', W', 3) BGR preview}`
  (`image` only with `keep_image: true`; it is what `video_writer` annotates);
- skeleton sources emit `{"skeleton": (C=3, V=25, M) float32}` for one time step.
The sink kinds (`labels_console`, `labels_jsonl`, `video_writer`) live in `sensors.sink_nodes` and
are registered when this module is imported (the `costream.nodes` entry point names this module).
"""
from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np
import torch

from sensors import sink_nodes  # noqa: F401  (registers the sink kinds)
from sensors.skeleton import SkeletonFormatError, SkeletonSequence, read_skeleton
from sensors.synthetic_skeleton import SyntheticSkeletonConfig, synthetic_skeleton
from sensors.synthetic_video import SyntheticVideo, SyntheticVideoConfig
from sensors.video import ReconnectPolicy, VideoCounters, VideoReader
from sensors.video_transforms import VideoTransform, preview
from stream.frame import Frame
from stream.input_paths import InputPath
from stream.node import NodeContext, Operator, Source
from stream.ports import IMAGE, SKELETON, VIDEO, Port
from stream.registry import register

logger = logging.getLogger("costream.sensors.nodes")


def _doc(default: Any, doc: str) -> Any:
    """A dataclass field with its documentation for `costream list` and the editor schema."""
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class TransformParams:
    """Preprocessing shared by the video sources: a preset, optionally overridden field by field."""

    # Docs go into field metadata (not trailing comments) so that subclasses inherit them.
    preset: str | None = _doc("x3d_s", "x3d_xs | x3d_s | x3d_m | x3d_l | none (only scale to [0, 1])")
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
        if self.preset is None:  # no resize or crop; X3D's mean and std
            base = VideoTransform(short_side=None, crop=None)
        else:
            base = VideoTransform.preset(self.preset)
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


def _video_port(transform: VideoTransform, size: tuple[int, int] | None = None) -> tuple[Port, ...]:
    """The video port of frames made by `transform` from images of `size` (H, W), when known."""
    if transform.crop is not None:
        height, width = transform.crop
    elif size is not None:
        height, width = transform.output_size(*size)
    else:
        return (VIDEO.with_shape(3, "H", "W"),)
    return (VIDEO.with_shape(3, height, width),)


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
    consumes = IMAGE
    produces = VIDEO

    @classmethod
    def output_ports(cls, params: VideoPreprocessParams) -> tuple[Port, ...]:
        return _video_port(params.transform())

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
    uri: InputPath | int = field(kw_only=True)  # file path, camera index (0) or URL (rtsp://..., http://...)
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
    """

    Params = VideoParams
    produces = VIDEO

    @classmethod
    def output_ports(cls, params: VideoParams) -> tuple[Port, ...]:
        return _video_port(params.transform())

    @classmethod
    def is_live(cls, params: VideoParams) -> bool:
        """A camera index, a device file or a network URL is live; a file is not."""
        uri = params.uri
        if isinstance(uri, int) or str(uri).strip().isdigit():
            return True
        return "://" in str(uri) or str(uri).startswith("/dev/")

    @property
    def stream_count(self) -> int:
        return 1

    def __init__(self, params: VideoParams | None = None, **reader_options: Any) -> None:
        super().__init__(params)
        self._reader_options = reader_options  # capture_factory / sleep / clock for tests
        self._transform = self.params.transform()
        self._reader: VideoReader | None = None

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
        for image, t_ns, index in self._reader:
            if p.max_frames is not None and index >= p.max_frames:
                return
            meta: dict[str, Any] = {"source": str(p.uri), "frame_index": index}
            if counters.loops + counters.reconnects != breaks:  # the file restarted or the camera came back
                breaks = counters.loops + counters.reconnects
                meta["discontinuity"] = True
            yield self.make_frame(_video_data(image, self._transform, p), stream, t_capture=t_ns, meta=meta)

    def teardown(self) -> None:
        if self._reader is not None:
            self._reader.close()


@dataclass(frozen=True)
class SyntheticVideoParams(TransformParams):
    preset: str | None = None  # default: frames are made at the model size, only normalised (X3D mean/std)
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
    produces = VIDEO

    def __init__(self, params: SyntheticVideoParams | None = None) -> None:
        super().__init__(params)
        self._transform = self.params.transform()

    @classmethod
    def output_ports(cls, params: SyntheticVideoParams) -> tuple[Port, ...]:
        return _video_port(params.transform(), (params.height, params.width))

    @classmethod
    def with_frames(cls, params: SyntheticVideoParams, frames: int) -> SyntheticVideoParams:
        return dataclasses.replace(params, frames=frames)

    @property
    def stream_count(self) -> int:
        return self.params.streams

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
        if params.preset is None and params.short_side is None and params.crop is None and params.width == params.height:
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


@dataclass(frozen=True)
class SkeletonParams:
    path: InputPath  # an NTU RGB+D .skeleton file or a directory of them (read in sorted order)
    one_stream: bool = False  # all files as one stream (the node name); default: one stream per file
    max_bodies: int = 2  # M of the emitted (3, 25, M) arrays
    fps: float = 30.0  # Kinect v2 rate; the native rate for `rate_hz: native`
    loop: bool = False  # start again after the last file
    max_frames: int | None = None  # stop after this many frames in total
    on_bad_file: Literal["raise", "skip"] = "raise"  # a corrupt file in a directory: stop, or log and skip

    def __post_init__(self) -> None:
        if not str(self.path).strip():
            raise ValueError("path is required: an NTU RGB+D .skeleton file or a directory of them")
        if self.max_bodies < 1:
            raise ValueError(f"max_bodies must be at least 1, got {self.max_bodies}")
        if not self.fps > 0:
            raise ValueError(f"fps must be positive, got {self.fps}")


_NTU_NAME = re.compile(r"S(\d{3})C(\d{3})P(\d{3})R(\d{3})A(\d{3})")


@register("skeleton")
class SkeletonSource(Source):
    """Joints from NTU RGB+D `.skeleton` files, one frame per time step.

    Each file is its own stream (id = file stem, e.g. S001C001P001R001A001) unless `one_stream`; the
    action index parsed from an NTU file name is put into meta["action"] (0-based).
    """

    Params = SkeletonParams
    produces = SKELETON

    @classmethod
    def output_ports(cls, params: SkeletonParams) -> tuple[Port, ...]:
        return (SKELETON.with_shape(3, 25, params.max_bodies),)

    @property
    def stream_count(self) -> int | None:
        return 1 if self.params.one_stream else len(self.files) or None

    def __init__(self, params: SkeletonParams | None = None) -> None:
        super().__init__(params)
        self.files: list[Path] = []
        self.bad_files: list[str] = []
        self._first: SkeletonSequence | None = None

    def setup(self, context: NodeContext) -> None:
        super().setup(context)
        root = Path(self.params.path).expanduser()
        if root.is_dir():
            self.files = sorted(root.glob("*.skeleton"))
            if not self.files:
                raise FileNotFoundError(f"no *.skeleton files in directory {root}; check the path")
        elif root.is_file():
            self.files = [root]
            self._first = read_skeleton(root, self.params.max_bodies)  # fail before the pipeline starts
        else:
            raise FileNotFoundError(
                f"skeleton path not found: {self.params.path!r} (resolved to {root.resolve()}); give an NTU RGB+D "
                f".skeleton file or a directory of them"
            )

    @property
    def native_rate_hz(self) -> float | None:
        return self.params.fps

    @property
    def length(self) -> int | None:
        if self._first is None or self.params.loop:
            return self.params.max_frames
        return min(self._first.num_frames, self.params.max_frames or self._first.num_frames)

    def _sequences(self) -> Iterator[SkeletonSequence]:
        while True:
            for path in self.files:
                if self._first is not None and Path(self._first.path) == path:
                    yield self._first
                    continue
                try:
                    yield read_skeleton(path, self.params.max_bodies)
                except SkeletonFormatError as exc:
                    if self.params.on_bad_file == "raise":
                        raise
                    self.bad_files.append(str(path))
                    logger.error("skipping corrupt skeleton file: %s", exc)
            if not self.params.loop:
                return

    def frames(self) -> Iterator[Frame]:
        p = self.params
        emitted = 0
        for seq in self._sequences():
            stem = Path(seq.path).stem
            stream = self.name if p.one_stream else stem
            match = _NTU_NAME.search(stem)
            meta: dict[str, Any] = {"file": Path(seq.path).name, "num_frames": seq.num_frames}
            if match:
                meta["action"] = int(match.group(5)) - 1
            for t in range(seq.num_frames):
                if p.max_frames is not None and emitted >= p.max_frames:
                    return
                joints = torch.from_numpy(np.ascontiguousarray(seq.data[:, t]))  # (C, V, M)
                yield self.make_frame({"skeleton": joints}, stream, meta={**meta, "frame_index": t})
                emitted += 1


@dataclass(frozen=True)
class SyntheticSkeletonParams:
    streams: int = 1  # interleaved skeleton tracks "<node>/0", "<node>/1", ... (one: the node name)
    frames: int = 300  # per stream
    fps: float = 30.0  # per stream
    class_id: int | None = None  # motion class of every stream; null: stream i uses class i % num_classes
    num_classes: int = 60  # number of distinct motion classes
    bodies: int = 1  # people per stream (1 or 2)
    max_bodies: int = 2  # M of the emitted (3, 25, M) arrays
    noise: float = 0.005  # joint jitter in metres
    seed: int = 0  # stream i uses seed + i

    def __post_init__(self) -> None:
        if self.streams < 1:
            raise ValueError(f"streams must be at least 1, got {self.streams}")
        for i in range(self.streams):
            self.skeleton_config(i)

    def skeleton_config(self, index: int) -> SyntheticSkeletonConfig:
        cls = self.class_id if self.class_id is not None else index % self.num_classes
        return SyntheticSkeletonConfig(
            frames=self.frames, fps=self.fps, class_id=cls, num_classes=self.num_classes,
            bodies=self.bodies, max_bodies=self.max_bodies, noise=self.noise, seed=self.seed + index,
        )


@register("synthetic_skeleton")
class SyntheticSkeletonSource(Source):
    """Synthetic NTU-25 skeleton tracks, several streams interleaved frame by frame."""

    Params = SyntheticSkeletonParams
    produces = SKELETON

    @classmethod
    def output_ports(cls, params: SyntheticSkeletonParams) -> tuple[Port, ...]:
        return (SKELETON.with_shape(3, 25, params.max_bodies),)

    @classmethod
    def with_frames(cls, params: SyntheticSkeletonParams, frames: int) -> SyntheticSkeletonParams:
        return dataclasses.replace(params, frames=frames)

    @property
    def stream_count(self) -> int:
        return self.params.streams

    @property
    def native_rate_hz(self) -> float | None:
        return self.params.fps * self.params.streams

    @property
    def length(self) -> int | None:
        return self.params.frames * self.params.streams

    def frames(self) -> Iterator[Frame]:
        p = self.params
        ids = [self.name] if p.streams == 1 else [f"{self.name}/{i}" for i in range(p.streams)]
        configs = [p.skeleton_config(i) for i in range(p.streams)]
        tracks = [synthetic_skeleton(c) for c in configs]  # (C, T, V, M) each
        for t in range(p.frames):
            for stream, config, track in zip(ids, configs, tracks):
                joints = torch.from_numpy(np.ascontiguousarray(track[:, t]))  # (C, V, M)
                yield self.make_frame({"skeleton": joints}, stream, meta={"class_id": config.class_id, "frame_index": t})
