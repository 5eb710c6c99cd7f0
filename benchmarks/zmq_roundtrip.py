"""Request/reply round trip through `costream serve` (pass-through pipeline) next to a raw pyzmq
REQ/REP echo of the same payloads, all servers in their own processes, measured in one run with
interleaved rounds so machine noise hits them alike.

Two variants of ours: `ours` serves the pipeline with operator chaining (`--fuse identity,replies`:
the pass-through and the reply sink run in the source's thread, the reply goes straight onto the
ROUTER), `unfused` with one thread per node (three thread hand-offs per request).

    python benchmarks/zmq_roundtrip.py            # full run
    python benchmarks/zmq_roundtrip.py --quick    # a few seconds, to check it works
    python benchmarks/zmq_roundtrip.py --json out/zmq_roundtrip.json
    python benchmarks/zmq_roundtrip.py --runs 10  # ten independent runs (fresh processes each) and their median
    python benchmarks/zmq_roundtrip.py --floor    # also a minimal Python server of the protocol: the bound

On a small shared machine the raw echo itself moves by tens of percent between runs (process
placement on the cores), so one run's ratio is one sample: `--runs` gives the spread.

Goal: our p50 at most 1.15x the raw echo for 224x224x3 and larger, with the server's CPU time per request.
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
from stream.zmq.client import CLIENT_COPY_THRESHOLD  # noqa: E402

PAYLOADS = {
    "64 B": (64,),
    "224x224x3 uint8": (224, 224, 3),
    "640x480x3 uint8": (480, 640, 3),
    "4 MB": (4 * 1024 * 1024,),
}
GOAL_RATIO = 1.15
VARIANTS = {"ours": ["--fuse", "identity,replies"], "unfused": ["--no-fuse"]}  # extra `costream serve` arguments
FLOOR = "floor"  # --floor: the protocol alone, served by the least Python that can speak it

# `--floor`: a ROUTER that speaks costream's protocol with the least Python possible (no pipeline, no
# checks beyond orjson parsing the header, a RESULT header of the same fields, the received tensor
# sent back), answered to the same Client. What it costs over the raw echo is what the protocol and
# the client cost before any runtime work: the bound on how close `costream serve` could come.
FLOOR_SERVER = """
import sys, time, orjson, zmq
from stream.zmq import protocol as P

def serve(endpoint):
    router = zmq.Context().socket(zmq.ROUTER)
    router.bind(endpoint)
    result = P.PREFIX.pack(P.MAGIC, P.VERSION, P.MSG_RESULT, 0)
    while True:
        peer, *parts = router.recv_multipart(copy=False)
        header = orjson.loads(parts[0].bytes[8:])
        t_reply = time.monotonic_ns()
        reply = {"request_id": header.get("request_id"), "stream": header.get("stream"), "seq": header.get("seq"),
                 "t_capture_ns": header.get("t_capture_ns"), "capture_clock": "server", "t_reply_ns": t_reply,
                 "status": "ok", "error": None, "latency": {"total": (t_reply - header.get("t_capture_ns", t_reply)) / 1e6},
                 "meta": {}, "tensors": header.get("tensors", []), "stats": {}}
        router.send_multipart([peer, result + orjson.dumps(reply), *parts[1:]], copy=False)

try:
    serve(sys.argv[1])
except KeyboardInterrupt:  # the benchmark stops every server with SIGINT
    pass
"""

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


def process_cpu_ns(pid: int) -> int | None:
    """CPU time of all of a process's threads so far (Linux /proc), or None where unavailable.
    CPU per request moves far less between runs than latency does on a shared machine."""
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):  # a thread that just ended
                continue
    except OSError:
        return None
    return total


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


def run(iterations: int, rounds: int, warmup: int, variants: dict[str, list[str]] = VARIANTS) -> dict:
    raw_ep = f"tcp://127.0.0.1:{free_port()}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    servers: dict[str, subprocess.Popen] = {}
    clients: dict[str, Client] = {}
    echo = subprocess.Popen([sys.executable, "-c", ECHO_SERVER, raw_ep], env=env)
    ctx = zmq.Context()
    req = ctx.socket(zmq.REQ)
    req.connect(raw_ep)
    results: dict[str, dict] = {}
    try:
        for name, extra in variants.items():
            endpoint = f"tcp://127.0.0.1:{free_port()}"
            command = ["-c", FLOOR_SERVER, endpoint] if name == FLOOR else [
                "-c", "import sys; from stream.cli import main; sys.exit(main())", "serve",
                str(REPO / "pipelines" / "serve_passthrough.yaml"), "--endpoint", endpoint, *extra]
            servers[name] = subprocess.Popen([sys.executable, *command], env=env, cwd=REPO)  # exactly what `costream serve` runs
            clients[name] = Client(endpoint, timeout=30)
        for name, client in clients.items():
            wait_for_ours(client, servers[name])
        for label, shape in PAYLOADS.items():
            arr = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
            raw_buf = memoryview(arr.reshape(-1))
            # The raw client gets our client's copy policy (copy below 256 KiB, zero-copy above): the
            # faster choice at each of these sizes here, so the baseline is not handicapped.
            copy = arr.nbytes < CLIENT_COPY_THRESHOLD

            def ours(client: Client) -> None:
                reply = client.request(arr)
                if reply.arrays["input"].nbytes != arr.nbytes:
                    raise RuntimeError("wrong reply size")

            def raw() -> None:
                req.send_multipart([b"h", raw_buf], copy=copy)
                if len(req.recv_multipart(copy=False)[1]) != arr.nbytes:
                    raise RuntimeError("wrong echo size")

            calls = {name: (lambda c=client: ours(c)) for name, client in clients.items()}
            calls["raw"] = raw
            server_pid = {**{name: proc.pid for name, proc in servers.items()}, "raw": echo.pid}
            for fn in calls.values():
                for _ in range(warmup):
                    fn()
            samples: dict[str, list[float]] = {key: [] for key in calls}
            server_cpu: dict[str, int | None] = dict.fromkeys(calls, 0)
            client_cpu = dict.fromkeys(calls, 0)
            per_round = max(1, iterations // rounds)
            for _ in range(rounds):
                for key, fn in calls.items():
                    cpu0, thread0 = process_cpu_ns(server_pid[key]), time.thread_time_ns()
                    for _ in range(per_round):
                        t0 = time.perf_counter()
                        fn()
                        samples[key].append((time.perf_counter() - t0) * 1e6)
                    client_cpu[key] += time.thread_time_ns() - thread0
                    cpu1 = process_cpu_ns(server_pid[key])
                    server_cpu[key] = None if None in (cpu0, cpu1, server_cpu[key]) else server_cpu[key] + cpu1 - cpu0
            row = {"bytes": int(arr.nbytes), "n": len(samples["raw"])}
            for key, vals in samples.items():
                row[f"{key}_p50_us"] = percentile(vals, 50)
                row[f"{key}_p99_us"] = percentile(vals, 99)
                # CPU per request: the server process (all its threads, ZeroMQ's I/O thread included)
                # and the calling client thread
                if server_cpu[key] is not None:
                    row[f"{key}_server_cpu_us"] = server_cpu[key] / len(vals) / 1e3
                row[f"{key}_client_cpu_us"] = client_cpu[key] / len(vals) / 1e3
            for key in clients:
                row[f"{key}_ratio_p50"] = row[f"{key}_p50_us"] / row["raw_p50_us"]
            results[label] = row
    finally:
        for client in clients.values():
            client.close()
        req.close(linger=0)
        ctx.term()
        echo.kill()
        for serve in servers.values():
            serve.send_signal(2)
        for serve in servers.values():
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
    parser.add_argument("--unfused", action="store_true",
                        help="also measure the pipeline without operator chaining (one thread per node)")
    parser.add_argument("--floor", action="store_true",
                        help="also measure a minimal Python server of the same protocol (no pipeline): the bound")
    parser.add_argument("--runs", type=int, default=1, help="independent runs (servers restarted for each)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    iterations, warmup = (60, 5) if args.quick else (args.iterations, 50)
    variants = VARIANTS if args.unfused else {"ours": VARIANTS["ours"]}
    if args.floor:
        variants = {**variants, FLOOR: []}
    runs = []
    for i in range(args.runs):
        runs.append(run(iterations, min(args.rounds, iterations), warmup, variants))
        if args.runs > 1:
            print(f"run {i + 1}/{args.runs}: " + ", ".join(
                f"{label.split()[0]} {r['ours_ratio_p50']:.2f}x" for label, r in runs[-1].items()), flush=True)
    results = runs[-1] if args.runs == 1 else _median_run(runs)
    names = [*variants, "raw"]
    print(f"{'payload':<18}" + "".join(f"{n + ' p50':>13}{n + ' p99':>13}" for n in names)
          + "".join(f"{n + ' ratio':>15}" for n in variants) + "  goal (ours)")
    for label, r in results.items():
        ratio = r["ours_ratio_p50"]
        goal = "" if r["bytes"] < 224 * 224 * 3 else ("ok" if ratio <= GOAL_RATIO else f"> {GOAL_RATIO}x")
        print(f"{label:<18}" + "".join(f"{r[n + '_p50_us']:>11.0f}us{r[n + '_p99_us']:>11.0f}us" for n in names)
              + "".join(f"{r[n + '_ratio_p50']:>14.2f}x" for n in variants) + f"  {goal}")
    if all("raw_server_cpu_us" in r for r in results.values()):
        print("CPU per request (server process, all threads / client thread), steadier than latency here:")
        for label, r in results.items():
            print(f"  {label:<16}" + "".join(
                f"  {n} {r[n + '_server_cpu_us']:.0f}/{r[n + '_client_cpu_us']:.0f}us" for n in names)
                + "".join(f"  ({n} - raw: {r[n + '_server_cpu_us'] - r['raw_server_cpu_us']:+.0f}/"
                          f"{r[n + '_client_cpu_us'] - r['raw_client_cpu_us']:+.0f}us)" for n in variants))
    if args.runs > 1:
        print(f"(the median of {args.runs} runs, each figure on its own; runs meeting the goal: " + ", ".join(
            f"{label.split()[0]} {sum(r[label]['ours_ratio_p50'] <= GOAL_RATIO for r in runs)}/{args.runs}"
            for label in results if results[label]["bytes"] >= 224 * 224 * 3) + ")")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"quick": args.quick, "goal_ratio": GOAL_RATIO, "results": results,
                                               "runs": runs}, indent=2))
    return 0


def _median_run(runs: list[dict]) -> dict:
    """Per payload and figure, the median over the runs."""
    return {label: {key: float(np.median([r[label][key] for r in runs])) for key in runs[0][label]}
            for label in runs[0]}


if __name__ == "__main__":
    sys.exit(main())
