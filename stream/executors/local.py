"""The local executor: one worker thread per node, bounded edges, joins, metrics and clean shutdown.

    ex = LocalExecutor(spec, free_running=False, max_frames=None)
    ex.start(); ...; ex.request_stop("reason"); report = ex.wait()
    report = LocalExecutor(spec).run()      # start + wait, under the shared Ctrl-C/SIGTERM policy

Lifecycle: `start()` plans the spec (`stream.plan.GraphPlan`: every rule checked, devices resolved,
chaining and pacing decided; nothing is set up when that fails), sets every node up in pipeline order
(a failure tears down what was set up and raises `PipelineStartError`), wires the edges and starts
the workers. Sources iterate `Source.frames()`, paced at `rate_hz` unless free-running; when they end
(or each of their streams has `max_frames` frames, or a stop is requested) they close their output edges, every downstream
worker drains its queues and ends, and `wait()` tears the nodes down in pipeline order and returns
the `RunReport`. A node that raises on a frame has the frame counted as failed, logged with
node/stream/seq and its ticket resolved; under `on_error: stop` the run stops with a fatal error (the
failing node's queued frames are discarded and counted, the rest of the pipeline drains).

A stop without draining (`request_stop(..., drain=False)`, the second Ctrl-C) discards what is queued
(counted) and gives busy nodes `hard_stop_grace_s` to return from their current call; `wait()` then
tears down and reports even if one has not (it is named in the log). A draining stop lasts at most
the spec's `drain_timeout_s` (`options.drain_timeout_s`, default 5 s): then it becomes a stop without
draining, and the frames still queued are counted as discarded on their edges (and logged per edge).
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Collection, Sequence

from stream.clock import Clock, MonotonicClock
from stream.executors.base import PipelineStartError
from stream.executors.failures import FailureLog
from stream.executors.local_flow import Dataflow, Worker, set_up_worker
from stream.executors.observe import CallObserver
from stream.executors.reporting import NodeRun, build_report, build_snapshot, node_counters, stop_reason
from stream.join import Joiner
from stream.placement import DevicePlacement
from stream.plan import GraphPlan
from stream.report import EdgeReport, RunReport
from stream.spec import PipelineSpec

log = logging.getLogger("costream.executor")

_SIGNAL_CHECK_S = 0.1  # how often wait() wakes to let signal handlers run (not on the data path)
HARD_STOP_GRACE_S = 2.0  # after a stop without draining, how long busy nodes get to return


class LocalExecutor:
    """Runs a `PipelineSpec` in this process with one worker thread per node."""

    def __init__(self, spec: PipelineSpec, free_running: bool = False, max_frames: int | None = None, *,
                 clock: Clock | None = None, max_error_records: int = 20, fuse: Collection[str] = (),
                 hard_stop_grace_s: float = HARD_STOP_GRACE_S, observers: Sequence[CallObserver] = ()) -> None:
        if max_frames is not None and max_frames < 0:
            raise ValueError(f"max_frames must be None or >= 0, got {max_frames}")
        if isinstance(fuse, str):
            raise TypeError(f"fuse must be a collection of node names, got the string {fuse!r}; write [{fuse!r}]")
        self.spec = spec
        self.fuse = frozenset(fuse)  # nodes to run in their producer's thread, besides `fuse: true` ones
        self.free_running = free_running
        self.max_frames = max_frames
        self.observers = tuple(observers)  # told of every call (traces, load generators)
        self.hard_stop_grace_s = hard_stop_grace_s
        self.plan: GraphPlan | None = None
        self._clock: Clock = clock if clock is not None else MonotonicClock()
        self._workers: dict[str, Worker] = {}
        self._failures = FailureLog(max_error_records)
        self._flow: Dataflow | None = None
        self._stop = threading.Event()
        self._stop_once = threading.Lock()  # first request_stop wins (non-blocking: safe in a signal handler)
        self._hard_once = threading.Lock()
        self._stop_reason: str | None = None
        self._hard_deadline: float | None = None
        self._drain_deadline: float | None = None  # a draining stop becomes a hard one at this time
        self._state = "new"  # new -> running -> finished
        self._t_start = 0
        self._t_end = 0
        self._report: RunReport | None = None

    # ----------------------------------------------------------------------------------- public API

    @property
    def nodes(self) -> dict[str, Any]:
        """The node instances of this run (after `start()`), e.g. to read a test sink's frames."""
        return {name: w.node for name, w in self._workers.items()}

    @property
    def running(self) -> bool:
        return self._state == "running" and any(w.alive for w in list(self._workers.values()))

    def start(self) -> "LocalExecutor":
        if self._state != "new":
            raise RuntimeError("this LocalExecutor was already started; build a new one for another run")
        self.plan = GraphPlan.build(self.spec, fuse=self.fuse, free_running=self.free_running,
                                    max_frames=self.max_frames)
        self._setup_nodes(self.plan)
        try:
            self._wire(self.plan)
        except Exception as exc:
            self._teardown(list(self._workers.values()))
            raise PipelineStartError(f"pipeline {self.spec.name!r} cannot start: {exc}") from exc
        flow = self._flow = Dataflow(self.plan, self._workers, clock=self._clock, stop=self._stop,
                                     failures=self._failures, on_fatal=lambda: self.request_stop("fatal error"),
                                     observers=self.observers)
        self._state = "running"
        self._t_start = self._clock.now_ns()
        # Consumers first, so that the first frame of a source finds its consumers waiting.
        for worker in sorted(self._workers.values(), key=lambda w: w.spec.role == "source"):
            if worker.host is not None:
                worker.metrics.t_start = self._t_start
                continue  # runs in its producer's thread
            target = flow.run_source if worker.spec.role == "source" else flow.run_consumer
            worker.thread = threading.Thread(target=target, args=(worker,), name=f"costream-{worker.name}", daemon=True)
            worker.thread.start()
        return self

    def request_stop(self, reason: str = "stop requested", *, drain: bool = True) -> None:
        """Stop the sources; with `drain`, queued frames still flow and `wait()` reports as usual; without,
        queued frames are discarded (counted) and busy nodes get `hard_stop_grace_s` to return.

        Safe to call from a signal handler and from any thread; the first reason is the one reported.
        """
        if self._stop_once.acquire(blocking=False):
            self._stop_reason = reason
            if drain and self.spec.drain_timeout_s is not None:
                self._drain_deadline = time.monotonic() + self.spec.drain_timeout_s
            self._stop.set()
            self._stop_sources()
        if not drain and self._hard_once.acquire(blocking=False):
            log.warning("stopping pipeline %r without draining: queued frames are discarded (and counted)",
                        self.spec.name)
            self._hard_deadline = time.monotonic() + self.hard_stop_grace_s
            self._stop_sources()  # a second stop(): stop waiting for anything
            for worker in list(self._workers.values()):
                if worker.inbox is not None:
                    worker.inbox.close()

    def _stop_sources(self) -> None:
        for worker in list(self._workers.values()):
            if worker.spec.role == "source":
                try:
                    worker.node.stop()
                except Exception as exc:  # a broken stop() must not keep the others running
                    log.error("source %r failed in stop(): %s", worker.name, exc)

    def wait(self, timeout: float | None = None) -> RunReport:
        """Wait for the run to end, tear the nodes down and return the report.

        Raises TimeoutError if it has not ended after `timeout` seconds (the run goes on). Without a
        signal handler installed (`stream.stopping.StopOnSignals`), a Ctrl-C while waiting follows the
        same policy: the first drains, the second stops without draining.
        """
        if self._report is not None:
            return self._report
        if self._state == "new":
            raise RuntimeError("call start() before wait()")
        from stream.stopping import escalate  # the shared stop policy (it imports nothing of ours back)

        deadline = None if timeout is None else time.monotonic() + timeout
        interrupts = 0
        for worker in self._workers.values():
            while worker.thread is not None and worker.thread.is_alive():
                try:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise TimeoutError(f"pipeline {self.spec.name!r} still running after {timeout} s")
                    if self._hard_deadline is not None and time.monotonic() >= self._hard_deadline:
                        break  # the grace after a stop without draining is over
                    if (self._drain_deadline is not None and self._hard_deadline is None
                            and time.monotonic() >= self._drain_deadline):
                        self._drain_timed_out()
                        continue
                    # Bounded joins: a signal may be delivered to a worker thread, and its Python handler
                    # (Ctrl-C, SIGTERM -> request_stop) runs only once this main thread wakes up.
                    worker.thread.join(_SIGNAL_CHECK_S if left is None else min(left, _SIGNAL_CHECK_S))
                except KeyboardInterrupt:
                    interrupts += 1
                    escalate(self, "SIGINT", interrupts)
        busy = sorted(w.name for w in self._workers.values() if w.thread is not None and w.thread.is_alive())
        if busy:
            log.error("pipeline %r: node(s) %s did not return within %.1f s of the stop; tearing down anyway",
                      self.spec.name, ", ".join(busy), self.hard_stop_grace_s)
        self._t_end = self._clock.now_ns()
        self._teardown(list(self._workers.values()))
        self._state = "finished"
        self._report = self._build_report()
        return self._report

    def _drain_timed_out(self) -> None:
        """The draining stop took longer than `drain_timeout_s`: stop without draining, and say per edge
        how many queued frames that discards (they are counted as discarded in the report)."""
        queued = [(e.name, e.depth) for w in self._workers.values() if w.inbox is not None for e in w.inbox.edges
                  if e.depth]
        total = sum(n for _, n in queued)
        log.warning("pipeline %r: the drain after the stop took longer than drain_timeout_s = %g s; discarding the "
                    "%d frame(s) still queued%s (counted as discarded per edge; set options.drain_timeout_s to wait "
                    "longer)", self.spec.name, self.spec.drain_timeout_s, total,
                    ": " + ", ".join(f"{name} {n}" for name, n in queued) if queued else "")
        self._stop_reason = f"{self._stop_reason}; drain timed out after {self.spec.drain_timeout_s:g} s"
        self.request_stop(self._stop_reason or "drain timed out", drain=False)

    def run(self) -> RunReport:
        """start() and wait() under the shared stop policy (`stream.stopping`): on the main thread the
        first Ctrl-C or SIGTERM drains, a second stops without draining; the report is built either way
        and the previous signal handlers are restored."""
        from stream.stopping import StopOnSignals

        with StopOnSignals(self):
            self.start()
            return self.wait()

    def snapshot(self) -> dict[str, Any]:
        """A live view for dashboards and progress bars; safe to call from any thread at any time."""
        now = self._clock.now_ns()
        end = self._t_end or now
        return build_snapshot(self.spec.name, self._runs(with_counters=False), self._failures, running=self.running,
                              elapsed_s=(end - self._t_start) / 1e9 if self._t_start else 0.0,
                              reason=self._stop_reason, now_ns=now)

    # ------------------------------------------------------------------------------------ start-up

    def _setup_nodes(self, plan: GraphPlan) -> None:
        done: list[Worker] = []
        for node_plan in plan.nodes.values():
            spec = node_plan.spec
            try:
                worker = set_up_worker(node_plan, self.spec.warmup_frames)
            except Exception as exc:
                self._teardown(list(reversed(done)))
                raise PipelineStartError(f"pipeline {self.spec.name!r} cannot start: node {spec.name!r} "
                                         f"(kind {spec.kind!r}) failed in setup(): {type(exc).__name__}: {exc}") from exc
            done.append(worker)
            self._workers[spec.name] = worker

    def _wire(self, plan: GraphPlan) -> None:
        workers = self._workers
        for worker in workers.values():
            spec, node_plan = worker.spec, worker.plan
            worker.cuda_stream = DevicePlacement.make_stream(worker.device)
            worker.copies = plan.consumer_devices(worker.name)
            if spec.role == "source":
                length = getattr(worker.node, "length", None)
                streams = worker.stream_count = getattr(worker.node, "stream_count", None)
                if plan.max_frames is not None and streams is not None:  # max_frames is per stream
                    cap = plan.max_frames * streams
                    length = cap if length is None else min(length, cap)
                worker.length = length
                period = node_plan.period_ns(worker.node.native_rate_hz if spec.rate_hz == "native" else None)
                if period is None:
                    log.warning("source %r has rate_hz: native but reports no native rate; running it "
                                "free-running", worker.name)
                worker.period_ns = period or 0
            for inp in spec.inputs:
                edge = worker.inbox.add_edge(inp.source, inp.queue_size, inp.policy)  # type: ignore[union-attr]
                workers[inp.source].outputs.append(edge)
            if spec.join is not None:
                worker.joiner = Joiner([i.source for i in spec.inputs], spec.join, on_drop=_joined_part_dropped(spec.name))
        for name, node_plan in plan.nodes.items():  # operator chaining, as planned
            if node_plan.fused is not None:
                workers[name].fused = workers[node_plan.fused]
            if node_plan.host is not None:
                workers[name].host = workers[node_plan.host]
                workers[name].cuda_stream = workers[node_plan.host].cuda_stream  # it runs in the host's scope

    def _teardown(self, workers: list[Worker]) -> None:
        for worker in workers:
            try:
                worker.node.teardown()
            except Exception as exc:  # teardown must reach every node
                log.error("node %r failed in teardown(): %s", worker.name, exc, exc_info=True)
                self._failures.record(worker.name, None, exc)

    # -------------------------------------------------------------------------------------- report

    def _runs(self, with_counters: bool) -> list[NodeRun]:
        runs = []
        for name, w in list(self._workers.items()):
            edges = tuple(EdgeReport(e.source, e.target, e.policy.value, e.capacity, e.counters.offered,
                                     e.counters.delivered, e.counters.dropped, e.counters.discarded,
                                     e.counters.max_depth) for e in (w.inbox.edges if w.inbox is not None else []))
            runs.append(NodeRun(name=name, kind=w.spec.kind, role=w.spec.role, device=str(w.plan.device),
                                metrics=w.metrics, edges=edges,
                                join=w.joiner.counters.as_dict() if w.joiner is not None else None, length=w.length,
                                counters=self._counters(w) if with_counters else None, streams=w.stream_count,
                                queue_depth=w.inbox.depth if w.inbox is not None else 0, alive=w.alive))
        return runs

    @staticmethod
    def _counters(worker: Worker) -> dict[str, int] | None:
        counters = node_counters(worker.name, worker.node)
        if worker.past_limit:  # frames a source read after their stream reached --frames (not emitted)
            counters = {**(counters or {}), "frames_past_limit": worker.past_limit}
        return counters

    def _build_report(self) -> RunReport:
        limit_hit = self._flow is not None and self._flow.limit_hit
        return build_report(self.spec.name, self._runs(with_counters=True), self._failures,
                            duration_s=(self._t_end - self._t_start) / 1e9,
                            reason=stop_reason(self._stop_reason, self._failures, limit_hit),
                            warmup_frames=self.spec.warmup_frames, t_end_ns=self._t_end)


def _joined_part_dropped(node: str):
    """Resolve the ticket of a part that an incomplete join dropped."""

    def dropped(frame: Any) -> None:
        if frame.ticket is not None:
            frame.ticket.dropped(node, frame)

    return dropped


def run_pipeline(spec: PipelineSpec, **kwargs: Any) -> RunReport:
    """Convenience: `LocalExecutor(spec, **kwargs).run()`."""
    return LocalExecutor(spec, **kwargs).run()


__all__ = ["Clock", "LocalExecutor", "MonotonicClock", "PipelineStartError", "run_pipeline"]
