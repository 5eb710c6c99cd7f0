"""Node kinds are found from the one list in pyproject.toml, also from a plain checkout."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stream.registry import _entry_points_table, checkout_node_modules, node_modules

ROOT = Path(__file__).resolve().parents[1]

# Runs `costream list --json` with the installed entry points hidden: what a plain checkout sees.
NO_INSTALL = (
    "import importlib.metadata as m, sys\n"
    "m.entry_points = lambda **kw: m.EntryPoints([])\n"
    "from stream.cli import main\n"
    "sys.exit(main(['list', '--json']))\n"
)


@pytest.mark.slow
def test_every_family_is_found_from_a_plain_checkout():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", NO_INSTALL], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    kinds = json.loads(out.stdout)
    # one kind of each module in the list: runtime, ZeroMQ, video, skeleton, sinks, models
    assert {"passthrough", "zmq_source", "video", "skeleton", "labels_jsonl", "cox3d"} <= set(kinds), sorted(kinds)
    assert "unavailable" not in out.stderr


def test_the_checkout_list_is_the_one_list():
    modules = checkout_node_modules(ROOT)
    assert modules is not None and "sensors.video.nodes" in modules and "stream.zmq.nodes" in modules
    assert _entry_points_table((ROOT / "pyproject.toml").read_text()) == modules  # the Python 3.10 reader agrees
    assert node_modules(ROOT)[: len(modules)] == modules
    assert checkout_node_modules(ROOT / "tests") is None  # no pyproject.toml there
