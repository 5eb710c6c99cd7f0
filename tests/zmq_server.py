"""A `costream serve` subprocess for the end-to-end ZeroMQ tests (Python and C++ clients)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from stream.outcome import EXIT_INTERRUPTED
from stream.zmq import Client, ReplyTimeout

REPO = Path(__file__).resolve().parents[1]
PASSTHROUGH = str(REPO / "pipelines" / "serve_passthrough.yaml")
DEADLINE_S = 20.0
INTERRUPTED = EXIT_INTERRUPTED  # what a server stopped by Ctrl-C exits with when all went well (130, as `costream run`)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), str(REPO), env.get("PYTHONPATH", "")])
    return env


class Server:
    """`python -m stream.zmq.serve` (what `costream serve` runs) in a subprocess."""

    def __init__(self, tmp: Path, pipeline: str, endpoint: str, *args: str) -> None:
        self.log = tmp / f"server-{time.monotonic_ns()}.log"
        self.args = [sys.executable, "-m", "stream.zmq.serve", pipeline, "--endpoint", endpoint, *args]
        self.interrupted = False
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT, env=child_env(), cwd=REPO)

    def wait_ready(self, client: Client) -> dict:
        deadline = time.monotonic() + DEADLINE_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log.read_text()}")
            try:
                return client.ping(timeout=0.25)
            except ReplyTimeout:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server not ready in {DEADLINE_S} s: {self.log.read_text()}") from None

    def interrupt(self) -> None:
        """One Ctrl-C (a drain). A second one would mean "stop now", so `stop` does not repeat it."""
        if not self.interrupted and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.interrupted = True

    def stop(self) -> int:
        """One Ctrl-C, then the exit code: INTERRUPTED (130) for a clean stop."""
        self.interrupt()
        try:
            return self.proc.wait(DEADLINE_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"server ignored SIGINT: {self.log.read_text()}") from None

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(DEADLINE_S)
