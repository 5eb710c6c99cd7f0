"""The `costream` command: run, validate, graph, bench, list, schema and serve pipelines.

Exit codes, the same for run, bench and serve (`stream.outcome`; docs/yaml-reference.md):
0 ok; 1 frames failed beyond `options.max_failed_frames` (default 0), a node failed outside a frame,
a node with `on_error: stop` raised, or a node's setup failed; 2 config or usage error (printed
without a traceback; nothing ran); 3 the run finished but its report could not be written where
asked (it was written to the temporary directory instead, and the message says where); 128+N when
stopped by signal N (130 for Ctrl-C, 143 for SIGTERM) after draining and writing the report;
141 when stdout was closed early (`costream list --json | head`).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from stream.outcome import EXIT_BROKEN_PIPE, EXIT_FAILED, EXIT_OK, EXIT_OUTPUT, EXIT_USAGE, verdict

EXIT_CONFIG = EXIT_USAGE
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
    p.add_argument("--frames", type=int, default=None,
                   help="N frames per stream, as the sources' own `frames` count them: synthetic sources make N, "
                   "others stop each stream after N")
    p.add_argument("--report", type=Path, default=None, help="write the JSON run report here (also on Ctrl-C)")
    p.add_argument("--free-running", action="store_true", help="ignore rate_hz pacing (benchmark mode)")
    p.add_argument("--dashboard", action="store_true", help="live per-node table in the terminal")
    p.add_argument("--progress", action="store_true", default=None,
                   help="progress bar for finite sources (default: when stderr is a terminal)")
    p.add_argument("--quiet", action="store_true", help="do not print the latency table at the end")
    p.add_argument("--trace", type=Path, default=None, metavar="FILE",
                   help="write a Chrome trace / Perfetto JSON timeline: one span per node per frame")
    p.add_argument("--trace-frames", type=int, default=1000, metavar="N",
                   help="--trace: keep the last N frames of each node (default 1000)")
    _add_executor_arg(p)
    _add_address_arg(p)

    p = sub.add_parser("validate", help="check a pipeline config without running it")
    _add_pipeline_args(p)

    p = sub.add_parser("graph", help="draw a pipeline (DOT, SVG, PNG)")
    _add_pipeline_args(p)
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="output file: .dot/.gv, .svg, .png or .pdf (missing folders are created, and it says so)")

    p = sub.add_parser("bench", help="measure per-frame latency under a load scenario (single, rate, max-rate, "
                       "throughput, streams)")
    _add_pipeline_args(p)
    from stream.bench import command as bench_command

    bench_command.add_arguments(p)
    _add_executor_arg(p)
    _add_address_arg(p)

    p = sub.add_parser("list", help="list node kinds and their parameters")
    p.add_argument("kind", nargs="?", help="show only this kind")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("schema", help="write the JSON Schema of pipeline YAML files (for editors)")
    p.add_argument("-o", "--output", type=Path, default=None, help="file to write (default: stdout)")

    p = sub.add_parser("train-netmamba", add_help=False, prefix_chars="\x01",  # every argument goes to the trainer
                       help="train NetMamba on a folder of pcaps, one subfolder per class (--help for its options)")
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

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
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the exact command, for reports
    logging.basicConfig(level=getattr(logging, args.log_level), format="%(levelname)s %(name)s: %(message)s")
    from stream.config import ConfigError
    from stream.outputs import OutputPathError

    handler = COMMANDS[args.command]
    try:
        return handler(args)
    except BrokenPipeError:  # `costream list --json | head`: the reader has gone; stop quietly
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:  # a Ctrl-C outside the pipeline's own handling (start-up, or after the drain)
        print(f"costream {args.command}: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    except (ConfigError, UsageError, OutputPathError) as exc:
        print(f"costream {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as exc:
        from stream.executors import UnknownExecutorError

        if not isinstance(exc, UnknownExecutorError):
            raise
        print(f"costream {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RuntimeError as exc:
        from stream.devices import DeviceUnavailableError
        from stream.executors import ExecutorUnavailableError, PipelineStartError, PlanError

        if isinstance(exc, (ExecutorUnavailableError, PlanError)):  # nothing was set up
            print(f"costream {args.command}: {exc}", file=sys.stderr)
            return EXIT_USAGE
        if not isinstance(exc, (PipelineStartError, DeviceUnavailableError)):
            raise
        print(f"costream {args.command}: the pipeline could not start: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _load(args: argparse.Namespace):
    from stream.pipeline import Pipeline

    if not Path(args.pipeline).exists():
        raise UsageError(f"pipeline file {args.pipeline!r} does not exist")
    return Pipeline.from_yaml(args.pipeline, overrides=args.overrides, executor=getattr(args, "executor", None))


def _positive(value: int | None, flag: str) -> None:
    if value is not None and value < 1:
        raise UsageError(f"{flag} must be >= 1, got {value}")


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    from stream.outputs import check_output_file

    _positive(args.frames, "--frames")
    pipeline = _load(args)
    if args.report is not None:
        check_output_file(args.report, "--report", say=_say)
    progress = args.progress if args.progress is not None else sys.stderr.isatty()
    _positive(args.trace_frames, "--trace-frames")
    report = pipeline.run(frames=args.frames, free_running=args.free_running, report=args.report,
                          dashboard=args.dashboard, progress=progress and not args.dashboard, executor=args.executor,
                          on_start=_announcer("run", args.frames), trace=args.trace,
                          trace_frames=args.trace_frames,
                          executor_options=_executor_options(args, pipeline))
    if not args.quiet:
        print(report.format_table())
    if args.trace is not None:
        print(f"trace written to {args.trace} (open it in https://ui.perfetto.dev)", file=sys.stderr)
    saved = [("report", args.report, pipeline.report_saved)] if args.report is not None else []
    return _finish("run", pipeline, report, saved)


def _announcer(command: str, frames: int | None, warmup: int = 0) -> Callable[[Any], None]:
    """What will run, said once every node is set up: each source's frames, and what `--frames` means."""

    def announce(executor: Any) -> None:
        snap = executor.snapshot()
        parts = []
        for name, source in snap.get("sources", {}).items():
            kind, length, streams = source.get("kind", "?"), source.get("length"), source.get("streams")
            if length is not None:
                per = f", {streams} streams" if streams and streams > 1 else ""
                parts.append(f"{name} ({kind}): {length} frames{per}")
            elif frames is not None:
                parts.append(f"{name} ({kind}): up to {frames} frames per stream")
            else:
                parts.append(f"{name} ({kind}): until it ends or Ctrl-C")
        limit = ""
        if frames is not None:
            measured = f"{frames - warmup} measured + {warmup} warm-up" if warmup else str(frames)
            limit = f" (--frames: {measured} frames per stream)"
        print(f"costream {command}: pipeline {snap.get('pipeline')!r}{limit}: " + "; ".join(parts) + "",
              file=sys.stderr)

    return announce


def _finish(command: str, pipeline: Any, report: Any, saved: list[tuple[str, Any, Any]]) -> int:
    """Say where the outputs went and return the run's exit code (`stream.outcome.verdict`)."""
    fell_back = False
    for what, asked, result in saved:
        if result is None:
            continue
        if result.path is None:  # neither the asked path nor the temporary directory: print it
            fell_back = True
            print(f"costream {command}: the {what} could not be written to {asked} ({result.error}) nor to the "
                  "temporary directory; here it is:", file=sys.stderr)
            if what == "report":
                print(json.dumps(report.to_dict(), indent=2))
        elif result.fallback:
            fell_back = True
            print(f"costream {command}: could not write the {what} to {asked} ({result.error}); it was written to "
                  f"{result.path} instead", file=sys.stderr)
        else:
            print(f"{what} written to {result.path}", file=sys.stderr)
    code, why = verdict(report, pipeline.spec.max_failed_frames, pipeline.stopped_by_signal)
    if why is not None:
        print(f"costream {command}: exit {code}: {why}", file=sys.stderr)
        return code
    return EXIT_OUTPUT if fell_back else code


def cmd_validate(args: argparse.Namespace) -> int:
    pipeline = _load(args)
    spec = pipeline.spec
    resolved = spec.with_default_policies()
    edges = sum(len(n.inputs) for n in spec.nodes)
    print(f"{args.pipeline}: ok ({len(spec.nodes)} nodes, {edges} edges), executor {spec.executor}")
    for node, written in zip(resolved.nodes, spec.nodes):
        ins = ", ".join(f"{e.source}({e.policy.value}{'' if w.policy is not None else '*'},{e.queue_size})"
                        for e, w in zip(node.inputs, written.inputs))
        print(f"  {node.name:<20} {node.role:<8} {node.kind:<24} {node.device:<8} {('<- ' + ins) if ins else ''}")
    if any(i.policy is None for n in spec.nodes for i in n.inputs):
        print("  (* the default policy by source: latest behind a live source, block behind files and synthetic ones)")
    return EXIT_OK


def cmd_graph(args: argparse.Namespace) -> int:
    from stream.graph_draw import write_graph
    from stream.outputs import check_output_file

    pipeline = _load(args)
    check_output_file(args.output, "-o", say=_say)
    try:
        path = write_graph(pipeline.spec.with_default_policies(), args.output)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    print(f"wrote {path}")
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    from stream.bench import command as bench_command

    return bench_command.run_from_args(args)


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
        out = {name: {"role": cls.role, "class": f"{cls.__module__}:{cls.__qualname__}", **_ports_json(cls),
                      "params": [dataclasses.asdict(p) for p in describe_params(cls.Params)]}
               for name, cls in known.items()}
        print(json.dumps(out, indent=2, default=str))
        return EXIT_OK
    from stream.dashboard import print_kinds

    print_kinds(known)
    return EXIT_OK


def _ports_json(cls: type) -> dict[str, Any]:
    """`consumes` / `produces` of a kind as `costream list --json` shows them (null: undeclared)."""
    from stream.ports import SAME_AS_INPUT, as_ports

    def ports(declared: Any) -> Any:
        if declared is SAME_AS_INPUT:
            return "same_as_input"
        found = as_ports(declared)
        return None if found is None else [{"type": p.type, "shape": p.shape} for p in found]

    out: dict[str, Any] = {}
    if cls.role != "source":
        out["consumes"] = ports(getattr(cls, "consumes", None))
    if cls.role != "sink":
        out["produces"] = ports(getattr(cls, "produces", None))
    return out


def cmd_schema(args: argparse.Namespace) -> int:
    from stream.schema import pipeline_schema, write_schema

    if args.output is None:
        print(json.dumps(pipeline_schema(), indent=2))
    else:
        from stream.outputs import check_output_file

        check_output_file(args.output, "-o", say=_say)
        print(f"wrote {write_schema(args.output)}", file=sys.stderr)
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    missing = getattr(args, "serve_missing", None)
    if missing is not None:
        raise UsageError(f"the ZeroMQ server (stream.zmq.serve) is not available: {missing}")
    from stream.zmq import serve as zmq_serve

    return int(zmq_serve.run_from_args(args) or 0)


def cmd_train_netmamba(args: argparse.Namespace) -> int:
    from operators.models.netmamba_train import main as train_netmamba  # the model side, imported on use

    return train_netmamba(args.rest)


COMMANDS = {"run": cmd_run, "validate": cmd_validate, "graph": cmd_graph, "bench": cmd_bench,
            "list": cmd_list, "schema": cmd_schema, "serve": cmd_serve, "train-netmamba": cmd_train_netmamba}

if __name__ == "__main__":
    sys.exit(main())
