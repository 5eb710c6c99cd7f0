"""Frame: immutability, derive/stamped, and the runtime's fast constructor."""
import dataclasses
from types import MappingProxyType

import pytest

from stream.frame import Frame


def test_trusted_equals_the_dataclass_constructor():
    meta = MappingProxyType({"a": 1})
    trace = (("src", 5),)
    fast = Frame.trusted("cam", 3, 100, [1, 2], meta, trace)
    slow = Frame("cam", 3, 100, [1, 2], meta, trace)
    assert fast == slow
    assert type(fast) is Frame
    assert fast.meta is meta and fast.trace is trace


def test_trusted_frames_stay_frozen():
    frame = Frame.trusted("cam", 0, 1, None, MappingProxyType({}), ())
    with pytest.raises(dataclasses.FrozenInstanceError):
        frame.seq = 1  # type: ignore[misc]
    assert frame.stamped("node", 7).trace == (("node", 7),)
    assert frame.derive("x", {"k": 2}).meta["k"] == 2


def test_meta_is_copied_read_only():
    source = {"k": 1}
    frame = Frame("cam", 0, 1, None, source)
    source["k"] = 2
    assert frame.meta["k"] == 1
    with pytest.raises(TypeError):
        frame.meta["k"] = 3  # type: ignore[index]
