"""How frames cross from one Ray actor to another: a bounded edge on each side of a shared-memory channel.

One edge `A -> B` between two actors is three parts:

    A's node --put--> [send queue: the edge's policy and capacity] --Sender thread--> channel
    channel --Receiver thread--put--> [B's inbox edge: the same policy and capacity] --> B's node

The send queue is an ordinary `stream.edges.Edge`, so `block` waits, `drop_oldest` and `latest` drop
and count in A exactly as they do locally; the receiving edge is the one B's inbox would have anyway,
so B's loop, joins and batching are the local executor's. The Sender writes everything queued as one
message (batching under load, one frame at a time when idle) into a Ray shared-memory channel
(`ray.experimental.channel`, the transport of Ray's compiled graphs: a single-slot buffer in the
object store, pushed by Ray to the reader's node when it lives elsewhere). A write waits until B's
Receiver has read the previous message, so in flight per edge there are at most `capacity` frames
queued in A, one message in the channel and `capacity` frames queued in B.

Why channels and not actor calls or `ray.put`: measured per hop on one machine (benchmarks/
executor_overhead.py), a channel write/read is ~0.1 ms where an actor method call is ~0.7-1 ms and
an ObjectRef through the object store ~1.5 ms; see docs/scaling.md.

Wire format: a message is a list of frames as plain tuples (a Frame's meta is a read-only mapping,
which does not pickle), or `END` when A will send no more. numpy arrays travel out of band (written
once into the channel buffer); the reader gets views into that buffer, which must be released
before the next message can be written, so the Receiver copies them out once (a memcpy, ~10 us for a
224x224x3 frame). torch CPU tensors travel as numpy views of the same memory; CUDA tensors are copied
to host memory by the sender and moved to the consumer's device by the consumer's runtime.

Clocks: timestamps are monotonic ns of the process that took them; a frame leaving an actor has them
moved to wall-clock ns and back on arrival, so end-to-end latency is right on one host and as right as
the hosts' clock synchronisation (NTP, PTP) across hosts.

Accounting (the executor merges both sides into one edge of the report): offered at the send queue =
its dropped + discarded + taken by the Sender; taken = frames the receiving edge was offered + frames
lost in transit (a reader that died, or a channel closed under a stop); the receiving edge then
splits what it was offered into delivered + dropped + discarded.
"""
from __future__ import annotations

import logging
import pickle
import threading
import time
from types import MappingProxyType
from typing import Any, Callable

import numpy as np

from stream.edges import Edge, Inbox
from stream.frame import Frame, now_ns
from stream.spec import QueuePolicy

log = logging.getLogger("costream.ray")

END = "costream:end-of-stream"  # the last message on a channel
POLL_S = 0.1  # how often a blocked channel read/write looks at its stop flag (not on the data path)
MAX_BATCH = 64  # frames per message at most (a batch that large means the consumer lags behind)
INITIAL_BUFFER_BYTES = 1 << 20  # a channel's first buffer; Ray grows it when a larger message comes


def wall_offset_ns() -> int:
    """Add to a monotonic timestamp of this process to get wall-clock ns (subtract to go back)."""
    return time.time_ns() - time.monotonic_ns()


# -------------------------------------------------------------------------------------- wire format


class _Tensor:
    """A torch tensor on the wire: its numpy view travels out of band (no pickling of the storage)."""

    __slots__ = ("array", "device")

    def __init__(self, array: np.ndarray, device: str) -> None:
        self.array = array
        self.device = device

    def __reduce__(self) -> Any:
        return (_Tensor, (self.array, self.device))


def _encode_data(data: Any) -> Any:
    cls = data.__class__
    if cls is dict:
        return {k: _encode_data(v) for k, v in data.items()}
    if cls is list or cls is tuple:
        return cls(_encode_data(v) for v in data)
    if cls is np.ndarray or cls in (int, float, str, bytes, bool) or data is None:
        return data
    torch = _torch()
    if torch is not None and isinstance(data, torch.Tensor):
        tensor = data.detach()
        device = str(tensor.device)
        if tensor.is_cuda:
            tensor = tensor.cpu()  # a channel lives in host memory; the consumer moves it to its device
        try:
            return _Tensor(tensor.resolve_conj().resolve_neg().numpy(), device)
        except (TypeError, RuntimeError):  # a dtype numpy lacks (bfloat16, ...): pickled as torch does
            return tensor
    return data


def _decode_data(data: Any) -> Any:
    cls = data.__class__
    if cls is np.ndarray:
        # A read-only array is a view into the channel buffer, which the next message reuses.
        return data if data.flags.writeable else data.copy()
    if cls is dict:
        return {k: _decode_data(v) for k, v in data.items()}
    if cls is list or cls is tuple:
        return cls(_decode_data(v) for v in data)
    if cls is _Tensor:
        import torch

        array = data.array if data.array.flags.writeable else data.array.copy()
        return torch.from_numpy(array)
    return data


def _torch() -> Any:
    import sys

    return sys.modules.get("torch")  # tensors exist only if torch was imported by someone


def encode(frame: Frame, offset_ns: int, tickets: Callable[[Any], Any] | None) -> tuple:
    """A frame as plain data for a channel; `tickets` turns a ticket into its portable proxy."""
    ticket = frame.ticket
    if ticket is not None and tickets is not None:
        ticket = tickets(ticket)
    return (frame.stream, frame.seq, frame.t_capture + offset_ns, _encode_data(frame.data),
            dict(frame.meta) if frame.meta else None,
            tuple((name, t + offset_ns) for name, t in frame.trace), ticket)


_NO_META: MappingProxyType = MappingProxyType({})
PICKLE_BELOW_BYTES = 64 * 1024  # messages whose arrays are smaller travel as one pickled bytes object


def pack(items: list[tuple]) -> Any:
    """A message of encoded frames. Small ones are pickled here into one bytes object (Ray serialises
    bytes ~50x faster than tuples holding arrays, measured); large ones go as they are, so that Ray
    writes their arrays straight into the channel. Frames with tickets always go as they are (a
    ticket holds an actor handle, which only Ray's serialiser may carry)."""
    size = 0
    for item in items:
        if item[6] is not None:
            return items
        size += _nbytes(item[3])
        if size >= PICKLE_BELOW_BYTES:
            return items
    return pickle.dumps(items, protocol=5)


def unpack(message: Any) -> list[tuple]:
    return pickle.loads(message) if message.__class__ is bytes else message


def _nbytes(data: Any) -> int:
    cls = data.__class__
    if cls is np.ndarray:
        return data.nbytes
    if cls is _Tensor:
        return data.array.nbytes
    if cls is dict:
        return sum(_nbytes(v) for v in data.values())
    if cls is list or cls is tuple:
        return sum(_nbytes(v) for v in data)
    if cls is bytes or cls is str:
        return len(data)
    return 0 if cls in (int, float, bool) or data is None else PICKLE_BELOW_BYTES  # unknown: let Ray do it


def decode(item: tuple, offset_ns: int, adopt: Callable[[Any], None] | None = None) -> Frame:
    """The frame `encode` made, with timestamps back on this process's monotonic clock; `adopt` is
    shown the frame's ticket (a remote one: this actor tracks the outcome it will send back)."""
    stream, seq, t_capture, data, meta, trace, ticket = item
    if ticket is not None and adopt is not None:
        adopt(ticket)
    return Frame.trusted(stream, seq, t_capture - offset_ns, _decode_data(data),
                         MappingProxyType(_decode_data(meta)) if meta else _NO_META,
                         tuple((name, t - offset_ns) for name, t in trace), ticket)


# ------------------------------------------------------------------------------------------ links


class LinkGone(Exception):
    """The reader at the other end of a link is gone (its actor died)."""


class ChannelLink:
    """Writer and reader on the same Ray node: a shared-memory channel, written by this process."""

    kind = "channel"

    def __init__(self, channel: Any) -> None:
        self.channel = channel

    def write(self, message: Any) -> bool:
        """Write, waiting until the reader has read the previous message. No timeout: Ray polls a
        write that has one (~3 ms per message instead of ~30 us, measured); `close` ends the wait."""
        from ray.exceptions import RayChannelError

        try:
            self.channel.write(message)
        except RayChannelError as exc:
            raise LinkGone(str(exc)) from None
        return True

    def close(self) -> None:
        """Give up on this channel: a write waiting in it raises `LinkGone`."""
        try:
            self.channel.close()
        except Exception as exc:  # closing twice, or a channel Ray already tore down
            log.debug("closing a channel: %s", exc)


CALL_CHUNK_BYTES = 90 * 1024  # Ray sends call arguments under 100 KiB inside the call itself
CALL_INLINE_BYTES = 8 * 1024 * 1024  # messages above this go through the object store (Ray's inline limit: 10 MiB)


def as_call_args(message: Any) -> tuple:
    """A message as `deliver` arguments: pickled and cut into pieces small enough for Ray to send inside
    the call (a 224x224x3 frame: ~0.9 ms between two Ray nodes, against ~4 ms through the object
    store, measured). Frames with tickets, and very large messages, go as they are."""
    if message.__class__ is list:
        if any(item[6] is not None for item in message):
            return (message,)
        message = pickle.dumps(message, protocol=5)
        if len(message) > CALL_INLINE_BYTES:
            return (pickle.loads(message),)
    if message.__class__ is bytes and len(message) > CALL_CHUNK_BYTES:
        view = memoryview(message)
        return tuple(bytes(view[i:i + CALL_CHUNK_BYTES]) for i in range(0, len(message), CALL_CHUNK_BYTES))
    return (message,)


def from_call_args(parts: tuple) -> Any:
    """The message `as_call_args` cut up."""
    if len(parts) == 1:
        return parts[0]
    return b"".join(parts)


class CallLink:
    """Writer and reader on different Ray nodes: one `deliver` actor call in flight at a time.

    A channel between nodes is pushed by the reader's raylet, which then waits in its main thread
    for the reader to release the previous message; a reader that dies leaves that raylet stuck
    (it no longer schedules actors nor reports deaths, Ray 2.60). An actor call fails cleanly instead.
    """

    kind = "call"

    def __init__(self, reader: Any, edge: tuple[str, str]) -> None:
        self.reader = reader
        self.edge = edge
        self._pending: Any = None

    def write(self, message: Any) -> bool:
        import ray
        from ray.exceptions import RayActorError

        if self._pending is not None:
            ready, _ = ray.wait([self._pending], timeout=POLL_S, fetch_local=False)
            if not ready:
                return False
            pending, self._pending = self._pending, None
            try:
                ray.get(pending)
            except RayActorError as exc:
                raise LinkGone(str(exc)) from None
        self._pending = self.reader.deliver.remote(self.edge, *as_call_args(message))
        return True

    def close(self) -> None:
        pass  # a call to a dead actor fails by itself


# --------------------------------------------------------------------------------------- send side


class Sender:
    """The producer's end of one cross-actor edge: a policy queue drained by a thread into a link."""

    def __init__(self, source: str, target: str, capacity: int, policy: QueuePolicy,
                 tickets: Callable[[Any], Any] | None = None) -> None:
        self.source = source
        self.target = target
        self._queue = Inbox(target)
        self.edge: Edge = self._queue.add_edge(source, capacity, policy)  # what the producer's worker puts into
        self.tickets = tickets
        self.link: ChannelLink | CallLink | None = None
        self.written = 0  # frames handed to a link
        self.lost = 0  # frames taken from the queue that no link took (the reader went away for good)
        self.streams: set[str] = set()  # streams sent to the current reader (whose state it keeps)
        self._abandoned = threading.Event()  # stop writing: the reader is gone for good
        self._swap = threading.Lock()
        self._offset = wall_offset_ns()
        self.thread: threading.Thread | None = None

    def attach(self, link: ChannelLink | CallLink) -> set[str]:
        """Write to `link` from now on (a restarted reader); returns the streams the old one had been sent."""
        with self._swap:
            old, self.link = self.link, link
            seen, self.streams = self.streams, set()
        if old is not None:
            old.close()  # a write waiting on the old reader moves on to the new one
        return seen

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name=f"costream-send-{self.source}->{self.target}",
                                       daemon=True)
        self.thread.start()

    def abandon(self) -> None:
        """The reader is gone and will not come back: discard what is queued and what comes (counted)."""
        self._abandoned.set()
        self._queue.close()
        if self.link is not None:
            self.link.close()

    def close_queue(self) -> int:
        """Stop without draining: what is queued is discarded (counted)."""
        return self._queue.close()

    @property
    def depth(self) -> int:
        return self._queue.depth

    def _run(self) -> None:
        get = self._queue.get
        tickets = self.tickets
        try:
            while True:
                items = get(MAX_BATCH)
                if items is None:
                    break
                if not items:
                    continue
                offset = self._offset
                message = pack([encode(item[0], offset, tickets) for item in items])
                if not self._write(message):
                    self.lost += len(items)
                    _resolve_lost([item[0] for item in items], self.target)
                    continue
                self.written += len(items)
                streams = self.streams
                for item in items:
                    streams.add(item[0].stream)
            self._write(END)
        except Exception:  # a bug here must not hang the pipeline: the reader is told the edge ended
            log.exception("the sender of edge %s -> %s failed", self.source, self.target)
            self._queue.close()
            try:
                self._write(END)
            except Exception:
                pass

    def _write(self, message: Any) -> bool:
        """Write one message, waiting while the reader has not taken the previous one; False if the
        reader went away for good (abandoned). A reader that died waits here for its restart."""
        while not self._abandoned.is_set():
            with self._swap:
                link = self.link
            try:
                if link is not None and link.write(message):
                    return True
            except LinkGone:
                if self._abandoned.wait(POLL_S):
                    break
        return False


def _resolve_lost(frames: list[Frame], node: str) -> None:
    for frame in frames:
        if frame.ticket is not None:
            frame.ticket.dropped(node, frame)


# ------------------------------------------------------------------------------------ receive side


class Receiver:
    """The consumer's end of one cross-actor edge: a thread reading a channel, or `deliver` called by
    the producer's actor (a link between nodes), into the inbox edge."""

    def __init__(self, edge: Edge, adopt: Callable[[Any], None] | None = None) -> None:
        self.edge = edge
        self.adopt = adopt
        self.channel: Any = None  # None: messages come through `deliver`
        self.received = 0  # frames taken from links (what the edge was offered)
        self._taking = threading.Lock()  # taking a message in, or ending the edge
        self._ended = threading.Event()
        self._swap = threading.Lock()
        self._offset = wall_offset_ns()
        self.thread: threading.Thread | None = None

    def attach(self, channel: Any) -> None:
        """Read from `channel` from now on (None: the producer calls `deliver`); a restarted producer."""
        with self._swap:
            self.channel = channel
            if channel is not None and self._started and self.thread is None:
                self._start_thread()

    _started = False

    def start(self) -> None:
        """Start reading (a thread only when messages come through a channel)."""
        with self._swap:
            self._started = True
            if self.channel is not None and self.thread is None:
                self._start_thread()

    def _start_thread(self) -> None:
        self.thread = threading.Thread(target=self._run, name=f"costream-recv-{self.edge.source}->{self.edge.target}",
                                       daemon=True)
        self.thread.start()

    def end(self) -> None:
        """No more messages will come (the producer is gone for good, or the run is over). Frames of a
        message still being taken in are queued first; any later ones are not taken (the report counts
        them as lost in transit)."""
        with self._taking:
            if not self._ended.is_set():
                self._ended.set()
                self.edge.finish()

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    def deliver(self, message: Any) -> None:
        """A message from the producer's actor; returns once its frames are queued (or dropped)."""
        if not self._ended.is_set():
            self._take(message)

    def _take(self, message: Any) -> None:
        if isinstance(message, str) and message == END:
            self.end()
            return
        offset, adopt = self._offset, self.adopt
        frames = [decode(item, offset, adopt) for item in unpack(message)]
        del message  # a channel's buffer is released before we may block on a full queue
        with self._taking:  # never into an edge that has ended: its consumer may be gone
            if self._ended.is_set():
                return
            self.received += len(frames)
            put = self.edge.put
            for frame in frames:
                put(frame, now_ns(), None)

    def _run(self) -> None:
        from ray.exceptions import RayChannelError, RayChannelTimeoutError

        try:
            while not self._ended.is_set():
                with self._swap:
                    channel = self.channel
                if channel is None:
                    self._ended.wait(POLL_S)
                    continue
                try:
                    message = channel.read(timeout=POLL_S)
                except RayChannelTimeoutError:
                    continue
                except RayChannelError:
                    self._ended.wait(POLL_S)  # the writer is gone: its restart attaches a new channel
                    continue
                if isinstance(message, BaseException):  # Ray hands some channel failures back as values
                    log.warning("edge %s: the channel failed: %s", self.edge.name, message)
                    self._ended.wait(POLL_S)
                    continue
                self._take(message)
                message = None  # no view into the channel's buffer may outlive the next read
        except Exception:
            log.exception("the receiver of edge %s failed; the edge ends here", self.edge.name)
            self.end()


__all__ = ["END", "INITIAL_BUFFER_BYTES", "CallLink", "ChannelLink", "LinkGone", "Receiver", "Sender", "decode",
           "encode", "wall_offset_ns"]
