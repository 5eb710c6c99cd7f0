"""How a run ended, as the exit code that `costream run`, `bench` and `serve` share.

| code | meaning |
|---|---|
| 0 | the run finished and nothing failed beyond what `options.max_failed_frames` allows |
| 1 | frames failed beyond that allowance, a node failed outside a frame (a source's reader, a teardown), a node with `on_error: stop` raised, or the pipeline could not start (a node's setup) |
| 2 | usage or config error: nothing ran |
| 3 | the run finished but its report could not be written where asked (it was saved elsewhere, and the message says where) |
| 128+N | stopped by signal N after draining (130: Ctrl-C, 143: SIGTERM), and nothing failed |
| 141 | stdout was closed early (`costream list --json \\| head`): output stopped quietly |

A failure outranks the signal: a run stopped with Ctrl-C in which frames failed exits 1.
"""
from __future__ import annotations

import re
import signal as _signal
from dataclasses import dataclass
from typing import Any

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_OUTPUT = 3
EXIT_BROKEN_PIPE = 128 + 13  # as a program stopped by SIGPIPE


def signal_exit_code(signum: int) -> int:
    return 128 + int(signum)


EXIT_INTERRUPTED = signal_exit_code(_signal.SIGINT)

_PERCENT = re.compile(r"^\s*(\d+(\.\d*)?|\.\d+)\s*%\s*$")


@dataclass(frozen=True)
class FailureAllowance:
    """How many failed frames a run may have and still count as ok (`options.max_failed_frames`):
    a number of frames, or a percentage of the frames the sources produced."""

    frames: int = 0
    percent: float | None = None  # when set, `frames` is ignored

    @classmethod
    def parse(cls, value: Any) -> "FailureAllowance":
        """From YAML: an integer >= 0 (frames) or a string like '2%' or '0.5%'; ValueError otherwise."""
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return cls(frames=value)
        if isinstance(value, str):
            match = _PERCENT.match(value)
            if match and float(match.group(1)) <= 100:
                return cls(percent=float(match.group(1)))
        hint = ""
        if isinstance(value, float) and 0 < value < 1:
            hint = f"; for a fraction write '{value * 100:g}%'"
        raise ValueError(f"expected a number of frames (an integer >= 0) or a percentage such as '1%', "
                         f"got {value!r}{hint}")

    def allows(self, failed: int, produced: int) -> bool:
        if self.percent is None:
            return failed <= self.frames
        return failed <= self.percent / 100.0 * max(produced, 0)

    def __str__(self) -> str:
        return f"{self.percent:g}% of the frames" if self.percent is not None else f"{self.frames} frame(s)"


def failed_frames(report: Any) -> int:
    return sum(node.failed for node in report.nodes.values())


def produced_frames(report: Any) -> int:
    return sum(node.frames_out for node in report.nodes.values() if node.role == "source")


def verdict(report: Any, allowance: FailureAllowance, stopped_by: int | None = None) -> tuple[int, str | None]:
    """(exit code, why it is not 0) for a finished run; `stopped_by` is the signal that stopped it."""
    if report.fatal_error is not None:
        e = report.fatal_error
        return EXIT_FAILED, f"node {e.node!r} failed with on_error: stop ({e.error}: {e.message})"
    failed = failed_frames(report)
    outside = report.error_count - failed  # a source's reader, a teardown: not tied to one frame
    if outside > 0:
        nodes = sorted({e.node for e in report.errors if e.seq is None})
        return EXIT_FAILED, f"{outside} node failure(s) outside a frame ({', '.join(nodes) or 'see the report'})"
    produced = produced_frames(report)
    if not allowance.allows(failed, produced):
        return EXIT_FAILED, (f"{failed} of {produced} frame(s) failed; the pipeline allows {allowance} "
                             "(options.max_failed_frames)")
    if stopped_by is not None:
        return signal_exit_code(stopped_by), None
    return EXIT_OK, None


__all__ = ["EXIT_BROKEN_PIPE", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_OUTPUT", "EXIT_USAGE",
           "FailureAllowance", "failed_frames", "produced_frames", "signal_exit_code", "verdict"]
