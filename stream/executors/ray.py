"""The Ray executor: the same pipeline, its nodes as Ray actors on a cluster (or on this machine).

    executor = RayExecutor(spec, address=None)        # None: this process's Ray, RAY_ADDRESS, or a new local one
    executor.start(); report = executor.wait()        # the same protocol and RunReport as the local executor
    costream run pipeline.yaml --executor ray [--address auto | host:6379 | ray://host:10001]

Each node runs in its own actor, except that a node fused into its producer (`fuse: true`) shares the
producer's actor (a hop between actors costs ~0.1-0.2 ms, a fused call microseconds). An actor is
placed by what its nodes need (`device: cuda:N` -> a GPU, and the nodes' `ray:` settings: num_cpus,
num_gpus, custom resources, node labels; `stream.executors.ray_cluster`). Inside an actor the node runs
the local executor's own loop; edges between actors keep their policy, capacity and counters on both
sides of a Ray shared-memory channel (`stream.executors.ray_transport`), and completion tickets send
their outcome back to the issuing actor (`stream.executors.ray_tickets`).

This process (the driver) only sets up, watches and reports: it long-polls every actor, relays a
stop to all of them, and handles an actor that dies by the node's `ray.on_actor_death` policy:
`stop` (default) reports the death as the run's fatal error and drains the rest (the run fails);
`restart` starts a new actor for the node (fresh state: its streams start over, counted as
`streams_reset`) and reconnects its edges, at most `ray.max_restarts` times.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Collection, Mapping

from stream.executors.base import PipelineStartError
from stream.executors.ray_actor import NodeGroupActor
from stream.executors.ray_cluster import ActorGroup, check_feasible, connect, gpus_in_cluster, plan_groups, ray_devices
from stream.executors.ray_options import ActorDeathPolicy
from stream.executors.ray_report import GroupRecord, Incarnation, MergedFailures, assemble_report, merge_failures
from stream.executors.reporting import NodeRun, build_snapshot, stop_reason
from stream.frame import now_ns
from stream.metrics import NodeMetrics
from stream.plan import GraphPlan
from stream.report import ErrorRecord, RunReport
from stream.spec import PipelineSpec

log = logging.getLogger("costream.ray")

_POLL_S = 0.1  # how often wait() looks at the actors and lets signal handlers run
_SNAPSHOT_EVERY_S = 0.5  # how often the driver keeps each actor's counters (what is known if it dies)
PLACEMENT_TIMEOUT_S = 120.0  # how long actors may wait for free resources before the start fails
HARD_STOP_GRACE_S = 2.0


class ActorDied(RuntimeError):
    """A node's actor died (its process crashed, was killed, or its Ray node went away)."""


class NodeOnActor:
    """What `RayExecutor.nodes` holds: the node instance lives in its actor, this says where."""

    def __init__(self, name: str, group: str, placement: Mapping[str, Any]) -> None:
        self.name = name
        self.group = group
        self.placement = dict(placement)

    def __repr__(self) -> str:
        return f"NodeOnActor({self.name!r}, host={self.placement.get('host')!r}, actor={self.placement.get('actor_id')!r})"


class RayExecutor:
    """Runs a `PipelineSpec` on Ray, one actor per node (fused nodes share their producer's actor)."""

    def __init__(self, spec: PipelineSpec, free_running: bool = False, max_frames: int | None = None, *,
                 fuse: Collection[str] = (), address: str | None = None, num_cpus: int | None = None,
                 object_store_memory: int | None = None, placement_timeout_s: float = PLACEMENT_TIMEOUT_S,
                 max_error_records: int = 20, max_latency_samples: int = 1_000_000,
                 hard_stop_grace_s: float = HARD_STOP_GRACE_S) -> None:
        if max_frames is not None and max_frames < 0:
            raise ValueError(f"max_frames must be None or >= 0, got {max_frames}")
        if isinstance(fuse, str):
            raise TypeError(f"fuse must be a collection of node names, got the string {fuse!r}; write [{fuse!r}]")
        self.spec = spec
        self.fuse = frozenset(fuse)
        self.free_running = free_running
        self.max_frames = max_frames
        self.address = address
        self.num_cpus = num_cpus
        self.object_store_memory = object_store_memory
        self.placement_timeout_s = placement_timeout_s
        self.max_error_records = max_error_records
        self.max_latency_samples = max_latency_samples
        self.hard_stop_grace_s = hard_stop_grace_s
        self.plan: GraphPlan | None = None
        self.groups: dict[str, GroupRecord] = {}
        self._specs: dict[str, ActorGroup] = {}
        self._group_of: dict[str, str] = {}
        self._started_ray = False
        self._state = "new"
        self._stop_reason: str | None = None
        self._stop_lock = threading.Lock()
        self._pending_stop: tuple[str, bool] | None = None  # relayed to the actors by wait()'s loop
        self._hard = False
        self._driver_errors: list[ErrorRecord] = []
        self._driver_fatal: ErrorRecord | None = None
        self._first_fatal: ErrorRecord | None = None
        self._t_start = 0
        self._t_end = 0
        self._report: RunReport | None = None

    # ----------------------------------------------------------------------------------- public API

    @property
    def nodes(self) -> dict[str, NodeOnActor]:
        """Where each node runs (the instances themselves live in their actors)."""
        return {name: NodeOnActor(name, g.name, g.current.info) for g in self.groups.values() for name in g.nodes
                if g.incarnations}

    @property
    def running(self) -> bool:
        return self._state == "running"

    def start(self) -> "RayExecutor":
        if self._state != "new":
            raise RuntimeError("this RayExecutor was already started; build a new one for another run")
        self._state = "starting"
        try:
            import ray  # noqa: F401  (a clear error through the executor registry when Ray is missing)
        except ImportError as exc:
            raise PipelineStartError(f"the Ray executor needs Ray: pip install costream[ray] ({exc})") from exc
        self._started_ray = connect(self.address, self.num_cpus, self.object_store_memory)
        try:
            self._start()
        except BaseException:
            self._abort_start()
            raise
        self._state = "running"
        return self

    def request_stop(self, reason: str = "stop requested", *, drain: bool = True) -> None:
        """Stop the sources (every actor's); without `drain`, queued frames are discarded (counted).
        Safe from a signal handler: the actors are told by `wait()`'s loop, or here when nobody waits."""
        with self._stop_lock:
            if self._stop_reason is None:
                self._stop_reason = reason
            if not drain:
                self._hard = True
            self._pending_stop = (self._stop_reason, not self._hard)
        if not self._waiting and self._state == "running":
            self._relay_stop()

    _waiting = False

    def wait(self, timeout: float | None = None) -> RunReport:
        """Wait for every actor to end, tear the nodes down, return the report. TimeoutError after
        `timeout` seconds if the run goes on; a Ctrl-C here follows the shared stop policy."""
        if self._report is not None:
            return self._report
        if self._state == "new":
            raise RuntimeError("call start() before wait()")
        from stream.stopping import escalate

        deadline = None if timeout is None else time.monotonic() + timeout
        interrupts = 0
        self._waiting = True
        try:
            while not all(g.ended for g in self.groups.values()):
                try:
                    if deadline is not None and time.monotonic() >= deadline:
                        raise TimeoutError(f"pipeline {self.spec.name!r} still running after {timeout} s")
                    self._poll()
                except KeyboardInterrupt:
                    interrupts += 1
                    escalate(self, "SIGINT", interrupts)
        finally:
            self._waiting = False
        self._finish()
        return self._report  # type: ignore[return-value]

    def run(self) -> RunReport:
        """start() and wait() under the shared stop policy (`stream.stopping`)."""
        from stream.stopping import StopOnSignals

        with StopOnSignals(self):
            self.start()
            return self.wait()

    def snapshot(self) -> dict[str, Any]:
        """A live view for dashboards: the actors' counters (fresh, or at most one poll old while another
        thread waits) plus each node's host and actor."""
        if self._state == "running" and not self._waiting:
            self._take_snapshots()
        runs = []
        for group in list(self.groups.values()):
            inc = group.current
            state = inc.state or {}
            for name in group.nodes:
                node = (state.get("nodes") or {}).get(name)
                spec = self.spec.node(name)
                metrics = NodeMetrics(name, spec.role)
                if node is not None:
                    metrics.frames_in, metrics.frames_out, metrics.failed = node["frames_in"], node["frames_out"], node["failed"]
                    metrics.t_first, metrics.t_last = node["t_first"], node["t_last"]
                runs.append(NodeRun(name=name, kind=spec.kind, role=spec.role, device=(node or {}).get("device", str(spec.device)),
                                    metrics=metrics, join=(node or {}).get("join"), length=(node or {}).get("length"),
                                    queue_depth=(node or {}).get("queue_depth", 0),
                                    alive=not group.ended and not inc.dead))
        failures = self._failures()
        now = now_ns()
        snap = build_snapshot(self.spec.name, runs, failures, running=self.running,  # type: ignore[arg-type]
                              elapsed_s=((self._t_end or now) - self._t_start) / 1e9 if self._t_start else 0.0,
                              reason=self._stop_reason, now_ns=now)
        for group in self.groups.values():
            for name in group.nodes:
                snap["nodes"][name].update(host=group.current.info.get("host"), actor=group.current.info.get("actor_id"))
        return snap

    # ------------------------------------------------------------------------------------ start-up

    def _start(self) -> None:
        import ray

        self.plan = GraphPlan.build(self.spec, fuse=self.fuse, free_running=self.free_running,
                                    max_frames=self.max_frames, devices=ray_devices(gpus_in_cluster()))
        self.spec = self.plan.spec  # every input's policy set (the defaults by source filled in)
        groups = plan_groups(self.plan)
        check_feasible(self.spec.name, groups, ray.nodes())
        for group in groups:
            self._specs[group.name] = group
            self.groups[group.name] = GroupRecord(group.name, group.nodes)
            for name in group.nodes:
                self._group_of[name] = group.name
        for group in groups:
            self._create(group.name)
        self._setup([g.name for g in groups])
        for name in self.groups:
            self._connect_inputs(name)
        self._t_start = now_ns()
        ray.get([g.current.handle.start.remote() for g in self.groups.values()])
        ray.get([g.current.handle.start_sources.remote() for g in self.groups.values()])
        self._next_snapshot = time.monotonic() + _SNAPSHOT_EVERY_S
        self._watches = {name: g.current.handle.watch.remote(_POLL_S * 5) for name, g in self.groups.items()}

    def _create(self, name: str) -> None:
        import ray

        group, record = self._specs[name], self.groups[name]
        number = len(record.incarnations)
        actor_class = ray.remote(NodeGroupActor).options(**group.actor_options())
        handle = actor_class.remote(self.spec.name, name, number, self.max_error_records, self.max_latency_samples)
        record.incarnations.append(Incarnation(number, handle))

    def _setup(self, names: list[str]) -> None:
        """Set up the nodes of the groups `names` (their current actors); PipelineStartError on failure."""
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

        refs = {name: self.groups[name].current.handle.setup.remote(self.plan, list(self.groups[name].nodes))
                for name in names}
        try:
            ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=self.placement_timeout_s)
        except KeyboardInterrupt:
            raise
        for name, ref in refs.items():
            if ref not in ready:
                group = self._specs[name]
                raise PipelineStartError(
                    f"pipeline {self.spec.name!r} cannot start: the actor of node {name!r} (needs {group.needs()}) was "
                    f"not placed within {self.placement_timeout_s:g} s; the Ray nodes that could host it are busy. "
                    "Free resources, add nodes, or lower the node's ray.num_cpus / ray.num_gpus")
            try:
                self.groups[name].current.info = ray.get(ref)
            except RayTaskError as exc:
                cause = exc.cause if getattr(exc, "cause", None) is not None else exc
                raise PipelineStartError(f"pipeline {self.spec.name!r} cannot start: {cause}") from None
            except (RayActorError, GetTimeoutError) as exc:
                raise PipelineStartError(f"pipeline {self.spec.name!r} cannot start: the actor of node {name!r} "
                                         f"died while setting up: {exc}") from None

    def _connect_inputs(self, name: str) -> dict[tuple[str, str], list[str]]:
        """Open a channel for every edge from another actor into group `name` (its current actor);
        returns, per edge, the streams a previous actor of the group had been sent."""
        import ray

        target = self.groups[name].current
        refs = {}
        for node in self.groups[name].nodes:
            for inp in self.spec.node(node).inputs:
                producer = self._group_of[inp.source]
                if producer == name:
                    continue
                key = (inp.source, node)
                refs[key] = self.groups[producer].current.handle.open_output.remote(
                    key, target.handle, target.info["node_id"], inp.queue_size, str(getattr(inp.policy, "value", inp.policy)))
        channels = dict(zip(refs, ray.get(list(refs.values()))))
        ray.get([target.handle.open_input.remote(key, channel) for key, (channel, _) in channels.items()])
        return {key: streams for key, (_, streams) in channels.items()}

    def _connect_outputs(self, name: str) -> None:
        """Open channels from group `name` (a restarted actor) to the consumers of its nodes."""
        import ray

        source = self.groups[name].current
        opened = []
        for node in self.groups[name].nodes:
            for consumer in self.spec.consumers(node):
                group = self._group_of[consumer.name]
                if group == name:
                    continue
                inp = next(i for i in consumer.inputs if i.source == node)
                target = self.groups[group].current
                key = (node, consumer.name)
                channel, _ = ray.get(source.handle.open_output.remote(
                    key, target.handle, target.info["node_id"], inp.queue_size, str(getattr(inp.policy, "value", inp.policy))))
                opened.append(target.handle.open_input.remote(key, channel))
        ray.get(opened)

    def _abort_start(self) -> None:
        import ray

        for group in self.groups.values():
            for inc in group.incarnations:
                try:
                    ray.get(inc.handle.finish.remote(0.0), timeout=10)
                except Exception:
                    pass
                ray.kill(inc.handle, no_restart=True)
        self._state = "finished"
        if self._started_ray:
            ray.shutdown()

    # --------------------------------------------------------------------------------- the watch

    def _relay_stop(self) -> None:
        with self._stop_lock:
            pending, self._pending_stop = self._pending_stop, None
        if pending is None:
            return
        reason, drain = pending
        for group in self.groups.values():
            inc = group.current
            if not inc.dead and not group.ended:
                inc.handle.request_stop.remote(reason, drain)

    def _poll(self) -> None:
        import ray
        from ray.exceptions import RayActorError

        self._relay_stop()
        watching = {ref: name for name, ref in self._watches.items()}
        ready, _ = ray.wait(list(watching), num_returns=1, timeout=_POLL_S)
        for ref in ready:
            name = watching[ref]
            group = self.groups[name]
            try:
                status = ray.get(ref)
            except RayActorError as exc:
                del self._watches[name]
                self._on_death(name, exc)
                continue
            if status["fatal"] and self._stop_reason is None:
                self.request_stop("fatal error")
            if status["ended"]:
                group.ended = True
                del self._watches[name]
            else:
                self._watches[name] = group.current.handle.watch.remote(_POLL_S * 5)
        if time.monotonic() >= self._next_snapshot:
            self._next_snapshot = time.monotonic() + _SNAPSHOT_EVERY_S
            self._take_snapshots()

    def _take_snapshots(self) -> None:
        import ray

        live = [(g, g.current) for g in self.groups.values() if not g.current.dead and not g.current.final]
        refs = [inc.handle.snapshot.remote() for _, inc in live]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=_POLL_S)
        for (group, inc), ref in zip(live, refs):
            if ref in ready:
                try:
                    inc.state = ray.get(ref)
                except Exception:  # a dead actor: the watch reports it
                    pass
            if inc.state and inc.state.get("fatal") is not None and self._first_fatal is None:
                self._first_fatal = inc.state["fatal"]

    def _on_death(self, name: str, exc: BaseException) -> None:
        group, spec = self.groups[name], self._specs[name]
        inc = group.current
        inc.dead = True
        group.deaths += 1
        where = inc.info
        cause = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        nodes = ", ".join(repr(n) for n in group.nodes)
        restart = (spec.on_death is ActorDeathPolicy.RESTART and group.restarts < spec.max_restarts
                   and self._stop_reason is None)
        message = (f"the actor of node {nodes} died (actor {where.get('actor_id')}, host {where.get('host')}, pid "
                   f"{where.get('pid')}): {cause}; "
                   + ("restarting it with fresh state" if restart else
                      "stopping the pipeline" + (f" (ray.max_restarts {spec.max_restarts} reached)"
                                                 if spec.on_death is ActorDeathPolicy.RESTART else "")))
        record = ErrorRecord(group.nodes[0], None, None, ActorDied.__name__, message)
        self._driver_errors.append(record)
        log.error("pipeline %r: %s", self.spec.name, message)
        if restart:
            try:
                self._restart(name)
                return
            except Exception as restart_exc:
                log.error("pipeline %r: restarting node %s failed: %s", self.spec.name, nodes, restart_exc)
                self._driver_errors.append(ErrorRecord(group.nodes[0], None, None, type(restart_exc).__name__,
                                                       f"restart failed: {restart_exc}"))
        if self._driver_fatal is None:
            self._driver_fatal = record
        self._cut_off(name)
        self.request_stop("fatal error")
        self._relay_stop()

    def _cut_off(self, name: str) -> None:
        """Group `name` is gone for good: its producers discard what they would send it, its consumers'
        edges from it end."""
        group = self.groups[name]
        group.ended = True
        for node in group.nodes:
            for inp in self.spec.node(node).inputs:
                producer = self.groups[self._group_of[inp.source]]
                if producer.name != name and not producer.current.dead:
                    producer.current.handle.output_lost.remote((inp.source, node))
            for consumer in self.spec.consumers(node):
                target = self.groups[self._group_of[consumer.name]]
                if target.name != name and not target.current.dead:
                    target.current.handle.input_lost.remote((node, consumer.name))

    def _restart(self, name: str) -> None:
        import ray

        group = self.groups[name]
        group.restarts += 1
        self._create(name)
        self._setup([name])
        seen = self._connect_inputs(name)
        group.streams_reset += len(set().union(*seen.values())) if seen else 0
        self._connect_outputs(name)
        handle = group.current.handle
        ray.get(handle.start.remote())
        ray.get(handle.start_sources.remote())
        if self._pending_stop is None and self._stop_reason is not None:
            handle.request_stop.remote(self._stop_reason, not self._hard)
        self._watches[name] = handle.watch.remote(_POLL_S * 5)

    # ------------------------------------------------------------------------------------ the end

    def _finish(self) -> None:
        import ray
        from ray.exceptions import RayActorError

        live = [(g, g.current) for g in self.groups.values() if not g.current.dead]
        # Ticket outcomes still on their way to the issuing actors arrive before anything is torn down.
        flushes = [inc.handle.flush_tickets.remote() for _, inc in live]
        ray.wait(flushes, num_returns=len(flushes), timeout=10)
        refs = [inc.handle.finish.remote(self.hard_stop_grace_s) for _, inc in live]
        for (group, inc), ref in zip(live, refs):
            try:
                inc.state = ray.get(ref)
                inc.final = True
            except RayActorError as exc:  # died while tearing down: what it had is its last snapshot
                inc.dead = True
                group.deaths += 1
                self._driver_errors.append(ErrorRecord(group.nodes[0], None, None, ActorDied.__name__,
                                                       f"the actor of node {group.name!r} died while tearing down: {exc}"))
            if inc.state and inc.state.get("fatal") is not None and self._first_fatal is None:
                self._first_fatal = inc.state["fatal"]
        self._t_end = now_ns()
        limit_hit = any(inc.state and inc.state.get("limit_hit") for g in self.groups.values() for inc in g.incarnations)
        failures = self._failures()
        self._report = assemble_report(self.spec, self.groups, failures, duration_s=(self._t_end - self._t_start) / 1e9,
                                       reason=stop_reason(self._stop_reason, failures, limit_hit),  # type: ignore[arg-type]
                                       t_end_ns=self._t_end, max_latency_samples=self.max_latency_samples)
        for group in self.groups.values():
            for inc in group.incarnations:
                try:
                    ray.kill(inc.handle, no_restart=True)
                except Exception:
                    pass
        self._state = "finished"
        if self._started_ray:
            ray.shutdown()

    def _failures(self) -> MergedFailures:
        return merge_failures(self.groups.values(), list(self._driver_errors), self._driver_fatal, self._first_fatal,
                              self.max_error_records)


__all__ = ["ActorDied", "NodeOnActor", "RayExecutor"]
