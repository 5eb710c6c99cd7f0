"""Many cameras (skeleton tracks) through one continual-model node, CPU: the cost of one round in
which every stream brings one frame.

Three ways to step N streams, timed interleaved in one process with the same model and weights:

* `alone`: each stream's own batch-1 step, one after the other;
* `split`: stack the streams' states, one batched step, split the result again (the node's
  behaviour before session 3: two copies of every ring buffer per step);
* `node`: `process_batch` of the model node (ours): each stream keeps a row of a persistent
  batched state, so streams that keep arriving together step it with no copy;
* `mixed`: the node when each round brings a random three quarters of the streams (cameras at
  different rates, robots whose requests interleave: the batch changes every round and rows are
  gathered), scaled to one frame per stream so that it compares with the others.

    python benchmarks/models_multistream.py [--streams 8] [--quick] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import sys
from pathlib import Path
from typing import Any, Callable

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_util import time_interleaved  # noqa: E402

from operators.nodes.skeleton import CoSTGCNNode, CoSTGCNNodeParams  # noqa: E402
from operators.nodes.video import CoX3DNode, CoX3DParams  # noqa: E402
from operators.state import split_state, stack_states  # noqa: E402
from stream.frame import Frame  # noqa: E402
from stream.node import NodeContext  # noqa: E402


def video_node(reset_on_gap: bool = True) -> tuple[Any, Callable[[str, int], Frame]]:
    node = CoX3DNode(CoX3DParams(size="s", reset_on_gap=reset_on_gap))
    node.setup(NodeContext(name="cox3d", device="cpu"))
    side = node.model.config.pixels
    image = torch.rand(3, side, side)
    return node, lambda stream, seq: Frame(stream, seq, seq, {"video": image})


def skeleton_node(reset_on_gap: bool = True) -> tuple[Any, Callable[[str, int], Frame]]:
    node = CoSTGCNNode(CoSTGCNNodeParams(variant="costgcn_star", reset_on_gap=reset_on_gap))
    node.setup(NodeContext(name="costgcn", device="cpu"))
    skeleton = torch.randn(3, 25, 2)
    return node, lambda stream, seq: Frame(stream, seq, seq, {"skeleton": skeleton})


CASES = {"CoX3D-S": video_node, "CoST-GCN*": skeleton_node}


def measure(name: str, streams: int, warm: int, repeats: int) -> dict[str, Any]:
    node, make = CASES[name]()
    model = node.model
    names = [f"{name}/{i}" for i in range(streams)]
    seq = {"n": 0}
    for _ in range(warm):  # past warm-up, so every step is a steady-state step
        node.process_batch([make(s, seq["n"]) for s in names])
        seq["n"] += 1
    x1 = torch.stack([node.input_tensor(make(names[0], 0))])
    xn = x1.expand(streams, *x1.shape[1:]).contiguous()
    with torch.inference_mode():
        alone_states = [model.init_state(1) for _ in names]
        for _ in range(warm):
            alone_states = [model.step(x1, s)[1] for s in alone_states]
        split_states = [s for s in alone_states]

    def alone() -> None:
        with torch.inference_mode():
            for i, s in enumerate(alone_states):
                alone_states[i] = model.step(x1, s)[1]

    def split() -> None:
        with torch.inference_mode():
            _, batched = model.step(xn, stack_states(split_states))
            split_states[:] = split_state(batched)

    def ours() -> None:
        node.process_batch([make(s, seq["n"]) for s in names])
        seq["n"] += 1

    # Mixed arrivals: skipped rounds are gaps, so this node steps over them (reset_on_gap: false)
    # instead of restarting the streams' warm-up.
    mixed_node, _ = CASES[name](reset_on_gap=False)
    mixed_seq = dict.fromkeys(names, 0)
    arriving = max(1, streams - streams // 4)
    rng = random.Random(0)
    for _ in range(warm):
        mixed_node.process_batch([make(s, mixed_seq[s]) for s in names])
        mixed_seq.update({s: mixed_seq[s] + 1 for s in names})

    def mixed() -> None:
        subset = rng.sample(names, arriving)
        mixed_node.process_batch([make(s, mixed_seq[s]) for s in subset])
        mixed_seq.update({s: mixed_seq[s] + 1 for s in subset})

    times = time_interleaved({"alone": alone, "split": split, "node": ours, "mixed": mixed}, repeats=repeats,
                             warmup=1, rounds=min(5, repeats))
    times["mixed"] *= streams / arriving  # per frame of every stream, like the other columns
    return {"case": name, "streams": streams, "mixed_arriving": arriving, **{f"{k}_ms": v * 1e3 for k, v in times.items()},
            "node_vs_alone": times["alone"] / times["node"], "node_vs_split": times["split"] / times["node"],
            "mixed_vs_alone": times["alone"] / times["mixed"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="2 streams, a few repetitions (checks it works)")
    parser.add_argument("--only", default=None, help="a case name (CoX3D-S, CoST-GCN*)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    streams = 2 if args.quick else args.streams
    rows = []
    for name in CASES:
        if args.only and args.only.lower() not in name.lower():
            continue
        warm = 3 if args.quick else (20 if name == "CoX3D-S" else 80)  # CoST-GCN*'s receptive field is 81 frames
        rows.append(measure(name, streams, warm, 2 if args.quick else 15))
    print(f"one round of {streams} streams, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}")
    print(f"{'case':<10}{'alone':>11}{'split':>11}{'node':>11}{'mixed':>11}{'node vs alone':>15}{'node vs split':>15}"
          f"{'mixed vs alone':>16}")
    for r in rows:
        print(f"{r['case']:<10}{r['alone_ms']:>9.1f}ms{r['split_ms']:>9.1f}ms{r['node_ms']:>9.1f}ms{r['mixed_ms']:>9.1f}ms"
              f"{r['node_vs_alone']:>14.2f}x{r['node_vs_split']:>14.2f}x{r['mixed_vs_alone']:>15.2f}x")
    if rows:
        print(f"(mixed: {rows[0]['mixed_arriving']} of {streams} streams per round, at random; scaled to one frame per stream)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"quick": args.quick, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
