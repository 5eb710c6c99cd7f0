"""Sink kind `bev_writer`: BEV maps with the segmentation overlaid, as PNG frames or a video, plus a
per-frame latency log.

It takes what a PPN pipeline's join delivers ({branch: {"bev", "seg" | "recon"}}) or any frame
whose data holds a `bev` map, looking the keys up through nested dicts. Each written frame is a
`render.render_panels` picture; `latency.jsonl` gets one line per frame: stream, seq, end-to-end
latency and the time each node finished, in ms after capture (from the frame's trace).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO

import cv2

from sensors.lidar.render import render_panels
from stream.frame import Frame, now_ns
from stream.node import NodeContext, Sink
from stream.registry import register
from stream.ports import ANY

logger = logging.getLogger("costream.sensors.lidar.sinks")


def _doc(default: Any, doc: str) -> Any:
    return field(default=default, metadata={"doc": doc})


def find_key(data: Any, key: str) -> Any | None:
    """The array under `key` in `data` or in its nested dicts (a join's {input name: data}); a dict
    under that key is looked into, not returned (an input may be named like the key it carries)."""
    if not isinstance(data, dict):
        return None
    value = data.get(key)
    if value is not None and not isinstance(value, dict):
        return value
    for value in data.values():
        found = find_key(value, key)
        if found is not None:
            return found
    return None


@dataclass(frozen=True)
class BEVWriterParams:
    out_dir: str = _doc("", "directory for the PNG frames and latency.jsonl (created if missing)")
    video: str | None = _doc(None, "write one video file here (.mp4 or .avi) instead of PNG frames")
    fps: float = _doc(10.0, "video frame rate")
    every: int = _doc(1, "write every n-th frame of each stream (latency is logged for all)")
    threshold: float | None = _doc(None, "show network outputs above this as a mask; null: min-max scaled")
    scale: int = _doc(2, "pixels per BEV cell")
    bev_key: str = _doc("bev", "key of the BEV map (the stack's newest map is drawn)")
    seg_key: str = _doc("seg", "key of the segmentation output (drawn in red over the map)")
    recon_key: str = _doc("recon", "key of the reconstruction output (drawn in green beside it)")
    latency_log: bool = _doc(True, "write latency.jsonl in out_dir")

    def __post_init__(self) -> None:
        if not str(self.out_dir).strip():
            raise ValueError("out_dir is required: the directory for the frames and the latency log")
        if self.every < 1 or self.scale < 1 or not self.fps > 0:
            raise ValueError("every and scale must be at least 1 and fps positive")
        if self.video is not None and Path(self.video).suffix.lower() not in (".mp4", ".avi"):
            raise ValueError(f"video must end in .mp4 or .avi, got {self.video!r}")


@register("bev_writer")
class BEVWriter(Sink):
    """PNG frames (`<stream>_<seq>.png`) or a video of the BEV with network outputs, and latency.jsonl."""
    consumes = ANY  # BEV maps, alone or joined with a network's output

    Params = BEVWriterParams

    def __init__(self, params: BEVWriterParams | None = None, *, clock: Callable[[], int] = now_ns) -> None:
        super().__init__(params)
        self._clock = clock
        self._video: Any = None
        self._log: TextIO | None = None
        self._seen: dict[str, int] = {}
        self.written = 0
        self.logged = 0

    def setup(self, context: NodeContext) -> None:
        super().setup(context)
        self.out_dir = Path(self.params.out_dir).expanduser()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.params.latency_log:
            self._log = open(self.out_dir / "latency.jsonl", "w", encoding="utf-8")

    def process(self, frame: Frame) -> None:
        now = self._clock()
        p = self.params
        bev = find_key(frame.data, p.bev_key)
        if bev is None:
            keys = sorted(frame.data) if isinstance(frame.data, dict) else type(frame.data).__name__
            raise ValueError(f"node {self.name!r} (bev_writer): frame {frame.key} carries no {p.bev_key!r} map "
                             f"(data: {keys}); connect it to a bev node or a PPN node that passes the map on")
        if self._log is not None:
            stages = {node: round((t - frame.t_capture) / 1e6, 3) for node, t in frame.trace}
            self._log.write(json.dumps({"stream": frame.stream, "seq": frame.seq,
                                        "latency_ms": round((now - frame.t_capture) / 1e6, 3),
                                        "stages_ms": stages}) + "\n")
            self.logged += 1
        count = self._seen.get(frame.stream, 0)
        self._seen[frame.stream] = count + 1
        if count % p.every:
            return
        image = render_panels(bev, find_key(frame.data, p.seg_key), find_key(frame.data, p.recon_key),
                              p.threshold, p.scale)
        if p.video is not None:
            self._write_video(image)
        else:
            safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in frame.stream)
            path = self.out_dir / f"{safe}_{frame.seq:06d}.png"
            if not cv2.imwrite(str(path), image):
                raise OSError(f"node {self.name!r}: could not write {path}")
        self.written += 1

    def _write_video(self, image: Any) -> None:
        if self._video is None:
            path = Path(self.params.video).expanduser()  # type: ignore[arg-type]
            path.parent.mkdir(parents=True, exist_ok=True)
            fourcc = cv2.VideoWriter_fourcc(*("mp4v" if path.suffix.lower() == ".mp4" else "MJPG"))
            self._video = cv2.VideoWriter(str(path), fourcc, self.params.fps, (image.shape[1], image.shape[0]))
            if not self._video.isOpened():
                raise OSError(f"node {self.name!r}: OpenCV cannot write the video {path}; try .avi")
            self._video_size = image.shape[:2]
        if image.shape[:2] != self._video_size:
            raise ValueError(f"node {self.name!r}: frame size changed from {self._video_size} to {image.shape[:2]}; "
                             "a video needs one size (write PNG frames instead)")
        self._video.write(image)

    def stats(self) -> dict[str, int]:
        return {"written": self.written, "latency_lines": self.logged}

    def teardown(self) -> None:
        if self._video is not None:
            self._video.release()
        if self._log is not None:
            self._log.close()
