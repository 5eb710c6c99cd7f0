"""NetMamba's byte representation of a packet and of a flow.

Per packet (Wang et al., NetMamba, ICNP 2024): the link layer is dropped, the IPv4 source and
destination addresses are set to 0.0.0.0 (ports and every other header field are kept), the header
part (IPv4 + TCP/UDP header, options included) is cropped or zero-padded to 80 bytes and the
transport payload to 240 bytes: 320 bytes. A flow is its first 5 packets, 1600 bytes, with missing
packets all zeros. Bytes stay uint8 here; the model scales them (operators.models.netmamba).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from sensors.packets.decode import IPv4Packet

HEADER_BYTES = 80
PAYLOAD_BYTES = 240
PACKET_BYTES = HEADER_BYTES + PAYLOAD_BYTES
PACKETS_PER_FLOW = 5
FLOW_BYTES = PACKET_BYTES * PACKETS_PER_FLOW
_IP_ADDRESSES = slice(12, 20)  # source and destination in the IPv4 header


def packet_bytes(packet: IPv4Packet, header_bytes: int = HEADER_BYTES,
                 payload_bytes: int = PAYLOAD_BYTES) -> np.ndarray:
    """(header_bytes + payload_bytes,) uint8: the header with zeroed addresses, then the payload."""
    out = np.zeros(header_bytes + payload_bytes, dtype=np.uint8)
    header = np.frombuffer(packet.header, dtype=np.uint8)[:header_bytes]
    out[:header.size] = header
    out[_IP_ADDRESSES] = 0
    payload = np.frombuffer(packet.payload, dtype=np.uint8)[:payload_bytes]
    out[header_bytes:header_bytes + payload.size] = payload
    return out


def flow_bytes(packets: Sequence[np.ndarray], packets_per_flow: int = PACKETS_PER_FLOW,
               packet_size: int = PACKET_BYTES) -> np.ndarray:
    """(packets_per_flow * packet_size,) uint8: the first packets' bytes in order, zeros after."""
    out = np.zeros(packets_per_flow * packet_size, dtype=np.uint8)
    for i, rep in enumerate(packets[:packets_per_flow]):
        if rep.shape != (packet_size,):
            raise ValueError(f"packet {i} has {rep.shape} bytes, expected ({packet_size},) from packet_bytes()")
        out[i * packet_size:(i + 1) * packet_size] = rep
    return out
