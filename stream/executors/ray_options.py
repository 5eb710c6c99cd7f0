"""A node's `ray:` settings in the YAML: where its actor may run and what happens when it dies.

    model:
      kind: cox3d
      device: cuda:0              # -> num_gpus: 1 unless ray.num_gpus says otherwise
      ray:
        num_cpus: 2               # CPUs reserved for the node's actor (default: none reserved)
        resources: {camera_host: 1}   # custom resources a Ray node must offer (`ray start --resources`)
        labels: {zone: rack-1}    # node labels the Ray node must carry (`ray start --labels`)
        on_actor_death: restart   # or stop (default): the run stops with an error
        max_restarts: 3           # restarts allowed before the run stops anyway

Only the Ray executor reads these; the local executor ignores them, so one YAML runs under both.
Nothing here imports Ray.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from enum import Enum
from types import MappingProxyType
from typing import Any, Mapping


class ActorDeathPolicy(str, Enum):
    """What the Ray executor does when a node's actor dies (its process crashed or was killed)."""

    STOP = "stop"  # report it and stop the pipeline (drain the rest); the run fails
    RESTART = "restart"  # start a new actor for the node, with fresh state; counted in the report


RAY_FIELDS = ("num_cpus", "num_gpus", "resources", "labels", "on_actor_death", "max_restarts")


@dataclass(frozen=True)
class RayNodeOptions:
    """Placement and failure policy of one node's actor; see the module docstring."""

    num_cpus: float | None = None
    num_gpus: float | None = None  # None: 1 for a node on `cuda`/`cuda:N`, else 0
    resources: Mapping[str, float] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    on_actor_death: ActorDeathPolicy = ActorDeathPolicy.STOP
    max_restarts: int = 3

    def __post_init__(self) -> None:
        for name in ("num_cpus", "num_gpus"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value) or value < 0):
                raise ValueError(f"ray.{name} must be a number >= 0 (fractions share a CPU or GPU), got {value!r}")
        if not isinstance(self.resources, Mapping):
            raise ValueError(f"ray.resources must be a mapping of resource name to amount, e.g. "
                             f"{{camera_host: 1}}; got {self.resources!r}")
        for key, amount in self.resources.items():
            if not isinstance(key, str) or not key:
                raise ValueError(f"ray.resources: resource names are non-empty strings, got {key!r}")
            if key in ("CPU", "GPU", "memory", "object_store_memory"):
                raise ValueError(f"ray.resources: {key!r} is a built-in resource; use ray.num_cpus / ray.num_gpus "
                                 "(or leave it to Ray) instead")
            if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not amount > 0:
                raise ValueError(f"ray.resources: the amount of {key!r} must be a number > 0, got {amount!r}")
        if not isinstance(self.labels, Mapping):
            raise ValueError(f"ray.labels must be a mapping of label to value, e.g. {{zone: rack-1}}; got {self.labels!r}")
        for key, value in self.labels.items():
            if not isinstance(key, str) or not key or not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError(f"ray.labels: each label is `name: value` with a non-empty name and a string "
                                 f"value, got {key!r}: {value!r}")
        try:
            policy = ActorDeathPolicy(self.on_actor_death)
        except ValueError:
            raise ValueError(f"ray.on_actor_death must be one of {[p.value for p in ActorDeathPolicy]}, got "
                             f"{self.on_actor_death!r}") from None
        if isinstance(self.max_restarts, bool) or not isinstance(self.max_restarts, int) or self.max_restarts < 0:
            raise ValueError(f"ray.max_restarts must be an integer >= 0, got {self.max_restarts!r}")
        object.__setattr__(self, "on_actor_death", policy)
        object.__setattr__(self, "resources", MappingProxyType({k: float(v) for k, v in self.resources.items()}))
        object.__setattr__(self, "labels", MappingProxyType({k: str(v) for k, v in self.labels.items()}))

    @classmethod
    def from_mapping(cls, mapping: Any) -> "RayNodeOptions":
        """Build from the YAML mapping; ValueError naming an unknown field and the valid ones."""
        if mapping is None:
            return cls()
        if isinstance(mapping, RayNodeOptions):
            return mapping
        if not isinstance(mapping, Mapping):
            raise ValueError(f"`ray:` must be a mapping with fields {', '.join(RAY_FIELDS)}; got {mapping!r}")
        unknown = [k for k in mapping if k not in RAY_FIELDS]
        if unknown:
            from difflib import get_close_matches

            hints = []
            for key in unknown:
                close = get_close_matches(str(key), RAY_FIELDS, n=1)
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ValueError(f"unknown field(s) {', '.join(hints)} in `ray:`; valid: {', '.join(RAY_FIELDS)}")
        return cls(**{k: v for k, v in mapping.items()})

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.value if isinstance(value, Enum) else dict(value) if isinstance(value, Mapping) else value
        return out


DEFAULT_RAY_OPTIONS = RayNodeOptions()


def ray_options_of(node: Any) -> RayNodeOptions:
    """The node spec's `ray:` settings (the defaults when it has none)."""
    value = getattr(node, "ray", None)
    return value if isinstance(value, RayNodeOptions) else RayNodeOptions.from_mapping(value)


__all__ = ["DEFAULT_RAY_OPTIONS", "RAY_FIELDS", "ActorDeathPolicy", "RayNodeOptions", "ray_options_of"]
