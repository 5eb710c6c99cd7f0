"""Reading a camera or network stream in a thread of its own, so that its consumer can stop at once.

OpenCV's `grab()` on a camera or URL can block for as long as the device or the network says (an
unplugged camera, a stalled stream), and nothing can interrupt it from outside. `BackgroundReader`
runs the `VideoReader` in its own thread and hands frames over through a one-frame queue: the
consumer waits on the queue, and `stop()` (from any thread) makes it return within `poll_s`, also
during a reconnect backoff, while a blocked `grab()` finishes on its own and the thread then releases
the capture. Errors of the reader are raised in the consumer. Files do not need this (a file's
`grab()` returns quickly).

    background = BackgroundReader(VideoReader(0))
    for image, t_capture_ns, index in background: ...   # background.stop() from elsewhere ends it
"""
from __future__ import annotations

import logging
import queue
import threading
from typing import Iterator

from sensors.video.reader import VideoFrame, VideoInterrupted, VideoReader

logger = logging.getLogger("costream.sensors.video")

_END = object()


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class BackgroundReader:
    """Iterate a `VideoReader` read by a thread of its own; see the module docstring."""

    def __init__(self, reader: VideoReader, poll_s: float = 0.05) -> None:
        if not poll_s > 0:
            raise ValueError(f"poll_s must be positive, got {poll_s}")
        self.reader = reader
        self.poll_s = poll_s
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def busy(self) -> bool:
        """The reading thread has not finished (it may be blocked inside OpenCV)."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        """End the iteration within `poll_s`; thread-safe, also from a signal handler's context."""
        self._stop.set()
        self.reader.interrupt()

    def __iter__(self) -> Iterator[VideoFrame]:
        if self._thread is not None:
            raise RuntimeError("a BackgroundReader is iterated once; make a new one to read again")
        self._thread = threading.Thread(target=self._read, name=f"video-{self.reader.target}", daemon=True)
        self._thread.start()
        try:
            while True:
                try:
                    item = self._queue.get(timeout=self.poll_s)
                except queue.Empty:
                    if self._stop.is_set():
                        return
                    continue
                if item is _END:
                    return
                if isinstance(item, _Failed):
                    raise item.error
                yield item
        finally:
            self.stop()

    def _read(self) -> None:
        try:
            for frame in self.reader:
                if not self._put(frame):
                    return
            self._put(_END)
        except VideoInterrupted:
            self._put(_END)
        except Exception as exc:  # raised again in the consumer
            self._put(_Failed(exc))
        finally:
            self.reader.close()  # in this thread: the capture is released by the thread that used it

    def _put(self, item: object) -> bool:
        """Hand one item over, waiting for room; False once the consumer stopped."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=self.poll_s)
                return True
            except queue.Full:
                continue
        return False

    def join(self, timeout: float) -> bool:
        """Wait up to `timeout` s for the reading thread to end; False if it is still blocked."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.busy


__all__ = ["BackgroundReader"]
