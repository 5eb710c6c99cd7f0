"""The `costream` command: run, validate, graph, bench, list, schema and serve pipelines.

Exit codes: 0 ok; 1 the pipeline failed (a node with `on_error: stop` raised, or a setup error);
2 config or usage error (printed without a traceback); 128+N when stopped by signal N (130 for
Ctrl-C, 143 for SIGTERM) after draining and writing the report.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any, Sequence

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
log = logging.getLogger("costream")


class UsageError(Exception):
    """A command-line problem reported as exit code 2 without a traceback."""


def _add_pipeline_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("pipeline", help="pipeline YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="NODE.PARAM=VALUE",
                   help="override a node parameter or field (value parsed as YAML); repeatable")


def _add_executor_arg(p: argparse.ArgumentParser) -> None:
    from stream.executors import executor_names

    p.add_argument("--executor", default=None, metavar="NAME",
                   help=f"where the nodes run: {', '.join(executor_names())} (default: the YAML's `executor:`, "
                   "else local)")


def _add_address_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=None, metavar="ADDR",
                   help="with --executor ray: the Ray cluster (auto, HOST:6379 or ray://HOST:10001; default: "
                   "RAY_ADDRESS, else a Ray started on this machine for the run)")


def _executor_options(args: argparse.Namespace, pipeline: Any) -> dict[str, Any]:
    address = getattr(args, "address", None)
    if address is None:
        return {}
    executor = args.executor or pipeline.spec.executor
    if executor != "ray":
        raise UsageError(f"--address names a Ray cluster, but this run uses the {executor!r} executor; add "
                         "--executor ray (or `executor: ray` in the YAML)")
    return {"address": address}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="costream", description="Streaming online-inference engine.")
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="logging level (default WARNING)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run a pipeline until its sources end or Ctrl-C")
    _add_pipeline_args(p)
    p.add_argument("--frames", type=int, default=None, help="stop each source after N frames")
    p.add_argument("--report", type=Path, default=None, help="write the JSON run report here (also on Ctrl-C)")
    p.add_argument("--free-running", action="store_true", help="ignore rate_hz pacing (benchmark mode)")
    p.add_argument("--dashboard", action="store_true", help="live per-node table in the terminal")
    p.add_argument("--progress", action="store_true", default=None,
                   help="progress bar for finite sources (default: when stderr is a terminal)")
    p.add_argument("--quiet", action="store_true", help="do not print the latency table at the end")
    _add_executor_arg(p)
    _add_address_arg(p)

    p = sub.add_parser("validate", help="check a pipeline config without running it")
    _add_pipeline_args(p)

    p = sub.add_parser("graph", help="draw a pipeline (DOT, SVG, PNG)")
    _add_pipeline_args(p)
    p.add_argument("-o", "--output", type=Path, required=True, help="output file: .dot/.gv, .svg, .png or .pdf")

    p = sub.add_parser("bench", help="run free-running and report per-frame latency")
    _add_pipeline_args(p)
    p.add_argument("--frames", type=int, default=300, help="measured frames per source (default 300)")
    p.add_argument("--warmup", type=int, default=None,
                   help="frames skipped in the percentiles (default: options.warmup_frames)")
    p.add_argument("--out", type=Path, default=Path("bench-out"), help="directory for report.json and latency.png")
    _add_executor_arg(p)
    _add_address_arg(p)

    p = sub.add_parser("list", help="list node kinds and their parameters")
    p.add_argument("kind", nargs="?", help="show only this kind")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("schema", help="write the JSON Schema of pipeline YAML files (for editors)")
    p.add_argument("-o", "--output", type=Path, default=None, help="file to write (default: stdout)")

    p = sub.add_parser("serve", help="serve a pipeline over ZeroMQ")
    try:  # owned by the ZeroMQ bridge; a problem there must not break the other commands
        from stream.zmq import serve as zmq_serve

        zmq_serve.add_arguments(p)
    except Exception as exc:
        p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        p.set_defaults(serve_missing=f"{type(exc).__name__}: {exc}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `costream` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level), format="%(levelname)s %(name)s: %(message)s")
    from stream.config import ConfigError

    handler = COMMANDS[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:  # a Ctrl-C outside the pipeline's own handling (start-up, or after the drain)
        print(f"costream {args.command}: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    except ConfigError as exc:
        print(f"costream {args.command}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except UsageError as exc:
        print(f"costream {args.command}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except ValueError as exc:
        from stream.executors import UnknownExecutorError

        if not isinstance(exc, UnknownExecutorError):
            raise
        print(f"costream {args.command}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except RuntimeError as exc:
        from stream.devices import DeviceUnavailableError
        from stream.executors import ExecutorUnavailableError, PipelineStartError

        if isinstance(exc, ExecutorUnavailableError):
            print(f"costream {args.command}: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        if not isinstance(exc, (PipelineStartError, DeviceUnavailableError)):
            raise
        print(f"costream {args.command}: the pipeline could not start: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _load(args: argparse.Namespace):
    from stream.pipeline import Pipeline

    if not Path(args.pipeline).exists():
        raise UsageError(f"pipeline file {args.pipeline!r} does not exist")
    return Pipeline.from_yaml(args.pipeline, overrides=args.overrides, executor=getattr(args, "executor", None))


def _positive(value: int | None, flag: str) -> None:
    if value is not None and value < 1:
        raise UsageError(f"{flag} must be >= 1, got {value}")


def cmd_run(args: argparse.Namespace) -> int:
    _positive(args.frames, "--frames")
    pipeline = _load(args)
    progress = args.progress if args.progress is not None else sys.stderr.isatty()
    report = pipeline.run(frames=args.frames, free_running=args.free_running, report=args.report,
                          dashboard=args.dashboard, progress=progress and not args.dashboard, executor=args.executor,
                          executor_options=_executor_options(args, pipeline))
    if not args.quiet:
        print(report.format_table())
    if args.report is not None:
        print(f"report written to {args.report}", file=sys.stderr)
    return _exit_code(pipeline, report)


def _exit_code(pipeline: Any, report: Any) -> int:
    if not report.ok:
        return EXIT_FAILED
    if pipeline.stopped_by_signal is not None:
        return 128 + pipeline.stopped_by_signal
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    pipeline = _load(args)
    spec = pipeline.spec
    edges = sum(len(n.inputs) for n in spec.nodes)
    print(f"{args.pipeline}: ok ({len(spec.nodes)} nodes, {edges} edges), executor {spec.executor}")
    for node in spec.nodes:
        ins = ", ".join(f"{e.source}({e.policy.value},{e.queue_size})" for e in node.inputs)
        print(f"  {node.name:<20} {node.role:<8} {node.kind:<24} {node.device:<8} {('<- ' + ins) if ins else ''}")
    return EXIT_OK


def cmd_graph(args: argparse.Namespace) -> int:
    from stream.graph_draw import write_graph

    pipeline = _load(args)
    try:
        path = write_graph(pipeline.spec, args.output)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    print(f"wrote {path}")
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    _positive(args.frames, "--frames")
    if args.warmup is not None and args.warmup < 0:
        raise UsageError(f"--warmup must be >= 0, got {args.warmup}")
    pipeline = _load(args)
    warmup = pipeline.spec.warmup_frames if args.warmup is None else args.warmup
    pipeline.spec = dataclasses.replace(pipeline.spec, warmup_frames=warmup)
    report = pipeline.run(frames=args.frames + warmup, free_running=True, report=args.out / "report.json",
                          progress=sys.stderr.isatty(), executor=args.executor,
                          executor_options=_executor_options(args, pipeline))
    print(report.format_table())
    plot = report.write_plot(args.out / "latency.png")
    print(f"wrote {args.out / 'report.json'} and {plot}", file=sys.stderr)
    return _exit_code(pipeline, report)


def cmd_list(args: argparse.Namespace) -> int:
    from stream.params import describe_params
    from stream.registry import kinds

    known = kinds()
    if args.kind is not None:
        if args.kind not in known:
            from stream.suggest import suggest

            raise UsageError(f"kind {args.kind!r} is unknown{suggest(args.kind, known)}")
        known = {args.kind: known[args.kind]}
    if args.json:
        out = {name: {"role": cls.role, "class": f"{cls.__module__}:{cls.__qualname__}",
                      "params": [dataclasses.asdict(p) for p in describe_params(cls.Params)]}
               for name, cls in known.items()}
        print(json.dumps(out, indent=2, default=str))
        return EXIT_OK
    from stream.dashboard import print_kinds

    print_kinds(known)
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    from stream.schema import pipeline_schema, write_schema

    if args.output is None:
        print(json.dumps(pipeline_schema(), indent=2))
    else:
        print(f"wrote {write_schema(args.output)}", file=sys.stderr)
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    missing = getattr(args, "serve_missing", None)
    if missing is not None:
        raise UsageError(f"the ZeroMQ server (stream.zmq.serve) is not available: {missing}")
    from stream.zmq import serve as zmq_serve

    return int(zmq_serve.run_from_args(args) or 0)


COMMANDS = {"run": cmd_run, "validate": cmd_validate, "graph": cmd_graph, "bench": cmd_bench,
            "list": cmd_list, "schema": cmd_schema, "serve": cmd_serve}

if __name__ == "__main__":
    sys.exit(main())
