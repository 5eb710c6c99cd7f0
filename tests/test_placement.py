"""The device transfer cache: one copy per (frame, device), released once every consumer on that device
took it, and bounded in bytes. Run on CPU with torch's `meta` device as the consumers' device (a move
that copies no data), the twin of the CUDA path, which takes the same code with real copies."""
from __future__ import annotations

import pytest

from stream.frame import Frame
from stream.placement import DevicePlacement

torch = pytest.importorskip("torch")


def _frame(seq: int, numel: int = 1024) -> Frame:
    return Frame("cam", seq, 0, {"video": torch.zeros(numel), "label": seq})  # 4 KiB of float32


def test_a_copy_is_made_once_and_released_when_every_consumer_took_it():
    placement = DevicePlacement()
    frame = _frame(0)
    first = placement.prepare(frame, None, "meta", None, copies=3)
    assert first.data["video"].device.type == "meta" and first.data["label"] == 0
    assert placement.cached == 1 and placement.cached_bytes == 4096
    assert placement.prepare(frame, None, "meta", None, copies=3) is first  # shared, not copied again
    assert placement.cached == 1
    assert placement.prepare(frame, None, "meta", None, copies=3) is first
    assert placement.cached == 0 and placement.cached_bytes == 0  # the third consumer took the last share


def test_a_single_consumer_keeps_nothing_and_frames_already_there_are_not_copied():
    placement = DevicePlacement()
    moved = placement.prepare(_frame(0), None, "meta", None, copies=1)
    assert moved.data["video"].device.type == "meta" and placement.cached == 0
    assert placement.prepare(moved, None, "meta", None, copies=2) is moved  # already on the device


def test_copies_nobody_takes_are_bounded_in_bytes():
    placement = DevicePlacement(max_bytes=10 * 4096)
    frames = [_frame(i) for i in range(100)]
    for frame in frames:  # two consumers each, but the second never asks (its queue dropped them)
        placement.prepare(frame, None, "meta", None, copies=2)
        assert placement.cached_bytes <= 10 * 4096
    assert placement.cached == 10
    newest = placement.prepare(frames[-1], None, "meta", None, copies=2)  # the newest are the ones kept
    assert newest.data["video"].device.type == "meta" and placement.cached == 9
    again = placement.prepare(frames[0], None, "meta", None, copies=2)  # an evicted one is copied again
    assert again.data["video"].device.type == "meta"
    with pytest.raises(ValueError, match="max_bytes must be >= 0"):
        DevicePlacement(max_bytes=-1)
