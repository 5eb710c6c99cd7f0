"""Serve soak: does `costream serve` memory stay flat over many requests? Tiny requests through the
pass-through pipeline, first all on one stream, then each on a stream name of its own; the server's
RSS before and after each phase, bytes per request, and the size of every structure of the ZeroMQ
layer that could grow with traffic. A raw pyzmq ROUTER echo server under the same load is the
baseline (it holds nothing per request).

    python benchmarks/serve_soak.py                  # 200k requests per phase
    python benchmarks/serve_soak.py --quick          # 20k: checks that it works
    python benchmarks/serve_soak.py --json out/serve_soak.json

The server runs in a child process built exactly as `costream serve` builds it (`serving_spec`, the
executor of `create_executor`), so that the harness can read the ZeroMQ layer's tables between
phases. RSS is read after a garbage collection and `malloc_trim`, so it shows what is held, not what
the allocator keeps cached. The runtime's own latency samples (per node and request, until they are
kept in a bounded sketch) are reported apart, so the ZeroMQ layer's share is visible.
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

from stream.sketch import FLUSH_AT  # noqa: E402
from stream.zmq import protocol as P  # noqa: E402

WINDOW = 32  # requests in flight (the Python client's default pacing)

SERVER = r"""
import array, ctypes, gc, json, sys
from stream.config import load_pipeline
from stream.executors import create_executor
from stream.zmq.serve import serving_spec

endpoint = sys.argv[1]
spec = serving_spec(load_pipeline(sys.argv[2]), {"endpoint": endpoint})
executor = create_executor(spec, None, free_running=True)
executor.start()
gc.freeze()  # as `costream serve` does after start-up
source = executor.nodes["requests"]
try:
    trim = ctypes.CDLL("libc.so.6").malloc_trim
except OSError:
    trim = None

def rss() -> int:
    gc.collect()
    if trim is not None:
        trim(0)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))

def sizes() -> dict:
    requests = source._requests
    samples = 0
    for worker in executor._workers.values():  # the runtime's latency samples (arrays of int64)
        for name in getattr(type(worker.metrics), "__slots__", ()):
            value = getattr(worker.metrics, name, None)
            if isinstance(value, array.array):
                samples += len(value) * value.itemsize
    # (read with defaults, so that the harness also measures older versions of the source)
    decoder = getattr(source, "_decoder", None)
    return {"rss_bytes": rss(), "runtime_latency_sample_bytes": samples,
            "open_requests": len(requests), "connections_holding_requests": len(getattr(requests, "_held", ())),
            "connections_with_waiting_replies": len(getattr(requests, "_backlog", ())),
            "replies_waiting": getattr(requests, "waiting", 0), "logged_connections": len(getattr(requests, "_logged", ())),
            "default_seq_streams": len(getattr(source, "_next_seq_of", source._next_seq)),
            "remembered_descriptors": len(decoder._specs) if decoder is not None else -1,
            "counter_names": len(source.stats())}

print("ready", flush=True)
for line in sys.stdin:
    if line.strip() == "sizes":
        print(json.dumps(sizes()), flush=True)
    else:
        break
executor.request_stop("soak done")
source.stop()
executor.wait(timeout=30)
"""

ECHO = r"""
import ctypes, gc, sys, threading, zmq
ctx = zmq.Context()
router = ctx.socket(zmq.ROUTER)
router.bind(sys.argv[1])
def serve():
    while True:
        try:
            router.send_multipart(router.recv_multipart(copy=False), copy=False)
        except zmq.ContextTerminated:
            return
threading.Thread(target=serve, daemon=True).start()
trim = ctypes.CDLL("libc.so.6").malloc_trim
print("ready", flush=True)
for line in sys.stdin:
    if line.strip() != "sizes":
        break
    gc.collect(); trim(0)
    with open("/proc/self/status") as f:
        rss = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS:"))
    print('{"rss_bytes": %d}' % rss, flush=True)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Child:
    """A server process answering `sizes` on stdin with one JSON line."""

    def __init__(self, code: str, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        self.proc = subprocess.Popen([sys.executable, "-c", code, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env, cwd=REPO)
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"server did not start: {line!r}")

    def sizes(self) -> dict:
        self.proc.stdin.write("sizes\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        try:
            self.proc.stdin.write("stop\n")
            self.proc.stdin.close()
            self.proc.wait(60)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()


def soak(endpoint: str, n: int, many_streams: bool, tag: str) -> float:
    """`n` tiny requests, WINDOW in flight, without `seq` (the server numbers them); seconds taken."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(endpoint)
    descriptors, buffers = P.encode_tensors({"x": np.zeros(4, np.uint8)})
    payload = bytes(buffers[0])
    tensors = json.dumps(descriptors, separators=(",", ":"))
    prefix = P.PREFIX.pack(P.MAGIC, P.VERSION, P.MSG_FRAME, 0)
    t0 = time.perf_counter()
    sent = received = 0
    try:
        while received < n:
            while sent < n and sent - received < WINDOW:
                stream = f"{tag}-{sent}" if many_streams else tag
                header = f'{{"request_id":{sent},"client":"soak","stream":"{stream}","tensors":{tensors}}}'
                sock.send_multipart([prefix + header.encode(), payload], copy=True)
                sent += 1
            if not sock.poll(30_000):
                raise RuntimeError(f"no reply within 30 s after {received} of {n} replies")
            sock.recv_multipart(copy=False)
            received += 1
    finally:
        sock.close(linger=0)
        ctx.term()
    return time.perf_counter() - t0


def run(n: int, warmup: int) -> dict:
    pipeline = str(REPO / "pipelines" / "serve_passthrough.yaml")
    results: dict = {"requests_per_phase": n, "window": WINDOW, "phases": {}}
    servers = {"ours": (SERVER, pipeline), "raw_echo": (ECHO,)}
    for name, (code, *extra) in servers.items():
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        child = Child(code, endpoint, *extra)
        try:
            soak(endpoint, warmup, False, "warmup")
            soak(endpoint, warmup, True, "warmup-many")
            before = child.sizes()
            phases = {"start": before}
            for phase, many in (("one_stream", False), ("many_streams", True)):
                seconds = soak(endpoint, n, many, phase)
                after = child.sizes()
                growth = after["rss_bytes"] - before["rss_bytes"]
                runtime = after.get("runtime_latency_sample_bytes", 0) - before.get("runtime_latency_sample_bytes", 0)
                after.update(requests_per_s=n / seconds, rss_growth_bytes=growth, bytes_per_request=growth / n,
                             bytes_per_request_besides_runtime_samples=(growth - runtime) / n)
                phases[phase] = after
                before = after
            results["phases"][name] = phases
        finally:
            child.close()
    return results


def report(results: dict) -> None:
    n = results["requests_per_phase"]
    print(f"serve soak: {n} tiny requests per phase, {results['window']} in flight, pass-through pipeline")
    print(f"{'server':<10} {'phase':<13} {'req/s':>8} {'RSS MiB':>8} {'B/request':>10} {'B/req w/o runtime samples':>26}")
    for name, phases in results["phases"].items():
        for phase in ("one_stream", "many_streams"):
            row = phases[phase]
            besides = row["bytes_per_request_besides_runtime_samples"]
            print(f"{name:<10} {phase:<13} {row['requests_per_s']:>8.0f} {row['rss_bytes'] / 2**20:>8.1f} "
                  f"{row['bytes_per_request']:>10.1f} {besides:>26.1f}")
    ours = results["phases"]["ours"]["many_streams"]
    print("ZeroMQ layer after both phases (each bounded: in flight, per connection, or a fixed cap):")
    for key in ("open_requests", "connections_holding_requests", "connections_with_waiting_replies", "replies_waiting",
                "logged_connections", "default_seq_streams", "remembered_descriptors", "counter_names"):
        print(f"  {key}: {ours[key]}")
    print(f"  runtime latency samples (not the ZeroMQ layer): {ours['runtime_latency_sample_bytes'] / 2**20:.1f} MiB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200_000, help="requests per phase")
    parser.add_argument("--quick", action="store_true", help="20k requests per phase")
    parser.add_argument("--json", default=None, metavar="OUT", help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.requests < 1:
        parser.error("--requests must be at least 1")
    n = 20_000 if args.quick else args.requests
    # warm-up: every latency buffer of the runtime fills to its cap (FLUSH_AT samples) before RSS is read
    results = run(n, warmup=min(max(5_000, FLUSH_AT), n))
    report(results)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
