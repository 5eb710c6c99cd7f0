"""The node contract: sources produce frames, operators map frames to frames, sinks consume them.

A node declares its parameters as a frozen dataclass `Params` (validated from YAML before anything
starts), does one unit of work per call, and may implement `setup`/`teardown`. The runtime owns the
loop, the queues, the drop policies and the metrics; nodes never see them.

Minimal examples::

    @register("scale")
    class Scale(Operator):
        @dataclass(frozen=True)
        class Params:
            factor: float = 2.0

        def process(self, frame):
            return frame.derive(frame.data * self.params.factor)
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, Iterable, Iterator, Mapping

from stream.frame import Frame, now_ns
from stream.ticket import Ticket

_NO_META: MappingProxyType = MappingProxyType({})


@dataclass(frozen=True)
class NoParams:
    """Params of a node that takes none."""


@dataclass(frozen=True)
class NodeContext:
    """What the runtime tells a node at setup: its name, its device and its input names."""

    name: str
    device: str = "cpu"
    inputs: tuple[str, ...] = ()
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("costream.node"))


class Node:
    """Base of all node kinds. Subclass `Source`, `Operator` or `Sink` instead of this."""

    role: ClassVar[str] = "node"
    Params: ClassVar[type] = NoParams
    kind: ClassVar[str | None] = None  # set by `register`

    def __init__(self, params: Any = None) -> None:
        self.params = params if params is not None else self.Params()
        self.context: NodeContext = NodeContext(name=type(self).__name__)

    def setup(self, context: NodeContext) -> None:
        """Load weights, open devices, allocate state. Called once before the first frame."""
        self.context = context

    def teardown(self) -> None:
        """Release what setup acquired. Called once, also after errors."""

    def stats(self) -> dict[str, int]:
        """The node's own counters for the run report (`counters`): what a user needs to see why
        frames went missing (rejected requests, stream resets, evictions). Read after teardown."""
        return {}

    @property
    def name(self) -> str:
        return self.context.name


class Source(Node):
    """Produces frames. Implement `frames()`; build each frame with `make_frame` so it is stamped."""

    role = "source"

    def __init__(self, params: Any = None) -> None:
        super().__init__(params)
        self._next_seq: dict[str, int] = {}

    def frames(self) -> Iterator[Frame]:
        raise NotImplementedError(f"{type(self).__name__} must implement frames()")

    def make_frame(
        self,
        data: Any,
        stream: str | None = None,
        *,
        seq: int | None = None,
        t_capture: int | None = None,
        meta: Mapping[str, Any] | None = None,
        ticket: Ticket | None = None,
    ) -> Frame:
        """Stamp `data` with stream id, the next per-stream sequence number (or `seq`, from which the
        stream then counts on) and the capture time; `ticket` lets this source hear what becomes of the
        frame (`stream.ticket`)."""
        stream = self.name if stream is None else stream
        if seq is None:
            seq = self._next_seq.get(stream, 0)
        self._next_seq[stream] = seq + 1
        if not meta:
            meta = _NO_META
        elif meta.__class__ is not MappingProxyType:  # a read-only view is kept as it is, as Frame does
            meta = MappingProxyType(dict(meta))
        return Frame.trusted(stream, seq, now_ns() if t_capture is None else t_capture, data, meta, (), ticket)

    def stop(self) -> None:
        """Ask a `frames()` that may block (on a socket, a camera) to end soon.

        Called by the runtime when the pipeline is asked to stop, possibly from a signal handler:
        only set a flag or an Event here. A second call means the stop no longer drains: stop waiting
        for anything (e.g. for answers to requests already accepted). Sources that never block need
        not override it.
        """

    @classmethod
    def preprocess_step(cls, params: Any) -> tuple[str, Any] | None:
        """This source's own processing of raw sensor samples as an operator: (node kind, params), or
        None when it emits samples as the sensor gives them. Used where raw samples arrive another way
        (requests to `costream serve`, a recording): a video source answers with its resize, crop and
        normalisation, so camera images sent by a robot become what the source would have made."""
        return None

    @property
    def native_rate_hz(self) -> float | None:
        """The sensor's own frame rate once set up (a video file's fps), used by `rate_hz: native`."""
        return None

    @property
    def length(self) -> int | None:
        """Number of frames a finite source will produce, if known (drives the progress bar)."""
        return None


class Operator(Node):
    """Maps one frame to zero, one or several frames.

    `process` returns a Frame, an iterable of Frames, or None (nothing to emit, e.g. while a continual
    model fills its receptive field). Operators that can step several streams at once implement
    `process_batch`, which the runtime calls with up to `max_batch` frames that arrived together.
    """

    role = "operator"
    # True when every output is derived (`frame.derive`) from an input of the same call, so that an
    # input left without output in that call never gets one: the runtime then completes the input's
    # ticket as ended (`stream.ticket`) at once. Leave it False for operators that hold frames back
    # and emit them later.
    outputs_follow_inputs: ClassVar[bool] = False

    def process(self, frame: Frame) -> Frame | Iterable[Frame] | None:
        raise NotImplementedError(f"{type(self).__name__} must implement process(frame)")

    def process_batch(self, frames: list[Frame]) -> list[Frame | FrameFailure]:
        """Frames that arrived together. A frame that raises is returned as a FrameFailure, so that it
        fails alone instead of taking the frames batched with it down too."""
        out: list[Frame | FrameFailure] = []
        for frame in frames:
            try:
                frames_out, failures = as_outputs(self.process(frame))
            except Exception as exc:
                out.append(FrameFailure(frame, exc))
                continue
            out.extend(frames_out)
            out.extend(failures)
        return out


class Sink(Node):
    """Consumes frames (writes, publishes, displays). `process` returns nothing."""

    role = "sink"

    def process(self, frame: Frame) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement process(frame)")


@dataclass(frozen=True)
class FrameFailure:
    """An input that a batched step could not process, returned among its outputs by
    `process_batch`: the runtime fails that frame alone (counted, its source told, the node's
    `on_error` policy applied) and emits the outputs of the frames it was batched with."""

    frame: Frame
    error: BaseException


def as_outputs(result: Any) -> tuple[list[Frame], list[FrameFailure]]:
    """What an operator returned: the frames to emit and the inputs that failed (FrameFailure)."""
    if result is None:
        return [], []
    if isinstance(result, Frame):
        return [result], []
    frames: list[Frame] = []
    failures: list[FrameFailure] = []
    for item in result:
        if isinstance(item, Frame):
            frames.append(item)
        elif isinstance(item, FrameFailure):
            failures.append(item)
        else:
            raise TypeError(
                f"process() must return Frame, an iterable of Frame or None; got an item of type "
                f"{type(item).__name__}. Wrap data with frame.derive(data)."
            )
    return frames, failures
