"""Frame: immutability, derive/stamped, and the runtime's fast constructor."""
import dataclasses
from types import MappingProxyType

import pytest

from stream.frame import Frame
from stream.ticket import Ticket


def test_trusted_equals_the_dataclass_constructor():
    meta = MappingProxyType({"a": 1})
    trace = (("src", 5),)
    fast = Frame.trusted("cam", 3, 100, [1, 2], meta, trace)
    slow = Frame("cam", 3, 100, [1, 2], meta, trace)
    assert fast == slow
    assert type(fast) is Frame
    assert fast.meta is meta and fast.trace is trace


def test_trusted_sets_every_field_including_the_ticket():
    ticket = Ticket(lambda ticket, outcome: None)
    values = dict(stream="cam", seq=3, t_capture=100, data=[1, 2], meta=MappingProxyType({"a": 1}),
                  trace=(("src", 5),), ticket=ticket)
    assert [f.name for f in dataclasses.fields(Frame)] == list(values)  # a new field must be filled here too
    fast = Frame.trusted(**values)
    assert all(getattr(fast, name) is value for name, value in values.items())
    plain = Frame.trusted(*list(values.values())[:-1])  # no ticket: None, not an unset slot
    assert plain.ticket is None and plain == Frame(*list(values.values())[:-1])


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
