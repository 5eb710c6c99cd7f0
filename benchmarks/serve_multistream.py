"""Several robots, one served continual model: `costream serve pipelines/video_action.yaml` with N
robot processes, each sending its own camera stream (640x480 uint8 BGR frames, raw) in a closed loop
(send a frame, wait for its reply, send the next).

Two servers, one after the other, with the same model, weights and robots: the pipeline as shipped
(`max_batch: 8`, so frames of different robots that wait together are stepped as one batch on the
persistent batched state) and with `max_batch: 1` (one stream per step). Reported after every
robot's warm-up: predictions per second over all robots, each robot's p50 round trip, and the ratio.

    python benchmarks/serve_multistream.py                 # 8 robots, CoX3D-S
    python benchmarks/serve_multistream.py --quick         # 2 robots, CoX3D-XS, a few frames
    python benchmarks/serve_multistream.py --json out/serve_multistream.json
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from stream.zmq import Client, ReplyTimeout  # noqa: E402

ROBOT = r"""
import json, sys, time
import numpy as np
from stream.zmq import Client
endpoint, stream, frames, start_at = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
image = np.random.default_rng(abs(hash(stream)) % 2**32).integers(0, 255, (480, 640, 3), dtype=np.uint8)
with Client(endpoint, timeout=300) as client:
    while time.time() < start_at:
        time.sleep(0.001)
    records = []
    for t in range(frames):
        t0 = time.perf_counter()
        reply = client.request(image, stream=stream, seq=t)
        records.append((time.time(), (time.perf_counter() - t0) * 1e6, "scores" in reply.arrays))
print(json.dumps(records))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def measure(robots: int, frames: int, max_batch: int, size: str) -> dict:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    server = subprocess.Popen(
        [sys.executable, "-m", "stream.zmq.serve", str(REPO / "pipelines" / "video_action.yaml"), "--endpoint", endpoint,
         "--reply-timeout", "300", "--set", f"model.max_batch={max_batch}", "--set", f"model.size={size}"],
        env=env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=open(os.environ.get("SERVE_LOG", os.devnull), "w"))
    try:
        with Client(endpoint, timeout=1) as probe:
            deadline = time.monotonic() + 120
            while True:
                try:
                    probe.ping(timeout=0.5)
                    break
                except ReplyTimeout:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"costream serve did not start (exit code {server.poll()})") from None
        start_at = time.time() + 2.0  # every robot process is up and connected by then
        procs = [subprocess.Popen([sys.executable, "-c", ROBOT, endpoint, f"robot{i}/cam", str(frames), str(start_at)],
                                  env=env(), cwd=REPO, stdout=subprocess.PIPE, text=True) for i in range(robots)]
        records = [json.loads(p.communicate(timeout=1800)[0]) for p in procs]
    finally:
        server.send_signal(2)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
    # The measured window: from the moment every robot has its first prediction to the last reply.
    first = max(next(t for t, _, scored in r if scored) for r in records)
    last = max(r[-1][0] for r in records)
    scored = sum(1 for r in records for t, _, s in r if s and t > first)
    p50 = [float(np.median([us for t, us, s in r if s and t > first] or [np.nan])) for r in records]
    return {"max_batch": max_batch, "robots": robots, "predictions_per_s": scored / max(last - first, 1e-9),
            "robot_p50_ms": [v / 1e3 for v in p50], "window_s": last - first, "predictions": scored}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--robots", type=int, default=8)
    parser.add_argument("--frames", type=int, default=100, help="frames per robot (CoX3D-S warms up on 40)")
    parser.add_argument("--size", default="s", choices=("xs", "s", "m", "l"), help="CoX3D size")
    parser.add_argument("--quick", action="store_true", help="2 robots, CoX3D-XS, few frames (checks it works)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    robots, size, frames = (2, "xs", 34) if args.quick else (args.robots, args.size, args.frames)
    rows = [measure(robots, frames, batch, size) for batch in (8, 1)]
    batched, single = rows
    print(f"{robots} robots, CoX3D-{size.upper()}, 640x480 uint8 frames, closed loop, after warm-up")
    print(f"{'max_batch':>10}{'predictions/s':>16}{'robot p50 (median)':>21}")
    for r in rows:
        print(f"{r['max_batch']:>10}{r['predictions_per_s']:>16.1f}{np.nanmedian(r['robot_p50_ms']):>18.1f} ms")
    ratio = batched["predictions_per_s"] / single["predictions_per_s"]
    print(f"batched / one stream per step: {ratio:.2f}x predictions/s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"quick": args.quick, "size": size, "rows": rows, "ratio": ratio}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
