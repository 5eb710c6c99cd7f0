"""`Pipeline`: the one-object way to load, validate and run a pipeline from YAML, a dict or code.

    report = Pipeline.from_yaml("pipelines/demo.yaml", overrides=["camera.frames=100"]).run()

`run()` creates the executor the YAML names (`executor:`, default `local`; or `executor=`), runs it
under the shared stop policy (`stream.stopping`: the first SIGINT/SIGTERM drains, a second stops
without draining; the report is built and written either way) and restores the previous signal
handlers.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from stream.config import build_pipeline, load_pipeline
from stream.spec import PipelineSpec

log = logging.getLogger("costream.pipeline")

_POLL_S = 0.1


class Pipeline:
    """A validated pipeline spec plus the means to run it."""

    def __init__(self, spec: PipelineSpec) -> None:
        self.spec = spec
        self.executor: Any = None  # the executor of the current/last run
        self.stopped_by_signal: int | None = None  # signal number that stopped the last run, if any

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str], overrides: Iterable[str] = (),
                  env: Mapping[str, str] | None = None, executor: str | None = None) -> "Pipeline":
        return cls(load_pipeline(path, overrides=overrides, env=env, executor=executor))

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any], source_name: str | None = None) -> "Pipeline":
        return cls(build_pipeline(mapping, source_name=source_name))

    def run(self, frames: int | None = None, free_running: bool = False, report: str | Path | None = None,
            dashboard: bool = False, progress: bool = False, executor: str | None = None,
            executor_options: Mapping[str, Any] | None = None) -> Any:
        """Run until the sources end (or `frames` per source, or a signal); returns the RunReport.

        `executor` overrides the spec's (`local`, `ray`); `executor_options` are its own keyword options
        (the Ray executor's `address`). The report is written to `report` (JSON)
        whenever a report exists, also after Ctrl-C.
        """
        from stream.executors import create_executor
        from stream.stopping import StopOnSignals

        runner = create_executor(self.spec, executor, free_running=free_running, max_frames=frames,
                                 **dict(executor_options or {}))
        self.executor = runner
        with StopOnSignals(runner) as signals:
            runner.start()
            result = self._wait(runner, dashboard, progress, frames)
        self.stopped_by_signal = signals.first
        if report is not None:
            result.write_json(report)
        return result

    @staticmethod
    def _wait(executor: Any, dashboard: bool, progress: bool, frames: int | None) -> Any:
        if not (dashboard or progress):
            return executor.wait()
        from stream.dashboard import LiveView

        with LiveView(executor.snapshot, dashboard=dashboard, max_frames=frames) as view:
            while True:
                try:
                    return executor.wait(timeout=_POLL_S)
                except TimeoutError:
                    view.update()
