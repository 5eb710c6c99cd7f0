"""Generic sinks: `null` counts frames and drops them; `log` logs frames at an interval."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from stream.frame import Frame, now_ns
from stream.node import Sink
from stream.ports import ANY
from stream.registry import register

_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@register("null")
class NullSink(Sink):
    """Counts what arrives; the end of a benchmark pipeline (latency is recorded by the runtime)."""

    consumes = ANY

    def setup(self, context) -> None:
        super().setup(context)
        self.count = 0

    def process(self, frame: Frame) -> None:
        self.count += 1


@register("log")
class LogSink(Sink):
    """Logs stream, seq, a data summary and the latency so far of every `every`-th frame.

    Its lines are shown whatever `--log-level` says (that level filters costream's own messages): the
    sink's logger, `costream.sink.<node>`, is set to the sink's `level`, at which its lines are logged.
    """

    consumes = ANY

    @dataclass(frozen=True)
    class Params:
        every: int = 1  # log every N-th frame
        level: str = "INFO"  # the level its lines are logged at (shown whatever --log-level says)

        def __post_init__(self) -> None:
            if not isinstance(self.every, int) or self.every < 1:
                raise ValueError(f"log: `every` must be an integer >= 1, got {self.every!r}")
            if str(self.level).upper() not in _LEVELS:
                raise ValueError(f"log: `level` must be one of {', '.join(_LEVELS)}, got {self.level!r}")

    def setup(self, context) -> None:
        super().setup(context)
        self.count = 0
        self._level = getattr(logging, str(self.params.level).upper())
        self._log = logging.getLogger(f"costream.sink.{context.name}")
        self._log.setLevel(self._level)  # a sink asked to log: not silenced by a stricter root level

    def process(self, frame: Frame) -> None:
        self.count += 1
        if (self.count - 1) % self.params.every == 0 and self._log.isEnabledFor(self._level):
            self._log.log(self._level, "%s seq=%d %s latency=%.3f ms", frame.stream, frame.seq,
                          describe(frame.data), (now_ns() - frame.t_capture) / 1e6)


def describe(data: object) -> str:
    """A short description of frame data: shape and dtype for arrays/tensors, keys for dicts."""
    if isinstance(data, dict):
        return "{" + ", ".join(f"{k}: {describe(v)}" for k, v in data.items()) + "}"
    shape = getattr(data, "shape", None)
    if shape is not None:
        return f"{type(data).__name__}{tuple(shape)} {getattr(data, 'dtype', '')}".rstrip()
    text = repr(data)
    return text if len(text) <= 60 else text[:57] + "..."
