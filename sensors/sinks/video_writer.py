"""`video_writer`: the frames' previews written to a video file, annotated with the top label, its
confidence and the latency (one file per stream with "{stream}" in the path).
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from sensors.sinks.annotate import draw_lines
from sensors.sinks.labels import LabelSinkParams, predict, scores_of
from sensors.video.synthetic import fourcc_for
from stream.frame import Frame, now_ns
from stream.node import Sink
from stream.registry import register

logger = logging.getLogger("costream.sensors.sinks")


@dataclass(frozen=True)
class VideoWriterParams(LabelSinkParams):
    path: str = "annotated.avi"  # output video; "{stream}" in it gives one file per stream
    k: int = 1  # how many classes to draw
    fps: float = 30.0  # frame rate written into the file
    fourcc: str | None = None  # codec; default from the extension (.avi: MJPG, .mp4: mp4v)
    font_scale: float = 0.5  # OpenCV font scale of the overlay text

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.fps > 0:
            raise ValueError(f"fps must be positive, got {self.fps}")
        if self.fourcc is not None and len(self.fourcc) != 4:
            raise ValueError(f"fourcc must be 4 characters such as 'MJPG' or 'mp4v', got {self.fourcc!r}")


@register("video_writer")
class AnnotatedVideoWriter(Sink):
    """Writes the frames' `image` previews with the top label, its confidence and the latency drawn on them.

    Needs data["image"] (set `keep_image: true` on the video source; model nodes pass it through).
    Frames without scores are written with the latency only.
    """

    Params = VideoWriterParams

    def __init__(self, params: VideoWriterParams | None = None, *, clock: Callable[[], int] = now_ns) -> None:
        super().__init__(params)
        self._clock = clock
        self._writers: dict[str, tuple[Any, tuple[int, int], Path]] = {}
        self.written = 0

    def path_for(self, stream: str) -> Path:
        template = self.params.path
        if "{stream}" in template:
            return Path(template.replace("{stream}", re.sub(r"[^A-Za-z0-9_.-]+", "_", stream))).expanduser()
        if self._writers and stream not in self._writers:
            raise ValueError(
                f"video_writer {self.name!r} got stream {stream!r} after {next(iter(self._writers))!r} but its path "
                f"{template!r} has no '{{stream}}' placeholder; use e.g. 'out_{{stream}}.avi' for one file per stream"
            )
        return Path(template).expanduser()

    def process(self, frame: Frame) -> None:
        now = self._clock()
        image = frame.data.get("image") if isinstance(frame.data, dict) else None
        if image is None:
            raise ValueError(
                f"frame {frame.key} has no data['image'] to annotate; set `keep_image: true` on the video source "
                f"(model nodes pass the image through)"
            )
        image = np.asarray(image.cpu() if hasattr(image, "cpu") else image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"data['image'] must be uint8 (H, W, 3) BGR, got dtype {image.dtype} shape {image.shape}")
        if scores_of(frame) is not None:
            record = predict(frame, self.params.k, self.params.labelset, self.params.scores, now)
            lines = [f"{p.label}: {p.score:.1%}" for p in record.predictions]
        else:
            lines = ["no prediction"]
        lines.append(f"latency {(now - frame.t_capture) / 1e6:.1f} ms")
        writer, size = self._writer(frame.stream, image)
        if (image.shape[1], image.shape[0]) != size:
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        else:
            image = image.copy()  # frames are shared between consumers: never draw on the original
        writer.write(draw_lines(image, lines, self.params.font_scale))
        self.written += 1

    def _writer(self, stream: str, image: np.ndarray) -> tuple[Any, tuple[int, int]]:
        entry = self._writers.get(stream)
        if entry is None:
            path = self.path_for(stream)
            path.parent.mkdir(parents=True, exist_ok=True)
            code = self.params.fourcc or fourcc_for(path)
            size = (image.shape[1], image.shape[0])
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*code), self.params.fps, size)
            if not writer.isOpened():
                raise RuntimeError(
                    f"cv2.VideoWriter cannot write {path} with codec {code!r}; use an .avi path (MJPG) or set fourcc"
                )
            entry = (writer, size, path)
            self._writers[stream] = entry
        return entry[0], entry[1]

    def teardown(self) -> None:
        for writer, _, path in self._writers.values():
            writer.release()
            logger.info("%s: wrote %s", self.name, path)
        self._writers.clear()
