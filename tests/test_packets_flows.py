"""Flow assembly (bidirectional 5-tuple, FIN/RST, timeouts, bounded table), NetMamba's byte
representation, BPF filters, and the packet nodes' handling of damaged captures."""
from __future__ import annotations

import json

import dpkt
import numpy as np
import pytest

from packet_helpers import CLIENT, SERVER, ethernet, tcp_ip, udp_ip
from sensors.packets import (
    CaptureRecord,
    EndReason,
    FlowAssembler,
    FlowEnd,
    FlowPacket,
    FlowParams,
    PcapWriter,
    assemble_flows,
    decode,
    packet_bytes,
)
from sensors.packets.bpf import BpfError, compile_filter, run_filter
from stream.pipeline import Pipeline

S = 1_000_000_000
SYN, ACK, FIN, RST, PSH = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_FIN, dpkt.tcp.TH_RST, dpkt.tcp.TH_PUSH


def rec(ts: int, ip: bytes) -> CaptureRecord:
    return CaptureRecord(ts, 101, ip, len(ip))


def c2s(flags: int, payload: bytes = b"", sport: int = 40000) -> bytes:
    return tcp_ip(CLIENT, SERVER, sport, 80, flags, payload)


def s2c(flags: int, payload: bytes = b"", sport: int = 40000) -> bytes:
    return tcp_ip(SERVER, CLIENT, 80, sport, flags, payload)


def events_of(records, **params):
    assembler = FlowAssembler(FlowParams(**params))
    return list(assemble_flows(records, assembler=assembler)), assembler


def ends(events):
    return [e for e in events if isinstance(e, FlowEnd)]


def test_tcp_connection_is_one_bidirectional_flow_closed_by_fin():
    ips = [c2s(SYN), s2c(SYN | ACK), c2s(ACK), c2s(ACK | PSH, b"GET /"), s2c(ACK | PSH, b"200 OK"),
           c2s(FIN | ACK), s2c(FIN | ACK), c2s(ACK)]
    events, assembler = events_of([rec(i * 1000, ip) for i, ip in enumerate(ips)])
    packets = [e for e in events if isinstance(e, FlowPacket)]
    assert [p.direction for p in packets] == [0, 1, 0, 0, 1]
    assert [p.index for p in packets] == list(range(5))
    (end,) = ends(events)
    assert end.reason is EndReason.FIN and end.packets == (5, 3) and end.emitted == 5
    assert end.bytes == (sum(len(ip) for ip in ips if ip[12:16] == CLIENT), sum(len(ip) for ip in ips if ip[12:16] == SERVER))
    assert str(end.key) == "tcp 10.1.2.3:40000 > 192.168.7.9:80" and end.flow_id.endswith("#1")
    assert (end.first_ts_ns, end.last_ts_ns) == (0, 7000)
    assert assembler.counters.ended == {"fin": 1} and len(assembler) == 0


def test_rst_closes_and_a_late_packet_starts_a_new_flow():
    events, assembler = events_of([rec(0, c2s(SYN)), rec(1, s2c(RST | ACK)), rec(2, c2s(ACK))])
    first, second = ends(events)
    assert (first.reason, first.packets) == (EndReason.RST, (1, 1))
    assert (second.reason, second.packets) == (EndReason.END_OF_CAPTURE, (1, 0))
    assert assembler.counters.flows_started == 2


def test_syn_after_both_fins_reuses_the_five_tuple_as_a_new_flow():
    ips = [c2s(SYN), s2c(SYN | ACK), c2s(FIN | ACK), s2c(FIN | ACK), c2s(SYN), s2c(SYN | ACK)]
    events, _ = events_of([rec(i, ip) for i, ip in enumerate(ips)])
    first, second = ends(events)
    assert (first.reason, first.packets, second.packets) == (EndReason.FIN, (2, 2), (1, 1))
    assert first.flow_id != second.flow_id


def test_idle_and_active_timeouts_run_on_capture_time():
    dns = udp_ip(sport=5000)
    other = udp_ip(sport=6000)
    events, _ = events_of([rec(0, dns), rec(1 * S, udp_ip(SERVER, CLIENT, 53, 5000)), rec(12 * S, other)],
                          idle_timeout_s=10)
    idle = ends(events)[0]
    assert (idle.reason, idle.packets) == (EndReason.IDLE, (1, 1))
    assert events.index(idle) < next(i for i, e in enumerate(events) if isinstance(e, FlowPacket) and e.key.sport == 6000)
    # a chatty flow is cut by the active timeout and goes on as a new flow
    events, _ = events_of([rec(t * S, dns) for t in range(7)], idle_timeout_s=10, active_timeout_s=3)
    reasons = [(e.reason, e.total_packets) for e in ends(events)]
    assert reasons == [(EndReason.ACTIVE, 3), (EndReason.ACTIVE, 3), (EndReason.END_OF_CAPTURE, 1)]


def test_advance_expires_flows_without_packets():
    assembler = FlowAssembler(FlowParams(idle_timeout_s=5))
    assembler.add(rec(0, udp_ip()))
    assert assembler.advance(5 * S) == []
    (end,) = assembler.advance(5 * S + 1)
    assert end.reason is EndReason.IDLE and len(assembler) == 0


def test_bounded_table_evicts_the_least_recently_seen_and_counts_it():
    a, b, c = (udp_ip(sport=p) for p in (1001, 1002, 1003))
    events, assembler = events_of([rec(0, a), rec(1, b), rec(2, a), rec(3, c)], max_flows=2)
    evicted = ends(events)[0]
    assert evicted.reason is EndReason.EVICTED and evicted.key.sport == 1002
    assert assembler.counters.ended["evicted"] == 1


def test_only_the_first_packets_carry_a_representation_but_all_are_counted():
    events, _ = events_of([rec(i, udp_ip(payload=bytes([i]))) for i in range(8)], packets_per_flow=5)
    assert sum(isinstance(e, FlowPacket) for e in events) == 5
    assert ends(events)[0].packets == (8, 0)


def test_skipped_frames_are_counted_and_never_stop_the_stream():
    ip6 = bytes(dpkt.ip6.IP6(src=b"\0" * 16, dst=b"\0" * 16, nxt=17, data=dpkt.udp.UDP(sport=1, dport=2)))
    records = [CaptureRecord(0, 1, ethernet(ip6, 0x86DD), 0), CaptureRecord(1, 1, ethernet(bytes(28), 0x0806), 0),
               CaptureRecord(2, 1, b"\x00" * 5, 0), rec(3, tcp_ip()[:30]), rec(4, udp_ip())]
    events, assembler = events_of(records)
    assert len(ends(events)) == 1
    assert assembler.counters.skipped == {"ipv6": 1, "non_ip": 1, "malformed": 2}
    assert assembler.counters.frames == 5 and assembler.counters.packets == 1


def test_netmamba_representation_matches_the_original_recipe():
    payload = bytes(range(256)) + b"tail"
    opts = bytes.fromhex("0101080a0000000100000002")  # NOP NOP timestamps: a 32-byte TCP header
    ip = tcp_ip(payload=payload, opts=opts, flags=ACK | PSH)
    rep = packet_bytes(decode(rec(0, ip)))
    # NetMamba: IP packet with addresses 0.0.0.0, header = IP + TCP header bytes, cropped/padded to 80,
    # payload cropped/padded to 240
    zeroed = bytearray(ip)
    zeroed[12:20] = bytes(8)
    header, body = bytes(zeroed[:20 + 32]), bytes(zeroed[52:])
    expected = np.frombuffer(header.ljust(80, b"\0") + body[:240], dtype=np.uint8)
    np.testing.assert_array_equal(rep, expected)
    small = packet_bytes(decode(rec(0, udp_ip(payload=b"abc"))))
    assert small[28:80].sum() == 0 and bytes(small[80:83]) == b"abc" and small[83:].sum() == 0
    assert small[12:20].sum() == 0 and bytes(small[20:22]) == (5353).to_bytes(2, "big")  # ports are kept


def test_bpf_filters_compile_and_run():
    program = compile_filter("tcp port 80")
    assert run_filter(program, ethernet(c2s(SYN))) and run_filter(program, ethernet(s2c(ACK)))
    assert not run_filter(program, ethernet(udp_ip(dport=80)))
    assert not run_filter(program, ethernet(tcp_ip(sport=1, dport=443)))
    raw = compile_filter("udp", linktype=101)
    assert run_filter(raw, udp_ip()) and not run_filter(raw, tcp_ip())
    with pytest.raises(BpfError, match="does not compile"):
        compile_filter("tcp prot 80")


def _write(path, ips, start=0):
    with PcapWriter(path) as w:
        for i, ip in enumerate(ips):
            w.write(start + i * 1000, ethernet(ip))


def _flow_pipeline(tmp_path, source: dict) -> Pipeline:
    return Pipeline.from_dict({
        "version": 1, "name": "flows",
        "nodes": {
            "src": source,
            "flows": {"kind": "flows", "inputs": [{"from": "src", "policy": "block", "queue_size": 64}]},
            "out": {"kind": "flow_jsonl", "inputs": [{"from": "flows", "policy": "block", "queue_size": 64}],
                    "params": {"path": str(tmp_path / "flows.jsonl"), "events": ["flow_end"]}},
        }})


def test_pcap_directory_with_a_corrupt_file_ends_that_file_and_goes_on(tmp_path, caplog):
    folder = tmp_path / "captures"
    folder.mkdir()
    _write(folder / "a.pcap", [c2s(SYN), s2c(SYN | ACK), c2s(ACK)])
    _write(folder / "b.pcap", [udp_ip(sport=7000), udp_ip(sport=7001), udp_ip(sport=7002)])
    data = bytearray((folder / "b.pcap").read_bytes())
    second = 24 + 16 + len(ethernet(udp_ip(sport=7000)))  # the second record gets an impossible length
    data[second + 8:second + 12] = b"\xff\xff\xff\x7f"
    (folder / "b.pcap").write_bytes(bytes(data))
    _write(folder / "c.pcap", [udp_ip(sport=9000)])
    pipeline = _flow_pipeline(tmp_path, {"kind": "pcap", "params": {"path": str(folder)}})
    report = pipeline.run()
    assert report.ok
    records = [json.loads(line) for line in (tmp_path / "flows.jsonl").read_text().splitlines()]
    assert [(r["packets_forward"], r["packets_backward"], r["reason"]) for r in records] == [
        (2, 1, "end_of_capture"), (1, 0, "end_of_capture"), (1, 0, "end_of_capture")]
    source = pipeline.executor.nodes["src"]
    assert source.stats()["corrupt_files"] == 1 and source.stats()["files"] == 3
    assert "corrupt" in caplog.text


def test_pcap_source_filter_and_foreign_file_at_setup(tmp_path):
    path = tmp_path / "mixed.pcap"
    _write(path, [c2s(SYN), udp_ip(), s2c(SYN | ACK)])
    pipeline = _flow_pipeline(tmp_path, {"kind": "pcap", "params": {"path": str(path), "filter": "tcp"}})
    assert pipeline.run().ok
    records = [json.loads(line) for line in (tmp_path / "flows.jsonl").read_text().splitlines()]
    assert [(r["packets_forward"], r["packets_backward"]) for r in records] == [(1, 1)]
    assert pipeline.executor.nodes["src"].stats()["filtered_out"] == 1
    text = tmp_path / "notes.pcap"
    text.write_text("this is not a capture\n")
    from stream.executor import PipelineStartError

    with pytest.raises(PipelineStartError, match="text file, not a pcap"):
        _flow_pipeline(tmp_path, {"kind": "pcap", "params": {"path": str(text)}}).run()
