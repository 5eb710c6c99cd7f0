"""`max-rate`: the highest arrival rate whose p99 latency stays within a budget.

    result = search_max_rate(run_step, budget_ms=50, precision=0.05)

`run_step(None)` runs the pipeline with one frame in flight per stream; `run_step(rate)` offers
`rate` frames per second per stream. The search:

1. one frame at a time first: if even that breaks the budget, no rate can meet it (verdict says so);
2. from the rate that one-at-a-time sustained, doubles or halves the rate until one step passes and
   one fails (halving at most down to 1/8 of that rate: below, a step takes long and says little);
3. bisects (geometrically) between them until they are within `precision` (5 %) of each other.

A step passes when its p99 is within the budget, no measured frame was dropped, failed or timed out,
and the latency did not grow over the step (the median of its second half is less than 1.5x the
first half's: a queue that grows would break any budget given a longer run). Each step is a fresh
run with its own warm-up and `frames` measured frames; the p99 of fewer than 1,000 frames is
reported but flagged, since it is then one of a handful of worst frames.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from stream.bench.scenarios import GROWTH_LIMIT, RunResult

MAX_STEPS = 16
MAX_HALVINGS_BELOW = 8  # a search that fails at 1/8 of the one-at-a-time rate stops there


@dataclass
class Step:
    """One run of the search: offered `rate_hz` per stream (None: one frame in flight per stream)."""

    rate_hz: float | None
    result: RunResult
    passed: bool
    why: str  # what decided it, in words

    def to_dict(self) -> dict[str, Any]:
        lat = self.result.latency
        return {"rate_hz": self.rate_hz, "passed": self.passed, "why": self.why, "p50_ms": lat.p50_ms,
                "p90_ms": lat.p90_ms, "p99_ms": lat.p99_ms, "max_ms": lat.max_ms, "count": lat.count,
                "growth": self.result.growth, "frames": self.result.counts.to_dict(),
                "offered_hz": self.result.offered_hz, "completed_hz": self.result.completed_hz}


@dataclass
class SearchResult:
    budget_ms: float
    max_rate_hz: float | None  # per stream; None when no rate met the budget
    verdict: str
    steps: list[Step] = field(default_factory=list)
    best: Step | None = None  # the step at max_rate_hz

    def to_dict(self) -> dict[str, Any]:
        return {"budget_ms": self.budget_ms, "max_rate_hz": self.max_rate_hz, "verdict": self.verdict,
                "steps": [s.to_dict() for s in self.steps]}


def judge(result: RunResult, budget_ms: float) -> tuple[bool, str]:
    """Whether a step meets the budget, and why (or why not)."""
    c = result.counts
    p99 = result.latency.p99_ms
    if c.failed:
        return False, f"{c.failed} frame(s) failed"
    if c.dropped or c.timed_out:
        return False, f"{c.dropped + c.timed_out} of {c.released} frames dropped"
    if p99 is None:
        return False, "no frame reached a sink"
    if p99 > budget_ms:
        return False, f"p99 {p99:.2f} ms > {budget_ms:g} ms"
    if result.growth is not None and result.growth >= GROWTH_LIMIT:
        return False, f"latency grew {result.growth:.1f}x over the step (frames queue up)"
    return True, f"p99 {p99:.2f} ms <= {budget_ms:g} ms"


def search_max_rate(run_step: Callable[[float | None], RunResult], budget_ms: float, *, precision: float = 0.05,
                    start_hz: float | None = None, per_stream: int = 1, max_steps: int = MAX_STEPS,
                    stop: Callable[[], bool] = lambda: False) -> SearchResult:
    """See the module docstring; `per_stream` divides the one-at-a-time throughput into a per-stream rate
    (streams x sources); `stop()` true ends the search early (e.g. after Ctrl-C)."""
    if not 0 < precision < 1:
        raise ValueError(f"precision must be in (0, 1), got {precision!r}")
    steps: list[Step] = []

    def run(rate: float | None) -> Step:
        result = run_step(rate)
        passed, why = judge(result, budget_ms)
        steps.append(Step(rate, result, passed, why))
        return steps[-1]

    first = run(None)
    if not first.passed:
        return SearchResult(budget_ms, None, f"no rate meets a p99 budget of {budget_ms:g} ms: even one frame "
                            f"at a time, {first.why}", steps)
    rate = start = start_hz or (first.result.completed_hz or 1.0) / per_stream
    lo: Step | None = None
    hi: Step | None = None
    while (lo is None or hi is None) and len(steps) < max_steps and not stop():
        step = run(rate)
        if step.passed:
            lo = step
            rate *= 2
        else:
            hi = step
            rate /= 2
            if lo is None and rate < start / MAX_HALVINGS_BELOW:
                break
    while lo is not None and hi is not None and hi.rate_hz / lo.rate_hz > 1 + precision \
            and len(steps) < max_steps and not stop():
        step = run(math.sqrt(lo.rate_hz * hi.rate_hz))  # type: ignore[operator]
        if step.passed:
            lo = step
        else:
            hi = step
    if lo is None:
        return SearchResult(budget_ms, None, f"no offered rate down to {rate * 2:.3g} frames/s met a p99 budget of "
                            f"{budget_ms:g} ms, though one frame at a time did ({first.why}): at any rate frames "
                            f"meet others in the pipeline (last: {steps[-1].why}); try a larger budget or more "
                            "frames per step", steps)
    verdict = f"max rate {lo.rate_hz:.4g} frames/s per stream: {lo.why}"
    if hi is not None:
        verdict += f"; at {hi.rate_hz:.4g} frames/s {hi.why}"
        if hi.rate_hz / lo.rate_hz > 1 + precision:
            verdict += f" (search stopped after {len(steps)} steps, before reaching {precision:.0%})"
    else:
        verdict += f" (every rate tried passed; the search stopped after {len(steps)} steps)"
    return SearchResult(budget_ms, lo.rate_hz, verdict, steps, lo)


__all__ = ["SearchResult", "Step", "judge", "search_max_rate"]
