"""Shared test setup: make the small test-node modules in tests/ importable as `module:Class`."""
from __future__ import annotations

import sys
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

# Property-based tests explore new random examples on developers' machines; in CI they replay a
# fixed derandomised set, so that a landing gate never fails on an example nobody has seen before.
import os  # noqa: E402

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny per-frame kernels: extra intra-op threads only contend on a shared CPU (seeded, restored)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)
