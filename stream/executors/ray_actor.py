"""The Ray actor that runs one node (or one fused chain of nodes) of a pipeline.

Inside the actor the node runs exactly as under the local executor: a `stream.executors.local_flow`
worker thread with its inbox, joins, batching, metrics, error policy and completion tickets. Only the
edges to and from other actors differ: a `Sender` (the edge's policy queue, drained into a Ray
shared-memory channel) and a `Receiver` (the channel read into the inbox edge); see
`stream.executors.ray_transport`.

The driver (`stream.executors.ray.RayExecutor`) calls, in this order: `setup` (build and set up the
nodes), `open_output` / `open_input` per edge to another actor, `start` then `start_sources`, and
`watch` (a long poll that returns when the group has ended or hit a fatal error) until `finish`,
which tears the nodes down and returns what the report needs. `snapshot`, `request_stop`,
`resolve_ticket`, `input_lost` and `output_lost` may come at any time (the actor is threaded).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
from typing import Any

from stream.clock import MonotonicClock
from stream.devices import Device
from stream.executors.failures import FailureLog
from stream.executors.local import _joined_part_dropped
from stream.executors.local_flow import Dataflow, Worker, set_up_worker
from stream.executors.ray_direct import DirectInbox, DirectSender
from stream.executors.ray_tickets import TicketDesk
from stream.executors.ray_transport import INITIAL_BUFFER_BYTES, CallLink, ChannelLink, Receiver, Sender, from_call_args
from stream.executors.reporting import node_counters
from stream.frame import now_ns
from stream.join import Joiner
from stream.placement import DevicePlacement
from stream.plan import GraphPlan, NodePlan
from stream.spec import QueuePolicy

log = logging.getLogger("costream.ray")

EdgeKey = tuple[str, str]  # (source node, target node)


class NodeGroupActor:
    """One actor: the nodes of one group (a node and the nodes fused into it)."""

    def __init__(self, pipeline: str, group: str, incarnation: int = 0, max_error_records: int = 20,
                 max_latency_samples: int = 1_000_000) -> None:
        self.pipeline = pipeline
        self.group = group
        self.incarnation = incarnation
        self.max_latency_samples = max_latency_samples
        self.failures = FailureLog(max_error_records)
        self.workers: dict[str, Worker] = {}
        self.senders: dict[EdgeKey, Sender] = {}
        self.receivers: dict[EdgeKey, Receiver] = {}
        self._remote_inputs: dict[EdgeKey, Any] = {}  # inbox edges waiting for their channel
        self._stop = threading.Event()
        self._stop_once = threading.Lock()
        self._changed = threading.Condition()
        self._fatal = False
        self._hard = False
        self._stop_reason: str | None = None
        self._flow: Dataflow | None = None
        self._threads: list[threading.Thread] = []
        self._finished: dict[str, Any] | None = None
        self._tickets: TicketDesk | None = None
        self._t_start = 0

    def __repr__(self) -> str:  # what Ray shows in its logs and `ray list actors`
        return f"costream[{self.pipeline}/{self.group}#{self.incarnation}]"

    # ----------------------------------------------------------------------------------- set-up

    def setup(self, plan: GraphPlan, names: list[str]) -> dict[str, Any]:
        """Build, set up and wire the nodes `names` of `plan` (those of this actor); where it runs."""
        import ray

        self._tickets = TicketDesk(ray.get_runtime_context().current_actor)
        nodes = {name: self._local_device(plan.nodes[name]) for name in names}
        sub = dataclasses.replace(plan, nodes=nodes, order=tuple(n for n in plan.order if n in nodes))
        self.plan = sub
        done: list[Worker] = []
        for node_plan in nodes.values():
            spec = node_plan.spec
            try:
                worker = set_up_worker(node_plan, self.plan.spec.warmup_frames)
            except Exception as exc:
                self._teardown(list(reversed(done)))
                raise RuntimeError(f"node {spec.name!r} (kind {spec.kind!r}) failed in setup(): "
                                   f"{type(exc).__name__}: {exc}") from exc
            done.append(worker)
            self.workers[spec.name] = worker
        self._wire(sub)
        context = ray.get_runtime_context()
        return {"actor_id": context.get_actor_id(), "node_id": context.get_node_id(), "host": socket.gethostname(),
                "pid": os.getpid(), "ip": ray.util.get_node_ip_address(),
                "devices": {name: str(w.plan.device) for name, w in self.workers.items()},
                "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}

    @staticmethod
    def _local_device(node_plan: NodePlan) -> NodePlan:
        """Ray shows an actor only the GPUs it was given, as cuda:0..k-1."""
        device = node_plan.device
        if not device.is_cuda:
            return node_plan
        import ray

        visible = ray.get_gpu_ids()
        if not visible:
            raise RuntimeError(f"node {node_plan.name!r} asks for {device} but Ray gave its actor no GPU; give it "
                               "ray.num_gpus > 0")
        return dataclasses.replace(node_plan, device=Device("cuda:0"))

    def _wire(self, plan: GraphPlan) -> None:
        workers = self.workers
        for worker in workers.values():
            spec, node_plan = worker.spec, worker.plan
            worker.cuda_stream = DevicePlacement.make_stream(worker.device)
            copies: dict[str, int] = {}
            for consumer in node_plan.consumers:
                if consumer in plan.nodes:
                    device = plan.nodes[consumer].device.torch
                    copies[device] = copies.get(device, 0) + 1
            worker.copies = copies
            if spec.role == "source":
                length = getattr(worker.node, "length", None)
                if plan.max_frames is not None:
                    length = plan.max_frames if length is None else min(length, plan.max_frames)
                worker.length = length
                period = node_plan.period_ns(worker.node.native_rate_hz if spec.rate_hz == "native" else None)
                if period is None:
                    log.warning("source %r has rate_hz: native but reports no native rate; running it "
                                "free-running", worker.name)
                worker.period_ns = period or 0
            for inp in spec.inputs:  # in the spec's order: a join numbers its inputs by it
                edge = worker.inbox.add_edge(inp.source, inp.queue_size, inp.policy)  # type: ignore[union-attr]
                if inp.source in workers:
                    workers[inp.source].outputs.append(edge)
                else:
                    self._remote_inputs[(inp.source, spec.name)] = edge
            if spec.join is not None:
                worker.joiner = Joiner([i.source for i in spec.inputs], spec.join,
                                       on_drop=_joined_part_dropped(spec.name))
        for name, node_plan in plan.nodes.items():
            if node_plan.fused is not None:
                workers[name].fused = workers[node_plan.fused]
            if node_plan.host is not None:
                workers[name].host = workers[node_plan.host]
                workers[name].cuda_stream = workers[node_plan.host].cuda_stream

    def open_output(self, edge: EdgeKey, reader: Any, reader_node_id: str, capacity: int,
                    policy: str) -> tuple[Any, list[str]]:
        """The link for edge `edge` to actor `reader`: a shared-memory channel when the reader runs on
        this Ray node (returned, for `open_input`; writers create channels), actor calls otherwise
        (None). On a reconnect (the reader was restarted) also the streams the old reader had been
        sent, whose state it lost."""
        import ray

        channel = None
        if reader_node_id == ray.get_runtime_context().get_node_id():
            from ray.experimental.channel.shared_memory_channel import Channel

            channel = Channel(ray.get_runtime_context().current_actor, [(reader, reader_node_id)],
                              INITIAL_BUFFER_BYTES)
            link: Any = ChannelLink(channel)
        else:
            link = CallLink(reader, edge)
        sender = self.senders.get(edge)
        if sender is None:
            portable = self._tickets.portable  # type: ignore[union-attr]
            if channel is not None and QueuePolicy(policy) is QueuePolicy.BLOCK:
                sender = DirectSender(edge[0], edge[1], capacity, portable)  # written by the producer's thread
            else:
                sender = Sender(edge[0], edge[1], capacity, QueuePolicy(policy), portable)
            self.senders[edge] = sender
            self.workers[edge[0]].outputs.append(sender.edge)
            sender.attach(link)
            if self._flow is not None:
                sender.start()
            return channel, []
        return channel, sorted(sender.attach(link))

    def open_input(self, edge: EdgeKey, channel: Any) -> None:
        """Take edge `edge` from `channel` (made by the producer's actor on this node), or from its
        `deliver` calls (None); a second call switches to the link of a restarted producer."""
        receiver = self.receivers.get(edge)
        if receiver is None:
            inbox_edge = self._remote_inputs.pop(edge, None)
            if inbox_edge is None:
                raise RuntimeError(f"actor {self!r} has no input edge {edge[0]} -> {edge[1]}")
            worker = self.workers[edge[1]]
            adopt = self._tickets.adopt  # type: ignore[union-attr]
            if channel is not None and len(worker.spec.inputs) == 1 and worker.joiner is None \
                    and inbox_edge.policy is QueuePolicy.BLOCK:
                receiver = worker.inbox = DirectInbox(edge[0], edge[1], inbox_edge.capacity, adopt)  # type: ignore[assignment]
            else:
                receiver = Receiver(inbox_edge, adopt)
            self.receivers[edge] = receiver
        receiver.attach(channel)

    def deliver(self, edge: EdgeKey, *parts: Any) -> None:
        """A message of edge `edge` from a producer on another Ray node (its `CallLink`)."""
        self.receivers[edge].deliver(from_call_args(parts))

    # ------------------------------------------------------------------------------------- run

    def start(self) -> None:
        """Start the transport threads and the consumers (operators, sinks); sources wait for
        `start_sources`, so that their first frames find every consumer running."""
        if self._remote_inputs:
            missing = ", ".join(f"{s} -> {t}" for s, t in self._remote_inputs)
            raise RuntimeError(f"actor {self!r} was started before its input edge(s) {missing} were connected")
        self._flow = Dataflow(self.plan, self.workers, clock=MonotonicClock(), stop=self._stop,
                              failures=self.failures, on_fatal=self._on_fatal)
        self._t_start = now_ns()
        for sender in self.senders.values():
            sender.start()
        for receiver in self.receivers.values():
            receiver.start()
        self._start_workers(sources=False)

    def start_sources(self) -> None:
        self._start_workers(sources=True)

    def _start_workers(self, sources: bool) -> None:
        flow = self._flow
        for worker in self.workers.values():
            if (worker.spec.role == "source") != sources:
                continue
            if worker.host is not None:
                worker.metrics.t_start = self._t_start
                continue  # runs in its producer's thread
            target = flow.run_source if sources else flow.run_consumer  # type: ignore[union-attr]
            thread = threading.Thread(target=self._run_worker, args=(target, worker), name=f"costream-{worker.name}",
                                      daemon=True)
            worker.thread = thread
            self._threads.append(thread)
            thread.start()

    def _run_worker(self, target: Any, worker: Worker) -> None:
        try:
            target(worker)
        finally:
            with self._changed:
                self._changed.notify_all()

    def _on_fatal(self) -> None:
        self._fatal = True
        self.request_stop("fatal error")
        with self._changed:
            self._changed.notify_all()

    def request_stop(self, reason: str = "stop requested", drain: bool = True) -> None:
        """Stop this actor's sources; without `drain`, discard what is queued here (counted)."""
        if self._stop_once.acquire(blocking=False):
            self._stop_reason = reason
            self._stop.set()
            for worker in self.workers.values():
                if worker.spec.role == "source":
                    try:
                        worker.node.stop()
                    except Exception as exc:
                        log.error("source %r failed in stop(): %s", worker.name, exc)
        if not drain and not self._hard:
            self._hard = True
            for worker in self.workers.values():
                if worker.inbox is not None:
                    worker.inbox.close()
            for sender in self.senders.values():
                sender.close_queue()

    def input_lost(self, edge: EdgeKey) -> None:
        """The producer of `edge` died and will not come back: the edge ends here."""
        receiver = self.receivers.get(edge)
        if receiver is not None:
            receiver.end()

    def output_lost(self, edge: EdgeKey) -> None:
        """The consumer of `edge` died and will not come back: what goes to it is discarded (counted)."""
        sender = self.senders.get(edge)
        if sender is not None:
            sender.abandon()

    def flush_tickets(self, timeout_s: float = 5.0) -> int:
        """Wait until the ticket outcomes this actor sent have reached their issuers (before teardown)."""
        return self._tickets.flush(timeout_s) if self._tickets is not None else 0

    def resolve_ticket(self, number: int, outcome: Any) -> bool:
        return self._tickets.resolve(number, outcome) if self._tickets is not None else False

    def _ended(self) -> bool:
        return all(not t.is_alive() for t in self._threads) and all(
            s.thread is None or not s.thread.is_alive() for s in self.senders.values())

    def watch(self, timeout_s: float = 1.0) -> dict[str, Any]:
        """Wait until this group has ended, hit a fatal error, or `timeout_s` passed."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not self._ended() and not self._fatal:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(min(left, 0.05))  # sender threads end without notifying
        return {"ended": self._ended(), "fatal": self._fatal}

    # ---------------------------------------------------------------------------------- report

    def snapshot(self) -> dict[str, Any]:
        """Live counters of this group's nodes and edges (no latency samples)."""
        return self._state(final=False)

    def finish(self, grace_s: float = 2.0) -> dict[str, Any]:
        """Wait for the threads to end, tear the nodes down and return everything the report needs."""
        if self._finished is not None:
            return self._finished
        deadline = time.monotonic() + grace_s if self._hard else None
        for thread in list(self._threads) + [s.thread for s in self.senders.values() if s.thread is not None]:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        busy = sorted(t.name for t in self._threads if t.is_alive())
        if busy:
            log.error("%r: %s did not return within %.1f s of the stop; tearing down anyway", self, busy, grace_s)
        for receiver in self.receivers.values():
            receiver.end()
        t_end = now_ns()
        self._teardown(list(self.workers.values()))
        if self._tickets is not None:
            self._tickets.drop_open(self.group)
        self._finished = self._state(final=True, t_end=t_end)
        return self._finished

    def _teardown(self, workers: list[Worker]) -> None:
        for worker in workers:
            try:
                worker.node.teardown()
            except Exception as exc:
                log.error("node %r failed in teardown(): %s", worker.name, exc, exc_info=True)
                self.failures.record(worker.name, None, exc)

    def _state(self, final: bool, t_end: int | None = None) -> dict[str, Any]:
        nodes = {}
        for name, w in self.workers.items():
            edges = [(e.source, e.target, e.policy.value, e.capacity, e.counters.as_dict())
                     for e in (w.inbox.edges if w.inbox is not None else [])]
            m = w.metrics
            if final:
                m.flush()
            nodes[name] = {
                "kind": w.spec.kind, "role": w.spec.role, "device": str(w.plan.device),
                "metrics": m if final else None,
                "frames_in": m.frames_in, "frames_out": m.frames_out, "failed": m.failed,
                "t_first": m.t_first, "t_last": m.t_last,
                "edges": edges, "join": w.joiner.counters.as_dict() if w.joiner is not None else None,
                "length": w.length, "counters": node_counters(name, w.node) if final else None,
                "queue_depth": w.inbox.depth if w.inbox is not None else 0, "alive": w.alive,
            }
        senders = {key: {"counters": s.edge.counters.as_dict(), "written": s.written, "lost": s.lost,
                         "depth": s.depth, "streams": len(s.streams)} for key, s in self.senders.items()}
        return {
            "group": self.group, "nodes": nodes, "senders": senders,
            "received": {key: r.received for key, r in self.receivers.items()},
            "errors": list(self.failures.records), "error_count": self.failures.count,
            "fatal": self.failures.fatal, "limit_hit": bool(self._flow is not None and self._flow.limit_hit),
            "t_start": self._t_start, "t_end": t_end, "wall_offset": time.time_ns() - time.monotonic_ns(),
            "tickets_resolved_remotely": self._tickets.resolved_remotely if self._tickets is not None else 0,
        }


__all__ = ["NodeGroupActor"]
