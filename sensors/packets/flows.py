"""Bidirectional 5-tuple flow assembly over IPv4 TCP and UDP.

A flow is keyed by (protocol, endpoint A, endpoint B) in either direction; its forward direction is
that of its first packet (the initiator). It ends on
- `fin`: both sides sent FIN and a bare ACK followed (the last packet of a clean close belongs to
  the flow), or a new SYN reuses the 5-tuple after both FINs;
- `rst`: a TCP RST (included in the flow);
- `idle`: no packet for `idle_timeout_s` of capture time;
- `active`: the flow has lasted `active_timeout_s` (a long flow is cut, as NetFlow does; its next
  packet starts a new flow);
- `evicted`: the table holds `max_flows` flows and a new one starts: the least recently seen goes;
- `end_of_capture`: `flush()` at the end of a file (or when a live capture stops).
Time is capture time (the packets' timestamps), so a replay at any speed gives the same flows; for a
live interface that falls silent, `advance(now)` expires idle flows without a packet.

IPv6, non-IP frames, other IPv4 protocols, non-first fragments and malformed frames are passed over
and counted (`counters.skipped`), as NetMamba does. The first `packets_per_flow` packets of each flow
come out as `FlowPacket` events carrying NetMamba's 320-byte representation; every flow ends with a
`FlowEnd` record (packets and bytes per direction, reason).
"""
from __future__ import annotations

import ipaddress
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from enum import Enum
from typing import Iterable, Iterator

import numpy as np

from sensors.packets.capture_files import CaptureRecord
from sensors.packets.decode import TCP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, IPv4Packet, Skip, decode
from sensors.packets.representation import HEADER_BYTES, PACKETS_PER_FLOW, PAYLOAD_BYTES, packet_bytes

_PROTO_NAMES = {TCP: "tcp", 17: "udp"}


class EndReason(str, Enum):
    FIN = "fin"
    RST = "rst"
    IDLE = "idle"
    ACTIVE = "active"
    EVICTED = "evicted"
    END_OF_CAPTURE = "end_of_capture"


@dataclass(frozen=True)
class FlowParams:
    """Flow table settings; times are capture time in seconds."""

    idle_timeout_s: float = 60.0  # a flow without packets for this long ends (`idle`)
    active_timeout_s: float | None = 1800.0  # a flow lasting this long is cut (`active`); None: never
    max_flows: int = 100_000  # flows held at most; a new flow beyond evicts the least recently seen
    packets_per_flow: int = PACKETS_PER_FLOW  # packets per flow whose representation is emitted
    header_bytes: int = HEADER_BYTES  # NetMamba's header part per packet
    payload_bytes: int = PAYLOAD_BYTES  # NetMamba's payload part per packet

    def __post_init__(self) -> None:
        if not self.idle_timeout_s > 0:
            raise ValueError(f"idle_timeout_s must be > 0 seconds, got {self.idle_timeout_s}")
        if self.active_timeout_s is not None and not self.active_timeout_s > 0:
            raise ValueError(f"active_timeout_s must be > 0 seconds or null (never), got {self.active_timeout_s}")
        if self.max_flows < 1:
            raise ValueError(f"max_flows must be >= 1, got {self.max_flows}")
        if self.packets_per_flow < 0:
            raise ValueError(f"packets_per_flow must be >= 0, got {self.packets_per_flow}")
        if self.header_bytes < 0 or self.payload_bytes < 0 or self.header_bytes + self.payload_bytes < 1:
            raise ValueError(f"header_bytes and payload_bytes must be >= 0 with a positive sum, got "
                             f"{self.header_bytes} and {self.payload_bytes}")


@dataclass(frozen=True, slots=True)
class FlowKey:
    """A flow's 5-tuple in its forward direction (the initiator's)."""

    proto: int
    src: bytes
    sport: int
    dst: bytes
    dport: int

    def __str__(self) -> str:
        name = _PROTO_NAMES.get(self.proto, str(self.proto))
        return (f"{name} {ipaddress.IPv4Address(self.src)}:{self.sport} > "
                f"{ipaddress.IPv4Address(self.dst)}:{self.dport}")


@dataclass(frozen=True, slots=True)
class FlowPacket:
    """One of a flow's first `packets_per_flow` packets."""

    flow_id: str  # unique per assembler: the key and a serial number (a 5-tuple can come back)
    key: FlowKey
    index: int  # 0-based position in the flow
    direction: int  # 0 forward (initiator -> responder), 1 backward
    ts_ns: int
    representation: np.ndarray  # (header_bytes + payload_bytes,) uint8


@dataclass(frozen=True, slots=True)
class FlowEnd:
    """The record of a flow that ended."""

    flow_id: str
    key: FlowKey
    reason: EndReason
    packets: tuple[int, int]  # (forward, backward)
    bytes: tuple[int, int]  # IPv4 total lengths, (forward, backward)
    first_ts_ns: int
    last_ts_ns: int
    emitted: int  # FlowPacket events this flow produced

    @property
    def total_packets(self) -> int:
        return self.packets[0] + self.packets[1]


FlowEvent = FlowPacket | FlowEnd


@dataclass
class FlowCounters:
    frames: int = 0  # frames offered
    packets: int = 0  # IPv4 TCP/UDP packets assigned to flows
    flows_started: int = 0
    ended: Counter = field(default_factory=Counter)  # EndReason value -> flows
    skipped: Counter = field(default_factory=Counter)  # Skip value -> frames passed over

    def as_dict(self) -> dict[str, int]:
        out = {"frames": self.frames, "packets": self.packets, "flows_started": self.flows_started}
        out.update({f"ended_{k}": v for k, v in sorted(self.ended.items())})
        out.update({f"skipped_{k}": v for k, v in sorted(self.skipped.items())})
        return out


class _Flow:
    __slots__ = ("flow_id", "key", "endpoint_a", "first_ts", "last_ts", "packets", "bytes", "emitted",
                 "fin", "both_fin")

    def __init__(self, flow_id: str, key: FlowKey, ts: int) -> None:
        self.flow_id, self.key = flow_id, key
        self.endpoint_a = (key.src, key.sport)
        self.first_ts = self.last_ts = ts
        self.packets = [0, 0]
        self.bytes = [0, 0]
        self.emitted = 0
        self.fin = [False, False]
        self.both_fin = False


class FlowAssembler:
    """Feed frames in capture order (`add`); get FlowPacket / FlowEnd events back."""

    def __init__(self, params: FlowParams | None = None) -> None:
        self.params = params or FlowParams()
        self.counters = FlowCounters()
        self._flows: OrderedDict[tuple, _Flow] = OrderedDict()  # least recently seen first
        self._by_start: dict[tuple, _Flow] = {}  # oldest start first (insertion order)
        self._serial = 0
        self._now = 0
        self._idle_ns = int(self.params.idle_timeout_s * 1e9)
        self._active_ns = None if self.params.active_timeout_s is None else int(self.params.active_timeout_s * 1e9)

    def __len__(self) -> int:
        return len(self._flows)

    def add(self, frame: CaptureRecord | IPv4Packet) -> list[FlowEvent]:
        """One captured frame (or an already decoded packet): the events it causes, in order."""
        self.counters.frames += 1
        packet = decode(frame) if isinstance(frame, CaptureRecord) else frame
        if isinstance(packet, Skip):
            self.counters.skipped[packet.value] += 1
            return []
        events: list[FlowEvent] = []
        if packet.ts_ns > self._now:
            self._now = packet.ts_ns
            events.extend(self._expire())
        self.counters.packets += 1
        a, b = (packet.src, packet.sport), (packet.dst, packet.dport)
        table_key = (packet.proto, a, b) if a <= b else (packet.proto, b, a)
        flow = self._flows.get(table_key)
        if flow is not None and flow.both_fin and packet.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN:
            events.append(self._end(table_key, EndReason.FIN))  # the 5-tuple is reused by a new connection
            flow = None
        if flow is None:
            flow = self._start(table_key, packet, events)
        else:
            self._flows.move_to_end(table_key)
        direction = 0 if a == flow.endpoint_a else 1
        flow.packets[direction] += 1
        flow.bytes[direction] += packet.ip_len
        flow.last_ts = max(flow.last_ts, packet.ts_ns)
        if flow.emitted < self.params.packets_per_flow:
            rep = packet_bytes(packet, self.params.header_bytes, self.params.payload_bytes)
            events.append(FlowPacket(flow.flow_id, flow.key, flow.emitted, direction, packet.ts_ns, rep))
            flow.emitted += 1
        if packet.proto == TCP:
            self._tcp_close(table_key, flow, packet, direction, events)
        return events

    def advance(self, ts_ns: int) -> list[FlowEnd]:
        """Move capture time to `ts_ns` without a packet (a silent live interface): idle and active
        timeouts that passed end their flows."""
        if ts_ns <= self._now:
            return []
        self._now = ts_ns
        return self._expire()

    def flush(self, reason: EndReason = EndReason.END_OF_CAPTURE) -> list[FlowEnd]:
        """End every flow (end of a capture file, or a live capture that stops)."""
        return [self._end(k, reason) for k in list(self._flows)]

    # Internals --------------------------------------------------------------------------------
    def _start(self, table_key: tuple, packet: IPv4Packet, events: list[FlowEvent]) -> _Flow:
        if len(self._flows) >= self.params.max_flows:
            events.append(self._end(next(iter(self._flows)), EndReason.EVICTED))
        key = FlowKey(packet.proto, packet.src, packet.sport, packet.dst, packet.dport)
        self._serial += 1
        flow = _Flow(f"{key} #{self._serial}", key, packet.ts_ns)
        self._flows[table_key] = flow
        self._by_start[table_key] = flow
        self.counters.flows_started += 1
        return flow

    def _tcp_close(self, table_key: tuple, flow: _Flow, packet: IPv4Packet, direction: int,
                   events: list[FlowEvent]) -> None:
        flags = packet.tcp_flags
        if flags & TCP_RST:
            events.append(self._end(table_key, EndReason.RST))
            return
        if flags & TCP_FIN:
            flow.fin[direction] = True
            flow.both_fin = flow.fin[0] and flow.fin[1]
        elif flow.both_fin and flags & TCP_ACK and not packet.payload:
            events.append(self._end(table_key, EndReason.FIN))  # the ACK of the last FIN

    def _expire(self) -> list[FlowEnd]:
        out: list[FlowEnd] = []
        now = self._now
        while self._flows:
            table_key, flow = next(iter(self._flows.items()))
            if now - flow.last_ts <= self._idle_ns:
                break
            out.append(self._end(table_key, EndReason.IDLE))
        if self._active_ns is not None:
            while self._by_start:
                table_key, flow = next(iter(self._by_start.items()))
                if now - flow.first_ts < self._active_ns:
                    break
                out.append(self._end(table_key, EndReason.ACTIVE))
        return out

    def _end(self, table_key: tuple, reason: EndReason) -> FlowEnd:
        flow = self._flows.pop(table_key)
        del self._by_start[table_key]
        self.counters.ended[reason.value] += 1
        return FlowEnd(flow.flow_id, flow.key, reason, (flow.packets[0], flow.packets[1]),
                       (flow.bytes[0], flow.bytes[1]), flow.first_ts, flow.last_ts, flow.emitted)


def assemble_flows(frames: Iterable[CaptureRecord | IPv4Packet], params: FlowParams | None = None,
                   assembler: FlowAssembler | None = None) -> Iterator[FlowEvent]:
    """Every event of a whole capture, ending with the flows still open at its end."""
    assembler = FlowAssembler(params) if assembler is None else assembler
    for frame in frames:
        yield from assembler.add(frame)
    yield from assembler.flush()
