"""Former home of the local executor; it now lives in `stream.executors.local` (see that module and
`stream.executors` for choosing an executor by name). These names stay importable from here."""
from stream.clock import Clock, MonotonicClock
from stream.executors.base import Executor, PipelineStartError
from stream.executors.local import LocalExecutor, run_pipeline

__all__ = ["Clock", "Executor", "LocalExecutor", "MonotonicClock", "PipelineStartError", "run_pipeline"]
