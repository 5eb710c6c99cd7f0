"""Terminal views of a running pipeline (rich): a live per-node table and a progress bar.

Both only read `LocalExecutor.snapshot()`, which is safe from any thread; the caller refreshes them
while it waits for the run to end. They draw on stderr so that stdout keeps the final report table.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

Snapshot = Callable[[], Mapping[str, Any]]


def snapshot_table(snap: Mapping[str, Any]) -> Table:
    """One row per node: role, device, counters, queue depth, drops and throughput."""
    state = "running" if snap.get("running") else (snap.get("stop_reason") or "finished")
    table = Table(title=f"{snap.get('pipeline', '')}  {state}  {snap.get('elapsed_s', 0.0):.1f} s  "
                        f"errors {snap.get('error_count', 0)}", expand=False)
    for column, justify in (("node", "left"), ("role", "left"), ("device", "left"), ("in", "right"),
                            ("out", "right"), ("failed", "right"), ("queue", "right"), ("dropped", "right"),
                            ("fps", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for name, node in snap.get("nodes", {}).items():
        style = None if node.get("alive", True) else "dim"
        table.add_row(name, node.get("role", ""), node.get("device", ""), str(node.get("frames_in", 0)),
                      str(node.get("frames_out", 0)), str(node.get("failed", 0)), str(node.get("queue_depth", 0)),
                      str(node.get("dropped", 0)), f"{node.get('throughput_hz', 0.0):.1f}", style=style)
    return table


def progress_total(snap: Mapping[str, Any], max_frames: int | None) -> int | None:
    """Frames all sources will produce, when every source is finite or limited by `--frames`."""
    total = 0
    for source in snap.get("sources", {}).values():
        limits = [n for n in (source.get("length"), max_frames) if n is not None]
        if not limits:
            return None
        total += min(limits)
    return total or None


class LiveView:
    """The `--dashboard` table or the progress bar; `update()` redraws, use as a context manager."""

    def __init__(self, snapshot: Snapshot, *, dashboard: bool, max_frames: int | None,
                 console: Console | None = None) -> None:
        self.snapshot = snapshot
        self.dashboard = dashboard
        self.max_frames = max_frames
        self.console = console or Console(stderr=True)
        self._live: Live | None = None
        self._progress: Progress | None = None
        self._task: Any = None

    def __enter__(self) -> "LiveView":
        snap = self.snapshot()
        if self.dashboard:
            self._live = Live(snapshot_table(snap), console=self.console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        else:
            self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.fields[fps]:>8.1f} fps"), TimeElapsedColumn(),
                                      console=self.console, transient=False)
            self._progress.__enter__()
            self._task = self._progress.add_task(str(snap.get("pipeline", "frames")),
                                                 total=progress_total(snap, self.max_frames), fps=0.0)
        return self

    def update(self) -> None:
        snap = self.snapshot()
        if self._live is not None:
            self._live.update(snapshot_table(snap))
        elif self._progress is not None:
            sources = snap.get("sources", {})
            produced = sum(s.get("produced", 0) for s in sources.values())
            fps = sum(snap["nodes"][n].get("throughput_hz", 0.0) for n in sources if n in snap.get("nodes", {}))
            self._progress.update(self._task, completed=produced, fps=fps,
                                  total=progress_total(snap, self.max_frames))

    def __exit__(self, *exc: Any) -> None:
        self.update()
        if self._live is not None:
            self._live.__exit__(*exc)
        if self._progress is not None:
            self._progress.__exit__(*exc)


def print_kinds(known: Mapping[str, type], console: Console | None = None) -> None:
    """`costream list`: each kind with its role, class, ports and parameters (type, default, doc).

    Names, types and headers never wrap (only the doc column does), and output that is not a terminal
    (a file, a pipe) is laid out 120 columns wide instead of 80."""
    from rich.text import Text

    from stream.params import describe_params
    from stream.ports import SAME_AS_INPUT, as_ports, describe

    console = console or Console()
    if not console.is_terminal and console.width < 120:
        console.width = 120
    for name, cls in known.items():
        params = describe_params(cls.Params)
        console.print(Text.assemble((name, "bold"), f"  ({cls.role}, {cls.__module__}:{cls.__qualname__})"),
                      soft_wrap=True)
        doc = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
        if doc:
            console.print(f"  {doc}", highlight=False)
        ports = []
        if cls.role != "source":
            ports.append(f"consumes {describe(as_ports(getattr(cls, 'consumes', None)))}")
        if cls.role != "sink":
            produced = getattr(cls, "produces", None)
            ports.append("produces " + ("what it consumes" if produced is SAME_AS_INPUT else describe(as_ports(produced))))
        console.print("  " + "; ".join(ports), highlight=False, soft_wrap=True)
        table = Table(show_edge=False, pad_edge=True)
        longest = max((len(p.name) for p in params), default=5)
        table.add_column("param", no_wrap=True, min_width=max(5, longest))
        table.add_column("type", min_width=4, max_width=32, overflow="fold")
        table.add_column("default", min_width=7, max_width=24, overflow="fold")
        table.add_column("doc", min_width=20, ratio=1)
        for p in params:
            table.add_row(p.name, p.type, "(required)" if p.required else repr(p.default), p.doc)
        if not params:
            table.add_row("-", "", "", "no parameters")
        console.print(table)
        console.print()
