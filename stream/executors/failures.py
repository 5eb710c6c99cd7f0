"""The error policy's bookkeeping, shared by executors: every failure counted, the first N kept with
their tracebacks, logging throttled per node, and the first fatal one remembered.

A frame that makes a node raise is counted on the node, recorded with node/stream/seq, logged (the
first 10 failures of a node in full, then every 1000th), and its completion ticket resolved as
failed. Whether the run goes on is the node's `on_error` policy, applied by the executor.
"""
from __future__ import annotations

import logging
import threading
import traceback
from typing import Any

from stream.report import ErrorRecord

log = logging.getLogger("costream.executor")

LOGGED_ERRORS_PER_NODE = 10  # full log lines per node; later failures are logged every 1000th


class FailureLog:
    """Thread-safe: node threads record, the report reads once they have ended."""

    def __init__(self, max_records: int = 20) -> None:
        self.max_records = max_records
        self._lock = threading.Lock()
        self._records: list[ErrorRecord] = []
        self._count = 0
        self._per_node: dict[str, int] = {}
        self._fatal: ErrorRecord | None = None

    @property
    def count(self) -> int:
        return self._count

    @property
    def fatal(self) -> ErrorRecord | None:
        return self._fatal

    @property
    def records(self) -> tuple[ErrorRecord, ...]:
        with self._lock:
            return tuple(self._records)

    def record(self, node: str, frame: Any, exc: BaseException, fatal: bool = False) -> ErrorRecord:
        """Count, keep and log one failure of `node` (on `frame`, or None for a failure outside a frame:
        a source's iterator, setup, teardown); `fatal` marks the run's fatal error if it is the first."""
        stream, seq = (frame.stream, frame.seq) if frame is not None else (None, None)
        record = ErrorRecord(node, stream, seq, type(exc).__name__, str(exc), "".join(traceback.format_exception(exc)))
        with self._lock:
            self._count += 1
            if len(self._records) < self.max_records:
                self._records.append(record)
            n = self._per_node[node] = self._per_node.get(node, 0) + 1
            if fatal and self._fatal is None:
                self._fatal = record
        if n <= LOGGED_ERRORS_PER_NODE or n % 1000 == 0:
            log.warning("node %r raised on stream %r seq %s: %s: %s%s", node, stream, seq, type(exc).__name__, exc,
                        f" ({n} failures so far)" if n > 1 else "", exc_info=exc if n == 1 else None)
        return record


__all__ = ["FailureLog"]
