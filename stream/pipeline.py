"""`Pipeline`: the one-object way to load, validate and run a pipeline from YAML, a dict or code.

    report = Pipeline.from_yaml("pipelines/demo.yaml", overrides=["camera.frames=100"]).run()

`run()` creates the executor the YAML names (`executor:`, default `local`; or `executor=`), runs it
under the shared stop policy (`stream.stopping`: the first SIGINT/SIGTERM drains, a second stops
without draining; the report is built and written either way) and restores the previous signal
handlers.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Callable

from stream.config import build_pipeline, load_pipeline
from stream.outputs import Saved, fallback_path, save
from stream.spec import PipelineSpec

log = logging.getLogger("costream.pipeline")

_POLL_S = 0.1


class Pipeline:
    """A validated pipeline spec plus the means to run it."""

    def __init__(self, spec: PipelineSpec) -> None:
        self.spec = spec
        self.executor: Any = None  # the executor of the current/last run
        self.stopped_by_signal: int | None = None  # signal number that stopped the last run, if any
        self.report_saved: Saved | None = None  # where the last run's report went (`run(report=...)`)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str], overrides: Iterable[str] = (),
                  env: Mapping[str, str] | None = None, executor: str | None = None) -> "Pipeline":
        return cls(load_pipeline(path, overrides=overrides, env=env, executor=executor))

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any], source_name: str | None = None) -> "Pipeline":
        return cls(build_pipeline(mapping, source_name=source_name))

    def run(self, frames: int | None = None, free_running: bool = False, report: str | Path | None = None,
            dashboard: bool = False, progress: bool = False, executor: str | None = None,
            on_start: Callable[[Any], None] | None = None, trace: str | Path | None = None,
            trace_frames: int = 1000,
            executor_options: Mapping[str, Any] | None = None) -> Any:
        """Run until the sources end (or `frames` per stream, or a signal); returns the RunReport.

        `frames` is frames per stream, as the sources' own `frames` params count: a source that makes
        its frames (`synthetic_video`, `synthetic_skeleton`, `synthetic`) is set to make that many
        (`Source.with_frames`), any other stops each stream after that many. `executor` overrides the
        spec's (`local`, `ray`); `executor_options` are its own keyword options (the Ray executor's
        `address`). `on_start(executor)` is called once every node is set up. The report is
        written to `report` (JSON) whenever a report exists, also after Ctrl-C; if that path cannot be
        written it goes to a file in the temporary directory instead (`report_saved` says where).
        `trace` is a Chrome trace / Perfetto JSON file of the last `trace_frames` frames of every
        node (`stream.bench.trace`), written the same way.
        """
        from stream.executors import create_executor
        from stream.stopping import StopOnSignals

        spec = self.spec if frames is None else frames_per_stream(self.spec, frames)
        options: dict[str, Any] = dict(executor_options or {})
        recorder = None
        if trace is not None:
            from stream.bench.trace import TraceRecorder

            recorder = TraceRecorder(self.spec, max_frames=trace_frames)
            options["observers"] = (recorder,)
        try:
            runner = create_executor(spec, executor, free_running=free_running, max_frames=frames, **options)
        except TypeError as exc:
            if recorder is None:
                raise
            from stream.executors import ExecutorUnavailableError

            raise ExecutorUnavailableError(f"executor {executor or self.spec.executor!r} cannot record a trace (it "
                                           f"takes no call observers: {exc}); trace with --executor local") from exc
        self.executor = runner
        self.report_saved = None
        with StopOnSignals(runner) as signals:
            runner.start()
            if on_start is not None:
                on_start(runner)
            result = self._wait(runner, dashboard, progress, frames)
        self.stopped_by_signal = signals.first
        if report is not None:
            self.report_saved = save_report(result, report)
        if recorder is not None:
            recorder.write(trace)
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


def frames_per_stream(spec: PipelineSpec, frames: int) -> PipelineSpec:
    """`spec` with every source that makes its own frames set to make `frames` per stream
    (`Source.with_frames`); the others are stopped by the executor's per-stream limit."""
    nodes = []
    for node in spec.nodes:
        with_frames = getattr(node.node_class, "with_frames", None) if node.role == "source" else None
        params = with_frames(node.params, frames) if with_frames is not None else None
        nodes.append(node if params is None else dataclasses.replace(node, params=params))
    return dataclasses.replace(spec, nodes=tuple(nodes))


def save_report(report: Any, path: str | Path) -> Saved:
    """Write the report's JSON to `path`, or, if that fails, to a file in the temporary directory."""
    return save(path, report.write_json, lambda: fallback_path(f"{report.pipeline}-report", ".json"), "run report")
