"""Video source: real files written with cv2.VideoWriter, transforms, errors, loop and reconnects."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from sensors.nodes import SyntheticVideoParams, SyntheticVideoSource, VideoParams, VideoSource
from sensors.synthetic_video import SyntheticVideo, SyntheticVideoConfig
from sensors.video import (
    ReconnectPolicy,
    VideoFileNotFoundError,
    VideoOpenError,
    VideoReader,
    VideoUnavailableError,
    parse_uri,
)
from sensors.video_transforms import VideoTransform, center_crop, resize_short_side
from stream.node import NodeContext
from stream.params import ParamsError, build_params

W, H, N = 96, 64, 12


@pytest.fixture(scope="module")
def clip() -> SyntheticVideo:
    return SyntheticVideo(SyntheticVideoConfig(width=W, height=H, frames=N, fps=25.0, class_id=3, seed=7))


@pytest.fixture(scope="module")
def avi(clip: SyntheticVideo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return clip.write(tmp_path_factory.mktemp("video") / "clip.avi")


def _closest(image: np.ndarray, clip: SyntheticVideo) -> int:
    errors = [np.abs(image.astype(np.int16) - clip.frame(i).astype(np.int16)).mean() for i in range(N)]
    return int(np.argmin(errors))


def test_reader_reads_every_frame_in_order(avi: Path, clip: SyntheticVideo) -> None:
    reader = VideoReader(avi)
    frames = list(reader)
    assert len(frames) == N
    assert reader.fps == pytest.approx(25.0)
    assert reader.frame_count == N and reader.size == (W, H)
    assert [f.index for f in frames] == list(range(N))
    assert all(f.image.shape == (H, W, 3) and f.image.dtype == np.uint8 for f in frames)
    assert [_closest(f.image, clip) for f in frames] == list(range(N))  # MJPG is lossy: match by nearest
    stamps = [f.t_capture_ns for f in frames]
    assert stamps == sorted(stamps)
    assert reader.counters.frames == N and reader.counters.short_files == 0


def test_mp4_file_also_reads(clip: SyntheticVideo, tmp_path: Path) -> None:
    path = clip.write(tmp_path / "clip.mp4")
    assert sum(1 for _ in VideoReader(path)) == N


def test_transform_normalises_exactly() -> None:
    bgr = (40, 120, 200)
    image = np.empty((60, 80, 3), np.uint8)
    image[:] = bgr
    out = VideoTransform(short_side=None, crop=None)(image)
    assert out.dtype == torch.float32 and out.shape == (3, 60, 80)
    for channel, value in enumerate(reversed(bgr)):  # RGB order out
        expected = (value / 255.0 - 0.45) / 0.225
        assert torch.allclose(out[channel], torch.full((60, 80), expected), atol=1e-6)


def test_transform_resizes_short_side_and_centre_crops() -> None:
    image = np.zeros((100, 200, 3), np.uint8)
    image[:, 90:110] = 255  # a white stripe in the middle column range
    assert resize_short_side(image, 50).shape == (50, 100, 3)
    assert center_crop(image, (100, 20)).min() == 255
    out = VideoTransform.preset("x3d_m")(image)
    assert out.shape == (3, 224, 224)
    white = (1.0 - 0.45) / 0.225
    assert out[:, :, 112].min() == pytest.approx(white, abs=1e-5)  # stripe stays centred
    assert VideoTransform.preset("x3d_l")(image).shape == (3, 312, 312)
    assert VideoTransform.preset("x3d_xs").output_size(100, 200) == (160, 160)


def test_transform_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="unknown video preset 'x3d_q'"):
        VideoTransform.preset("x3d_q")
    with pytest.raises(ValueError, match="larger than the frame"):
        VideoTransform(short_side=None, crop=(200, 200))(np.zeros((100, 100, 3), np.uint8))
    with pytest.raises(ValueError, match="std values must be positive"):
        VideoTransform(std=(0.2, 0.0, 0.2))


def test_parse_uri() -> None:
    assert parse_uri("0") == ("camera", 0)
    assert parse_uri(2) == ("camera", 2)
    assert parse_uri("rtsp://cam.local/stream") == ("url", "rtsp://cam.local/stream")
    assert parse_uri("clips/a.avi") == ("file", "clips/a.avi")


def _video_node(**params: object) -> VideoSource:
    node = VideoSource(build_params(VideoParams, params))
    node.setup(NodeContext(name="cam"))
    return node


def test_video_node_emits_normalised_frames(avi: Path) -> None:
    node = _video_node(uri=str(avi), preset="x3d_s", keep_image=True, preview_width=48)
    assert node.native_rate_hz == pytest.approx(25.0)
    assert node.length == N
    frames = list(node.frames())
    node.teardown()
    assert len(frames) == N
    assert [f.seq for f in frames] == list(range(N)) and {f.stream for f in frames} == {"cam"}
    first = frames[0]
    assert set(first.data) == {"video", "image"}
    assert first.data["video"].shape == (3, 160, 160) and first.data["video"].dtype == torch.float32
    assert first.data["image"].shape == (32, 48, 3) and first.data["image"].dtype == np.uint8
    assert first.meta["frame_index"] == 0 and first.meta["source"] == str(avi)
    # the tensor is the transform of the decoded frame, not of something else
    decoded = next(iter(VideoReader(avi))).image
    assert torch.allclose(first.data["video"], VideoTransform.preset("x3d_s")(decoded))
    assert [f.t_capture for f in frames] == sorted(f.t_capture for f in frames)


def test_video_node_max_frames_and_stream_id(avi: Path) -> None:
    node = _video_node(uri=str(avi), max_frames=5, stream="front")
    frames = list(node.frames())
    assert len(frames) == 5 and frames[-1].seq == 4 and frames[0].stream == "front"
    assert "image" not in frames[0].data


def test_video_params_validated_before_start() -> None:
    with pytest.raises(ParamsError, match="uri"):
        build_params(VideoParams, {"preset": "x3d_s"})
    with pytest.raises(ParamsError, match="unknown video preset"):
        build_params(VideoParams, {"uri": "a.avi", "preset": "x3d_huge"})


def test_loop_restarts_the_file(avi: Path, clip: SyntheticVideo) -> None:
    reader = VideoReader(avi, loop=True)
    frames = [f for _, f in zip(range(2 * N + 6), reader)]
    reader.close()
    assert [f.index for f in frames] == list(range(2 * N + 6))
    assert reader.counters.loops == 2
    assert [_closest(f.image, clip) for f in frames[N : N + 3]] == [0, 1, 2]


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.avi"
    with pytest.raises(VideoFileNotFoundError, match="video file not found: .*nope.avi.*check the path"):
        VideoReader(missing).open()
    with pytest.raises(FileNotFoundError, match="nope.avi"):  # also a FileNotFoundError
        _video_node(uri=str(missing))


def test_random_bytes_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "random.avi"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(VideoOpenError, match="random.avi .*corrupt"):
        _video_node(uri=str(path))


def test_empty_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.avi"
    path.write_bytes(b"")
    with pytest.raises(VideoOpenError, match="empty.avi is empty"):
        VideoReader(path).open()


def test_heavily_truncated_file_is_a_clear_error(avi: Path, tmp_path: Path) -> None:
    data = avi.read_bytes()
    path = tmp_path / "cut.avi"
    path.write_bytes(data[: len(data) * 3 // 10])
    with pytest.raises(VideoOpenError, match="cut.avi.*truncated or corrupt"):
        VideoReader(path).open()


def test_partly_truncated_file_reports_the_short_read(avi: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = avi.read_bytes()
    path = tmp_path / "half.avi"
    path.write_bytes(data[: len(data) * 6 // 10])
    reader = VideoReader(path)
    with caplog.at_level(logging.WARNING, logger="costream.sensors.video"):
        count = sum(1 for _ in reader)
    assert 0 < count < N
    assert reader.counters.short_files == 1
    assert f"ended after {count} of the {N} frames" in caplog.text


@pytest.mark.parametrize("uri", ["http://127.0.0.1:9/missing.mjpg", "rtsp://127.0.0.1:9/missing", "57"])
def test_unreachable_source_backs_off_then_gives_up(uri: str, caplog: pytest.LogCaptureFixture) -> None:
    sleeps: list[float] = []
    policy = ReconnectPolicy(max_attempts=4, initial_backoff_s=0.5, max_backoff_s=1.5, factor=2.0)
    reader = VideoReader(uri, reconnect=policy, sleep=sleeps.append)
    with caplog.at_level(logging.WARNING, logger="costream.sensors.video"):
        with pytest.raises(VideoUnavailableError, match="could not be opened after 4 attempt"):
            reader.open()
    assert sleeps == [0.5, 1.0, 1.5]  # exponential, capped
    assert reader.counters.open_attempts == 4 and reader.counters.failed_opens == 4
    assert caplog.text.count("attempt") == 3 and "retrying in 1.00 s" in caplog.text


class _FlakyCapture:
    """A real decoder of a real file that stops delivering after `limit` frames (an unplugged camera)."""

    def __init__(self, path: Path, limit: int) -> None:
        self._cap = cv2.VideoCapture(str(path))
        self._left = limit

    def isOpened(self) -> bool:  # noqa: N802 (OpenCV's API)
        return self._cap.isOpened()

    def grab(self) -> bool:
        if self._left <= 0:
            return False
        self._left -= 1
        return self._cap.grab()

    def retrieve(self):  # noqa: ANN201
        return self._cap.retrieve()

    def get(self, prop: int) -> float:
        return self._cap.get(prop)

    def release(self) -> None:
        self._cap.release()


def test_camera_dropout_reconnects_and_is_reported(avi: Path, tmp_path: Path) -> None:
    # device: 4 frames, then unplugged; the next open fails once; then it returns with 3 frames and dies.
    plan = [(avi, 4), (tmp_path / "absent.avi", 0), (avi, 3)]
    opened: list[int] = []

    def factory(target: str | int) -> _FlakyCapture:
        assert target == 0
        path, limit = plan[len(opened)] if len(opened) < len(plan) else (tmp_path / "absent.avi", 0)
        opened.append(limit)
        return _FlakyCapture(path, limit)

    sleeps: list[float] = []
    node = VideoSource(build_params(VideoParams, {"uri": "0", "reconnect_attempts": 3}), capture_factory=factory,
                       sleep=sleeps.append)
    node.setup(NodeContext(name="cam"))
    got = []
    with pytest.raises(VideoUnavailableError, match="camera 0 dropped out and could not be reopened after 3"):
        for frame in node.frames():
            got.append(frame)
    assert [f.seq for f in got] == list(range(7))  # nothing lost or repeated across the reconnect
    assert [f.meta.get("discontinuity", False) for f in got] == [False] * 4 + [True, False, False]
    counters = node.counters
    assert counters.dropouts == 2 and counters.reconnects == 1
    assert sleeps == [0.5, 0.5, 1.0]  # one failed attempt in the first outage, two in the final one
    assert node.native_rate_hz == pytest.approx(25.0)


def test_synthetic_video_is_deterministic_and_class_dependent() -> None:
    a = SyntheticVideo(SyntheticVideoConfig(width=32, height=32, frames=4, class_id=1, seed=3))
    b = SyntheticVideo(SyntheticVideoConfig(width=32, height=32, frames=4, class_id=1, seed=3))
    c = SyntheticVideo(SyntheticVideoConfig(width=32, height=32, frames=4, class_id=2, seed=3))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a.frame(3), c.frame(3))
    assert not np.array_equal(a.frame(0), a.frame(3))  # it moves


def test_synthetic_video_node_interleaves_streams() -> None:
    node = SyntheticVideoSource(build_params(SyntheticVideoParams, {"frames": 3, "streams": 2, "width": 48,
                                                                    "height": 40, "keep_image": True}))
    node.setup(NodeContext(name="syn"))
    frames = list(node.frames())
    assert [(f.stream, f.seq) for f in frames] == [("syn/0", 0), ("syn/1", 0), ("syn/0", 1), ("syn/1", 1),
                                                   ("syn/0", 2), ("syn/1", 2)]
    assert frames[0].data["video"].shape == (3, 40, 48) and frames[0].data["image"].shape == (40, 48, 3)
    assert node.native_rate_hz == 60.0 and node.length == 6
    assert frames[0].meta["class_id"] != frames[1].meta["class_id"]


def test_synthetic_video_written_file_round_trips_through_node(tmp_path: Path) -> None:
    path = SyntheticVideo(SyntheticVideoConfig(width=160, height=120, frames=6)).write(tmp_path / "s.avi")
    node = _video_node(uri=str(path), preset="x3d_s")
    frames = list(node.frames())
    assert len(frames) == 6 and frames[0].data["video"].shape == (3, 160, 160)
    assert os.path.getsize(path) > 0


def test_pace_plays_a_file_at_its_fps(avi: Path) -> None:
    now = [0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(round(seconds, 6))
        now[0] += int(seconds * 1e9)

    reader = VideoReader(avi, pace=True, clock=lambda: now[0], sleep=sleep)
    stamps = [f.t_capture_ns for _, f in zip(range(5), reader)]
    assert sleeps == [0.04] * 4  # 25 fps, nothing else takes time on this clock
    assert stamps == [0, 40_000_000, 80_000_000, 120_000_000, 160_000_000]


def test_video_node_loop_marks_the_restart(avi: Path) -> None:
    node = _video_node(uri=str(avi), loop=True, max_frames=N + 2)
    assert node.length == N + 2
    frames = list(node.frames())
    assert [f.seq for f in frames] == list(range(N + 2))
    assert [i for i, f in enumerate(frames) if f.meta.get("discontinuity")] == [N]
