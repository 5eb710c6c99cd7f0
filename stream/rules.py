"""The rules a pipeline must satisfy, written once.

`PipelineSpec.validate()` applies them to a spec however it was built (YAML, code, `costream serve`
rewriting a pipeline), and every executor validates through it before anything is set up. The YAML
checker (`stream.config_check`) applies the same functions to what it could read of each node, to
report every problem at once with file and line. Each rule returns its problem as a message (or
None), worded to say what was expected, what was found and how to fix it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from stream.suggest import suggest


@dataclass(frozen=True)
class GraphNode:
    """What the graph rules need to know of one node (`role` None when its kind is unknown)."""

    name: str
    kind: str
    role: str | None
    inputs: tuple[str, ...]
    join: bool = False


@dataclass(frozen=True)
class GraphIssue:
    """One wiring problem: the node, the field (`inputs`, `inputs[i]`, `join`) and the message."""

    node: str
    field: str
    message: str
    index: int | None = None  # the input's position for `inputs[i]`
    cycle: tuple[str, ...] = ()  # the nodes of a cycle, first == last


def graph_issues(nodes: Sequence[GraphNode]) -> list[GraphIssue]:
    """Every wiring problem of `nodes`: names, inputs, roles, joins and cycles."""
    issues: list[GraphIssue] = []
    names = [n.name for n in nodes]
    seen_names: set[str] = set()
    for name in names:
        if name in seen_names:
            issues.append(GraphIssue(name, "name", f"node name {name!r} is used twice; node names must be unique"))
        seen_names.add(name)
    by_name = {n.name: n for n in nodes}
    for node in nodes:
        seen: set[str] = set()
        for i, source in enumerate(node.inputs):
            field = f"inputs[{i}]"
            if source not in by_name:
                others = [n for n in names if n != node.name]
                issues.append(GraphIssue(node.name, field, f"unknown input {source!r}{suggest(source, others, 'nodes')}", i))
            elif source == node.name:
                issues.append(GraphIssue(node.name, field, "a node cannot read its own output", i))
            elif source in seen:
                issues.append(GraphIssue(node.name, field, f"input {source!r} is listed twice; list it once "
                                         "(set queue_size/policy there)", i))
            elif by_name[source].role == "sink":
                issues.append(GraphIssue(node.name, field, f"input {source!r} is a sink and produces no frames", i))
            seen.add(source)
        article = "an" if node.role == "operator" else "a"
        if node.role == "source" and node.inputs:
            issues.append(GraphIssue(node.name, "inputs", f"{node.name!r} is a source ({node.kind}) and takes no "
                                     "inputs; remove 'inputs'"))
        if node.role in ("operator", "sink") and not node.inputs:
            issues.append(GraphIssue(node.name, "inputs", f"{node.name!r} is {article} {node.role} ({node.kind}) and "
                                     "needs at least one input; add inputs: [<upstream node>]"))
        if node.join and len(node.inputs) < 2:
            issues.append(GraphIssue(node.name, "join", f"join needs at least two inputs, {node.name!r} has "
                                     f"{len(node.inputs)}; remove 'join'"))
    for cycle in find_cycles(nodes):
        issues.append(GraphIssue(cycle[0], "inputs", f"the pipeline has a cycle: {' -> '.join(cycle)}; data must "
                                 "flow one way (remove one of these inputs)", cycle=tuple(cycle)))
    return issues


def find_cycles(nodes: Sequence[GraphNode]) -> list[list[str]]:
    """Cycles as [a, b, ..., a], each reported once. Edges already wrong for another reason (into a
    source, from a sink, unknown, self) are left out so that one mistake is reported once."""
    roles = {n.name: n.role for n in nodes}
    upstream = {n.name: [s for s in n.inputs if s in roles and s != n.name and n.role != "source"
                         and roles[s] != "sink"] for n in nodes}
    ordered = set(topological_order(upstream))
    left = [n.name for n in nodes if n.name not in ordered]
    remaining = set(left)
    cycles: list[list[str]] = []
    reported: set[str] = set()
    for start in left:
        if start in reported:
            continue
        path, node = [start], start
        while True:  # walk upstream inside what is left; every such node has an upstream there
            node = next(src for src in upstream[node] if src in remaining)
            if node in path:
                cycle = path[path.index(node):] + [node]
                cycle.reverse()
                break
            path.append(node)
        if reported.isdisjoint(cycle):
            cycles.append(cycle)
        reported.update(cycle)
    return cycles


def topological_order(upstream: dict[str, list[str]]) -> list[str]:
    """Kahn's algorithm over {node: its upstream nodes}; nodes on or behind a cycle are left out.
    Ties keep the given order, so a pipeline runs its nodes in the order they were written."""
    indegree = {n: len(srcs) for n, srcs in upstream.items()}
    consumers: dict[str, list[str]] = {n: [] for n in upstream}
    for n, srcs in upstream.items():
        for src in srcs:
            consumers[src].append(n)
    ready = [n for n in upstream if indegree[n] == 0]
    order: list[str] = []
    while ready:
        n = ready.pop(0)
        order.append(n)
        for c in consumers[n]:
            indegree[c] -= 1
            if indegree[c] == 0:
                ready.append(c)
    return order


# -- one field of one node ------------------------------------------------------------------------

def rate_problem(value: Any, role: str | None, name: str) -> str | None:
    if value is None:
        return None
    if role is not None and role != "source":
        article = "an" if role == "operator" else "a"
        return (f"rate_hz only paces sources, but {name!r} is {article} {role}; remove it (downstream nodes run "
                "at the rate frames arrive)")
    if value == "native" or (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0):
        return None
    return f"rate_hz must be a positive number of frames per second, 'native' or omitted (free-running); got {value!r}"


def queue_size_problem(value: Any, source: str, target: str) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return None
    return f"queue_size of edge {source!r} -> {target!r} must be an integer >= 1, got {value!r}"


def max_batch_problem(value: Any, role: str | None, name: str) -> str | None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        return f"max_batch must be an integer >= 1, got {value!r}"
    if value != 1 and role is not None and role != "operator":
        return f"max_batch only applies to operators, but {name!r} is a {role}; remove it"
    return None


def fuse_problem(value: Any, role: str | None, name: str) -> str | None:
    if not isinstance(value, bool):
        return f"fuse must be true or false, got {value!r}"
    if value and role == "source":
        return f"fuse runs a node in its producer's thread, but {name!r} is a source; remove it"
    return None


def join_problems(timeout_s: Any, max_pending: Any) -> Iterable[tuple[str, str]]:
    """(field, message) for a join's settings."""
    if not isinstance(timeout_s, (int, float)) or isinstance(timeout_s, bool) or not timeout_s > 0:
        yield "timeout_s", f"timeout_s must be a number of seconds > 0, got {timeout_s!r}"
    if not isinstance(max_pending, int) or isinstance(max_pending, bool) or max_pending < 1:
        yield "max_pending", f"max_pending must be an integer >= 1, got {max_pending!r}"


__all__ = ["GraphIssue", "GraphNode", "find_cycles", "fuse_problem", "graph_issues", "join_problems",
           "max_batch_problem", "queue_size_problem", "rate_problem", "topological_order"]
