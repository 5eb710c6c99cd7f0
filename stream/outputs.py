"""Output paths of the CLI (`--report`, `bench --out`, `graph -o`, `schema -o`): checked before a run
starts, written so that a finished run's results are never lost.

- `check_output_file` / `check_output_dir` run before anything starts: a path that cannot be written
  (its folder is a file, a read-only file system, no permission) is a usage error naming the flag
  and the path. Missing folders are created, and the message says so (`created folder out/ for
  --report`).
- `save` writes at the end; if that still fails (the disk filled up, the folder vanished) it writes to
  a fallback in the temporary directory instead and says where, so the results of a long run are
  kept. It never raises for an OSError.
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

log = logging.getLogger("costream.outputs")


class OutputPathError(ValueError):
    """An output path that cannot be written; the message names the flag and the path."""


def _create_parents(folder: Path, flag: str, say: Callable[[str], None]) -> None:
    missing = [p for p in [folder, *folder.parents] if not p.exists()]
    for parent in [folder, *folder.parents]:
        if parent.exists() and not parent.is_dir():
            raise OutputPathError(f"{flag} {str(folder)!r}: {str(parent)!r} is a file, not a folder; choose another path")
    if not missing:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(f"{flag}: cannot create the folder {str(folder)!r}: {exc.strerror or exc}; choose a "
                              "writable path") from None
    say(f"created the folder {folder} for {flag}")


def check_output_file(path: str | os.PathLike[str], flag: str, say: Callable[[str], None] = log.warning) -> Path:
    """`path` is a file this process can write (probed by opening it); its missing folders are created
    (and `say` is told). Raises OutputPathError naming `flag` otherwise."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise OutputPathError(f"{flag} {str(path)!r} is a folder; give a file name inside it (e.g. "
                              f"{str(path / 'report.json')!r})")
    _create_parents(path.parent if str(path.parent) else Path("."), flag, say)
    existed = path.exists()
    try:
        with path.open("a"):
            pass
    except OSError as exc:
        raise OutputPathError(f"{flag} {str(path)!r} cannot be written: {exc.strerror or exc}; choose a writable "
                              "path") from None
    if not existed:
        path.unlink(missing_ok=True)
    return path


def check_output_dir(path: str | os.PathLike[str], flag: str, say: Callable[[str], None] = log.warning) -> Path:
    """`path` is a folder this process can write files in (created if missing, and `say` is told);
    raises OutputPathError naming `flag` otherwise."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{flag} {str(path)!r} is a file, not a folder; give a folder for the outputs")
    _create_parents(path, flag, say)
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise OutputPathError(f"{flag}: cannot write files in {str(path)!r}: {exc.strerror or exc}; choose a writable "
                              "folder") from None
    return path


@dataclass(frozen=True)
class Saved:
    """Where an output went: `path` is where it was asked for, or the fallback when `fallback`."""

    path: Path | None
    fallback: bool = False
    error: str | None = None  # why the asked-for path failed


def fallback_path(name: str, suffix: str) -> Path:
    """A new file in the temporary directory, e.g. /tmp/costream-demo-report-20250101-120000-1234.json."""
    stem = f"costream-{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    return Path(tempfile.gettempdir()) / f"{stem}{suffix}"


def save(path: str | os.PathLike[str], write: Callable[[Path], object], fallback: Callable[[], Path],
         what: str) -> Saved:
    """`write(path)`; if that raises OSError, `write(fallback())` and log where. Never raises OSError:
    `Saved.path` is None when both failed (the caller then prints what it has)."""
    path = Path(path).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path)
        return Saved(path)
    except OSError as exc:
        error = f"{exc.strerror or exc} ({path})"
    other = fallback()
    try:
        write(other)
    except OSError as exc:
        log.error("could not write the %s to %s (%s), nor to %s (%s)", what, path, error, other, exc.strerror or exc)
        return Saved(None, True, error)
    log.error("could not write the %s to %s: %s; it was written to %s instead", what, path, error, other)
    return Saved(other, True, error)


__all__ = ["OutputPathError", "Saved", "check_output_dir", "check_output_file", "fallback_path", "save"]
