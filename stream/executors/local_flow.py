"""The local executor's data path: one source loop and one consumer loop, run by every node's thread.

`Dataflow.run_source(worker)` iterates a source's `frames()`, paced by the plan; `run_consumer`
takes frames from the node's inbox (the fast path: one frame at a time, no device moves; or up to
`max_batch`; or parts joined by (stream, seq)), calls the node, and hands what it returns to one
bookkeeping step, `_finish`, whichever way the frames came: metrics, failures, the completion of
inputs that ended without output, and the emission (stamped once, shared by every consumer, or run
directly in this thread for a fused consumer).

Every timestamp it takes (queue waits, service and transfer times, end-to-end latency, trace stamps)
comes from the executor's clock (`stream.clock`), so a test or a load generator that injects one sees
the run in its time. Observers (`stream.executors.observe.CallObserver`) hear of every call once its
metrics are recorded: trace recorders and the benchmark's completion tracking.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Sequence

from stream.clock import Clock
from stream.devices import pin_this_thread
from stream.edges import Edge, Inbox, resolve_dropped
from stream.executors.failures import FailureLog
from stream.frame import Frame, now_ns
from stream.join import Joiner
from stream.metrics import NodeMetrics
from stream.sketch import FLUSH_AT
from stream.node import FrameFailure, NodeContext, as_outputs
from stream.placement import DevicePlacement
from stream.plan import GraphPlan, NodePlan
from stream.spec import ErrorPolicy

log = logging.getLogger("costream.executor")


class Worker:
    """Everything the local executor keeps about one node while it runs."""

    def __init__(self, plan: NodePlan, node: Any, warmup: int = 0) -> None:
        spec = plan.spec
        self.plan = plan
        self.spec = spec
        self.name = spec.name  # hot-path copies of plan fields
        self.is_sink = spec.role == "sink"
        self.node = node
        # an operator whose input left without output in a call never gets one (Operator.outputs_follow_inputs)
        self.completes_inputs = bool(getattr(node, "outputs_follow_inputs", False)) and not self.is_sink
        self.max_batch = spec.max_batch if spec.role == "operator" else 1
        self.stops_on_error = spec.on_error is ErrorPolicy.STOP
        self.device = plan.device.torch  # what the node computes on
        self.core = plan.device.core  # the CPU core its thread is pinned to, if any
        self.metrics = NodeMetrics(spec.name, spec.role, warmup)  # the first `warmup` samples per series skipped
        self.inbox: Inbox | None = Inbox(spec.name) if spec.inputs else None
        self.outputs: list[Edge] = []
        self.joiner: Joiner | None = None
        self.cuda_stream: Any = None
        self.copies: dict[str, int] = {}  # {device: consumers on it}, for the device transfer cache
        self.thread: threading.Thread | None = None
        self.length: int | None = None  # sources: frames announced (and capped by max_frames)
        self.stream_count: int | None = None  # sources: streams announced (Source.stream_count)
        self.past_limit = 0  # sources: frames read after their stream reached max_frames (not emitted)
        self.period_ns = 0  # sources: pacing period, 0 when free-running
        self.fused: Worker | None = None  # the consumer run inside this worker's thread (operator chaining)
        self.host: Worker | None = None  # fused nodes: the worker whose thread runs this node

    @property
    def alive(self) -> bool:
        thread = (self.host or self).thread
        return thread is not None and thread.is_alive()



def set_up_worker(node_plan: NodePlan, warmup: int) -> Worker:
    """Build the node of `node_plan`, wrap it in its Worker and call its `setup()`: the same for every
    executor (the local one in this process, the Ray one in each actor)."""
    spec = node_plan.spec
    node = spec.build()
    worker = Worker(node_plan, node, warmup=warmup)
    node.setup(NodeContext(name=spec.name, device=worker.device, inputs=tuple(i.source for i in spec.inputs),
                           logger=logging.getLogger(f"costream.node.{spec.name}")))
    return worker


class Dataflow:
    """The loops of one run; built by `LocalExecutor.start` once every node is set up and wired."""

    def __init__(self, plan: GraphPlan, workers: dict[str, Worker], *, clock: Clock, stop: threading.Event,
                 failures: FailureLog, on_fatal: Callable[[], None], observers: Sequence[Any] = ()) -> None:
        self.plan = plan
        self.workers = workers
        self.clock = clock
        self.now = clock.now_ns  # every timestamp of the run
        self.stop = stop
        self.failures = failures
        self.on_fatal = on_fatal
        self.any_cuda = plan.any_cuda
        self.max_frames = plan.max_frames
        self.observers = tuple(observers)
        self.placement = DevicePlacement()
        self.limit_hit = False

    # -- sources -----------------------------------------------------------------------------------

    def run_source(self, worker: Worker) -> None:
        m = worker.metrics
        now = self.now
        m.t_start = now()
        period = worker.period_ns
        clock, stop = self.clock, self.stop
        limit = self.max_frames  # frames per stream (`--frames`)
        known = worker.stream_count  # streams the source said it has, when it knows
        per_stream: dict[str, int] = {}  # frames emitted per stream, while a limit applies
        full = 0  # streams that reached the limit
        length = worker.length  # no pacing wait once the source's announced frames are out
        service_ns = m.service_ns
        observers = self.observers
        frames = None
        try:
            pin_this_thread(worker.core)
            with DevicePlacement.stream_scope(worker.device, worker.cuda_stream):
                frames = iter(worker.node.frames())
                next_t = now()
                while not stop.is_set() and (limit is None or (limit > 0 and (known is None or full < known))):
                    if period and (length is None or m.frames_out < length):
                        clock.wait_until(next_t, stop)
                        if stop.is_set():
                            break
                        t = now()
                        next_t = next_t + period if t - next_t < period else t + period
                    t0 = now()
                    frame = next(frames, None)
                    t1 = now()
                    if frame is None:
                        break
                    if frame.__class__ is not Frame and not isinstance(frame, Frame):
                        raise TypeError(f"{type(worker.node).__name__}.frames() must yield Frame objects "
                                        f"(build them with self.make_frame(data)); got {type(frame).__name__}")
                    if limit is not None:
                        n = per_stream.get(frame.stream, 0)
                        if n >= limit:  # this stream is done: the frame is not emitted (counted, ticket resolved)
                            worker.past_limit += 1
                            resolve_dropped((frame,), worker.name)
                            if full == len(per_stream) and known is None:
                                break  # every stream seen so far is done, and no new one came
                            continue
                        per_stream[frame.stream] = n + 1
                        full += n + 1 == limit
                    if m.t_first == 0:
                        m.t_first = t1
                    service_ns.append(t1 - t0)
                    m.frames_out += 1
                    m.t_last = t1
                    cuda_stream = worker.cuda_stream
                    for observer in observers:
                        observer.produced(worker.name, frame, t0, t1)
                    self._emit(worker, frame, t1, None if cuda_stream is None else DevicePlacement.record_event(cuda_stream))
                    if len(service_ns) >= FLUSH_AT:
                        m.flush()
                if limit is not None and per_stream and full == len(per_stream) and not stop.is_set():
                    self.limit_hit = True
        except Exception as exc:
            self._fail(worker, None, exc)
        finally:
            close = getattr(frames, "close", None)
            if close is not None:
                try:
                    close()
                except Exception as exc:
                    log.error("source %r failed while closing its frames(): %s", worker.name, exc)
            self._finish_outputs(worker)

    # -- operators and sinks -----------------------------------------------------------------------

    def run_consumer(self, worker: Worker) -> None:
        worker.metrics.t_start = self.now()
        try:
            pin_this_thread(worker.core)
            with DevicePlacement.stream_scope(worker.device, worker.cuda_stream):
                self._consume(worker)
        except Exception as exc:  # a bug in the runtime itself: make it fatal, never hang the pipeline
            log.exception("internal error in the worker of node %r", worker.name)
            self._fail(worker, None, exc, force_fatal=True)
        finally:
            if worker.inbox is not None and not worker.inbox.exhausted:
                worker.inbox.close()
            self._finish_outputs(worker)

    def _consume(self, worker: Worker) -> None:
        """The one consumer loop: take frames, call the node, repeat until the inputs end."""
        inbox, joiner, m = worker.inbox, worker.joiner, worker.metrics
        queue_ns = m.queue_ns
        batch = worker.max_batch
        prepare = self._prepare if self.any_cuda else None
        call_one, call_many, finish = self._call_one, self._call_many, self._finish
        now = self.now
        one_by_one = joiner is None and batch == 1 and prepare is None
        process = worker.node.process
        while True:
            if one_by_one:  # the fast path: one frame at a time, no device moves (`_call_one`, inline)
                item = inbox.get_one()  # type: ignore[union-attr]
                if item is None:
                    return
                t = now()
                queue_ns.append(t - item[1])
                m.frames_in += 1
                if m.t_first == 0:
                    m.t_first = t
                frame = item[0]
                try:
                    result = process(frame)
                except Exception as exc:
                    ok = self._fail(worker, frame, exc)
                else:
                    ok = finish(worker, (frame,), result, t)
            else:
                got = self._take_joined(worker) if joiner is not None else self._take(worker, batch, prepare)
                if got is None:
                    return
                frames, t = got
                if batch == 1:
                    ok = all(call_one(worker, frame, t) for frame in frames)
                else:
                    ok = not frames or call_many(worker, frames, t)
            if not ok:
                return
            if len(queue_ns) >= FLUSH_AT:
                m.flush()

    def _take(self, worker: Worker, batch: int, prepare: Any) -> tuple[list[Frame], int] | None:
        items = worker.inbox.get(batch)  # type: ignore[union-attr]
        if items is None:
            return None
        now = self.now
        t = now()
        m = worker.metrics
        queue_ns = m.queue_ns
        for item in items:
            queue_ns.append(t - item[1])
        m.frames_in += len(items)
        if prepare is None:
            return [item[0] for item in items], t
        frames = []
        transfer_ns = m.transfer_ns
        for item in items:  # the hand-over to this node's device, timed per frame
            frames.append(prepare(worker, item[0], item[2]))
            t1 = now()
            transfer_ns.append(t1 - t)
            t = t1
        if len(transfer_ns) >= FLUSH_AT:
            m.flush()
        return frames, t

    def _take_joined(self, worker: Worker) -> tuple[list[Frame], int] | None:
        inbox, joiner = worker.inbox, worker.joiner
        deadline = joiner.next_deadline()  # type: ignore[union-attr]
        timeout = None if deadline is None else max(deadline - now_ns(), 0) / 1e9
        got = inbox.get_from(worker.max_batch, timeout)  # type: ignore[union-attr]
        if got is None:
            joiner.flush()  # type: ignore[union-attr]
            return None
        joiner.expire()  # type: ignore[union-attr]
        now = self.now
        t = t_taken = now()
        m = worker.metrics
        m.frames_in += len(got)
        queue_ns = m.queue_ns
        frames: list[Frame] = []
        for edge, (frame, t_enq, handoff) in got:
            queue_ns.append(t_taken - t_enq)
            if self.any_cuda:
                frame = self._prepare(worker, frame, handoff)
                t1 = now()
                m.transfer_ns.append(t1 - t)
                t = t1
            joined = joiner.add(edge.index, frame)  # type: ignore[union-attr]
            if joined is not None:
                frames.append(joined)
        return frames, t

    def _call_one(self, worker: Worker, frame: Frame, t0: int) -> bool:
        """`node.process(frame)`; False when the worker must stop."""
        m = worker.metrics
        if m.t_first == 0:
            m.t_first = t0
        try:
            result = worker.node.process(frame)
        except Exception as exc:
            return self._fail(worker, frame, exc)
        return self._finish(worker, (frame,), result, t0)

    def _call_many(self, worker: Worker, frames: list[Frame], t0: int) -> bool:
        """`node.process_batch(frames)`; False when the worker must stop."""
        m = worker.metrics
        if m.t_first == 0:
            m.t_first = t0
        try:
            result = worker.node.process_batch(frames)
        except Exception as exc:  # the whole call failed: every frame of it
            return self._fail_frames(worker, [FrameFailure(frame, exc) for frame in frames])
        return self._finish(worker, frames, result, t0)

    def _finish(self, worker: Worker, inputs: Any, result: Any, t0: int) -> bool:
        """The bookkeeping of one call, the same for one frame and for a batch."""
        t1 = self.now()
        m = worker.metrics
        m.service_ns.append(t1 - t0)
        m.batches += 1
        m.t_last = t1
        if worker.is_sink:
            m.e2e_ns.append(t1 - inputs[0].t_capture)
            m.frames_out += 1
            for observer in self.observers:  # after the metrics: an observer may let the next frame in
                observer.called(worker.name, inputs, (), t0, t1)
            return True
        if result.__class__ is Frame:
            out: Any = (result,)
        else:
            try:
                out, failures = as_outputs(result)
            except TypeError as exc:
                return self._fail_frames(worker, [FrameFailure(frame, exc) for frame in inputs])
            if failures and not self._fail_frames(worker, failures):
                return False
        if worker.completes_inputs:
            ticket = inputs[0].ticket  # the usual cases, checked inline: no ticket, or one output carrying it
            if len(inputs) != 1 or (ticket is not None and (len(out) != 1 or out[0].ticket is not ticket)):
                self._complete_unanswered(worker, inputs, out)
        m.frames_out += len(out)
        for observer in self.observers:
            observer.called(worker.name, inputs, out, t0, t1)
        if out:
            event = None if worker.cuda_stream is None else DevicePlacement.record_event(worker.cuda_stream)
            for frame in out:
                self._emit(worker, frame, t1, event)
        return True

    @staticmethod
    def _complete_unanswered(worker: Worker, inputs: Any, out: Any) -> None:
        """Inputs whose ticket no output carries ended here without output (a ticket already resolved,
        e.g. because its frame failed, stays as it was)."""
        for frame in inputs:
            ticket = frame.ticket
            if ticket is None:
                continue
            for o in out:
                if o.ticket is ticket:
                    break
            else:
                ticket.ended(worker.name, frame)

    # -- emission ----------------------------------------------------------------------------------

    def _emit(self, worker: Worker, frame: Frame, t_ns: int, event: Any = None) -> None:
        """Stamp the frame once and hand the same object to every consumer (no copies)."""
        stamped = Frame.trusted(frame.stream, frame.seq, frame.t_capture, frame.data, frame.meta,
                                frame.trace + ((worker.name, t_ns),), frame.ticket)
        consumer = worker.fused
        if consumer is not None:  # operator chaining: run the consumer here, in this thread
            if worker.outputs[0].pass_through(stamped):
                t = self.now()
                cm = consumer.metrics
                cm.queue_ns.append(t - t_ns)
                cm.frames_in += 1
                self._call_one(consumer, stamped, t)  # a fused node never batches (max_batch 1)
                if len(cm.queue_ns) >= FLUSH_AT:
                    cm.flush()
            return
        handoff = None if event is None and not self.any_cuda else (event, worker.copies)
        for edge in worker.outputs:
            edge.put(stamped, t_ns, handoff)

    def _prepare(self, worker: Worker, frame: Frame, handoff: Any) -> Frame:
        event, copies = handoff if handoff is not None else (None, {})
        return self.placement.prepare(frame, event, worker.device, worker.cuda_stream, copies.get(worker.device, 1))

    def _finish_outputs(self, worker: Worker | None) -> None:
        """The worker's thread ends: no more frames on its edges, nor on those of the nodes it runs."""
        while worker is not None:
            for edge in worker.outputs:
                edge.finish()
            worker = worker.fused

    # -- failures ----------------------------------------------------------------------------------

    def _fail(self, worker: Worker, frame: Frame | None, exc: BaseException, force_fatal: bool = False) -> bool:
        """Count, record and log a failure, resolve the frame's ticket; False if the node must stop."""
        fatal = force_fatal or worker.stops_on_error
        if frame is not None:
            worker.metrics.failed += 1
        self.failures.record(worker.name, frame, exc, fatal=fatal)
        if frame is not None and frame.ticket is not None:
            frame.ticket.failed(worker.name, frame, exc)
        if fatal:
            log.error("node %r failed (on_error: stop); stopping pipeline %r", worker.name, self.plan.spec.name)
            self.on_fatal()
            if worker.inbox is not None:
                worker.inbox.close()
            return False
        return frame is not None  # a source cannot resume a frames() iterator that raised

    def _fail_frames(self, worker: Worker, failures: list[FrameFailure]) -> bool:
        """Inputs that failed (returned so by a batched step, or all of a call that raised): each is
        counted and reported alone; False if the node must stop."""
        keep_going = True
        for failure in failures:
            keep_going = self._fail(worker, failure.frame, failure.error) and keep_going
        return keep_going


__all__ = ["Dataflow", "Worker"]
