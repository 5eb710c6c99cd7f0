"""Registers the prediction sink kinds: `labels_console`, `labels_jsonl` and `video_writer`."""
from sensors.sinks.labels import LabelsConsole, LabelsJsonl
from sensors.sinks.video_writer import AnnotatedVideoWriter

__all__ = ["AnnotatedVideoWriter", "LabelsConsole", "LabelsJsonl"]
