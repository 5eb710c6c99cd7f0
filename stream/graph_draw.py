"""Draw a pipeline: DOT text (no dependencies) or SVG/PNG through matplotlib (no system graphviz).

Nodes are labelled with name, kind and device; edges with policy and queue size (and "join" for
joined inputs). The picture uses a layered layout: a node's layer is its longest distance from a
source, and nodes inside a layer are ordered by the mean position of their inputs to limit crossings.
"""
from __future__ import annotations

from pathlib import Path

from stream.spec import NodeSpec, PipelineSpec

ROLE_COLORS = {"source": "#d8ecd1", "operator": "#d6e4f5", "sink": "#f6dfc9"}
DOT_SUFFIXES = (".dot", ".gv")
IMAGE_SUFFIXES = (".svg", ".png", ".pdf")


def _label(node: NodeSpec) -> str:
    return f"{node.name}\n{node.kind}\n{node.device}"


def _edge_label(node: NodeSpec, index: int) -> str:
    edge = node.inputs[index]
    text = f"{edge.policy.value} [{edge.queue_size}]"
    return f"{text} join" if node.join is not None else text


def to_dot(spec: PipelineSpec) -> str:
    """The pipeline in Graphviz DOT."""

    def quote(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'

    lines = [f"digraph {quote(spec.name)} {{", "  rankdir=LR;",
             '  node [shape=box, style="rounded,filled", fontname="Helvetica"];',
             '  edge [fontname="Helvetica", fontsize=10];']
    for node in spec.nodes:
        lines.append(f"  {quote(node.name)} [label={quote(_label(node))}, "
                     f"fillcolor={quote(ROLE_COLORS.get(node.role, '#eeeeee'))}];")
    for node in spec.nodes:
        for i, edge in enumerate(node.inputs):
            lines.append(f"  {quote(edge.source)} -> {quote(node.name)} [label={quote(_edge_label(node, i))}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def layers(spec: PipelineSpec) -> list[list[str]]:
    """Node names grouped by longest path from a source (the spec is acyclic after validation)."""
    depth: dict[str, int] = {}

    def visit(name: str) -> int:
        if name not in depth:
            node = spec.node(name)
            depth[name] = 1 + max((visit(e.source) for e in node.inputs), default=-1)
        return depth[name]

    for node in spec.nodes:
        visit(node.name)
    grouped: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for node in spec.nodes:
        grouped[depth[node.name]].append(node.name)
    position: dict[str, float] = {}
    for layer in grouped:  # barycentre ordering against the previous layer
        def key(name: str) -> float:
            ups = [position[e.source] for e in spec.node(name).inputs if e.source in position]
            return sum(ups) / len(ups) if ups else 0.0

        layer.sort(key=key)
        for i, name in enumerate(layer):
            position[name] = float(i)
    return grouped


def draw(spec: PipelineSpec, path: str | Path) -> Path:
    """Write SVG, PNG or PDF (by suffix) with matplotlib."""
    from matplotlib.figure import Figure  # a bare Figure renders without a display
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    path = Path(path)
    grouped = layers(spec)
    rows = max(len(layer) for layer in grouped)
    box_w, box_h, gap_x, gap_y = 2.6, 1.1, 1.6, 0.6
    coords: dict[str, tuple[float, float]] = {}
    for col, layer in enumerate(grouped):
        offset = (rows - len(layer)) * (box_h + gap_y) / 2
        for row, name in enumerate(layer):
            coords[name] = (col * (box_w + gap_x), -(offset + row * (box_h + gap_y)))
    width = len(grouped) * (box_w + gap_x) - gap_x
    height = rows * (box_h + gap_y) - gap_y
    fig = Figure(figsize=(max(4.0, 1.0 + width * 0.9), max(2.0, 1.0 + height * 0.9)))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(-0.4, width + 0.4)
    ax.set_ylim(-height - 0.4, box_h + 0.4)
    ax.set_aspect("equal")
    ax.axis("off")
    for node in spec.nodes:
        x, y = coords[node.name]
        ax.add_patch(FancyBboxPatch((x, y), box_w, box_h, boxstyle="round,pad=0.02,rounding_size=0.15",
                                    facecolor=ROLE_COLORS.get(node.role, "#eeeeee"), edgecolor="#444444"))
        ax.text(x + box_w / 2, y + box_h * 0.72, node.name, ha="center", va="center", fontsize=10,
                fontweight="bold")
        ax.text(x + box_w / 2, y + box_h * 0.42, node.kind, ha="center", va="center", fontsize=8)
        ax.text(x + box_w / 2, y + box_h * 0.16, node.device, ha="center", va="center", fontsize=8,
                color="#555555")
    for node in spec.nodes:
        tx, ty = coords[node.name]
        for i, edge in enumerate(node.inputs):
            sx, sy = coords[edge.source]
            start, end = (sx + box_w, sy + box_h / 2), (tx, ty + box_h / 2)
            ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=12, color="#333333",
                                         connectionstyle="arc3,rad=0.0", shrinkA=2, shrinkB=2))
            mid = ((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 0.12)
            ax.text(*mid, _edge_label(node, i), ha="center", va="bottom", fontsize=7, color="#333333",
                    bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 0.5})
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def write_graph(spec: PipelineSpec, path: str | Path) -> Path:
    """DOT for .dot/.gv, an image for .svg/.png/.pdf; anything else is a ValueError naming the choices."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in DOT_SUFFIXES:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(to_dot(spec), encoding="utf-8")
        return path
    if suffix in IMAGE_SUFFIXES:
        return draw(spec, path)
    raise ValueError(f"cannot tell the graph format from {str(path)!r}; use a file name ending in "
                     f"{', '.join(DOT_SUFFIXES + IMAGE_SUFFIXES)}")
