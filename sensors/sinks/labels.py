"""Sink kinds for predictions: `labels_console` and `labels_jsonl` (`video_writer` is in
`sensors.sinks.video_writer`).

They read `frame.data["scores"]` (probabilities or logits of one stream's step; see the model nodes)
and name the classes with `meta["labelset"]` (or `meta["labels"]`, or the sink's own `labelset`
parameter) through `sensors.labels`. End-to-end latency is measured at the sink from the frame's
capture time.
"""
from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, TextIO


from sensors.labels import Prediction, as_probabilities, load_labels, top_k
from stream.frame import Frame, now_ns
from stream.node import NodeContext, Sink
from stream.registry import register

logger = logging.getLogger("costream.sensors.sinks")

ScoresKind = Literal["auto", "probabilities", "logits"]


@dataclass(frozen=True)
class PredictionRecord:
    """What a label sink reports for one frame."""

    stream: str
    seq: int
    t_capture: int
    predictions: tuple[Prediction, ...]
    latency_ms: float
    model: str | None
    labelset: str | None

    def as_json(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "seq": self.seq,
            "t_capture": self.t_capture,
            "labels": [p.label for p in self.predictions],
            "scores": [round(p.score, 6) for p in self.predictions],
            "indices": [p.index for p in self.predictions],
            "latency_ms": round(self.latency_ms, 3),
            "model": self.model,
            "labelset": self.labelset,
        }

    def format_line(self) -> str:
        ranked = " | ".join(f"{p.label} {p.score:.1%}" for p in self.predictions)
        model = f" [{self.model}]" if self.model else ""
        return f"{self.stream} #{self.seq}{model}: {ranked}  ({self.latency_ms:.1f} ms)"


def scores_of(frame: Frame) -> Any | None:
    """The score vector of a frame: data["scores"], or the data itself when it is not a dict."""
    data = frame.data
    if isinstance(data, dict):
        return data.get("scores")
    return data


def predict(frame: Frame, k: int, labelset: str | None, kind: str, t_now: int) -> PredictionRecord:
    """Top-k names and probabilities of a frame carrying scores; clear error when it carries none."""
    scores = scores_of(frame)
    if scores is None:
        keys = ", ".join(frame.data) if isinstance(frame.data, dict) else type(frame.data).__name__
        raise ValueError(
            f"frame {frame.key} carries no 'scores' (data keys: {keys}); connect label sinks to a model node "
            f"that emits data['scores']"
        )
    name = labelset or frame.meta.get("labelset") or frame.meta.get("labels")
    names = load_labels(name) if isinstance(name, str) else None
    probs = as_probabilities(scores, kind)
    return PredictionRecord(
        stream=frame.stream,
        seq=frame.seq,
        t_capture=frame.t_capture,
        predictions=tuple(top_k(probs, names, k)),
        latency_ms=(t_now - frame.t_capture) / 1e6,
        model=frame.meta.get("model"),
        labelset=name if isinstance(name, str) else None,
    )


@dataclass(frozen=True)
class LabelSinkParams:
    # Docs go into field metadata (not trailing comments) so that subclasses inherit them.
    k: int = field(default=3, metadata={"doc": "how many classes to report"})
    labelset: str | None = field(default=None, metadata={
        "doc": "kinetics400 | ntu60 | ntu120 | a label file; default: the frame's meta['labelset']"})
    scores: ScoresKind = field(default="auto", metadata={
        "doc": "how to read data['scores']: auto (softmax unless it already sums to 1) | probabilities | logits"})

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be at least 1, got {self.k}")
        if self.labelset is not None:
            load_labels(self.labelset)


@dataclass(frozen=True)
class ConsoleParams(LabelSinkParams):
    min_interval_s: float = 0.5  # per stream: print at most one line per this many seconds
    output: Literal["stdout", "stderr"] = "stdout"  # where the lines go

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.min_interval_s < 0:
            raise ValueError(f"min_interval_s must be >= 0, got {self.min_interval_s}")


@register("labels_console")
class LabelsConsole(Sink):
    """Top-k labels with confidence and end-to-end latency, one line per stream at most every min_interval_s."""

    Params = ConsoleParams

    def __init__(
        self, params: ConsoleParams | None = None, *, clock: Callable[[], int] = now_ns, out: TextIO | None = None
    ) -> None:
        super().__init__(params)
        self._clock = clock
        self._out = out
        self._last_print: dict[str, int] = {}
        self.printed = 0
        self.suppressed = 0

    def process(self, frame: Frame) -> None:
        now = self._clock()
        last = self._last_print.get(frame.stream)
        if last is not None and now - last < self.params.min_interval_s * 1e9:
            self.suppressed += 1
            return
        record = predict(frame, self.params.k, self.params.labelset, self.params.scores, now)
        out = self._out or (sys.stdout if self.params.output == "stdout" else sys.stderr)
        out.write(record.format_line() + "\n")
        out.flush()
        self._last_print[frame.stream] = now
        self.printed += 1

    def teardown(self) -> None:
        logger.info("%s: printed %d predictions, %d rate-limited", self.name, self.printed, self.suppressed)


@dataclass(frozen=True)
class JsonlParams(LabelSinkParams):
    path: str = "predictions.jsonl"  # output file; parent folders are created
    k: int = 5  # how many classes to report
    append: bool = False  # add to an existing file instead of replacing it


@register("labels_jsonl")
class LabelsJsonl(Sink):
    """One JSON line per prediction: stream, seq, t_capture (ns), labels, scores, latency_ms, model, labelset."""

    Params = JsonlParams

    def __init__(self, params: JsonlParams | None = None, *, clock: Callable[[], int] = now_ns) -> None:
        super().__init__(params)
        self._clock = clock
        self._file: TextIO | None = None
        self.written = 0

    def setup(self, context: NodeContext) -> None:
        super().setup(context)
        path = Path(self.params.path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a" if self.params.append else "w", encoding="utf-8", buffering=1)

    def process(self, frame: Frame) -> None:
        if self._file is None:
            raise RuntimeError("labels_jsonl used before setup(); the runtime calls setup first")
        record = predict(frame, self.params.k, self.params.labelset, self.params.scores, self._clock())
        self._file.write(json.dumps(record.as_json()) + "\n")
        self.written += 1

    def teardown(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            logger.info("%s: wrote %d predictions to %s", self.name, self.written, self.params.path)
