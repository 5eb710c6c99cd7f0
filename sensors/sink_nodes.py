"""Old import path of the prediction sinks, kept for existing code; they live in `sensors.sinks`."""
from sensors.sinks.labels import (  # noqa: F401
    ConsoleParams, JsonlParams, LabelSinkParams, LabelsConsole, LabelsJsonl, PredictionRecord, predict, scores_of,
)
from sensors.sinks.video_writer import AnnotatedVideoWriter, VideoWriterParams  # noqa: F401
