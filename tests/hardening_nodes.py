"""Real node classes for the run-outcome tests, referenced as `hardening_nodes:Class` (tests/ is on sys.path)."""
from __future__ import annotations

import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from stream.node import Operator, Sink


@dataclass(frozen=True)
class FailEveryParams:
    every: int = 10  # frames with seq % every == 0 raise


class FailEvery(Operator):
    """Raises on every `every`-th frame (seq 0, every, 2 * every, ...), passes the others through."""

    Params = FailEveryParams

    def process(self, frame):
        if frame.seq % self.params.every == 0:
            raise ValueError(f"seq {frame.seq} is a multiple of {self.params.every}")
        return frame


@dataclass(frozen=True)
class SpoilParams:
    folder: str = ""  # at teardown this folder is replaced by a file of the same name


class SpoilFolder(Sink):
    """At teardown, replaces `folder` with a plain file: writing a report into it then fails for real
    (as when a disk is unmounted or a folder removed while a long run goes on)."""

    Params = SpoilParams

    def process(self, frame):
        return None

    def teardown(self):
        folder = Path(self.params.folder)
        shutil.rmtree(folder)
        folder.write_text("not a folder any more\n")


class Stuck(Sink):
    """Blocks in its first `process` call until teardown (a node that does not return in time)."""

    def setup(self, context):
        super().setup(context)
        self.entered = threading.Event()
        self._release = threading.Event()

    def process(self, frame):
        self.entered.set()
        self._release.wait(120)  # bounded only so that a broken runtime cannot hang the test run forever

    def teardown(self):
        self._release.set()
