"""Network packets: capture files, live capture, flow assembly and NetMamba's byte representation.

Plain iterators usable without the runtime:

    from sensors.packets import CaptureReader, assemble_flows
    for event in assemble_flows(CaptureReader("trace.pcapng")):
        ...

The node kinds (`pcap`, `capture`, `flows`, ...) live in `sensors.packets.nodes`.
"""
from sensors.packets.capture_files import (
    CaptureFormatError,
    CaptureReader,
    CaptureRecord,
    PcapWriter,
    read_capture,
)
from sensors.packets.decode import IPv4Packet, Skip, decode
from sensors.packets.flows import (
    EndReason,
    FlowAssembler,
    FlowEnd,
    FlowKey,
    FlowPacket,
    FlowParams,
    assemble_flows,
)
from sensors.packets.representation import FLOW_BYTES, PACKET_BYTES, flow_bytes, packet_bytes

__all__ = [
    "CaptureFormatError", "CaptureReader", "CaptureRecord", "EndReason", "FLOW_BYTES", "FlowAssembler",
    "FlowEnd", "FlowKey", "FlowPacket", "FlowParams", "IPv4Packet", "PACKET_BYTES", "PcapWriter", "Skip",
    "assemble_flows", "decode", "flow_bytes", "packet_bytes", "read_capture",
]
