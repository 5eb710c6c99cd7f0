"""The one stop-signal policy of costream, shared by `costream run`, `costream serve`, `Pipeline.run`
and `Executor.run()`:

- the first SIGINT (Ctrl-C) or SIGTERM drains: sources stop, queued frames still flow, the report is
  built and written;
- the second stops hard: queued frames are discarded (and counted), busy nodes get a short grace to
  return from their current call, then the nodes are still torn down and the report still built;
- later ones only say that the stop is under way.

    with StopOnSignals(executor) as signals:
        executor.start()
        report = executor.wait()
    signals.first   # the signal number that stopped the run, or None

Handlers are installed only on the main thread (Python delivers signals there) and the previous ones
are restored on exit. `escalate` is the policy itself, also used by `wait()` when a Ctrl-C arrives as
KeyboardInterrupt because no handler was installed.
"""
from __future__ import annotations

import logging
import signal
import threading
from types import TracebackType
from typing import Any

log = logging.getLogger("costream.stop")

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def stop_reason(signal_name: str) -> str:
    """The stop reason reported for a signal: `interrupted (SIGINT)`, `terminated (SIGTERM)`."""
    return f"terminated ({signal_name})" if signal_name == "SIGTERM" else f"interrupted ({signal_name})"


def escalate(executor: Any, signal_name: str, count: int) -> None:
    """What the `count`-th stop signal does to `executor` (anything with `request_stop(reason, drain=)`)."""
    reason = stop_reason(signal_name)
    if count == 1:
        executor.request_stop(reason)
        log.warning("%s received: draining (send it again to stop without draining)", signal_name)
    elif count == 2:
        executor.request_stop(reason, drain=False)
        log.warning("second %s: stopped without draining; the nodes are still torn down and the report "
                    "written", signal_name)
    else:
        log.warning("%s: already stopping; waiting for the nodes to be torn down", signal_name)


class StopOnSignals:
    """Install the policy for SIGINT and SIGTERM while `executor` runs (a context manager)."""

    def __init__(self, executor: Any, signals: tuple[int, ...] = SIGNALS) -> None:
        self.executor = executor
        self.signals = signals
        self.first: int | None = None  # the signal number of the first stop signal received
        self.count = 0
        self._previous: dict[int, Any] = {}

    def handle(self, signum: int, _frame: Any = None) -> None:
        self.count += 1
        if self.first is None:
            self.first = signum
        escalate(self.executor, signal.Signals(signum).name, self.count)

    def __enter__(self) -> "StopOnSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self.handle)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        self._previous.clear()


__all__ = ["SIGNALS", "StopOnSignals", "escalate", "stop_reason"]
