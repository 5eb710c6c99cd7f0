"""Skeleton node kinds: `skeleton` (NTU RGB+D `.skeleton` files) and `synthetic_skeleton`.

They emit `{"skeleton": (C=3, V=25, M) float32}` for one time step. The readers they adapt
(`sensors.skeleton.ntu`, `sensors.skeleton.synthetic`) work without the runtime.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np
import torch

from sensors.skeleton.ntu import SkeletonFormatError, SkeletonSequence, read_skeleton
from sensors.skeleton.synthetic import SyntheticSkeletonConfig, synthetic_skeleton
from stream.frame import Frame
from stream.node import NodeContext, Source
from stream.registry import register

logger = logging.getLogger("costream.sensors.skeleton")


@dataclass(frozen=True)
class SkeletonParams:
    path: str  # an NTU RGB+D .skeleton file or a directory of them (read in sorted order)
    one_stream: bool = False  # all files as one stream (the node name); default: one stream per file
    max_bodies: int = 2  # M of the emitted (3, 25, M) arrays
    fps: float = 30.0  # Kinect v2 rate; the native rate for `rate_hz: native`
    loop: bool = False  # start again after the last file
    max_frames: int | None = None  # stop after this many frames in total
    on_bad_file: Literal["raise", "skip"] = "raise"  # a corrupt file in a directory: stop, or log and skip

    def __post_init__(self) -> None:
        if not str(self.path).strip():
            raise ValueError("path is required: an NTU RGB+D .skeleton file or a directory of them")
        if self.max_bodies < 1:
            raise ValueError(f"max_bodies must be at least 1, got {self.max_bodies}")
        if not self.fps > 0:
            raise ValueError(f"fps must be positive, got {self.fps}")


_NTU_NAME = re.compile(r"S(\d{3})C(\d{3})P(\d{3})R(\d{3})A(\d{3})")


@register("skeleton")
class SkeletonSource(Source):
    """Joints from NTU RGB+D `.skeleton` files, one frame per time step.

    Each file is its own stream (id = file stem, e.g. S001C001P001R001A001) unless `one_stream`; the
    action index parsed from an NTU file name is put into meta["action"] (0-based).
    """

    Params = SkeletonParams

    def __init__(self, params: SkeletonParams | None = None) -> None:
        super().__init__(params)
        self.files: list[Path] = []
        self.bad_files: list[str] = []
        self._first: SkeletonSequence | None = None

    def setup(self, context: NodeContext) -> None:
        super().setup(context)
        root = Path(self.params.path).expanduser()
        if root.is_dir():
            self.files = sorted(root.glob("*.skeleton"))
            if not self.files:
                raise FileNotFoundError(f"no *.skeleton files in directory {root}; check the path")
        elif root.is_file():
            self.files = [root]
            self._first = read_skeleton(root, self.params.max_bodies)  # fail before the pipeline starts
        else:
            raise FileNotFoundError(
                f"skeleton path not found: {self.params.path!r} (resolved to {root.resolve()}); give an NTU RGB+D "
                f".skeleton file or a directory of them"
            )

    @property
    def native_rate_hz(self) -> float | None:
        return self.params.fps

    @property
    def length(self) -> int | None:
        if self._first is None or self.params.loop:
            return self.params.max_frames
        return min(self._first.num_frames, self.params.max_frames or self._first.num_frames)

    def _sequences(self) -> Iterator[SkeletonSequence]:
        while True:
            for path in self.files:
                if self._first is not None and Path(self._first.path) == path:
                    yield self._first
                    continue
                try:
                    yield read_skeleton(path, self.params.max_bodies)
                except SkeletonFormatError as exc:
                    if self.params.on_bad_file == "raise":
                        raise
                    self.bad_files.append(str(path))
                    logger.error("skipping corrupt skeleton file: %s", exc)
            if not self.params.loop:
                return

    def frames(self) -> Iterator[Frame]:
        p = self.params
        emitted = 0
        for seq in self._sequences():
            stem = Path(seq.path).stem
            stream = self.name if p.one_stream else stem
            match = _NTU_NAME.search(stem)
            meta: dict[str, Any] = {"file": Path(seq.path).name, "num_frames": seq.num_frames}
            if match:
                meta["action"] = int(match.group(5)) - 1
            for t in range(seq.num_frames):
                if p.max_frames is not None and emitted >= p.max_frames:
                    return
                joints = torch.from_numpy(np.ascontiguousarray(seq.data[:, t]))  # (C, V, M)
                yield self.make_frame({"skeleton": joints}, stream, meta={**meta, "frame_index": t})
                emitted += 1


@dataclass(frozen=True)
class SyntheticSkeletonParams:
    streams: int = 1  # interleaved skeleton tracks "<node>/0", "<node>/1", ... (one: the node name)
    frames: int = 300  # per stream
    fps: float = 30.0  # per stream
    class_id: int | None = None  # motion class of every stream; null: stream i uses class i % num_classes
    num_classes: int = 60  # number of distinct motion classes
    bodies: int = 1  # people per stream (1 or 2)
    max_bodies: int = 2  # M of the emitted (3, 25, M) arrays
    noise: float = 0.005  # joint jitter in metres
    seed: int = 0  # stream i uses seed + i

    def __post_init__(self) -> None:
        if self.streams < 1:
            raise ValueError(f"streams must be at least 1, got {self.streams}")
        for i in range(self.streams):
            self.skeleton_config(i)

    def skeleton_config(self, index: int) -> SyntheticSkeletonConfig:
        cls = self.class_id if self.class_id is not None else index % self.num_classes
        return SyntheticSkeletonConfig(
            frames=self.frames, fps=self.fps, class_id=cls, num_classes=self.num_classes,
            bodies=self.bodies, max_bodies=self.max_bodies, noise=self.noise, seed=self.seed + index,
        )


@register("synthetic_skeleton")
class SyntheticSkeletonSource(Source):
    """Synthetic NTU-25 skeleton tracks, several streams interleaved frame by frame."""

    Params = SyntheticSkeletonParams

    @property
    def native_rate_hz(self) -> float | None:
        return self.params.fps * self.params.streams

    @property
    def length(self) -> int | None:
        return self.params.frames * self.params.streams

    def frames(self) -> Iterator[Frame]:
        p = self.params
        ids = [self.name] if p.streams == 1 else [f"{self.name}/{i}" for i in range(p.streams)]
        configs = [p.skeleton_config(i) for i in range(p.streams)]
        tracks = [synthetic_skeleton(c) for c in configs]  # (C, T, V, M) each
        for t in range(p.frames):
            for stream, config, track in zip(ids, configs, tracks):
                joints = torch.from_numpy(np.ascontiguousarray(track[:, t]))  # (C, V, M)
                yield self.make_frame({"skeleton": joints}, stream, meta={"class_id": config.class_id, "frame_index": t})
