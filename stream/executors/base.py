"""The executor protocol: what every executor (local threads, Ray actors, ...) offers its callers.

    executor = create_executor(spec, "local", free_running=False, max_frames=None, fuse=())
    executor.start()                      # plan, set up every node, start; PipelineStartError on failure
    executor.request_stop("reason")       # drain: sources stop, queued frames still flow, then the end
    executor.request_stop("reason", drain=False)   # stop hard: queued frames discarded (counted)
    report = executor.wait()              # tear down, then the RunReport (also after a hard stop)
    executor.snapshot()                   # a live dict for dashboards, from any thread
    executor.nodes                        # {name: node instance} of this run

An executor class is constructed as `Cls(spec, *, free_running=False, max_frames=None, fuse=())`
(further keyword options are its own), runs a `stream.plan.GraphPlan` built from the spec, resolves
the frames' completion tickets (`stream.ticket`) as the runtime's contract says, and builds its
report with `stream.executors.reporting`. Signals are not an executor's business: `run()` callers
use `stream.stopping.StopOnSignals`, the one policy shared by `costream run` and `costream serve`.
"""
from __future__ import annotations

from typing import Any, Mapping, Protocol, runtime_checkable

from stream.report import RunReport
from stream.spec import PipelineSpec


class PipelineStartError(RuntimeError):
    """The pipeline could not start (bad wiring, a missing device, or a node's setup() raised)."""


@runtime_checkable
class Executor(Protocol):
    """Runs one pipeline once; build a new executor for another run."""

    spec: PipelineSpec

    def start(self) -> "Executor":
        """Plan the spec, set up every node (tearing down what was set up if one fails) and start."""
        ...

    def request_stop(self, reason: str = "stop requested", *, drain: bool = True) -> None:
        """Stop the sources. With `drain`, queued frames still flow through the pipeline; without, what is
        queued is discarded (and counted) and busy nodes get a short grace before the teardown. Safe from
        any thread and from a signal handler; the first reason is the one reported."""
        ...

    def wait(self, timeout: float | None = None) -> RunReport:
        """Wait for the end, tear the nodes down, return the report (the same one on later calls).
        TimeoutError after `timeout` seconds if the run goes on."""
        ...

    def snapshot(self) -> dict[str, Any]:
        """A live view for dashboards and progress bars: {"pipeline", "running", "elapsed_s",
        "stop_reason", "fatal", "error_count", "nodes": {name: {...}}, "sources": {name: {...}}}."""
        ...

    @property
    def nodes(self) -> Mapping[str, Any]:
        """The node instances of this run (after `start()`)."""
        ...


__all__ = ["Executor", "PipelineStartError"]
