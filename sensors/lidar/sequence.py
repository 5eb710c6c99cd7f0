"""A directory, glob or single file of point clouds read as one sequence of scans.

The format follows each file's suffix (`.bin` KITTI, `.pcd.bin` nuScenes, `.npy`, `.pcd`/`.ply`
through Open3D) unless one is forced. Each scan gets the file's own time when one is known: a
`times.txt` (seconds per line, KITTI odometry) or `timestamps.txt` (date-times, KITTI raw) beside the
files or one level up, or else a long number in the file name (nuScenes and RACECAR names end in
micro- or nanoseconds). A file that cannot be read is counted, logged and skipped (or raised, with
`on_bad_file="raise"`); it never ends the sequence.
"""
from __future__ import annotations

import glob
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Literal

from sensors.lidar.kitti import read_kitti
from sensors.lidar.npy import read_npy
from sensors.lidar.nuscenes import read_nuscenes
from sensors.lidar.open3d_io import read_open3d
from sensors.lidar.scan import CloudFormatError, LidarScan

logger = logging.getLogger("costream.sensors.lidar")

CloudFormat = Literal["auto", "kitti", "nuscenes", "npy", "pcd", "ply"]
READERS: dict[str, Callable[[Path], LidarScan]] = {
    "kitti": read_kitti, "nuscenes": read_nuscenes, "npy": read_npy, "pcd": read_open3d, "ply": read_open3d,
}
_SUFFIXES = (".pcd.bin", ".bin", ".npy", ".pcd", ".ply")
_STAMP = re.compile(r"(\d{9,19})(?!.*\d)")


def format_of(path: Path) -> str:
    """The reader for `path` by its suffix."""
    name = path.name.lower()
    if name.endswith(".pcd.bin"):
        return "nuscenes"
    for suffix, fmt in ((".bin", "kitti"), (".npy", "npy"), (".pcd", "pcd"), (".ply", "ply")):
        if name.endswith(suffix):
            return fmt
    raise CloudFormatError(f"{path}: unknown point-cloud suffix; expected one of {', '.join(_SUFFIXES)} "
                           "(or set the format explicitly)")


def list_cloud_files(path: str | Path) -> list[Path]:
    """The files of a sequence: a file, every point-cloud file in a directory, or a glob's matches,
    in natural name order (scan_2 before scan_10)."""
    text = str(path)
    root = Path(text).expanduser()
    if any(ch in text for ch in "*?["):
        files = [Path(p) for p in glob.glob(str(root), recursive=True) if Path(p).is_file()]
        what = f"the pattern {text!r}"
    elif root.is_dir():
        files = [p for p in root.iterdir() if p.is_file() and p.name.lower().endswith(_SUFFIXES)]
        what = f"directory {root}"
    elif root.is_file():
        return [root]
    else:
        raise FileNotFoundError(f"point-cloud path not found: {text!r}; give a file, a directory or a glob "
                                "such as 'velodyne/*.bin'")
    if not files:
        raise FileNotFoundError(f"no point-cloud files ({', '.join(_SUFFIXES)}) in {what}")
    return sorted(files, key=_natural_key)


def _natural_key(path: Path) -> list[object]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def file_stamps_ns(files: list[Path]) -> list[int] | None:
    """Per-file times in ns from times.txt / timestamps.txt, else from the names; None if unknown."""
    for folder in (files[0].parent, files[0].parent.parent):
        for reader in (_times_txt, _timestamps_txt):
            stamps = reader(folder)
            if stamps is not None and len(stamps) >= len(files):
                return stamps[: len(files)]
    stamps = []
    for path in files:
        match = _STAMP.search(path.name)
        if match is None:
            return None
        stamps.append(_digits_to_ns(match.group(1)))
    return stamps


def _digits_to_ns(digits: str) -> int:
    value = int(digits)
    scale = {10: 10**9, 13: 10**6, 16: 10**3, 19: 1}.get(len(digits))
    if scale is None:  # a frame index rather than a time: the ratios keep their order
        scale = 10 ** max(0, 19 - len(digits))
    return value * scale


def _times_txt(folder: Path) -> list[int] | None:
    path = folder / "times.txt"
    if not path.is_file():
        return None
    try:
        return [round(float(line) * 1e9) for line in path.read_text().split()]
    except ValueError:
        logger.warning("%s: not a list of seconds; file times are taken from the names instead", path)
        return None


def _timestamps_txt(folder: Path) -> list[int] | None:
    path = folder / "timestamps.txt"
    if not path.is_file():
        return None
    stamps = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:  # KITTI raw: "2011-09-26 13:02:25.964389445" (ns digits beyond what datetime parses)
            date, _, frac = line.partition(".")
            base = datetime.strptime(date, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
            stamps.append(int(base.timestamp()) * 10**9 + int((frac + "000000000")[:9]))
        except ValueError:
            logger.warning("%s: line %r is not 'YYYY-MM-DD HH:MM:SS.fff'; file times come from the names",
                           path, line)
            return None
    return stamps


@dataclass
class SequenceCounters:
    """What a sequence has read: scans delivered, files skipped, passes over the files."""

    scans: int = 0
    bad_files: int = 0
    loops: int = 0
    bad_names: list[str] = field(default_factory=list)  # the skipped files (the first 100)

    def as_dict(self) -> dict[str, int]:
        return {"scans": self.scans, "bad_files": self.bad_files, "loops": self.loops}


class PointCloudSequence:
    """Iterate the scans of `path` (file, directory or glob); see the module docstring.

    `for scan in PointCloudSequence("kitti/velodyne"): scan.points ...`
    """

    def __init__(self, path: str | Path, fmt: CloudFormat = "auto", loop: bool = False,
                 on_bad_file: Literal["skip", "raise"] = "skip") -> None:
        if fmt != "auto" and fmt not in READERS:
            raise ValueError(f"unknown point-cloud format {fmt!r}; expected auto or one of {sorted(READERS)}")
        if on_bad_file not in ("skip", "raise"):
            raise ValueError(f"on_bad_file must be 'skip' or 'raise', got {on_bad_file!r}")
        self.files = list_cloud_files(path)
        self.format = fmt
        self.loop = loop
        self.on_bad_file = on_bad_file
        self.stamps_ns = file_stamps_ns(self.files)
        self.counters = SequenceCounters()

    def __len__(self) -> int:
        return len(self.files)

    def read(self, index: int) -> LidarScan:
        """Scan `index` (raises CloudFormatError for a bad file)."""
        path = self.files[index]
        reader = READERS[format_of(path) if self.format == "auto" else self.format]
        scan = reader(path)
        stamp = None if self.stamps_ns is None else self.stamps_ns[index]
        return LidarScan(scan.points, scan.time, scan.ring, stamp, str(path))

    def __iter__(self) -> Iterator[LidarScan]:
        while True:
            delivered = 0
            for index, path in enumerate(self.files):
                try:
                    scan = self.read(index)
                except (CloudFormatError, OSError) as exc:
                    if self.on_bad_file == "raise":
                        raise
                    self.counters.bad_files += 1
                    if len(self.counters.bad_names) < 100:
                        self.counters.bad_names.append(str(path))
                    logger.warning("skipping unreadable point-cloud file (%d skipped so far): %s",
                                   self.counters.bad_files, exc)
                    continue
                self.counters.scans += 1
                delivered += 1
                yield scan
            if not self.loop:
                return
            if delivered == 0:
                logger.error("no file of the sequence could be read; not looping over %d bad files",
                             len(self.files))
                return
            self.counters.loops += 1
