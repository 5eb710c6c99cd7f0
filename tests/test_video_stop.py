"""Blocking video sources stop promptly: a camera blocked inside its grab, a reconnect backoff; and the
one meaning of `preset: none` / `preset: null`."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import pytest

from sensors.video.nodes import TransformParams, VideoParams, VideoSource
from sensors.video.reader import ReconnectPolicy, VideoInterrupted, VideoReader
from sensors.video.synthetic import SyntheticVideo, SyntheticVideoConfig
from sensors.video.transforms import X3D_MEAN, X3D_STD, VideoTransform
from stream.executor import LocalExecutor
from stream.testing import CollectSink, node_spec, pipeline_spec

GUARD_S = 30  # only turns a hang into a failure


class StalledCamera:
    """A real decoder of a real file whose grab() blocks after `frames` frames, as a camera that stopped
    delivering does inside OpenCV, until `unplug` is set (the device goes away for good)."""

    def __init__(self, path: Path, frames: int) -> None:
        self._cap = cv2.VideoCapture(str(path))
        self._left = frames
        self.blocked = threading.Event()
        self.unplug = threading.Event()

    def isOpened(self) -> bool:  # noqa: N802 (OpenCV's API)
        return self._cap.isOpened()

    def grab(self) -> bool:
        if self._left <= 0:
            self.blocked.set()
            self.unplug.wait(GUARD_S)
            return False
        self._left -= 1
        return self._cap.grab()

    def retrieve(self):  # noqa: ANN201
        return self._cap.retrieve()

    def get(self, prop: int) -> float:
        return self._cap.get(prop)

    def release(self) -> None:
        self._cap.release()


@dataclass(frozen=True)
class CameraParams(VideoParams):
    camera: Any = None  # the StalledCamera the factory hands out


class StalledCameraSource(VideoSource):
    Params = CameraParams

    def __init__(self, params: CameraParams | None = None) -> None:
        super().__init__(params, capture_factory=lambda target: params.camera)


@dataclass(frozen=True)
class CountParams:
    count: int
    reached: threading.Event = field(default_factory=threading.Event)


class CountingSink(CollectSink):
    Params = CountParams

    def process(self, frame) -> None:
        super().process(frame)
        if len(self.frames) == self.params.count:
            self.params.reached.set()


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    video = SyntheticVideo(SyntheticVideoConfig(width=64, height=48, frames=8, fps=25.0))
    return video.write(tmp_path_factory.mktemp("video") / "clip.avi")


def test_a_camera_blocked_in_its_grab_stops_at_once(clip: Path) -> None:
    camera = StalledCamera(clip, frames=5)
    spec = pipeline_spec(node_spec("cam", StalledCameraSource, CameraParams(uri="0", preset="none", camera=camera)),
                         node_spec("out", CountingSink, CountParams(5), inputs=["cam"], queue_size=16))
    ex = LocalExecutor(spec).start()
    try:
        assert camera.blocked.wait(GUARD_S)  # OpenCV now waits for a frame that does not come
        assert ex.nodes["out"].params.reached.wait(GUARD_S)  # and every frame before it went through
        t0 = time.monotonic()
        ex.request_stop("operator pressed stop")
        report = ex.wait(timeout=GUARD_S)
        stopped_after_s = time.monotonic() - t0
        assert not camera.unplug.is_set()  # the stop did not wait for the blocked grab to return
    finally:
        camera.unplug.set()
    assert report.stop_reason == "operator pressed stop" and report.ok
    assert report.nodes["cam"].frames_out == 5 and len(ex.nodes["out"].frames) == 5
    print(f"stopped {stopped_after_s * 1e3:.0f} ms after the request while the camera was blocked")


def test_a_reconnect_backoff_is_cut_short_by_interrupt() -> None:
    attempted = threading.Event()

    def factory(target: str) -> Any:
        attempted.set()
        return cv2.VideoCapture(target)  # a real open of an unreachable stream: it fails

    policy = ReconnectPolicy(max_attempts=3, initial_backoff_s=GUARD_S, max_backoff_s=GUARD_S)
    reader = VideoReader("rtsp://127.0.0.1:9/missing", reconnect=policy, capture_factory=factory)
    outcome: list[BaseException] = []
    thread = threading.Thread(target=lambda: _open_into(reader, outcome))
    thread.start()
    assert attempted.wait(GUARD_S)
    reader.interrupt()
    thread.join(GUARD_S)
    assert not thread.is_alive() and len(outcome) == 1 and isinstance(outcome[0], VideoInterrupted)
    assert reader.counters.failed_opens == 1  # it gave up waiting during the first backoff


def _open_into(reader: VideoReader, outcome: list[BaseException]) -> None:
    try:
        reader.open()
    except BaseException as exc:  # noqa: BLE001 (handed to the test thread)
        outcome.append(exc)


@pytest.mark.parametrize("preset", [None, "none", "None"])
def test_no_preset_has_one_meaning(preset: str | None) -> None:
    """`preset: none` and `preset: null` both keep the frame size and normalise like every preset."""
    expected = VideoTransform(short_side=None, crop=None, mean=X3D_MEAN, std=X3D_STD)
    assert VideoTransform.preset(preset) == expected
    assert TransformParams(preset=preset).transform() == expected
