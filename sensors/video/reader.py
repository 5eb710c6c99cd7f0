"""Read frames from a video file, a camera or a network stream with OpenCV.

`VideoReader` yields `VideoFrame(image, t_capture_ns, index)`: the decoded uint8 BGR image, the
monotonic time at which it was grabbed, and a running index. A file that ends is the end of the
stream (or starts again with `loop=True`); a camera or URL that fails to open or drops out is
reopened with exponential backoff, every attempt logged and counted, and given up after
`ReconnectPolicy.max_attempts` with a `VideoUnavailableError`. Missing, empty and undecodable files
raise errors that name the path and say what to check. `interrupt()` (from any thread) cuts a
reconnect backoff short: the waiting call raises `VideoInterrupted`. The clock and sleep are
injectable so that tests need no waiting.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, NamedTuple

import cv2
import numpy as np

logger = logging.getLogger("costream.sensors.video")

UriKind = Literal["file", "camera", "url"]


class VideoError(RuntimeError):
    """Base of the errors raised by `VideoReader`."""


class VideoFileNotFoundError(VideoError, FileNotFoundError):
    """The video file does not exist."""


class VideoOpenError(VideoError):
    """The file exists but OpenCV cannot open it or decode a frame from it (corrupt, truncated, codec)."""


class VideoUnavailableError(VideoError):
    """A camera or network stream could not be (re)opened within the reconnect policy."""


class VideoInterrupted(VideoError):
    """`VideoReader.interrupt()` was called while the reader waited to reopen its source."""


@dataclass(frozen=True)
class ReconnectPolicy:
    """How often and how patiently a camera or URL is reopened: waits of initial*factor**i, capped."""

    max_attempts: int = 5  # opening attempts per outage, the first included
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    factor: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.initial_backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError("backoff times must not be negative")
        if self.factor < 1:
            raise ValueError(f"backoff factor must be at least 1, got {self.factor}")

    def delay_s(self, failed_attempts: int) -> float:
        """Wait before the next attempt after `failed_attempts` (>= 1) consecutive failures."""
        return min(self.max_backoff_s, self.initial_backoff_s * self.factor ** (failed_attempts - 1))


@dataclass
class VideoCounters:
    """What happened to the source so far; read it for reports and tests."""

    frames: int = 0
    open_attempts: int = 0
    failed_opens: int = 0
    dropouts: int = 0  # a camera/URL stopped delivering frames
    reconnects: int = 0  # ... and came back
    loops: int = 0  # a looping file started again
    short_files: int = 0  # a file ended before the frame count its container declares


class VideoFrame(NamedTuple):
    image: np.ndarray  # uint8 (H, W, 3) BGR
    t_capture_ns: int
    index: int  # running index over the whole iteration (keeps counting across loops/reconnects)


def parse_uri(uri: str | int | Path) -> tuple[UriKind, str | int]:
    """Classify a source: an int or a string of digits is a camera index, `scheme://...` is a URL."""
    if isinstance(uri, bool):
        raise TypeError("video uri must be a path, a camera index or a URL, got a bool")
    if isinstance(uri, int):
        return "camera", uri
    text = str(uri).strip()
    if text.isdigit():
        return "camera", int(text)
    if "://" in text:
        return "url", text
    return "file", text


def _default_capture(target: str | int) -> Any:
    return cv2.VideoCapture(target)


class VideoReader:
    """Iterate the frames of a file path, a camera index or a URL (rtsp/http/...).

    Usable without any runtime: `for image, t_ns, i in VideoReader("clip.avi"): ...`.
    `pace=True` sleeps so that a file plays at its own fps (cameras pace themselves).
    """

    def __init__(
        self,
        uri: str | int | Path,
        *,
        loop: bool = False,
        reconnect: ReconnectPolicy = ReconnectPolicy(),
        pace: bool = False,
        capture_factory: Callable[[str | int], Any] = _default_capture,
        sleep: Callable[[float], None] | None = None,  # default: a wait that interrupt() cuts short
        clock: Callable[[], int] = time.monotonic_ns,  # the same clock as stream.frame.now_ns
    ) -> None:
        self.uri = uri
        self.kind, self.target = parse_uri(uri)
        self.loop = loop
        self.reconnect = reconnect
        self.pace = pace
        self.counters = VideoCounters()
        self._factory = capture_factory
        self._interrupted = threading.Event()
        self._sleep = sleep if sleep is not None else self._interrupted.wait
        self._clock = clock
        self._cap: Any = None
        self._pending: VideoFrame | None = None  # the frame decoded while checking that the source works
        self._pass_frames = 0
        self._index = 0
        self.fps: float | None = None
        self.frame_count: int | None = None
        self.size: tuple[int, int] | None = None  # (width, height)

    @property
    def description(self) -> str:
        return {"file": f"video file {self.target}", "camera": f"camera {self.target}", "url": f"stream {self.target}"}[
            self.kind
        ]

    # -- opening -----------------------------------------------------------------------------------

    def open(self) -> "VideoReader":
        """Open the source now (also done by the first iteration); raises a clear error on failure."""
        if self._cap is None:
            if self.kind == "file":
                self._open_file()
            else:
                self._open_with_backoff(reason="open")
        return self

    def _open_file(self) -> None:
        path = Path(str(self.target)).expanduser()
        if not path.exists():
            raise VideoFileNotFoundError(
                f"video file not found: {str(self.target)!r} (resolved to {path.resolve()}); check the path and "
                f"the working directory. A camera is given by its index (0) and a stream by its URL (rtsp://...)."
            )
        if not path.is_file():
            raise VideoOpenError(f"{path} is not a regular file; give the path of a video file")
        size = path.stat().st_size
        if size == 0:
            raise VideoOpenError(f"video file {path} is empty (0 bytes); it was not written completely")
        self.counters.open_attempts += 1
        cap = self._factory(str(path))
        if not cap.isOpened():
            cap.release()
            self.counters.failed_opens += 1
            raise VideoOpenError(
                f"OpenCV cannot open video file {path} ({size} bytes): it is corrupt or uses a container/codec "
                f"this OpenCV build cannot decode ({_ffmpeg_status()}). Check that it plays (ffprobe {path}) or "
                f"re-encode it, e.g. `ffmpeg -i {path.name} -c:v mjpeg out.avi`."
            )
        first = self._grab(cap)
        if first is None:
            cap.release()
            self.counters.failed_opens += 1
            raise VideoOpenError(
                f"OpenCV opened video file {path} ({size} bytes) but could not decode a single frame: the file is "
                f"truncated or corrupt. Check it with `ffprobe {path}` or record it again."
            )
        self._adopt(cap, first)

    def _open_with_backoff(self, reason: str) -> None:
        """Try to open a camera/URL up to max_attempts times; raise VideoUnavailableError when it stays down."""
        policy = self.reconnect
        waited = 0.0
        for attempt in range(1, policy.max_attempts + 1):
            self.counters.open_attempts += 1
            cap = self._factory(self.target)
            first = self._grab(cap) if cap.isOpened() else None
            if first is not None:
                if reason == "reconnect":
                    self.counters.reconnects += 1
                    logger.warning("%s is back after %d attempt(s)", self.description, attempt)
                self._adopt(cap, first)
                return
            cap.release()
            self.counters.failed_opens += 1
            if attempt == policy.max_attempts:
                break
            delay = policy.delay_s(attempt)
            logger.warning(
                "%s: %s attempt %d/%d failed; retrying in %.2f s",
                self.description, reason, attempt, policy.max_attempts, delay,
            )
            waited += delay
            self._sleep(delay)
            if self._interrupted.is_set():
                raise VideoInterrupted(f"{self.description}: interrupted while waiting to {reason} it")
        hint = (
            "check that the camera is connected, that the index is right and that this user may open it "
            "(/dev/video* permissions)"
            if self.kind == "camera"
            else "check that the URL is right, the server is reachable and the stream is running"
        )
        what = "dropped out and could not be reopened" if reason == "reconnect" else "could not be opened"
        raise VideoUnavailableError(
            f"{self.description} {what} after {policy.max_attempts} attempt(s) over {waited:.1f} s of backoff; {hint}. "
            f"Raise reconnect max_attempts to wait longer."
        )

    def _adopt(self, cap: Any, first: VideoFrame) -> None:
        self._cap = cap
        self._pending = first
        self._pass_frames = 0
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if math.isfinite(fps) and 0.0 < fps <= 1000.0 else None
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if self.kind == "file" else 0
        self.frame_count = count if count > 0 else None
        height, width = first.image.shape[:2]
        self.size = (width, height)

    def _grab(self, cap: Any) -> VideoFrame | None:
        """Grab (timestamped as soon as the frame is in) and decode one frame; None at end or failure."""
        if not cap.grab():
            return None
        t_ns = self._clock()
        ok, image = cap.retrieve()
        if not ok or image is None:
            return None
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        elif image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
        return VideoFrame(image, t_ns, -1)

    # -- reading -----------------------------------------------------------------------------------

    def read(self) -> VideoFrame | None:
        """The next frame, or None when a (non-looping) file has ended."""
        self.open()
        frame = self._next_raw()
        if frame is None:
            return None
        out = VideoFrame(frame.image, frame.t_capture_ns, self._index)
        self._index += 1
        self._pass_frames += 1
        self.counters.frames += 1
        return out

    def _next_raw(self) -> VideoFrame | None:
        if self._pending is not None:
            frame, self._pending = self._pending, None
            return frame
        frame = self._grab(self._cap)
        if frame is not None:
            return frame
        if self.kind == "file":
            self._file_ended()
            if not self.loop:
                return None
            self.counters.loops += 1
            self._close_capture()
            self._open_file()
            return self._next_raw()
        self.counters.dropouts += 1
        logger.warning("%s stopped delivering frames after frame %d; reconnecting", self.description, self._index)
        self._close_capture()
        self._open_with_backoff(reason="reconnect")
        return self._next_raw()

    def _file_ended(self) -> None:
        if self.frame_count is not None and self._pass_frames < self.frame_count:
            self.counters.short_files += 1
            logger.warning(
                "%s ended after %d of the %d frames its container declares; the file may be truncated",
                self.description, self._pass_frames, self.frame_count,
            )

    def __iter__(self) -> Iterator[VideoFrame]:
        self.open()
        t0: int | None = None
        played = 0
        while True:
            if self.pace and self.fps:  # wait until the next frame is due, then read it
                now = self._clock()
                t0 = now if t0 is None else t0
                ahead = t0 + int(played * 1e9 / self.fps) - now
                if ahead > 0:
                    self._sleep(ahead / 1e9)
            frame = self.read()
            if frame is None:
                return
            played += 1
            yield frame

    # -- closing -----------------------------------------------------------------------------------

    def _close_capture(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
        self._pending = None

    def interrupt(self) -> None:
        """Make a reconnect backoff (now or later) end at once with `VideoInterrupted`; thread-safe.
        A `grab()` blocked inside OpenCV cannot be cut short: read from another thread to stop
        waiting for it (as the `video` node does for cameras and URLs)."""
        self._interrupted.set()

    def close(self) -> None:
        """Release the capture device or file; the reader can be opened again."""
        self._close_capture()

    def __enter__(self) -> "VideoReader":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"VideoReader({self.uri!r}, kind={self.kind}, fps={self.fps}, loop={self.loop})"


def _ffmpeg_status() -> str:
    info = cv2.getBuildInformation()
    for line in info.splitlines():
        if line.strip().startswith("FFMPEG:"):
            return "FFmpeg support: " + line.split(":", 1)[1].strip()
    return "FFmpeg support: unknown"
