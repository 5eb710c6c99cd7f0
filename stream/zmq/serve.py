"""`costream serve PIPELINE --endpoint ENDPOINT`: a pipeline as a request/reply service.

Two ways to write the pipeline:

* explicit: it has a `zmq_source` with `socket: router` and a `zmq_sink` with `mode: reply`
  (pipelines/serve_passthrough.yaml); `--endpoint` and the CurveZMQ/limit flags override theirs;
* wrapped: it has no ZeroMQ nodes; every source is replaced by ONE router source named `requests`
  (the consumers of the old sources read from it, through the source's own preprocessing when it
  has some, `Source.preprocess_step`: `<source>_preprocess`, e.g. a video source's resize and
  normalisation) and every sink is
  replaced by a reply sink fed by that sink's inputs, so each request is answered with what would
  have reached the sink.

The served spec is validated like any other (`PipelineSpec.validate`, through the executor's plan),
runs on the executor the YAML or `--executor` names, and stops under the one stop policy of
`costream run` (`stream.stopping`): the first Ctrl-C drains, a second stops without draining, and
the report is written either way. `python -m stream.zmq.serve` runs the same command standalone.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import logging
import signal
import sys
from typing import Any, Sequence

from stream.registry import resolve
from stream.spec import InputSpec, NodeSpec, PipelineSpec, QueuePolicy
from stream.zmq.sink import ZmqSink, ZmqSinkParams
from stream.zmq.source import ZmqSource, ZmqSourceParams

log = logging.getLogger("costream.zmq.serve")
DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
_REPLY_QUEUE = 64  # the least queue in front of a reply sink of a wrapped pipeline


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pipeline", help="pipeline YAML (router zmq_source + reply zmq_sink, or any pipeline to wrap)")
    parser.add_argument("--endpoint", default=None, help=f"ROUTER endpoint to bind (default {DEFAULT_ENDPOINT}, "
                        "or the one in the YAML)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="NODE.PARAM=VALUE",
                        help="override a node parameter (repeatable)")
    parser.add_argument("--allow-remote", action="store_true", help="allow binding beyond 127.0.0.1")
    parser.add_argument("--curve-secret-key", default=None, help="server secret key file (NAME.key_secret)")
    parser.add_argument("--curve-clients-dir", default=None, help="directory of accepted client public keys")
    parser.add_argument("--max-message-bytes", type=int, default=None, help="largest accepted message")
    parser.add_argument("--max-tensor-bytes", type=int, default=None, help="largest accepted tensor")
    parser.add_argument("--reply-timeout", type=float, default=None, help="seconds before a `timeout` error reply")
    parser.add_argument("--queue", choices=("bounded", "latest"), default=None,
                        help="latest: keep only the newest waiting request per client and stream")
    parser.add_argument("--stream-scope", choices=("client", "shared"), default=None,
                        help="client (default): each client's streams have their own state (the pipeline sees "
                        "CLIENT/STREAM); shared: a stream id means one stream across all clients")
    parser.add_argument("--report", default=None, help="write the run report JSON here when the server stops")
    parser.add_argument("--fuse", action="append", default=[], metavar="NODE[,NODE]",
                        help="run these nodes in their producer's thread (operator chaining, like `fuse: true`): "
                        "fewer thread hand-offs, lower latency, no pipelining between them (repeatable)")
    parser.add_argument("--no-fuse", action="store_true",
                        help="run every node in its own thread, ignoring `fuse: true` in the pipeline")
    parser.add_argument("--executor", default=None, metavar="NAME",
                        help="executor to run the pipeline on (default: the YAML's `executor:`, else local)")


def _source_overrides(args: argparse.Namespace) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    for arg, field in (("endpoint", "endpoint"), ("curve_secret_key", "curve_secret_key"),
                       ("curve_clients_dir", "curve_clients_dir"), ("max_message_bytes", "max_message_bytes"),
                       ("max_tensor_bytes", "max_tensor_bytes"), ("reply_timeout", "reply_timeout_s"),
                       ("queue", "queue"), ("stream_scope", "stream_scope")):
        value = getattr(args, arg, None)
        if value is not None:
            changes[field] = value
    if getattr(args, "allow_remote", False):
        changes["allow_remote"] = True
    return changes


def serving_spec(spec: PipelineSpec, source_changes: dict[str, Any]) -> PipelineSpec:
    """The spec to serve: the explicit router/reply nodes updated, or the pipeline wrapped."""
    routers = [n for n in spec.nodes if n.node_class is ZmqSource and n.params.socket == "router"]
    replies = [n for n in spec.nodes if n.node_class is ZmqSink and n.params.mode == "reply"]
    if routers or replies:
        if len(routers) != 1 or not replies:
            raise ValueError(f"pipeline {spec.name!r}: serving needs exactly one zmq_source with socket: router and "
                             f"at least one zmq_sink with mode: reply; found {len(routers)} and {len(replies)}")
        params = dataclasses.replace(routers[0].params, **source_changes)
        for node in replies:
            lossy = [i.source for i in node.inputs if QueuePolicy(i.policy) is not QueuePolicy.BLOCK]
            if lossy:
                log.warning("pipeline %r: reply sink %r reads %s with a lossy queue policy; a result dropped there "
                            "is answered `overloaded` instead of with the result. Use `policy: block` on that input",
                            spec.name, node.name, ", ".join(repr(s) for s in lossy))
        nodes = []
        for node in spec.nodes:
            if node is routers[0]:
                node = dataclasses.replace(node, params=params)
            elif node in replies:
                node = dataclasses.replace(node, params=dataclasses.replace(node.params, endpoint=params.endpoint))
            nodes.append(node)
        return dataclasses.replace(spec, nodes=tuple(nodes))
    return wrap(spec, ZmqSourceParams(**{"endpoint": DEFAULT_ENDPOINT, **source_changes}))


def wrap(spec: PipelineSpec, params: ZmqSourceParams, source_name: str = "requests") -> PipelineSpec:
    """Replace the sources by one router source and the sinks by reply sinks on their inputs.

    A source that preprocesses what it reads (a video source's resize, crop and normalisation;
    `Source.preprocess_step`) is replaced by that preprocessing as an operator behind the router,
    so requests carry what the sensor delivers (camera images), not model inputs."""
    sources = {n.name for n in spec.nodes if n.role == "source"}
    taken = {n.name for n in spec.nodes}
    if source_name in taken:
        raise ValueError(f"pipeline {spec.name!r} already has a node named {source_name!r}; rename it to serve it")
    nodes: list[NodeSpec] = [NodeSpec(name=source_name, kind="zmq_source", node_class=ZmqSource, params=params)]
    feeds = {name: source_name for name in sources}  # old source -> the node its consumers now read from
    for node in spec.nodes:
        step = node.node_class.preprocess_step(node.params) if node.role == "source" else None
        if step is None:
            continue
        kind, step_params = step
        name = f"{node.name}_preprocess"
        if name in taken:
            raise ValueError(f"pipeline {spec.name!r} already has a node named {name!r}; rename it to serve it")
        nodes.append(NodeSpec(name=name, kind=kind, node_class=resolve(kind), params=step_params,
                              inputs=(InputSpec(source_name, 64, QueuePolicy.BLOCK),), device=node.device))
        feeds[node.name] = name
    for node in spec.nodes:
        if node.role == "source":
            continue
        inputs = tuple(dataclasses.replace(i, source=feeds[i.source]) if i.source in sources else i for i in node.inputs)
        if inputs and len({i.source for i in inputs}) < len(inputs):  # two old sources fed one join
            raise ValueError(f"pipeline {spec.name!r}: node {node.name!r} joins several sources; a served pipeline "
                             "gets one request stream, so write it with explicit zmq nodes instead")
        if node.role == "sink":
            # Every request waits for its result: the reply sink's inputs must not drop (a `latest` edge
            # of 4 would turn results into `overloaded` errors whenever a batched model answers more
            # than four streams at once).
            inputs = tuple(dataclasses.replace(i, policy=QueuePolicy.BLOCK, queue_size=max(i.queue_size, _REPLY_QUEUE))
                           for i in inputs)
            node = dataclasses.replace(node, kind="zmq_sink", node_class=ZmqSink, inputs=inputs, join=None,
                                       params=ZmqSinkParams(mode="reply", endpoint=params.endpoint))
        else:
            node = dataclasses.replace(node, inputs=inputs)
        nodes.append(node)
    if not any(n.node_class is ZmqSink for n in nodes):
        raise ValueError(f"pipeline {spec.name!r} has no sink whose inputs could be replied to")
    return dataclasses.replace(spec, nodes=tuple(nodes))


def run_from_args(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C/SIGTERM; 0 on a clean stop, 1 on a fatal pipeline error, 2 on a config error."""
    from stream.config import ConfigError, load_pipeline
    from stream.executors import ExecutorUnavailableError, PipelineStartError, UnknownExecutorError, create_executor
    from stream.stopping import StopOnSignals

    try:
        spec = serving_spec(load_pipeline(args.pipeline, overrides=args.overrides), _source_overrides(args))
    except (ConfigError, ValueError, TypeError) as exc:
        print(f"costream serve: {exc}", file=sys.stderr)
        return 2
    fuse = [name.strip() for arg in getattr(args, "fuse", None) or [] for name in arg.split(",") if name.strip()]
    if getattr(args, "no_fuse", False):
        if fuse:
            print("costream serve: --fuse and --no-fuse contradict each other; pass one of them", file=sys.stderr)
            return 2
        spec = dataclasses.replace(spec, nodes=tuple(dataclasses.replace(n, fuse=False) for n in spec.nodes))
    try:
        executor = create_executor(spec, getattr(args, "executor", None), free_running=True, fuse=fuse)
    except (UnknownExecutorError, ExecutorUnavailableError) as exc:
        print(f"costream serve: {exc}", file=sys.stderr)
        return 2
    with StopOnSignals(executor):
        try:
            executor.start()
        except PipelineStartError as exc:
            print(f"costream serve: {exc}", file=sys.stderr)
            return 2
        # Everything loaded at start-up (modules, models, weights) lives as long as the server: move it out
        # of the collector's sight, so periodic full collections stay short on the request path.
        gc.freeze()
        router = next(n for n in spec.nodes if n.node_class is ZmqSource)
        readers = [n for n in spec.nodes if any(i.source == router.name for i in n.inputs)]
        log.warning("serving pipeline %r on %s (Ctrl-C to stop); requests go to %s; %s", spec.name,
                    router.params.endpoint, ", ".join(f"{n.name} ({n.kind})" for n in readers) or "no node",
                    "streams are kept per client (the pipeline sees CLIENT/STREAM)"
                    if router.params.stream_scope == "client" else "stream ids are shared by all clients")
        report = executor.wait()
    if args.report:
        report.write_json(args.report)
    if report.fatal_error is not None:
        print(f"costream serve: pipeline stopped on a fatal error: {report.fatal_error}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="costream serve", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return run_from_args(args)
    except KeyboardInterrupt:  # a second Ctrl-C after the drain, while the handlers are being restored
        print("costream serve: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT


if __name__ == "__main__":
    sys.exit(main())
