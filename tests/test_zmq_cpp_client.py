"""The C++ robot client of docs/examples/robot_client.cpp, compiled with g++ and run against a real
`costream serve`: the protocol page is implementable outside Python, and the example stays true.

Needs g++ and the libzmq, cppzmq and nlohmann/json headers (.ci/run installs them). Where they are
missing the tests skip, except under CI, where a missing toolchain is a failure: the example must be
built and run there.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from stream.zmq import Client
from zmq_server import DEADLINE_S, INTERRUPTED, PASSTHROUGH, REPO, Server, free_port

SOURCE = REPO / "docs" / "examples" / "robot_client.cpp"
HEADERS = ("zmq.h", "zmq.hpp", "zmq_addon.hpp", "nlohmann/json.hpp")


def _missing_toolchain() -> str | None:
    if shutil.which("g++") is None:
        return "g++ is not installed"
    include_dirs = [Path("/usr/include"), Path("/usr/local/include")]
    missing = [h for h in HEADERS if not any((d / h).exists() for d in include_dirs)]
    if missing:
        return (f"headers {missing} are missing (Debian/Ubuntu: apt-get install libzmq3-dev cppzmq-dev "
                "nlohmann-json3-dev)")
    return None


@pytest.fixture(scope="module")
def robot_client(tmp_path_factory) -> Path:
    reason = _missing_toolchain()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must build the C++ client example: {reason}")
        pytest.skip(reason)
    binary = tmp_path_factory.mktemp("cpp") / "robot_client"
    build = subprocess.run(["g++", "-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror", str(SOURCE), "-o", str(binary),
                            "-lzmq"], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    return binary


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    address = f"tcp://127.0.0.1:{free_port()}"
    srv = Server(tmp_path_factory.mktemp("zmq_cpp"), PASSTHROUGH, address)
    with Client(address, timeout=10) as client:
        srv.wait_ready(client)
    yield address
    assert srv.stop() == INTERRUPTED, srv.log.read_text()


def _run(binary: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=DEADLINE_S)


def test_cpp_client_round_trips_camera_frames(robot_client, endpoint):
    done = _run(robot_client, endpoint, "--frames", "6", "--height", "480", "--width", "640", "--check-echo")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["seq"] for line in lines[:-1]] == list(range(6))
    assert all(line["status"] == "ok" and line["server_total_ms"] > 0 for line in lines[:-1])
    assert lines[-1]["frames"] == 6 and lines[-1]["ok"] == 6


def test_cpp_client_odd_shape(robot_client, endpoint):
    done = _run(robot_client, endpoint, "--frames", "2", "--height", "3", "--width", "5", "--check-echo")
    assert done.returncode == 0, done.stderr


def test_cpp_client_gets_the_servers_error_reply(robot_client, endpoint):
    done = _run(robot_client, endpoint, "--frames", "1", "--dtype", "complex64", "--expect-error", "bad_dtype")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[0]) == {"seq": 0, "status": "error", "code": "bad_dtype"}
    # without --expect-error the same reply is a failure, reported with the server's message
    done = _run(robot_client, endpoint, "--frames", "1", "--dtype", "complex64")
    assert done.returncode == 4 and "bad_dtype" in done.stderr and "expected one of" in done.stderr


def test_cpp_client_reports_a_missing_server(robot_client):
    done = _run(robot_client, f"tcp://127.0.0.1:{free_port()}", "--frames", "1", "--timeout-ms", "300")
    assert done.returncode == 2 and "is `costream serve` running" in done.stderr
