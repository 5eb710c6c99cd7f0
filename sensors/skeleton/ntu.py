"""Read NTU RGB+D `.skeleton` files into (C=3, T, V=25, M) float32 arrays.

The text format (Kinect v2, NTU RGB+D 60/120)::

    <frame count>
    per frame:   <body count>
      per body:  <10 values: bodyID clippedEdges handLeftConfidence handLeftState
                  handRightConfidence handRightState isRestricted leanX leanY trackingState>
                 <joint count (25)>
                 25 x <12 values: x y z depthX depthY colorX colorY
                       orientationW orientationX orientationY orientationZ trackingState>

Only the camera-space x, y, z (metres) are kept, for the first `max_bodies` bodies of each frame (as
the original ST-GCN reader does); absent bodies are zeros. Any deviation from the format raises a
`SkeletonFormatError` that names the file, the line number, what was expected and what was found.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger("costream.sensors.skeleton")

NUM_JOINTS = 25
BODY_VALUES = 10
JOINT_VALUES = 12
# NTU-25 joint names in index order (0-based index = Kinect v2 JointType).
JOINT_NAMES: tuple[str, ...] = (
    "spine base", "spine mid", "neck", "head", "left shoulder", "left elbow", "left wrist", "left hand",
    "right shoulder", "right elbow", "right wrist", "right hand", "left hip", "left knee", "left ankle",
    "left foot", "right hip", "right knee", "right ankle", "right foot", "spine shoulder", "left hand tip",
    "left thumb", "right hand tip", "right thumb",
)
# The ST-GCN graph edges of NTU RGB+D, 1-indexed as in the paper (centre joint 21).
NTU_EDGES_1BASED: tuple[tuple[int, int], ...] = (
    (1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7), (9, 21), (10, 9), (11, 10), (12, 11),
    (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18), (20, 19), (22, 23), (23, 8),
    (24, 25), (25, 12),
)


class SkeletonFormatError(ValueError):
    """A `.skeleton` file does not follow the NTU RGB+D format (corrupt or truncated)."""

    def __init__(self, path: str | Path, line: int, message: str) -> None:
        self.path = str(path)
        self.line = line
        super().__init__(f"{path}:{line}: {message}")


@dataclass(frozen=True)
class SkeletonSequence:
    """One parsed file: `data` is (C=3, T, V=25, M) float32 x/y/z in metres."""

    path: str
    data: np.ndarray
    bodies_per_frame: tuple[int, ...]  # bodies present in the file for each frame (may exceed M)
    body_ids: tuple[str, ...]  # distinct Kinect body ids in order of appearance

    @property
    def num_frames(self) -> int:
        return int(self.data.shape[1])


class _Lines:
    """Line cursor with 1-based line numbers for error messages."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.lines = text.splitlines()
        self.pos = 0

    def next(self, what: str) -> list[str]:
        if self.pos >= len(self.lines):
            raise SkeletonFormatError(
                self.path, self.pos + 1,
                f"file ends while reading {what}; the file is truncated (it has {len(self.lines)} lines)",
            )
        line = self.lines[self.pos]
        self.pos += 1
        return line.split()

    def count(self, what: str, upper: int) -> int:
        fields = self.next(what)
        if len(fields) != 1:
            raise SkeletonFormatError(
                self.path, self.pos, f"expected {what} (one integer), found {len(fields)} values: {' '.join(fields)[:80]!r}"
            )
        try:
            value = int(fields[0])
        except ValueError:
            raise SkeletonFormatError(self.path, self.pos, f"expected {what} (an integer), found {fields[0]!r}") from None
        if not 0 <= value <= upper:
            raise SkeletonFormatError(self.path, self.pos, f"{what} must be in [0, {upper}], found {value}")
        return value

    def values(self, what: str, n: int) -> list[str]:
        fields = self.next(what)
        if len(fields) != n:
            raise SkeletonFormatError(
                self.path, self.pos, f"expected {n} values for {what}, found {len(fields)}: {' '.join(fields)[:80]!r}"
            )
        return fields


def read_skeleton(path: str | Path, max_bodies: int = 2) -> SkeletonSequence:
    """Parse one NTU RGB+D `.skeleton` file (see the module docstring for the layout)."""
    if max_bodies < 1:
        raise ValueError(f"max_bodies must be at least 1, got {max_bodies}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"skeleton file not found: {str(path)!r} (resolved to {path.resolve()}); check the path, or give a "
            f"directory of NTU RGB+D .skeleton files"
        )
    try:
        text = path.read_text(encoding="ascii")
    except UnicodeDecodeError as exc:
        raise SkeletonFormatError(
            path, path.read_bytes()[: exc.start].count(b"\n") + 1,
            "file is not text (non-ASCII bytes); an NTU RGB+D .skeleton file is plain ASCII",
        ) from None
    lines = _Lines(path, text)
    if not any(line.strip() for line in lines.lines):
        raise SkeletonFormatError(path, 1, "file is empty; expected the frame count on the first line")
    num_frames = lines.count("the frame count", 100_000)
    data = np.zeros((3, num_frames, NUM_JOINTS, max_bodies), dtype=np.float32)
    bodies_per_frame = []
    body_ids: dict[str, None] = {}
    for t in range(num_frames):
        num_bodies = lines.count(f"the body count of frame {t + 1}", 64)
        bodies_per_frame.append(num_bodies)
        for m in range(num_bodies):
            where = f"frame {t + 1}, body {m + 1}"
            info = lines.values(f"the body info line of {where}", BODY_VALUES)
            body_ids.setdefault(info[0], None)
            joints = lines.count(f"the joint count of {where}", 1000)
            if joints != NUM_JOINTS:
                raise SkeletonFormatError(
                    path, lines.pos, f"{where} has {joints} joints; NTU RGB+D skeletons have {NUM_JOINTS}"
                )
            for v in range(NUM_JOINTS):
                fields = lines.values(f"joint {v + 1} of {where}", JOINT_VALUES)
                if m < max_bodies:
                    try:
                        data[:, t, v, m] = [float(fields[0]), float(fields[1]), float(fields[2])]
                    except ValueError:
                        raise SkeletonFormatError(
                            path, lines.pos, f"joint {v + 1} of {where}: x y z must be numbers, found {fields[:3]}"
                        ) from None
    rest = [i for i in range(lines.pos, len(lines.lines)) if lines.lines[i].strip()]
    if rest:
        logger.warning(
            "%s: %d non-empty line(s) after the %d declared frames (first at line %d) were ignored",
            path, len(rest), num_frames, rest[0] + 1,
        )
    if not np.isfinite(data).all():
        raise SkeletonFormatError(path, 1, "joint coordinates contain NaN or infinite values")
    return SkeletonSequence(str(path), data, tuple(bodies_per_frame), tuple(body_ids))


def write_skeleton(path: str | Path, data: np.ndarray, body_ids: tuple[str, ...] | None = None) -> Path:
    """Write (3, T, 25, M) joints in the NTU RGB+D text format; bodies that are all zero in a frame are left out.

    Values that the format has but this array lacks (depth/colour pixels, orientation, tracking
    state) are written as in a tracked Kinect body: zeros, identity orientation, state 2.
    """
    data = np.asarray(data, dtype=np.float64)
    if data.ndim != 4 or data.shape[0] != 3 or data.shape[2] != NUM_JOINTS:
        raise ValueError(f"expected joints of shape (3, T, {NUM_JOINTS}, M), got {data.shape}")
    _, frames, _, bodies = data.shape
    ids = body_ids or tuple(str(72057594037930000 + m) for m in range(bodies))
    out = [str(frames)]
    for t in range(frames):
        present = [m for m in range(bodies) if np.any(data[:, t, :, m])]
        out.append(str(len(present)))
        for m in present:
            out.append(f"{ids[m]} 0 1 1 1 1 0 0.0 0.0 2")
            out.append(str(NUM_JOINTS))
            for v in range(NUM_JOINTS):
                x, y, z = data[:, t, v, m]
                out.append(f"{x:.7g} {y:.7g} {z:.7g} 0 0 0 0 1 0 0 0 2")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out) + "\n", encoding="ascii")
    return path
