"""One stop policy for `costream run` and `costream serve`: the first SIGINT drains, the second stops
without draining, and either way the nodes are torn down and the report is written.

The signals are real (sent to this process's main thread by a node), and the node that would never
return on its own is only released by its teardown, so a run that did not tear down would hang (the
guard turns that into a failure)."""
from __future__ import annotations

import argparse
import json
import logging
import signal
import textwrap
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from stream.frame import Frame
from stream.node import Operator
from stream.pipeline import Pipeline
from stream.stopping import StopOnSignals

GUARD_S = 30


class Drained(logging.Handler):
    """Set when the stop policy announces the drain (its log line), i.e. the first signal was handled."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.event = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "received: draining" in record.getMessage():
            self.event.set()


DRAINED = Drained()


@dataclass(frozen=True)
class StuckParams:
    pass


class Stuck(Operator):
    """On its first frame: Ctrl-C, wait for the drain to be announced, Ctrl-C again, then hang in
    process() until teardown. Records its teardown."""

    torn_down: list[str] = []

    def setup(self, context) -> None:
        super().setup(context)
        self._released = threading.Event()
        self._signalled = False

    def process(self, frame: Frame):
        if not self._signalled:
            self._signalled = True
            main = threading.main_thread().ident
            signal.pthread_kill(main, signal.SIGINT)
            assert DRAINED.event.wait(GUARD_S)
            signal.pthread_kill(main, signal.SIGINT)
            self._released.wait(GUARD_S)  # a node stuck in a call that never returns by itself
        return frame

    def teardown(self) -> None:
        Stuck.torn_down.append(self.name)
        self._released.set()


PIPELINE = """\
version: 1
name: stuck
nodes:
  cam: {kind: synthetic, params: {count: 100000, shape: [2]}}
  stuck:
    kind: test_stop_policy:Stuck
    inputs: [{from: cam, policy: block, queue_size: 8}]
  out: {kind: "null", inputs: [stuck]}
"""


@pytest.fixture
def drained():
    DRAINED.event.clear()
    Stuck.torn_down.clear()
    logger = logging.getLogger("costream.stop")
    logger.addHandler(DRAINED)
    try:
        yield
    finally:
        logger.removeHandler(DRAINED)


def _run(path: Path, report: Path) -> tuple[int | None, dict]:
    pipeline = Pipeline.from_yaml(path)
    pipeline.run(report=report)
    return pipeline.stopped_by_signal, json.loads(report.read_text())


def _serve(path: Path, report: Path) -> tuple[int | None, dict]:
    from stream.zmq import Client
    from stream.zmq.serve import add_arguments, run_from_args
    from zmq_server import free_port

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([str(path), "--endpoint", endpoint, "--report", str(report), "--reply-timeout", "60"])

    def ask() -> None:  # one request: it reaches the stuck node, which sends the signals
        with Client(endpoint, timeout=GUARD_S) as client:
            client.send(np.zeros(2, np.float32), stream="cam")
            try:
                client.recv()
            except Exception:  # answered `shutting_down`, or not at all: the test looks at the report
                pass

    asker = threading.Thread(target=ask, daemon=True)
    asker.start()
    rc = run_from_args(args)
    asker.join(GUARD_S)
    return rc, json.loads(report.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("command", [_run, _serve], ids=["run", "serve"])
def test_a_second_ctrl_c_stops_without_draining_yet_tears_down_and_reports(command, drained, tmp_path):
    path = tmp_path / "stuck.yaml"
    path.write_text(textwrap.dedent(PIPELINE))
    previous = signal.getsignal(signal.SIGINT)
    _, report = command(path, tmp_path / "report.json")
    assert signal.getsignal(signal.SIGINT) is previous  # the handlers are restored
    assert report["stop_reason"] == "interrupted (SIGINT)"
    assert Stuck.torn_down == ["stuck"]  # torn down although its call never returned by itself
    assert all(edge["balanced"] for edge in report["edges"])  # what was queued is counted as discarded
    into_stuck = next(e for e in report["edges"] if e["target"] == "stuck")
    assert into_stuck["delivered"] == 1


def test_the_policy_escalates_on_real_signals_and_restores_the_handlers():
    class Recorder:
        def __init__(self) -> None:
            self.calls: list[tuple[str, bool]] = []

        def request_stop(self, reason: str = "stop requested", *, drain: bool = True) -> None:
            self.calls.append((reason, drain))

    recorder = Recorder()
    previous = signal.getsignal(signal.SIGTERM)
    with StopOnSignals(recorder) as signals:
        for _ in range(3):
            signal.raise_signal(signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is previous
    assert signals.first == signal.SIGTERM and signals.count == 3
    assert recorder.calls == [("terminated (SIGTERM)", True), ("terminated (SIGTERM)", False)]
