"""Sinks for flow results: `flow_jsonl` (one JSON line per frame) and `class_counts` (a periodic
per-class table).

Both read frame meta only, so they take the decisions of a flow classifier (meta `flow`, `class`,
`confidence`, `packets_used`, `latency_ms`, ...) as well as the `flow_end` records of `flows`.
"""
from __future__ import annotations

import json
import logging
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, TextIO

from stream.frame import Frame, now_ns
from stream.node import NodeContext, Sink
from stream.registry import register
from stream.ports import ANY

log = logging.getLogger("costream.sensors.packets")


def _json_value(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    item = getattr(value, "item", None)  # numpy / torch scalars
    if callable(item) and getattr(value, "size", 1) in (1, ()):
        return item()
    return str(value)


@dataclass(frozen=True)
class FlowJsonlParams:
    path: str = field(default="flows.jsonl", metadata={"doc": "output file; parent folders are created"})
    append: bool = field(default=False, metadata={"doc": "add to an existing file instead of replacing it"})
    events: tuple[str, ...] = field(default=(), metadata={
        "doc": "write only frames whose meta event is one of these (e.g. [flow_class]); empty: all"})


@register("flow_jsonl")
class FlowJsonl(Sink):
    """One JSON object per frame: `stream`, `seq` and the frame's meta (flow, class, confidence,
    packets_used, latency_ms for a classifier's decisions; packets and bytes per direction for
    flow_end records)."""
    consumes = ANY

    Params = FlowJsonlParams

    def __init__(self, params: FlowJsonlParams | None = None) -> None:
        super().__init__(params)
        self._file: TextIO | None = None
        self.written = 0

    def setup(self, context: NodeContext) -> None:
        super().setup(context)
        path = Path(self.params.path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a" if self.params.append else "w", encoding="utf-8", buffering=1)

    def process(self, frame: Frame) -> None:
        if self._file is None:
            raise RuntimeError("flow_jsonl used before setup(); the runtime calls setup first")
        if self.params.events and frame.meta.get("event") not in self.params.events:
            return
        record = {"stream": frame.stream, "seq": frame.seq}
        record.update((k, _json_value(v)) for k, v in frame.meta.items())
        self._file.write(json.dumps(record) + "\n")
        self.written += 1

    def teardown(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            log.info("%s: wrote %d records to %s", self.name, self.written, self.params.path)

    def stats(self) -> dict[str, int]:
        return {"written": self.written}


@dataclass(frozen=True)
class ClassCountsParams:
    key: str = field(default="class", metadata={"doc": "the meta field counted (class, reason, ...)"})
    interval_s: float = field(default=5.0, metadata={"doc": "print the table at most this often (and at the end)"})
    output: Literal["stdout", "stderr"] = field(default="stdout", metadata={"doc": "where the table goes"})

    def __post_init__(self) -> None:
        if not self.interval_s > 0:
            raise ValueError(f"interval_s must be > 0 seconds, got {self.interval_s}")


@register("class_counts")
class ClassCounts(Sink):
    """Counts frames per value of meta[`key`] and prints the table every `interval_s` and at the end."""
    consumes = ANY

    Params = ClassCountsParams

    def __init__(self, params: ClassCountsParams | None = None, *, clock: Callable[[], int] = now_ns,
                 out: TextIO | None = None) -> None:
        super().__init__(params)
        self.counts: Counter = Counter()
        self._clock, self._out = clock, out
        self._last_print: int | None = None
        self.missing = 0

    def process(self, frame: Frame) -> None:
        value = frame.meta.get(self.params.key)
        if value is None:
            self.missing += 1
        else:
            self.counts[str(value)] += 1
        now = self._clock()
        if self._last_print is None:
            self._last_print = now
        elif now - self._last_print >= self.params.interval_s * 1e9:
            self._last_print = now
            self._print()

    def format_table(self) -> str:
        total = sum(self.counts.values())
        width = max([len(self.params.key)] + [len(k) for k in self.counts])
        lines = [f"{self.params.key:<{width}}  {'count':>7}  {'share':>6}"]
        for name, n in sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"{name:<{width}}  {n:>7}  {n / total:>6.1%}")
        lines.append(f"{'total':<{width}}  {total:>7}")
        return "\n".join(lines)

    def _print(self) -> None:
        out = self._out or (sys.stdout if self.params.output == "stdout" else sys.stderr)
        out.write(self.format_table() + "\n")
        out.flush()

    def teardown(self) -> None:
        if self.counts:
            self._print()
        if self.missing:
            log.warning("%s: %d frames had no meta %r and were not counted", self.name, self.missing, self.params.key)

    def stats(self) -> dict[str, int]:
        return {"counted": sum(self.counts.values()), "without_key": self.missing}
