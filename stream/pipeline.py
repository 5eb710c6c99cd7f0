"""`Pipeline`: the one-object way to load, validate and run a pipeline from YAML, a dict or code.

    report = Pipeline.from_yaml("pipelines/demo.yaml", overrides=["camera.frames=100"]).run()

`run()` creates a `stream.executor.LocalExecutor`, installs SIGINT/SIGTERM handlers that request a
drain (the report is still built and written), and restores the previous handlers in `finally`. A
second signal aborts hard: the process exits at once with 128+signal, without draining or a report
(for a node stuck in a call that never returns).
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from stream.config import build_pipeline, load_pipeline
from stream.spec import PipelineSpec

log = logging.getLogger("costream.pipeline")

_POLL_S = 0.1


class Pipeline:
    """A validated pipeline spec plus the means to run it locally."""

    def __init__(self, spec: PipelineSpec) -> None:
        self.spec = spec
        self.executor: Any = None  # the LocalExecutor of the current/last run
        self.stopped_by_signal: int | None = None  # signal number that stopped the last run, if any

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str], overrides: Iterable[str] = (),
                  env: Mapping[str, str] | None = None) -> "Pipeline":
        return cls(load_pipeline(path, overrides=overrides, env=env))

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any], source_name: str | None = None) -> "Pipeline":
        return cls(build_pipeline(mapping, source_name=source_name))

    def run(self, frames: int | None = None, free_running: bool = False, report: str | Path | None = None,
            dashboard: bool = False, progress: bool = False) -> Any:
        """Run until the sources end (or `frames` per source, or a signal); returns the RunReport.

        The report is written to `report` (JSON) whenever a report exists, also after Ctrl-C.
        """
        from stream.executor import LocalExecutor

        executor = LocalExecutor(self.spec, free_running=free_running, max_frames=frames)
        self.executor = executor
        self.stopped_by_signal = None
        restore = self._install_handlers(executor)
        try:
            executor.start()
            result = self._wait(executor, dashboard, progress, frames)
        finally:
            restore()
        if report is not None:
            result.write_json(report)
        return result

    def _wait(self, executor: Any, dashboard: bool, progress: bool, frames: int | None) -> Any:
        if not (dashboard or progress):
            return executor.wait()
        from stream.dashboard import LiveView

        with LiveView(executor.snapshot, dashboard=dashboard, max_frames=frames) as view:
            while True:
                try:
                    return executor.wait(timeout=_POLL_S)
                except TimeoutError:
                    view.update()

    def _install_handlers(self, executor: Any):
        """SIGINT/SIGTERM -> request_stop; a second one aborts. Returns the function restoring them."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        signals = [signal.SIGINT, signal.SIGTERM]
        previous = {sig: signal.getsignal(sig) for sig in signals}

        def handle(signum: int, _frame: Any) -> None:
            if self.stopped_by_signal is None:
                self.stopped_by_signal = signum
                name = signal.Signals(signum).name
                log.warning("%s received: draining the pipeline (send it again to abort without draining)", name)
                executor.request_stop(f"interrupted ({name})")
                return
            log.error("second %s: aborting without draining; no report is written", signal.Signals(signum).name)
            logging.shutdown()
            os._exit(128 + signum)

        for sig in signals:
            signal.signal(sig, handle)

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        return restore
