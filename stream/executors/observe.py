"""Call observers: code that hears of every node call of a run as it happens, in the node's thread.

    executor = LocalExecutor(spec, observers=[recorder])

An observer sees the times the runtime itself recorded (in the executor's clock), after the call's
metrics are written: a trace recorder (`stream.bench.trace.TraceRecorder`) keeps spans from them, and
the benchmark's load generator learns when a frame reached a sink. Observers run on the hot path of
every node: keep them to a few appends, never block, never raise.
"""
from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

from stream.frame import Frame


@runtime_checkable
class CallObserver(Protocol):
    def produced(self, node: str, frame: Frame, t0: int, t1: int) -> None:
        """Source `node` produced `frame`: its `next()` ran from t0 to t1 (before the trace stamp)."""
        ...

    def called(self, node: str, inputs: Sequence[Frame], outputs: Sequence[Frame], t0: int, t1: int) -> None:
        """Operator or sink `node` ran from t0 to t1 on `inputs` (as they arrived, with the trace stamps of
        the nodes before it) and returned `outputs` (empty for a sink); failed inputs are not included."""
        ...


__all__ = ["CallObserver"]
