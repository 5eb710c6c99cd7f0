"""Typed ports: what a node consumes and produces, checked when a pipeline is validated.

A node kind declares the kind of data on its ports with two class attributes, using the small
vocabulary below (one `Port` or a tuple of alternatives each)::

    class CoSTGCNNode(Operator):
        consumes = Port("skeleton", ("C", "V", "M"))
        produces = Port("scores", ("classes",))

and may refine them from its params (a shape that depends on a crop size, a class count) by
overriding the classmethods `Node.input_ports(params)` / `Node.output_ports(params)`. `validate`
(the pipeline rules that `run`, `bench` and `serve` share) then rejects an edge whose producer's
type or shape the consumer does not accept, naming both nodes and a fix, as GStreamer's caps do.
A node that declares nothing accepts and produces anything, so plugins keep working unchanged.

Shapes are hints: a tuple of dimensions, each an int (that size exactly) or a name (any size; a
trailing `?` marks a dimension that may be absent, e.g. video `("C", "T?", "H", "W")`). Two shapes
agree when they have the same number of dimensions (after leaving out optional ones) and every
pair of fixed sizes is equal.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Iterable, Union

Dim = Union[int, str]

# The vocabulary: type -> (its parent type, what it means). A consumer of a parent accepts every child
# (a `tensor` input takes video, BEV maps, scores, ...); `any` accepts everything.
TYPES: dict[str, tuple[str | None, str]] = {
    "any": (None, "anything (an undeclared port)"),
    "tensor": ("any", "a tensor or numpy array"),
    "video": ("tensor", "a video frame, float (C, H, W) normalised for a model, as data['video']"),
    "image": ("tensor", "a camera image, uint8 (H, W, 3) BGR"),
    "skeleton": ("tensor", "body joints of one time step, (C=3, V joints, M bodies), as data['skeleton']"),
    "points": ("tensor", "a point cloud, (N, F) with x, y, z first, as data['points']"),
    "bev": ("tensor", "a bird's-eye-view map, (C, H, W), as data['bev']"),
    "features": ("tensor", "a feature vector per time step, (D,), as data['features']"),
    "scores": ("tensor", "class scores of one step (probabilities or logits), (classes,), as data['scores']"),
    "packets": ("any", "network packets (raw bytes with capture time and addresses)"),
    "flow": ("any", "a bidirectional 5-tuple flow (its packets, or their byte representation)"),
    "labels": ("any", "class names with scores (a prediction, as text)"),
}


class PortError(ValueError):
    """A port declaration that does not use the vocabulary."""


@dataclass(frozen=True)
class Port:
    """The type of data on a port, with an optional shape hint (see the module docstring)."""

    type: str
    shape: tuple[Dim, ...] | None = None
    fix: str = ""  # how to make a producer agree with this (input) port's shape, shown on a mismatch

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise PortError(f"unknown port type {self.type!r}; the port types are: {', '.join(TYPES)} "
                            "(stream.ports.TYPES)")
        if self.shape is not None:
            object.__setattr__(self, "shape", tuple(self.shape))
            for dim in self.shape:
                if isinstance(dim, bool) or not isinstance(dim, (int, str)) or (isinstance(dim, int) and dim < 0):
                    raise PortError(f"port {self.type!r}: shape dimensions are sizes >= 0 or names, got {dim!r}")

    def __str__(self) -> str:
        if self.shape is None:
            return self.type
        return f"{self.type} ({', '.join(str(d) for d in self.shape)}{',' if len(self.shape) == 1 else ''})"

    def with_shape(self, *shape: Dim, fix: str = "") -> "Port":
        return Port(self.type, tuple(shape), fix or self.fix)


# Ready-made ports for declarations (`consumes = VIDEO`, `produces = SCORES`).
ANY = Port("any")
TENSOR = Port("tensor")
VIDEO = Port("video", ("C", "T?", "H", "W"))
IMAGE = Port("image", ("H", "W", 3))
SKELETON = Port("skeleton", ("C", "V", "M"))
POINTS = Port("points", ("N", "F"))
BEV = Port("bev", ("C", "H", "W"))
FEATURES = Port("features", ("D",))
SCORES = Port("scores", ("classes",))
PACKETS = Port("packets")
FLOW = Port("flow")
LABELS = Port("labels")


class _SameAsInput:
    """`produces = SAME_AS_INPUT`: the node emits the kind of data it receives (a pass-through, a filter)."""

    def __repr__(self) -> str:
        return "SAME_AS_INPUT"


SAME_AS_INPUT = _SameAsInput()

Ports = tuple[Port, ...]


def as_ports(declared: Any) -> Ports | None:
    """A declaration (`None`, a Port or an iterable of Ports) as a tuple, or None when undeclared."""
    if declared is None:
        return None
    if isinstance(declared, Port):
        return (declared,)
    ports = tuple(declared)
    for port in ports:
        if not isinstance(port, Port):
            raise PortError(f"a port declaration holds stream.ports.Port objects, got {port!r}")
    return ports or None


def is_a(child: str, parent: str) -> bool:
    """True when data of type `child` is accepted where `parent` is expected."""
    node: str | None = child
    while node is not None:
        if node == parent:
            return True
        node = TYPES[node][0]
    return False


def _required_variants(shape: tuple[Dim, ...]) -> list[tuple[Dim, ...]]:
    """The shape with each subset of its optional (`name?`) dimensions left out."""
    optional = [i for i, d in enumerate(shape) if isinstance(d, str) and d.endswith("?")]
    variants = []
    for k in range(len(optional) + 1):
        for dropped in itertools.combinations(optional, k):
            variants.append(tuple(d for i, d in enumerate(shape) if i not in dropped))
    return variants


def shapes_agree(produced: tuple[Dim, ...] | None, accepted: tuple[Dim, ...] | None) -> bool:
    if produced is None or accepted is None:
        return True
    for a in _required_variants(produced):
        for b in _required_variants(accepted):
            if len(a) == len(b) and all(not (isinstance(x, int) and isinstance(y, int)) or x == y
                                        for x, y in zip(a, b)):
                return True
    return False


def accepts(consumer: Port, producer: Port) -> bool:
    """Whether an input declared as `consumer` takes what a port declared as `producer` emits."""
    if consumer.type == "any" or producer.type == "any":
        return True
    if not is_a(producer.type, consumer.type):
        return False
    return shapes_agree(producer.shape, consumer.shape)


def mismatch(consumed: Ports, produced: Ports) -> str | None:
    """None when some produced port is accepted by some consumed one; else the fix to suggest ('' when
    the types differ, the consumer's shape fix when only the shapes do)."""
    if any(accepts(c, p) for c in consumed for p in produced):
        return None
    for c in consumed:
        for p in produced:
            if c.type == "any" or p.type == "any" or is_a(p.type, c.type):  # the types agree, the shapes do not
                return c.fix or ("make the shapes agree (the source's size or crop, or this node's input size)")
    return ""


def _type_names(ports: Ports) -> str:
    return " or ".join(dict.fromkeys(p.type for p in ports))


def describe(ports: Ports | None) -> str:
    return "anything" if ports is None else " or ".join(str(p) for p in ports)


@dataclass(frozen=True)
class PortNode:
    """What the port check needs of one node: its declared ports (None: undeclared) and inputs."""

    name: str
    kind: str
    inputs: tuple[str, ...]
    consumes: Ports | None
    produces: Ports | None | _SameAsInput
    join: bool = False


@dataclass(frozen=True)
class PortIssue:
    node: str
    index: int  # the input's position
    message: str


def port_issues(nodes: Iterable[PortNode], producers_of: Any = None, consumers_of: Any = None) -> list[PortIssue]:
    """Every edge whose consumer does not accept what its producer emits.

    `producers_of(ports)` / `consumers_of(ports)` may name node kinds that produce / accept such ports,
    for the fix (`kinds_producing`, `kinds_consuming`: registry lookups).
    Edges from unknown nodes and cycles are left to the graph rules."""
    by_name = {n.name: n for n in nodes}
    resolved: dict[str, Ports | None] = {}

    def output(name: str, seen: frozenset[str] = frozenset()) -> Ports | None:
        if name in resolved:
            return resolved[name]
        node = by_name[name]
        out = node.produces
        if out is SAME_AS_INPUT:
            if name in seen or node.join:
                out = None
            else:
                ins = [output(s, seen | {name}) for s in node.inputs if s in by_name]
                out = None if not ins or any(i is None for i in ins) else tuple(dict.fromkeys(p for i in ins for p in i))
        resolved[name] = out  # type: ignore[assignment]
        return out  # type: ignore[return-value]

    issues: list[PortIssue] = []
    for node in by_name.values():
        if node.consumes is None or node.join:
            continue  # undeclared inputs take anything; a join hands the node {input: data} mappings
        for index, source in enumerate(node.inputs):
            if source not in by_name or source == node.name:
                continue
            produced = output(source)
            if produced is None:
                continue
            fix = mismatch(node.consumes, produced)
            if fix is None:
                continue
            upstream = by_name[source]
            wanted = describe(node.consumes)
            if not fix:
                makers = producers_of(node.consumes) if producers_of is not None else []
                takers = consumers_of(produced) if consumers_of is not None else []
                fix = (f"connect {node.name!r} to a node that produces {_type_names(node.consumes)}"
                       + (f" (e.g. {', '.join(makers[:4])})" if makers else "")
                       + f", or feed {source!r} into a node that takes {_type_names(produced)}"
                       + (f" (e.g. {', '.join(takers[:4])})" if takers else ""))
            issues.append(PortIssue(node.name, index, (
                f"{node.name!r} ({node.kind}) consumes {wanted}, but its input {source!r} ({upstream.kind}) "
                f"produces {describe(produced)}; {fix}")))
    return issues


def declared_ports(node_class: Any, params: Any) -> tuple[Ports | None, Any, str | None]:
    """(consumes, produces, problem) of a node class with these params; a declaration that raises is
    reported as the problem (and the node's ports are then left unchecked)."""
    try:
        return node_class.input_ports(params), node_class.output_ports(params), None
    except AttributeError:  # not a stream.Node (a plain class in a hand-built spec): undeclared
        return None, None, None
    except Exception as exc:
        return None, None, f"the port declaration of kind {getattr(node_class, '__name__', node_class)!r} failed: " \
                           f"{type(exc).__name__}: {exc}"


def kinds_producing(consumed: Ports) -> list[str]:
    """Registered kinds whose declared output type some of `consumed` accepts (for error messages)."""
    return _kinds_matching(consumed, "produces")


def kinds_consuming(produced: Ports) -> list[str]:
    """Registered kinds that declare an input type accepting some of `produced` (for error messages)."""
    return _kinds_matching(produced, "consumes")


def _kinds_matching(ports: Ports, side: str) -> list[str]:
    from stream.registry import kinds

    found = []
    for name, cls in kinds().items():
        declared = getattr(cls, side, None)
        if declared is None or declared is SAME_AS_INPUT or (side == "produces" and cls.role == "sink"):
            continue
        for theirs in as_ports(declared) or ():
            pairs = [(ours, theirs) if side == "produces" else (theirs, ours) for ours in ports]
            if any(c.type != "any" and p.type != "any" and is_a(p.type, c.type) for c, p in pairs):
                found.append(name)
                break
    return found


__all__ = ["ANY", "BEV", "FEATURES", "FLOW", "IMAGE", "LABELS", "PACKETS", "POINTS", "Port", "PortError",
           "PortIssue", "PortNode", "SAME_AS_INPUT", "SCORES", "SKELETON", "TENSOR", "TYPES", "VIDEO", "accepts",
           "as_ports", "declared_ports", "describe", "is_a", "kinds_consuming", "kinds_producing", "mismatch", "port_issues", "shapes_agree"]
