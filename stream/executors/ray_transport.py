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


def decode(item: tuple, offset_ns: int) -> Frame:
    """The frame `encode` made, with timestamps back on this process's monotonic clock."""
    stream, seq, t_capture, data, meta, trace, ticket = item
    return Frame.trusted(stream, seq, t_capture - offset_ns, _decode_data(data),
                         MappingProxyType(_decode_data(meta)) if meta else _NO_META,
                         tuple((name, t - offset_ns) for name, t in trace), ticket)


# --------------------------------------------------------------------------------------- send side


class Sender:
    """The producer's end of one cross-actor edge: a policy queue drained by a thread into a channel."""

    def __init__(self, source: str, target: str, capacity: int, policy: QueuePolicy,
                 tickets: Callable[[Any], Any] | None = None) -> None:
        self.source = source
        self.target = target
        self._queue = Inbox(target)
        self.edge: Edge = self._queue.add_edge(source, capacity, policy)  # what the producer's worker puts into
        self.tickets = tickets
        self.channel: Any = None
        self.written = 0  # frames written into a channel
        self.lost = 0  # frames taken from the queue that no channel took (the reader went away)
        self.streams: set[str] = set()  # streams written to the current channel (state a reader keeps)
        self._abandoned = threading.Event()  # stop writing: the reader is gone for good
        self._swap = threading.Lock()
        self._offset = wall_offset_ns()
        self.thread: threading.Thread | None = None

    def attach(self, channel: Any) -> set[str]:
        """Write to `channel` from now on (a restarted reader); returns the streams the old one had seen."""
        with self._swap:
            self.channel = channel
            seen, self.streams = self.streams, set()
        return seen

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name=f"costream-send-{self.source}->{self.target}",
                                       daemon=True)
        self.thread.start()

    def abandon(self) -> None:
        """The reader is gone and will not come back: discard what is queued and what comes (counted)."""
        self._abandoned.set()
        self._queue.close()

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
                message = [encode(item[0], offset, tickets) for item in items]
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
        """Write one message, waiting while the reader has not read the previous one; False if the
        reader went away for good (abandoned)."""
        from ray.exceptions import RayChannelError, RayChannelTimeoutError

        while not self._abandoned.is_set():
            with self._swap:
                channel = self.channel
            try:
                channel.write(message, timeout=POLL_S)
                return True
            except RayChannelTimeoutError:
                continue
            except RayChannelError:
                if self._abandoned.wait(POLL_S):
                    break
        return False


def _resolve_lost(frames: list[Frame], node: str) -> None:
    for frame in frames:
        if frame.ticket is not None:
            frame.ticket.dropped(node, frame)


# ------------------------------------------------------------------------------------ receive side


class Receiver:
    """The consumer's end of one cross-actor edge: a thread reading the channel into the inbox edge."""

    def __init__(self, edge: Edge, channel: Any) -> None:
        self.edge = edge
        self.channel = channel
        self.received = 0  # frames read from channels (what the edge was offered)
        self._ended = threading.Event()
        self._swap = threading.Lock()
        self._offset = wall_offset_ns()
        self.thread: threading.Thread | None = None

    def attach(self, channel: Any) -> None:
        """Read from `channel` from now on (a restarted writer)."""
        with self._swap:
            self.channel = channel

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name=f"costream-recv-{self.edge.source}->{self.edge.target}",
                                       daemon=True)
        self.thread.start()

    def end(self) -> None:
        """The writer is gone and will not come back: the edge ends (what it had sent is counted)."""
        self._ended.set()

    def _run(self) -> None:
        from ray.exceptions import RayChannelError, RayChannelTimeoutError

        edge = self.edge
        put = edge.put
        try:
            while not self._ended.is_set():
                with self._swap:
                    channel = self.channel
                try:
                    message = channel.read(timeout=POLL_S)
                except RayChannelTimeoutError:
                    continue
                except RayChannelError:
                    self._ended.wait(POLL_S)
                    continue
                if isinstance(message, str) and message == END:
                    break
                if isinstance(message, BaseException):  # Ray hands some channel failures back as values
                    log.warning("edge %s: the channel failed: %s", edge.name, message)
                    self._ended.wait(POLL_S)
                    continue
                offset = self._offset
                frames = [decode(item, offset) for item in message]
                del message  # release the channel buffer before we may block on a full queue
                self.received += len(frames)
                for frame in frames:
                    put(frame, now_ns(), None)
        except Exception:
            log.exception("the receiver of edge %s failed; the edge ends here", edge.name)
        finally:
            edge.finish()


__all__ = ["END", "INITIAL_BUFFER_BYTES", "Receiver", "Sender", "decode", "encode", "wall_offset_ns"]
