"""Shared helpers for the benchmarks: a case description and an interleaved timer.

Every benchmark times the baseline and ours in the same process, interleaving repetitions so that
machine noise hits both alike, and prints ratios.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class BenchCase:
    """One comparison. Each callable performs one unit of work (one step / one window inference)."""

    name: str
    batch: int
    ours: Callable[[], object]  # our continual step
    offline: Callable[[], object] | None = None  # re-running the offline module on the window
    reference: Callable[[], object] | None = None  # continual-inference 1.2.4 step, same weights
    flop_ratio: float | None = None  # offline FLOPs per output / our FLOPs per step
    notes: str = ""
    extra: dict = field(default_factory=dict)


def time_interleaved(fns: dict[str, Callable[[], object]], repeats: int = 50, warmup: int = 5,
                     rounds: int = 5) -> dict[str, float]:
    """Median seconds per call for each function, measured in interleaved rounds."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    per_round = max(1, repeats // rounds)
    for _ in range(rounds):
        for key, fn in fns.items():
            for _ in range(per_round):
                t0 = time.perf_counter()
                fn()
                samples[key].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in samples.items()}
