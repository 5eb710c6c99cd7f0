"""The local executor: one worker thread per node, bounded edges, joins, metrics and clean shutdown.

    ex = LocalExecutor(spec, free_running=False, max_frames=None)
    ex.start(); ...; ex.request_stop("reason"); report = ex.wait()
    report = LocalExecutor(spec).run()      # start + wait, Ctrl-C and SIGTERM drain and still report

Lifecycle: `start()` sets every node up in pipeline order (a failure tears down what was set up and
raises `PipelineStartError`), then starts the workers. Sources iterate `Source.frames()`, paced at
`rate_hz` unless free-running; when they end (or `max_frames` is reached, or a stop is requested) they
close their output edges, every downstream worker drains its queues and ends, and `wait()` tears the
nodes down in pipeline order and returns the `RunReport`. A node that raises on a frame has the frame
counted as failed and logged with node/stream/seq; under `on_error: stop` the run stops with a fatal
error (the failing node's queued frames are discarded and counted, the rest of the pipeline drains).

Operator chaining (`fuse: true` on a node, or `LocalExecutor(..., fuse=[names])`): the node runs in
its producer's worker thread, called directly for every frame the producer emits, instead of in its
own thread behind a queue. That removes a thread hand-off (tens of microseconds, more on a loaded
machine) per hop, at the price of pipelining: producer and consumer no longer overlap. Allowed only
for a node with exactly one input, whose policy is `block`, whose producer feeds no other node, on
the same device, without `join` or `max_batch`. The edge still counts every frame (offered =
delivered + discarded) and the node keeps its own metrics.
"""
from __future__ import annotations

import logging
import signal
import threading
import time
import traceback
from typing import Any, Collection

from stream.frame import Frame, now_ns
from stream.join import Joiner
from stream.metrics import LatencyStats, samples_ms
from stream.node import FrameFailure, NodeContext, as_outputs
from stream.placement import DevicePlacement, DeviceUnavailableError, resolve_device
from stream.report import EdgeReport, ErrorRecord, NodeReport, RunReport
from stream.spec import ErrorPolicy, PipelineSpec, QueuePolicy
from stream.worker import Clock, MonotonicClock, Worker

log = logging.getLogger("costream.executor")

_SIGNAL_CHECK_S = 0.1  # how often wait() wakes to let signal handlers run (not on the data path)
MAX_LATENCY_SAMPLES = 1_000_000  # per series and node; older samples are dropped in halves (8 MB each)
_LOGGED_ERRORS_PER_NODE = 10  # full log lines per node; later failures are logged every 1000th


class PipelineStartError(RuntimeError):
    """The pipeline could not start (bad wiring, a missing device, or a node's setup() raised)."""


class LocalExecutor:
    """Runs a `PipelineSpec` in this process with one worker thread per node."""

    def __init__(self, spec: PipelineSpec, free_running: bool = False, max_frames: int | None = None, *,
                 clock: Clock | None = None, max_error_records: int = 20,
                 max_latency_samples: int = MAX_LATENCY_SAMPLES, fuse: Collection[str] = ()) -> None:
        if max_frames is not None and max_frames < 0:
            raise ValueError(f"max_frames must be None or >= 0, got {max_frames}")
        if isinstance(fuse, str):
            raise TypeError(f"fuse must be a collection of node names, got the string {fuse!r}; write [{fuse!r}]")
        self.spec = spec
        # Nodes to run in their producer's thread: `fuse: true` in the spec, plus these names.
        self.fuse = frozenset(fuse) | {n.name for n in spec.nodes if getattr(n, "fuse", False)}
        self.free_running = free_running
        self.max_frames = max_frames
        self.max_error_records = max_error_records
        if max_latency_samples < 1:
            raise ValueError(f"max_latency_samples must be >= 1, got {max_latency_samples}")
        self.max_latency_samples = max_latency_samples
        self._clock: Clock = clock if clock is not None else MonotonicClock()
        self._workers: dict[str, Worker] = {}
        self._placement = DevicePlacement()
        self._any_cuda = False
        self._stop = threading.Event()
        self._stop_requested = False
        self._stop_reason: str | None = None
        self._fatal: ErrorRecord | None = None
        self._errors: list[ErrorRecord] = []
        self._error_count = 0
        self._errors_lock = threading.Lock()
        self._state = "new"  # new -> running -> finished
        self._t_start = 0
        self._t_end = 0
        self._report: RunReport | None = None
        self._limit_hit = False

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
        self._check_wiring()
        self._setup_nodes()
        try:
            self._wire()
        except Exception as exc:
            self._teardown(list(self._workers.values()))
            raise PipelineStartError(f"pipeline {self.spec.name!r} cannot start: {exc}") from exc
        self._state = "running"
        self._t_start = now_ns()
        workers = list(self._workers.values())
        # Consumers first, so that the first frame of a source finds its consumers waiting.
        for worker in sorted(workers, key=lambda w: w.spec.role == "source"):
            if worker.host is not None:
                worker.metrics.t_start = self._t_start
                continue  # runs in its producer's thread
            target = self._run_source if worker.spec.role == "source" else self._run_consumer
            worker.thread = threading.Thread(target=target, args=(worker,), name=f"costream-{worker.spec.name}",
                                             daemon=True)
            worker.thread.start()
        return self

    def request_stop(self, reason: str = "stop requested") -> None:
        """Stop the sources; queued frames still drain and `wait()` still reports.

        Safe to call from a signal handler and from any thread (only the first call counts).
        """
        if self._stop_requested:
            return
        self._stop_requested = True
        self._stop_reason = reason
        self._stop.set()
        for worker in list(self._workers.values()):
            if worker.spec.role == "source":
                try:
                    worker.node.stop()
                except Exception as exc:  # a broken stop() must not keep the others running
                    log.error("source %r failed in stop(): %s", worker.spec.name, exc)

    def wait(self, timeout: float | None = None) -> RunReport:
        """Wait for the run to end, tear the nodes down and return the report.

        Raises TimeoutError if it has not ended after `timeout` seconds (the run goes on). A first
        Ctrl-C while waiting requests a drain; a second one discards what is still queued.
        """
        if self._report is not None:
            return self._report
        if self._state == "new":
            raise RuntimeError("call start() before wait()")
        deadline = None if timeout is None else time.monotonic() + timeout
        for worker in self._workers.values():
            while worker.thread is not None and worker.thread.is_alive():
                try:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise TimeoutError(f"pipeline {self.spec.name!r} still running after {timeout} s")
                    # Bounded joins: a signal may be delivered to a worker thread, and its Python handler
                    # (Ctrl-C, SIGTERM -> request_stop) runs only once this main thread wakes up.
                    worker.thread.join(_SIGNAL_CHECK_S if left is None else min(left, _SIGNAL_CHECK_S))
                    for w in self._workers.values():
                        w.metrics.trim(self.max_latency_samples)
                except KeyboardInterrupt:
                    if self._stop_requested:  # a second Ctrl-C: stop without draining the queues
                        log.warning("second interrupt: discarding queued frames of pipeline %r", self.spec.name)
                        for w in self._workers.values():
                            if w.inbox is not None:
                                w.inbox.close()
                    self.request_stop("interrupted (Ctrl-C)")
        self._t_end = now_ns()
        self._teardown(list(self._workers.values()))
        self._state = "finished"
        self._report = self._build_report()
        return self._report

    def run(self) -> RunReport:
        """start() and wait(). On the main thread, Ctrl-C and SIGTERM request a drain (the report is still
        built); a second Ctrl-C discards what is still queued. Previous handlers are restored."""
        if threading.current_thread() is not threading.main_thread():
            self.start()
            return self.wait()

        def on_sigint(*_: Any) -> None:
            if self._stop_requested:
                raise KeyboardInterrupt
            self.request_stop("interrupted (Ctrl-C)")

        previous = {signal.SIGINT: signal.signal(signal.SIGINT, on_sigint),
                    signal.SIGTERM: signal.signal(signal.SIGTERM, lambda *_: self.request_stop("terminated (SIGTERM)"))}
        try:
            self.start()
            return self.wait()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, signal.SIG_DFL if handler is None else handler)

    def snapshot(self) -> dict[str, Any]:
        """A live view for dashboards and progress bars; safe to call from any thread at any time."""
        now = now_ns()
        nodes: dict[str, Any] = {}
        sources: dict[str, Any] = {}
        for name, w in list(self._workers.items()):
            m = w.metrics
            edges = w.inbox.edges if w.inbox is not None else []
            nodes[name] = {
                "role": m.role, "kind": w.spec.kind, "device": w.device,
                "frames_in": m.frames_in, "frames_out": m.frames_out, "failed": m.failed,
                "queue_depth": w.inbox.depth if w.inbox is not None else 0,
                "dropped": sum(e.counters.dropped + e.counters.discarded for e in edges)
                + (w.joiner.counters.incomplete if w.joiner is not None else 0),
                "throughput_hz": m.throughput_hz(now),
                "alive": w.alive,
            }
            if m.role == "source":
                sources[name] = {"produced": m.frames_out, "length": w.length}
        end = self._t_end or now
        return {
            "pipeline": self.spec.name, "running": self.running,
            "elapsed_s": (end - self._t_start) / 1e9 if self._t_start else 0.0,
            "stop_reason": self._stop_reason, "fatal": self._fatal is not None,
            "error_count": self._error_count, "nodes": nodes, "sources": sources,
        }

    # ------------------------------------------------------------------------------------ start-up

    def _check_wiring(self) -> None:
        names = [n.name for n in self.spec.nodes]
        if len(set(names)) != len(names):
            raise PipelineStartError(f"pipeline {self.spec.name!r} has duplicate node names: {names}")
        for node in self.spec.nodes:
            for inp in node.inputs:
                if inp.source not in names:
                    raise PipelineStartError(f"node {node.name!r} takes input from {inp.source!r}, which is not "
                                             f"a node of pipeline {self.spec.name!r} (nodes: {names})")
                if self.spec.node(inp.source).role == "sink":
                    raise PipelineStartError(f"node {node.name!r} takes input from sink {inp.source!r}; "
                                             f"sinks emit nothing")
            if node.role == "source" and node.inputs:
                raise PipelineStartError(f"source {node.name!r} cannot have inputs")
            if node.role != "source" and not node.inputs:
                raise PipelineStartError(f"{node.role} {node.name!r} has no inputs; add `inputs: [...]`")
            if node.join is not None and len(node.inputs) < 2:
                raise PipelineStartError(f"node {node.name!r} has `join:` but {len(node.inputs)} input(s); "
                                         f"a join needs at least two")

    def _setup_nodes(self) -> None:
        done: list[Worker] = []
        for spec in self.spec.nodes:
            try:
                device = resolve_device(spec.device, spec.name, self.spec.allow_cpu_fallback)
                node = spec.build()
                worker = Worker(spec, node, device)
                ctx = NodeContext(name=spec.name, device=device, inputs=tuple(i.source for i in spec.inputs),
                                  logger=logging.getLogger(f"costream.node.{spec.name}"))
                node.setup(ctx)
            except Exception as exc:
                self._teardown(list(reversed(done)))
                what = "device check" if isinstance(exc, DeviceUnavailableError) else "setup()"
                raise PipelineStartError(f"pipeline {self.spec.name!r} cannot start: node {spec.name!r} "
                                         f"(kind {spec.kind!r}) failed in {what}: {type(exc).__name__}: {exc}") from exc
            done.append(worker)
            self._workers[spec.name] = worker

    def _wire(self) -> None:
        for worker in self._workers.values():
            spec = worker.spec
            self._any_cuda |= worker.device != "cpu"
            worker.cuda_stream = DevicePlacement.make_stream(worker.device)
            if spec.role == "source":
                length = getattr(worker.node, "length", None)
                if self.max_frames is not None:
                    length = self.max_frames if length is None else min(length, self.max_frames)
                worker.length = length
                worker.period_ns = self._source_period_ns(worker)
            for inp in spec.inputs:
                edge = worker.inbox.add_edge(inp.source, inp.queue_size, inp.policy)  # type: ignore[union-attr]
                if edge.policy is not QueuePolicy.BLOCK:
                    edge.on_drop = self._frame_dropped
                self._workers[inp.source].outputs.append(edge)
            if spec.join is not None:
                worker.joiner = Joiner([i.source for i in spec.inputs], spec.join)
        unknown = sorted(self.fuse - set(self._workers))
        if unknown:
            raise ValueError(f"fuse names {unknown}, which are not nodes of the pipeline "
                             f"(nodes: {list(self._workers)})")
        for name in self.fuse:
            self._fuse(self._workers[name])

    def _fuse(self, worker: Worker) -> None:
        """Check that `worker` may run in its producer's thread and link the two (operator chaining)."""
        spec = worker.spec
        why = None
        if spec.role == "source":
            why = "it is a source (only operators and sinks run in a producer's thread)"
        elif len(spec.inputs) != 1 or spec.join is not None:
            joined = " and a join" if spec.join is not None else ""
            why = f"it has {len(spec.inputs)} inputs{joined}; it needs exactly one"
        elif QueuePolicy(spec.inputs[0].policy) is not QueuePolicy.BLOCK:
            why = (f"its input policy is {QueuePolicy(spec.inputs[0].policy).value}; only `block` edges are fused "
                   "(dropping policies need a queue to drop from)")
        elif spec.role == "operator" and spec.max_batch != 1:
            why = f"it has max_batch {spec.max_batch}; batching needs a queue"
        if why is None:
            producer = self._workers[spec.inputs[0].source]
            if len(producer.outputs) != 1:
                why = (f"its producer {producer.spec.name!r} feeds {len(producer.outputs)} nodes; only a single-output "
                       "producer can call its consumer directly")
            elif producer.device != worker.device:
                why = f"it runs on {worker.device} and its producer {producer.spec.name!r} on {producer.device}"
        if why is not None:
            raise ValueError(f"node {spec.name!r} cannot be fused into its producer: {why}. Remove `fuse: true` "
                             "from it to run it in its own thread")
        producer.fused = worker
        host = producer
        while host.host is not None:
            host = host.host
        worker.host = host
        for w in self._workers.values():  # a chain fused bottom-up: re-point its later links
            if w.host is worker:
                w.host = host

    def _teardown(self, workers: list[Worker]) -> None:
        for worker in workers:
            try:
                worker.node.teardown()
            except Exception as exc:  # teardown must reach every node
                log.error("node %r failed in teardown(): %s", worker.spec.name, exc, exc_info=True)
                self._record(worker, None, exc, count=False)

    # ------------------------------------------------------------------------------------- workers

    def _source_period_ns(self, worker: Worker) -> int:
        rate = worker.spec.rate_hz
        if self.free_running or rate is None:
            return 0
        if rate == "native":
            rate = worker.node.native_rate_hz
            if rate is None:
                log.warning("source %r has rate_hz: native but reports no native rate; running it "
                            "free-running", worker.spec.name)
                return 0
        try:
            rate = float(rate)
        except (TypeError, ValueError):
            rate = -1.0
        if not rate > 0:
            raise ValueError(f"source {worker.spec.name!r}: rate_hz must be a positive number of frames per "
                             f"second, 'native' or omitted (free-running); got {worker.spec.rate_hz!r}")
        return int(1e9 / rate)

    def _run_source(self, worker: Worker) -> None:
        m = worker.metrics
        m.t_start = now_ns()
        name = worker.spec.name
        period = worker.period_ns
        clock, stop = self._clock, self._stop
        limit = self.max_frames
        length = worker.length  # no pacing wait once the source's announced frames are out
        frames = None
        try:
            with DevicePlacement.stream_scope(worker.device, worker.cuda_stream):
                frames = iter(worker.node.frames())
                next_t = clock.now_ns()
                while not stop.is_set() and (limit is None or m.frames_out < limit):
                    if period and (length is None or m.frames_out < length):
                        clock.wait_until(next_t, stop)
                        if stop.is_set():
                            break
                        now = clock.now_ns()
                        next_t = next_t + period if now - next_t < period else now + period
                    t0 = now_ns()
                    frame = next(frames, None)
                    t1 = now_ns()
                    if frame is None:
                        break
                    if frame.__class__ is not Frame and not isinstance(frame, Frame):
                        raise TypeError(f"{type(worker.node).__name__}.frames() must yield Frame objects "
                                        f"(build them with self.make_frame(data)); got {type(frame).__name__}")
                    if m.t_first == 0:
                        m.t_first = t1
                    m.service_ns.append(t1 - t0)
                    m.frames_out += 1
                    m.t_last = t1
                    cuda_stream = worker.cuda_stream
                    self._emit(worker, frame, t1,
                               None if cuda_stream is None else DevicePlacement.record_event(cuda_stream))
                if self.max_frames is not None and m.frames_out >= self.max_frames:
                    self._limit_hit = True
        except Exception as exc:
            self._on_error(worker, None, exc)
        finally:
            close = getattr(frames, "close", None)
            if close is not None:
                try:
                    close()
                except Exception as exc:
                    log.error("source %r failed while closing its frames(): %s", name, exc)
            self._finish_outputs(worker)

    def _run_consumer(self, worker: Worker) -> None:
        m = worker.metrics
        m.t_start = now_ns()
        try:
            with DevicePlacement.stream_scope(worker.device, worker.cuda_stream):
                if worker.joiner is not None:
                    self._consume_joined(worker)
                else:
                    self._consume(worker)
        except Exception as exc:  # a bug in the runtime itself: make it fatal, never hang the pipeline
            log.exception("internal error in the worker of node %r", worker.spec.name)
            self._on_error(worker, None, exc, force_fatal=True)
        finally:
            if worker.inbox is not None and not worker.inbox.exhausted:
                worker.inbox.close()
            self._finish_outputs(worker)

    def _finish_outputs(self, worker: Worker) -> None:
        """The worker's thread ends: no more frames on its edges, nor on those of the nodes it runs."""
        while worker is not None:
            for edge in worker.outputs:
                edge.finish()
            worker = worker.fused

    def _consume(self, worker: Worker) -> None:
        inbox = worker.inbox
        m = worker.metrics
        queue_ns = m.queue_ns
        max_batch = worker.spec.max_batch if worker.spec.role == "operator" else 1
        prepare = self._prepare if self._any_cuda else None
        if max_batch == 1 and prepare is None:  # the hot path: one frame per call, no device moves
            get_one = inbox.get_one  # type: ignore[union-attr]
            process_one = self._process_one
            while True:
                item = get_one()
                if item is None:
                    return
                t = now_ns()
                queue_ns.append(t - item[1])
                m.frames_in += 1
                if not process_one(worker, item[0], t):
                    return
        while True:
            items = inbox.get(max_batch)  # type: ignore[union-attr]
            if items is None:
                return
            t = now_ns()
            for item in items:
                queue_ns.append(t - item[1])
            m.frames_in += len(items)
            if prepare is None:
                frames = [item[0] for item in items]
            else:
                frames = [prepare(worker, item[0], item[2]) for item in items]
            if not self._process(worker, frames, t):
                return

    def _process_one(self, worker: Worker, frame: Frame, t0: int) -> bool:
        """`_process` for a single CPU frame, with the bookkeeping done before the hand-off."""
        m = worker.metrics
        if m.t_first == 0:
            m.t_first = t0
        try:
            result = worker.node.process(frame)
        except Exception as exc:
            return self._on_error(worker, frame, exc)
        t1 = now_ns()
        m.service_ns.append(t1 - t0)
        m.batches += 1
        m.t_last = t1
        if worker.is_sink:
            m.e2e_ns.append(t1 - frame.t_capture)
            m.frames_out += 1
            return True
        if result.__class__ is Frame:
            m.frames_out += 1
            self._emit(worker, result, t1)
            return True
        try:
            out, failures = as_outputs(result)
        except TypeError as exc:
            return self._on_error(worker, frame, exc)
        if failures and not self._fail_frames(worker, failures):
            return False
        if worker.ends_unanswered:
            self._tell_ended(worker, [frame], out, failures)
        m.frames_out += len(out)
        for item in out:
            self._emit(worker, item, t1)
        return True

    def _consume_joined(self, worker: Worker) -> None:
        inbox, joiner = worker.inbox, worker.joiner
        m = worker.metrics
        max_batch = worker.spec.max_batch if worker.spec.role == "operator" else 1
        while True:
            deadline = joiner.next_deadline()  # type: ignore[union-attr]
            timeout = None if deadline is None else max(deadline - now_ns(), 0) / 1e9
            got = inbox.get_from(max_batch, timeout)  # type: ignore[union-attr]
            if got is None:
                joiner.flush()  # type: ignore[union-attr]
                return
            joiner.expire()  # type: ignore[union-attr]
            t = now_ns()
            m.frames_in += len(got)
            frames: list[Frame] = []
            for edge, (frame, t_enq, event) in got:
                m.queue_ns.append(t - t_enq)
                if self._any_cuda:
                    frame = self._prepare(worker, frame, event)
                joined = joiner.add(edge.index, frame)  # type: ignore[union-attr]
                if joined is not None:
                    frames.append(joined)
            if frames and not self._process(worker, frames, t):
                return

    def _process(self, worker: Worker, frames: list[Frame], t0: int) -> bool:
        """Run the node on `frames` and emit its results; False when the worker must stop."""
        node, m = worker.node, worker.metrics
        if m.t_first == 0:
            m.t_first = t0
        if worker.spec.role == "sink":
            for frame in frames:
                if not self._process_one(worker, frame, t0):
                    return False
                t0 = now_ns()
            return True
        try:
            if len(frames) == 1 and worker.spec.max_batch == 1:
                out, failures = as_outputs(node.process(frames[0]))
            else:
                out, failures = as_outputs(node.process_batch(frames))
        except Exception as exc:  # the whole call failed: every frame of it
            return self._fail_frames(worker, [FrameFailure(frame, exc) for frame in frames])
        t1 = now_ns()
        if failures and not self._fail_frames(worker, failures):
            return False
        if worker.ends_unanswered:
            self._tell_ended(worker, frames, out, failures)
        m.service_ns.append(t1 - t0)
        m.batches += 1
        m.frames_out += len(out)
        m.t_last = t1
        event = DevicePlacement.record_event(worker.cuda_stream) if out and worker.cuda_stream is not None else None
        for frame in out:
            self._emit(worker, frame, t1, event)
        return True

    def _emit(self, worker: Worker, frame: Frame, t_ns: int, event: Any = None) -> None:
        """Stamp the frame once and hand the same object to every consumer (no copies)."""
        stamped = Frame.trusted(frame.stream, frame.seq, frame.t_capture, frame.data, frame.meta,
                                frame.trace + ((worker.name, t_ns),))
        consumer = worker.fused
        if consumer is not None:  # operator chaining: run the consumer here, in this thread
            if worker.outputs[0].pass_through():
                t = now_ns()
                consumer.metrics.queue_ns.append(t - t_ns)
                consumer.metrics.frames_in += 1
                if self._any_cuda:
                    self._process(consumer, [stamped], t)
                else:  # a fused node never batches (max_batch 1): the single-frame path
                    self._process_one(consumer, stamped, t)
            return
        for edge in worker.outputs:
            edge.put(stamped, t_ns, event)

    def _prepare(self, worker: Worker, frame: Frame, event: Any) -> Frame:
        return self._placement.prepare(frame, event, worker.device, worker.cuda_stream)

    # -------------------------------------------------------------------------------------- errors

    def _on_error(self, worker: Worker, frame: Frame | None, exc: BaseException, force_fatal: bool = False) -> bool:
        """Count, log and record a failure; returns False if the node must stop (policy `stop`)."""
        fatal = force_fatal or worker.spec.on_error is ErrorPolicy.STOP
        record = self._record(worker, frame, exc, count=frame is not None)
        if frame is not None:
            self._tell_source(frame, worker.spec.name, exc)
        if fatal:
            with self._errors_lock:
                if self._fatal is None:
                    self._fatal = record
            log.error("node %r failed (on_error: stop); stopping pipeline %r", worker.spec.name, self.spec.name)
            self.request_stop("fatal error")
            if worker.inbox is not None:
                worker.inbox.close()
            return False
        return frame is not None  # a source cannot resume a frames() iterator that raised

    def _tell_source(self, frame: Frame, node: str, outcome: BaseException | str) -> None:
        """Let the source that produced `frame` (the first trace stamp) react to what happened to it in
        `node`: an exception it raised, "ended" (no output, ever) or "dropped" (by the queue in front)."""
        if not frame.trace:
            return
        origin = self._workers.get(frame.trace[0][0])
        if origin is None or origin.spec.role != "source" or origin is self._workers.get(node):
            return
        source = origin.node
        try:
            if isinstance(outcome, BaseException):
                source.frame_failed(frame, node, outcome)
            elif outcome == "ended":
                source.frame_ended(frame, node)
            else:
                source.frame_dropped(frame, node)
        except Exception as hook_exc:  # the hook must never take the node down with it
            log.error("source %r failed in its frame_%s() hook: %s", origin.spec.name,
                      outcome if isinstance(outcome, str) else "failed", hook_exc)

    def _frame_dropped(self, frame: Frame, node: str) -> None:
        """A lossy edge into `node` dropped `frame` (called by the producer after the queue's lock)."""
        self._tell_source(frame, node, "dropped")

    def _fail_frames(self, worker: Worker, failures: list[FrameFailure]) -> bool:
        """Inputs that failed (returned so by a batched step, or all of a call that raised): each is
        counted and reported alone; False if the node must stop."""
        keep_going = True
        for failure in failures:
            keep_going = self._on_error(worker, failure.frame, failure.error) and keep_going
        return keep_going

    def _tell_ended(self, worker: Worker, frames: list[Frame], out: list[Frame],
                    failures: list[FrameFailure] = ()) -> None:
        """The inputs of an `outputs_follow_inputs` operator that got no output in this call (and did
        not fail: a failed one has been reported already)."""
        if len(frames) == 1 and out and out[0].stream == frames[0].stream and out[0].seq == frames[0].seq:
            return  # the usual case: one input, its output
        answered = {(f.stream, f.seq) for f in out} | {(f.frame.stream, f.frame.seq) for f in failures}
        for frame in frames:
            if (frame.stream, frame.seq) not in answered:
                self._tell_source(frame, worker.name, "ended")

    def _record(self, worker: Worker, frame: Frame | None, exc: BaseException, count: bool) -> ErrorRecord:
        stream, seq = (frame.stream, frame.seq) if frame is not None else (None, None)
        record = ErrorRecord(worker.spec.name, stream, seq, type(exc).__name__, str(exc),
                             "".join(traceback.format_exception(exc)))
        if count:
            worker.metrics.failed += 1
        worker.errors_seen += 1
        with self._errors_lock:
            self._error_count += 1
            if len(self._errors) < self.max_error_records:
                self._errors.append(record)
        n = worker.errors_seen
        if n <= _LOGGED_ERRORS_PER_NODE or n % 1000 == 0:
            log.warning("node %r raised on stream %r seq %s: %s: %s%s", worker.spec.name, stream, seq,
                        type(exc).__name__, exc, f" ({n} failures so far)" if n > 1 else "",
                        exc_info=exc if n == 1 else None)
        return record

    # -------------------------------------------------------------------------------------- report

    @staticmethod
    def _node_counters(worker: Worker) -> dict[str, int] | None:
        try:
            counters = worker.node.stats()
        except Exception as exc:  # a report must not fail on one node's bookkeeping
            log.error("node %r failed in stats(): %s", worker.spec.name, exc)
            return None
        return dict(counters) or None

    def _build_report(self) -> RunReport:
        warmup = self.spec.warmup_frames
        nodes: dict[str, NodeReport] = {}
        edges: list[EdgeReport] = []
        e2e: dict[str, Any] = {}
        for name, w in self._workers.items():
            m = w.metrics
            m.trim(self.max_latency_samples)
            sink = w.spec.role == "sink"
            nodes[name] = NodeReport(
                name=name, kind=w.spec.kind, role=w.spec.role, device=w.device,
                frames_in=m.frames_in, frames_out=m.frames_out, failed=m.failed, batches=m.batches,
                throughput_hz=m.throughput_hz(self._t_end),
                service=LatencyStats.from_ns(m.service_ns, m.warmup_left("service_ns", warmup)),
                queue_wait=LatencyStats.from_ns(m.queue_ns, m.warmup_left("queue_ns", warmup)),
                end_to_end=LatencyStats.from_ns(m.e2e_ns, m.warmup_left("e2e_ns", warmup)) if sink else None,
                join=w.joiner.counters.as_dict() if w.joiner is not None else None,
                length=w.length,
                counters=self._node_counters(w),
            )
            if sink:
                e2e[name] = samples_ms(m.e2e_ns, m.warmup_left("e2e_ns", warmup))
            for edge in (w.inbox.edges if w.inbox is not None else []):
                c = edge.counters
                edges.append(EdgeReport(edge.source, edge.target, edge.policy.value, edge.capacity, c.offered,
                                        c.delivered, c.dropped, c.discarded, c.max_depth))
        if self._fatal is not None:
            reason = "fatal error"
        else:
            reason = self._stop_reason or ("max_frames reached" if self._limit_hit else "sources ended")
        return RunReport(
            pipeline=self.spec.name, duration_s=(self._t_end - self._t_start) / 1e9, stop_reason=reason,
            fatal_error=self._fatal, nodes=nodes, edges=tuple(edges), errors=tuple(self._errors),
            error_count=self._error_count, warmup_frames=warmup, e2e_samples_ms=e2e,
        )


def run_pipeline(spec: PipelineSpec, **kwargs: Any) -> RunReport:
    """Convenience: `LocalExecutor(spec, **kwargs).run()`."""
    return LocalExecutor(spec, **kwargs).run()


__all__ = ["Clock", "LocalExecutor", "MonotonicClock", "PipelineStartError", "run_pipeline"]
