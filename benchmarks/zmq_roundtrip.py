"""Request/reply round trip through `costream serve` (pass-through pipeline) next to a raw pyzmq
REQ/REP echo of the same payloads, both servers in their own processes, measured in one run with
interleaved rounds so machine noise hits both alike.

    python benchmarks/zmq_roundtrip.py            # full run
    python benchmarks/zmq_roundtrip.py --quick    # a few seconds, to check it works
    python benchmarks/zmq_roundtrip.py --json out/zmq_roundtrip.json

Goal (issue 5): our p50 at most 1.3x the raw echo for 224x224x3 and larger.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import zmq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from stream.zmq import Client, ReplyTimeout  # noqa: E402

PAYLOADS = {
    "64 B": (64,),
    "224x224x3 uint8": (224, 224, 3),
    "640x480x3 uint8": (480, 640, 3),
    "4 MB": (4 * 1024 * 1024,),
}
GOAL_RATIO = 1.3

ECHO_SERVER = """
import sys, zmq
ctx = zmq.Context()
rep = ctx.socket(zmq.REP)
rep.bind(sys.argv[1])
while True:
    parts = rep.recv_multipart(copy=False)
    rep.send_multipart(parts, copy=False)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples), q))


def wait_for_ours(client: Client, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"costream serve exited with {proc.returncode}")
        try:
            client.ping(timeout=0.25)
            return
        except ReplyTimeout:
            if time.monotonic() > deadline:
                raise


def run(iterations: int, rounds: int, warmup: int) -> dict:
    ours_ep, raw_ep = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    serve = subprocess.Popen([sys.executable, "-c", "import sys; from stream.cli import main; sys.exit(main())",
                              "serve", str(REPO / "pipelines" / "serve_passthrough.yaml"), "--endpoint", ours_ep],
                             env=env, cwd=REPO)  # exactly what `costream serve` runs
    echo = subprocess.Popen([sys.executable, "-c", ECHO_SERVER, raw_ep], env=env)
    ctx = zmq.Context()
    req = ctx.socket(zmq.REQ)
    req.connect(raw_ep)
    results: dict[str, dict] = {}
    try:
        with Client(ours_ep, timeout=30) as client:
            wait_for_ours(client, serve)
            for label, shape in PAYLOADS.items():
                arr = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
                raw_buf = memoryview(arr.reshape(-1))
                copy = arr.nbytes < 64 * 1024

                def ours() -> None:
                    reply = client.request(arr)
                    if reply.arrays["input"].nbytes != arr.nbytes:
                        raise RuntimeError("wrong reply size")

                def raw() -> None:
                    req.send_multipart([b"h", raw_buf], copy=copy)
                    if len(req.recv_multipart(copy=False)[1]) != arr.nbytes:
                        raise RuntimeError("wrong echo size")

                for fn in (ours, raw):
                    for _ in range(warmup):
                        fn()
                samples: dict[str, list[float]] = {"ours": [], "raw": []}
                per_round = max(1, iterations // rounds)
                for _ in range(rounds):
                    for key, fn in (("ours", ours), ("raw", raw)):
                        for _ in range(per_round):
                            t0 = time.perf_counter()
                            fn()
                            samples[key].append((time.perf_counter() - t0) * 1e6)
                row = {"bytes": int(arr.nbytes), "n": len(samples["ours"])}
                for key, vals in samples.items():
                    row[f"{key}_p50_us"] = percentile(vals, 50)
                    row[f"{key}_p99_us"] = percentile(vals, 99)
                row["ratio_p50"] = row["ours_p50_us"] / row["raw_p50_us"]
                results[label] = row
    finally:
        req.close(linger=0)
        ctx.term()
        echo.kill()
        serve.send_signal(2)
        try:
            serve.wait(20)
        except subprocess.TimeoutExpired:
            serve.kill()
        echo.wait(20)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=1000, help="round trips per payload and side")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds")
    parser.add_argument("--quick", action="store_true", help="60 round trips per payload (checks it works)")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    iterations, warmup = (60, 5) if args.quick else (args.iterations, 50)
    results = run(iterations, min(args.rounds, iterations), warmup)
    print(f"{'payload':<18}{'ours p50':>11}{'ours p99':>11}{'raw p50':>11}{'raw p99':>11}{'p50 ratio':>11}  goal")
    for label, r in results.items():
        goal = "" if r["bytes"] < 224 * 224 * 3 else ("ok" if r["ratio_p50"] <= GOAL_RATIO else f"> {GOAL_RATIO}x")
        print(f"{label:<18}{r['ours_p50_us']:>9.0f}us{r['ours_p99_us']:>9.0f}us{r['raw_p50_us']:>9.0f}us"
              f"{r['raw_p99_us']:>9.0f}us{r['ratio_p50']:>10.2f}x  {goal}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"quick": args.quick, "goal_ratio": GOAL_RATIO, "results": results},
                                              indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
