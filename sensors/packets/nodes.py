"""Node kinds for packets: sources `pcap`, `capture`, `synthetic_traffic`; operator `flows`; and the
sinks `flow_jsonl` and `class_counts` (registered from `sensors.packets.sink_nodes`).

Frame conventions (see docs/packets.md):
- a packet source emits one frame per captured frame: data `{"frame": uint8 (caplen,)}` from the
  link-layer header on, meta `ts_ns` (capture time, ns since the epoch), `linktype`, `orig_len`,
  `interface`. It also emits control frames with empty data: meta `event: end_of_capture` when a
  file ends (or a live capture stops), and, from a live interface that is silent, `event: tick` with
  the current time, so that the flow table can expire idle flows without traffic;
- `flows` emits, per flow, one frame for each of its first `packets_per_flow` packets (stream = the
  flow id, seq = the packet's index in the flow, data `{"packet": uint8 (320,)}`, meta `event:
  packet`, `flow`, `direction`, `packet_index`, `ts_ns`) and, when the flow ends, one `flow_end`
  frame (seq = the next index, empty data, meta with packets and bytes per direction and the reason).
Frames keep the `t_capture` of the packet that caused them, so latency runs from that packet.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np

from sensors.packets import sink_nodes  # noqa: F401  (registers flow_jsonl and class_counts)
from sensors.packets.bpf import Instruction, compile_filter, run_filter
from sensors.packets.capture_files import CaptureFormatError, CaptureReader, CaptureRecord, ReadCounters
from sensors.packets.flows import FlowAssembler, FlowEnd, FlowParams
from sensors.packets.live import LiveCapture
from sensors.packets.pacing import Pacer
from sensors.packets.synthetic import TRAFFIC_KINDS, SyntheticTrafficConfig, synthetic_packets
from stream.frame import Frame, now_ns
from stream.node import NodeContext, Operator, Source
from stream.registry import register
from stream.ports import FLOW, PACKETS

log = logging.getLogger("costream.sensors.packets")
END_OF_CAPTURE, TICK, PACKET, FLOW_END = "end_of_capture", "tick", "packet", "flow_end"
_DIRECTIONS = ("forward", "backward")


def _doc(default: Any, doc: str) -> Any:
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class ReplayParams:
    """Pacing and filtering shared by the replayed sources."""

    pace: Literal["fast", "capture"] = _doc(
        "fast", "fast: as fast as the pipeline takes packets | capture: by the capture timestamps")
    speed: float = _doc(1.0, "with pace: capture, a multiple of the captured rate (2.0 = twice as fast)")
    filter: str | None = _doc(None, "BPF expression, tcpdump syntax ('tcp port 80'); frames it rejects are counted")
    stream: str | None = _doc(None, "stream id of the packet frames; default: the node name")

    def __post_init__(self) -> None:
        if not self.speed > 0:
            raise ValueError(f"speed must be > 0 (1.0 = as captured), got {self.speed}")
        if self.filter is not None and not self.filter.strip():
            raise ValueError("filter is empty; remove it or give a BPF expression such as 'tcp or udp'")


class _PacketSource(Source):
    """What the packet sources share: frames from records, user-space filter, pacing, counters."""
    produces = PACKETS

    def __init__(self, params: Any = None) -> None:
        super().__init__(params)
        self._programs: dict[int, list[Instruction]] = {}
        self.filtered_out = 0
        self._pacer: Pacer | None = None

    def setup(self, context: NodeContext) -> None:
        super().setup(context)
        if self.params.filter:
            compile_filter(self.params.filter)  # a syntax error stops the pipeline before it starts
        self._pacer = Pacer(self.params.speed if self.params.pace == "capture" else None)

    def stop(self) -> None:
        if self._pacer is not None:
            self._pacer.stop()

    def _accepts(self, record: CaptureRecord) -> bool:
        expression = self.params.filter
        if not expression:
            return True
        program = self._programs.get(record.linktype)
        if program is None:
            program = self._programs[record.linktype] = compile_filter(expression, record.linktype)
        if run_filter(program, record.data):
            return True
        self.filtered_out += 1
        return False

    def _packet_frame(self, record: CaptureRecord, stream: str, t_capture: int | None = None) -> Frame:
        return self.make_frame({"frame": np.frombuffer(record.data, dtype=np.uint8)}, stream, t_capture=t_capture,
                               meta={"ts_ns": record.ts_ns, "linktype": record.linktype,
                                     "orig_len": record.orig_len, "interface": record.interface})

    def _control_frame(self, stream: str, event: str, **meta: Any) -> Frame:
        return self.make_frame({}, stream, meta={"event": event, **meta})

    def _replay(self, records: Iterator[CaptureRecord], stream: str) -> Iterator[Frame]:
        pacer = self._pacer
        for record in records:
            if not self._accepts(record):
                continue
            if pacer is not None and not pacer.wait(record.ts_ns):
                return
            yield self._packet_frame(record, stream)


@dataclass(frozen=True)
class PcapParams(ReplayParams):
    path: str = field(kw_only=True, metadata={
        "doc": "a .pcap/.pcapng file, or a directory of them (read in sorted order)"})
    on_corrupt: Literal["end", "stop"] = _doc(
        "end", "a corrupt record: end that file there (logged, counted, its flows still close) | stop the pipeline")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not str(self.path).strip():
            raise ValueError("path is required: a .pcap or .pcapng file, or a directory of them")


@register("pcap")
class PcapSource(_PacketSource):
    """Replay capture files (pcap/pcapng; Ethernet, Linux SLL/SLL2, raw IP, BSD loopback)."""

    Params = PcapParams

    def __init__(self, params: PcapParams | None = None) -> None:
        super().__init__(params)
        self.files: list[Path] = []
        self.read = ReadCounters()
        self.corrupt_files = 0

    def setup(self, context: NodeContext) -> None:
        super().setup(context)
        root = Path(self.params.path).expanduser()
        if root.is_dir():
            self.files = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".pcap", ".pcapng", ".cap"))
            if not self.files:
                raise FileNotFoundError(f"no .pcap/.pcapng files under directory {str(root)!r}")
        else:
            self.files = [root]
        CaptureReader(self.files[0]).close()  # a missing or foreign first file fails before the start

    def frames(self) -> Iterator[Frame]:
        stream = self.params.stream or self.name
        for path in self.files:
            reader = CaptureReader(path)
            try:
                yield from self._replay(iter(reader), stream)
            except CaptureFormatError as exc:
                if self.params.on_corrupt == "stop":
                    raise
                self.corrupt_files += 1
                log.error("%s: %s", self.name, exc)
            finally:
                reader.close()
                for name in ReadCounters.__dataclass_fields__:
                    setattr(self.read, name, getattr(self.read, name) + getattr(reader.counters, name))
            yield self._control_frame(stream, END_OF_CAPTURE, file=str(path))

    def stats(self) -> dict[str, int]:
        out = {f"read_{k}": v for k, v in vars(self.read).items() if v}
        out.update(files=len(self.files), corrupt_files=self.corrupt_files, filtered_out=self.filtered_out)
        return out


@dataclass(frozen=True)
class SyntheticTrafficParams(ReplayParams):
    kinds: tuple[str, ...] = _doc(TRAFFIC_KINDS, "traffic kinds: " + " | ".join(TRAFFIC_KINDS))
    flows_per_kind: int = _doc(20, "flows of each kind")
    duration_s: float = _doc(10.0, "flows start uniformly within this many seconds of capture time")
    seed: int = _doc(0, "the same seed gives the same bytes")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.config()

    def config(self) -> SyntheticTrafficConfig:
        return SyntheticTrafficConfig(kinds=tuple(self.kinds), flows_per_kind=self.flows_per_kind,
                                      duration_s=self.duration_s, seed=self.seed)


@register("synthetic_traffic")
class SyntheticTrafficSource(_PacketSource):
    """Deterministic labelled traffic (web, bulk, dns, media, interactive) as Ethernet frames, the same
    frames `pcap` emits for the file `python -m sensors.packets.synthetic` writes."""

    Params = SyntheticTrafficParams

    def frames(self) -> Iterator[Frame]:
        stream = self.params.stream or self.name
        records = (CaptureRecord(p.ts_ns, 1, p.frame, len(p.frame)) for p in synthetic_packets(self.params.config()))
        yield from self._replay(records, stream)
        yield self._control_frame(stream, END_OF_CAPTURE)


@dataclass(frozen=True)
class CaptureParams:
    interface: str = field(kw_only=True, metadata={"doc": "network interface (eth0, lo, ...) or 'any'"})
    filter: str | None = _doc(None, "BPF expression run in the kernel, tcpdump syntax ('tcp or udp')")
    snaplen: int = _doc(262144, "bytes kept per frame")
    promiscuous: bool = _doc(False, "also capture frames not addressed to this host")
    poll_s: float = _doc(0.5, "a silent interface emits a tick this often (idle flows expire on ticks)")
    buffer_bytes: int = _doc(8 << 20, "kernel socket buffer; frames beyond it are dropped and counted")
    stream: str | None = _doc(None, "stream id of the packet frames; default: the node name")

    def __post_init__(self) -> None:
        if not self.interface.strip():
            raise ValueError("interface is required: a network interface name such as eth0 or lo, or 'any'")
        if self.snaplen < 64:
            raise ValueError(f"snaplen must be >= 64 bytes, got {self.snaplen}")
        if not self.poll_s > 0:
            raise ValueError(f"poll_s must be > 0 seconds, got {self.poll_s}")


@register("capture")
class CaptureSource(_PacketSource):
    """Live frames from a network interface (Linux AF_PACKET; needs root or CAP_NET_RAW).

    Each frame's t_capture is the kernel's receive time moved onto the monotonic clock, so latency
    includes the time a frame waited in the socket buffer."""
    live = True

    Params = CaptureParams

    def __init__(self, params: CaptureParams | None = None) -> None:
        super().__init__(params)
        self._capture: LiveCapture | None = None

    def setup(self, context: NodeContext) -> None:
        Source.setup(self, context)  # no pacing, and the kernel runs the filter (compiled in open())
        p = self.params
        self._capture = LiveCapture(p.interface, p.filter, p.snaplen, p.promiscuous, p.poll_s, p.buffer_bytes).open()

    def stop(self) -> None:
        if self._capture is not None:
            self._capture.stop()

    def frames(self) -> Iterator[Frame]:
        if self._capture is None:
            raise RuntimeError("capture source used before setup(); the runtime calls setup first")
        stream = self.params.stream or self.name
        for record in self._capture:
            if record is None:
                yield self._control_frame(stream, TICK, ts_ns=time.time_ns())
                continue
            # the kernel stamped the frame on the realtime clock: move that instant onto the monotonic one
            t_capture = now_ns() - max(0, time.time_ns() - record.ts_ns)
            yield self._packet_frame(record, stream, t_capture)
        yield self._control_frame(stream, END_OF_CAPTURE)

    def teardown(self) -> None:
        if self._capture is not None:
            self._capture.close()

    def stats(self) -> dict[str, int]:
        return {} if self._capture is None else dict(vars(self._capture.counters))


@dataclass(frozen=True)
class FlowsNodeParams:
    idle_timeout_s: float = _doc(60.0, "capture-time seconds without packets after which a flow ends")
    active_timeout_s: float | None = _doc(1800.0, "a flow lasting this long is cut; null: never")
    max_flows: int = _doc(100_000, "flows held at most; the least recently seen is evicted (counted)")
    packets_per_flow: int = _doc(5, "packets per flow emitted with their representation (NetMamba: 5)")
    header_bytes: int = _doc(80, "NetMamba header bytes per packet")
    payload_bytes: int = _doc(240, "NetMamba payload bytes per packet")
    emit_flow_ends: bool = _doc(True, "emit a flow_end frame when a flow ends")

    def __post_init__(self) -> None:
        self.flow_params()

    def flow_params(self) -> FlowParams:
        return FlowParams(self.idle_timeout_s, self.active_timeout_s, self.max_flows, self.packets_per_flow,
                          self.header_bytes, self.payload_bytes)


@register("flows")
class FlowsNode(Operator):
    """Bidirectional 5-tuple flows over IPv4 TCP/UDP from packet frames (see the module docstring)."""
    consumes = PACKETS
    produces = FLOW

    Params = FlowsNodeParams

    def __init__(self, params: FlowsNodeParams | None = None) -> None:
        super().__init__(params)
        self.assembler = FlowAssembler(self.params.flow_params())
        self.malformed_frames = 0

    def process(self, frame: Frame) -> list[Frame]:
        meta = frame.meta
        event = meta.get("event")
        if event == END_OF_CAPTURE:
            events = self.assembler.flush()
        elif event == TICK:
            events = self.assembler.advance(int(meta["ts_ns"]))
        else:
            data = frame.data.get("frame") if isinstance(frame.data, dict) else None
            if data is None or "linktype" not in meta or "ts_ns" not in meta:
                self.malformed_frames += 1
                raise ValueError(f"node {self.name!r} (flows) expects packet frames from a pcap, capture or "
                                 f"synthetic_traffic source (data['frame'] and meta ts_ns, linktype); frame "
                                 f"{frame.key} has data {type(frame.data).__name__} and meta {sorted(meta)}")
            record = CaptureRecord(int(meta["ts_ns"]), int(meta["linktype"]), bytes(data),
                                   int(meta.get("orig_len", len(data))), int(meta.get("interface", 0)))
            events = self.assembler.add(record)
        out: list[Frame] = []
        for ev in events:
            if isinstance(ev, FlowEnd):
                if self.params.emit_flow_ends:
                    out.append(Frame(ev.flow_id, ev.emitted, frame.t_capture, {}, flow_end_meta(ev), frame.trace))
            else:
                out.append(Frame(ev.flow_id, ev.index, frame.t_capture, {"packet": ev.representation},
                                 {"event": PACKET, "flow": ev.flow_id, "direction": _DIRECTIONS[ev.direction],
                                  "packet_index": ev.index, "ts_ns": ev.ts_ns}, frame.trace))
        return out

    def stats(self) -> dict[str, int]:
        out = self.assembler.counters.as_dict()
        out["open_flows"] = len(self.assembler)
        if self.malformed_frames:
            out["not_packet_frames"] = self.malformed_frames
        return out


def flow_end_meta(end: FlowEnd) -> dict[str, Any]:
    """The meta of a flow_end frame (what `flow_jsonl` writes for it)."""
    return {"event": FLOW_END, "flow": end.flow_id, "reason": end.reason.value,
            "packets_forward": end.packets[0], "packets_backward": end.packets[1],
            "bytes_forward": end.bytes[0], "bytes_backward": end.bytes[1],
            "first_ts_ns": end.first_ts_ns, "last_ts_ns": end.last_ts_ns, "packets_emitted": end.emitted}
