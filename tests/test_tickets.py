"""Completion tickets without ZeroMQ: an in-memory request/reply source and sink, and what the runtime
does with the tickets of frames that are answered, fail, end without output, or are dropped."""
from __future__ import annotations

import pickle
import threading
from dataclasses import dataclass, field
from typing import Iterator

import pytest

from stream.executor import LocalExecutor
from stream.frame import Frame
from stream.node import Operator, Sink, Source
from stream.testing import CollectSink, node_spec, pipeline_spec
from stream.ticket import Outcome, Status, Ticket

GUARD_S = 30  # only turns a hang into a failure


class Desk:
    """Requests in, exactly one answer out per request: what a request/reply server keeps."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.answers: dict[int, list[Outcome]] = {}

    def ticket(self, request: int) -> Ticket:
        self.answers[request] = []
        return Ticket(self._answer, tag=request)

    def _answer(self, ticket: Ticket, outcome: Outcome) -> None:
        with self.lock:
            self.answers[ticket.tag].append(outcome)

    def statuses(self) -> dict[int, list[str]]:
        with self.lock:
            return {r: [o.status.value for o in got] for r, got in self.answers.items()}


@dataclass(frozen=True)
class DeskParams:
    desk: Desk = field(default_factory=Desk)
    count: int = 12
    gate: threading.Event | None = None  # source: after the first request, wait for this
    release: threading.Event = field(default_factory=threading.Event)  # Gate: hold request 0 until set


class RequestSource(Source):
    """Emits one frame per request, each with the desk's ticket (as a request socket would)."""

    Params = DeskParams

    def frames(self) -> Iterator[Frame]:
        for i in range(self.params.count):
            yield self.make_frame(i, "client/cam", ticket=self.params.desk.ticket(i))
            if i == 0 and self.params.gate is not None:
                assert self.params.gate.wait(GUARD_S)


class Triage(Operator):
    """Request i % 4: 0 answered (an output), 1 fails, 2 ends without output, 3 answered twice."""

    outputs_follow_inputs = True

    def process(self, frame: Frame):
        kind = frame.data % 4
        if kind == 1:
            raise ValueError(f"bad request {frame.data}")
        if kind == 2:
            return None
        out = frame.derive(frame.data * 10)
        return [out, out.derive(-1)] if kind == 3 else out


class ReplySink(Sink):
    """Answers each frame's request with its data (the first answer of a request wins)."""

    def setup(self, context) -> None:
        super().setup(context)
        self.late = 0

    def process(self, frame: Frame) -> None:
        if not frame.ticket.result(self.name, frame, frame.data):
            self.late += 1


@pytest.mark.parametrize("max_batch", [1, 4])
def test_every_request_gets_exactly_one_answer_from_whoever_knows_first(max_batch):
    desk = Desk()
    spec = pipeline_spec(
        node_spec("src", RequestSource, DeskParams(desk)),
        node_spec("triage", Triage, inputs=["src"], max_batch=max_batch, queue_size=16),
        node_spec("reply", ReplySink, inputs=["triage"], queue_size=16),
    )
    ex = LocalExecutor(spec)
    report = ex.run()
    expected = {0: ["result"], 1: ["failed"], 2: ["ended"], 3: ["result"]}
    assert desk.statuses() == {i: expected[i % 4] for i in range(12)}
    answers = {i: got[0] for i, got in desk.answers.items()}
    assert [answers[i].result for i in (0, 4, 8)] == [0, 40, 80] and answers[3].result == 30  # the first output
    assert {answers[i].node for i in (1, 5, 9)} == {"triage"} and "bad request 5" in str(answers[5].error)
    assert ex.nodes["reply"].late == 3  # the second output of each "3" request came too late
    assert report.nodes["triage"].failed == 3


class Gate(Sink):
    """Holds its first frame until the test opens the gate (a slow consumer behind a lossy queue)."""

    Params = DeskParams

    def process(self, frame: Frame) -> None:
        if frame.data == 0:
            self.params.gate.set()  # let the source go on while this call is held
            assert self.params.release.wait(GUARD_S)
        frame.ticket.result(self.name, frame, "done")


class Releaser(Sink):
    """A second consumer of the source that opens the gate once it saw every request."""

    Params = DeskParams

    def process(self, frame: Frame) -> None:
        if frame.data == self.params.count - 1:
            self.params.release.set()


def test_frames_dropped_by_a_lossy_queue_are_answered_dropped_with_the_node():
    desk, gate, release = Desk(), threading.Event(), threading.Event()
    spec = pipeline_spec(
        node_spec("src", RequestSource, DeskParams(desk, count=8, gate=gate)),
        node_spec("slow", Gate, DeskParams(desk, gate=gate, release=release), inputs=["src"], policy="latest",
                  queue_size=1),
        node_spec("watch", Releaser, DeskParams(desk, count=8, release=release), inputs=["src"]),
    )
    report = LocalExecutor(spec).run()
    statuses = desk.statuses()
    # request 0 was held in `slow`; 1..6 were replaced in its one-frame `latest` queue by newer ones; 7 ran
    assert statuses == {0: ["result"], **{i: ["dropped"] for i in range(1, 7)}, 7: ["result"]}
    assert {desk.answers[i][0].node for i in range(1, 7)} == {"slow"}
    assert report.edge("src", "slow").dropped == 6


def test_an_incomplete_join_answers_its_parts_dropped():
    desk = Desk()
    spec = pipeline_spec(
        node_spec("src", RequestSource, DeskParams(desk, count=3)),
        node_spec("other", RequestSource, DeskParams(Desk(), count=0)),
        node_spec("both", CollectSink, inputs=["src", "other"], join={"timeout_s": 60.0}),
    )
    LocalExecutor(spec).run()
    assert desk.statuses() == {i: ["dropped"] for i in range(3)}  # the other part never came
    assert {desk.answers[i][0].node for i in range(3)} == {"both"}


def test_a_ticket_is_resolved_once_whatever_the_threads_race():
    outcomes: list[Outcome] = []
    ticket = Ticket(lambda t, o: outcomes.append(o))
    start = threading.Barrier(8)

    def resolve(i: int) -> None:
        start.wait()
        ticket.result(f"sink{i}", None, i)

    threads = [threading.Thread(target=resolve, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(GUARD_S)
    assert len(outcomes) == 1 and ticket.done and ticket.status is Status.RESULT
    assert not ticket.cancel("too late") and not ticket.dropped("x", None)


def test_an_issuer_that_raises_does_not_break_the_resolving_node(caplog):
    def broken(ticket: Ticket, outcome: Outcome) -> None:
        raise RuntimeError("issuer bug")

    ticket = Ticket(broken, tag="r1")
    assert ticket.ended("model", None)
    assert ticket.status is Status.ENDED and "issuer bug" in caplog.text


def test_an_answered_frame_is_freed_at_once_not_by_the_garbage_collector():
    """Frames point at their ticket; the ticket must not point back (a cycle per request would keep
    every answered frame and its data alive until a collection)."""
    import gc
    import weakref

    class Data:
        pass

    gc.disable()
    try:
        data = Data()
        frame = Frame("s", 0, 0, data, ticket=Ticket(lambda t, o: None))
        frame.ticket.result("sink", frame, "answer")
        ref = weakref.ref(data)
        del frame, data
        assert ref() is None
    finally:
        gc.enable()


def test_a_ticket_refuses_to_be_pickled_and_says_what_to_send_instead():
    with pytest.raises(TypeError, match="sends the Outcome back"):
        pickle.dumps(Ticket(lambda t, o: None))
    frame = Frame("s", 0, 0, 1, ticket=Ticket(lambda t, o: None))
    assert frame.derive(2).ticket is frame.ticket and frame == Frame("s", 0, 0, 1)  # kept, not compared
