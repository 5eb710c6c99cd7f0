"""NetMamba streamed packet by packet vs buffering the flow and running the offline model, and vs a
Transformer encoder of the same width and depth over the same 401 tokens. CPU by default.

For B concurrent flows (batch 1 and 256) whose packets arrive together:
(a) decision latency: from the deciding (5th) packet to the class. Streaming: the flows' states are
    already up to date after 4 packets, so only the last packet's 80 tokens and the CLS token are
    left (gathered from the state pool and stepped, as the `netmamba` node does). Offline: the
    buffered 1600 bytes through the whole model (401 tokens). Goal: >= 4x lower latency.
(b) throughput: all 5 packets of B flows, streamed (4 packet steps + the decision, each with the
    pool's gather/scatter) vs one batched offline call; flows/s and packets/s. Goal: >= 0.8x.
(c) the same for a Transformer encoder (d_model 256, 4 layers, 8 heads, feed-forward 512 = Mamba's
    inner width) with the same stride embedding, positions and CLS token: it must wait for the whole
    flow (attention is not causal) and then run all 401 tokens.
Random weights (timing does not depend on them), eval mode, torch.inference_mode, warm-up calls,
medians of interleaved repetitions, inputs prepared outside the timed region.

    python benchmarks/netmamba_stream.py [--quick] [--json out.json] [--threads N] [--batches 1,256]
    (--embed-dim/--depth shrink both models for a smoke run; the numbers to report use the defaults)
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_util import time_interleaved  # noqa: E402

from operators.models.netmamba import NetMamba, NetMambaConfig, bytes_to_input  # noqa: E402
from operators.nodes.state_pool import MambaStatePool  # noqa: E402

LATENCY_GOAL, THROUGHPUT_GOAL = 4.0, 0.8


class TransformerClassifier(nn.Module):
    """NetMamba's embedding, positions and CLS-last head around nn.TransformerEncoder of equal width/depth."""

    def __init__(self, config: NetMambaConfig, heads: int = 8) -> None:
        super().__init__()
        D = config.embed_dim
        self.embed = nn.Conv1d(1, D, config.stride, stride=config.stride)
        self.cls = nn.Parameter(torch.zeros(1, 1, D))
        self.pos = nn.Parameter(torch.randn(1, config.num_patches + 1, D) * 0.02)
        layer = nn.TransformerEncoderLayer(D, heads, dim_feedforward=config.expand * D, batch_first=True,
                                           norm_first=True, dropout=0.0)
        self.encoder = nn.TransformerEncoder(layer, config.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(D)
        self.head = nn.Linear(D, config.num_classes)

    def forward(self, flow: Tensor) -> Tensor:
        tokens = self.embed(flow.unsqueeze(1)).transpose(1, 2)
        h = torch.cat((tokens, self.cls.expand(len(flow), -1, -1)), 1) + self.pos
        return self.head(self.norm(self.encoder(h)[:, -1]))


def _streaming(model: NetMamba, flows: Tensor) -> tuple[Callable[[], Tensor], Callable[[], Tensor]]:
    """(decide: the 5th packet of B flows whose states hold packets 1-4, all: packets 1-5 of B flows)."""
    c = model.config
    batch = flows.shape[0]
    pool = MambaStatePool(model.init_state(1).layers, max_slots=2 * batch, initial_slots=2 * batch)
    ready = torch.tensor([pool.allocate() for _ in range(batch)])  # flows after 4 packets
    fresh = torch.tensor([pool.allocate() for _ in range(batch)])  # flows that start now
    packets = [bytes_to_input(flows[:, k * c.packet_bytes:(k + 1) * c.packet_bytes]) for k in range(c.packets)]
    index = [torch.full((batch,), k, dtype=torch.long) for k in range(c.packets)]
    last = c.packets - 1
    for k in range(last):  # not timed: the states the deciding packet finds
        layers = pool.gather(ready)
        model.step_packets(packets[k], index[k], layers)
        pool.scatter(ready, layers)

    def decide() -> Tensor:
        return model.decide_packets(bytes_to_input(flows[:, last * c.packet_bytes:]), index[last], pool.gather(ready))

    def all_packets() -> Tensor:
        pool.zero(fresh)
        for k in range(last):
            layers = pool.gather(fresh)
            model.step_packets(bytes_to_input(flows[:, k * c.packet_bytes:(k + 1) * c.packet_bytes]), index[k], layers)
            pool.scatter(fresh, layers)
        return model.decide_packets(bytes_to_input(flows[:, last * c.packet_bytes:]), index[last], pool.gather(fresh))

    return decide, all_packets


def measure(batch: int, quick: bool, seed: int = 0, embed_dim: int = 256, depth: int = 4) -> dict[str, Any]:
    config = NetMambaConfig(num_classes=10, embed_dim=embed_dim, depth=depth)
    torch.manual_seed(seed)
    model = NetMamba(config).eval()
    transformer = TransformerClassifier(config).eval()
    flows = torch.randint(0, 256, (batch, config.flow_bytes), dtype=torch.uint8)
    with torch.inference_mode():
        decide, stream_all = _streaming(model, flows)
        fns = {"stream_decide": decide, "stream_all": stream_all,
               "offline": lambda: model(bytes_to_input(flows)),
               "transformer": lambda: transformer(bytes_to_input(flows))}
        # the streamed decision equals the offline one (this also warms both paths up once)
        torch.testing.assert_close(decide(), fns["offline"](), rtol=1e-4, atol=1e-4)
        big = batch >= 64
        if quick:  # a smoke run: at 256 flows each call takes seconds on a small CPU
            repeats, warmup, rounds = (1, 0, 1) if big else (6, 2, 2)
        else:
            repeats, warmup, rounds = (3, 1, 3) if big else (30, 3, 3)
        times = time_interleaved(fns, repeats=repeats, warmup=warmup, rounds=rounds)
    packets = config.packets
    row = {"batch": batch, **{f"{k}_ms": v * 1e3 for k, v in times.items()},
           "latency_speedup_vs_offline": times["offline"] / times["stream_decide"],
           "latency_speedup_vs_transformer": times["transformer"] / times["stream_decide"],
           "stream_flows_per_s": batch / times["stream_all"], "offline_flows_per_s": batch / times["offline"],
           "transformer_flows_per_s": batch / times["transformer"],
           "throughput_ratio_vs_offline": times["offline"] / times["stream_all"],
           "throughput_ratio_vs_transformer": times["transformer"] / times["stream_all"]}
    row["stream_packets_per_s"] = row["stream_flows_per_s"] * packets
    row["offline_packets_per_s"] = row["offline_flows_per_s"] * packets
    row["transformer_packets_per_s"] = row["transformer_flows_per_s"] * packets
    return row


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = ["(a) decision latency from the deciding packet (ms, median)",
             f"{'batch':>6} {'streaming':>10} {'offline':>10} {'Transf.':>10} {'vs offline':>11} {'vs Transf.':>11}"]
    for r in rows:
        ok = "ok" if r["latency_speedup_vs_offline"] >= LATENCY_GOAL else "below goal"
        lines.append(f"{r['batch']:>6} {r['stream_decide_ms']:>10.2f} {r['offline_ms']:>10.2f} "
                     f"{r['transformer_ms']:>10.2f} {r['latency_speedup_vs_offline']:>10.2f}x "
                     f"{r['latency_speedup_vs_transformer']:>10.2f}x  (goal >= {LATENCY_GOAL:.0f}x vs offline: {ok})")
    lines += ["", "(b, c) throughput, all 5 packets of each flow (flows/s | packets/s)",
              f"{'batch':>6} {'streaming':>22} {'offline':>22} {'Transformer':>22} {'vs offline':>11} {'vs Transf.':>11}"]
    for r in rows:
        ok = "ok" if r["throughput_ratio_vs_offline"] >= THROUGHPUT_GOAL else "below goal"
        cell = lambda k: f"{r[k + '_flows_per_s']:>9.1f} | {r[k + '_packets_per_s']:>9.1f}"  # noqa: E731
        lines.append(f"{r['batch']:>6} {cell('stream'):>22} {cell('offline'):>22} {cell('transformer'):>22} "
                     f"{r['throughput_ratio_vs_offline']:>10.2f}x {r['throughput_ratio_vs_transformer']:>10.2f}x"
                     f"  (goal >= {THROUGHPUT_GOAL}x vs offline: {ok})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--batches", default="1,256", help="concurrent flows per measurement (default 1,256)")
    parser.add_argument("--embed-dim", type=int, default=256, help="model width (the published 256; smaller for smoke runs)")
    parser.add_argument("--depth", type=int, default=4, help="Mamba blocks / Transformer layers (the published 4)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    t0 = time.perf_counter()
    rows = [measure(b, args.quick, embed_dim=args.embed_dim, depth=args.depth) for b in batches]
    print(format_table(rows))
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.processor() or
            platform.machine(), "python": platform.python_version(), "quick": args.quick,
            "seconds": time.perf_counter() - t0, "embed_dim": args.embed_dim, "depth": args.depth}
    print(f"\n(torch {meta['torch']}, {meta['threads']} threads, {meta['seconds']:.0f} s)")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"benchmark": "netmamba_stream", "meta": meta, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
