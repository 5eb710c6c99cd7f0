"""JSON Schema (draft 2020-12) of the pipeline YAML, for editor completion and validation.

Per-kind `params` come from the registry: each node is `oneOf` one branch per registered kind (keyed by
a `const` kind) plus one branch for `package.module:Class` kinds whose params cannot be known
statically. `stream.config` stays the authority: the schema cannot check the graph (unknown inputs,
cycles) or the devices present.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from stream.params import params_json_schema
from stream.registry import kinds
from stream.executors import executor_names
from stream.rules import MAX_QUEUE_SIZE
from stream.spec import DEFAULT_DRAIN_TIMEOUT_S, DEFAULT_EXECUTOR, ErrorPolicy, QueuePolicy

SCHEMA_ID = "https://costream.dev/schema/pipeline-v1.json"
NODE_NAME = r"^[A-Za-z_][A-Za-z0-9_\-]*$"
CLASS_REF = r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"
PERCENT = r"^\s*(\d+(\.\d*)?|\.\d+)\s*%\s*$"  # options.max_failed_frames as a percentage


def _common_node_properties() -> dict[str, Any]:
    edge = {
        "type": "object",
        "properties": {
            "from": {"type": "string", "pattern": NODE_NAME, "description": "the upstream node"},
            "queue_size": {"type": "integer", "minimum": 1, "maximum": MAX_QUEUE_SIZE, "default": 4},
            "policy": {"enum": [p.value for p in QueuePolicy],
                       "description": "block: lossless; drop_oldest: keep the newest queue_size; "
                                      "latest: keep only the newest frame. Default by source: latest behind a live "
                                      "source (camera, URL, socket), block behind files and synthetic sources"},
        },
        "required": ["from"],
        "additionalProperties": False,
    }
    return {
        "kind": {"type": "string", "description": "a registered kind (`costream list`) or package.module:Class"},
        "params": {"type": ["object", "null"]},
        "inputs": {
            "description": "upstream nodes: a name (default queue) or {from, queue_size, policy}",
            "anyOf": [
                {"type": "string", "pattern": NODE_NAME},
                {"type": "array", "items": {"anyOf": [{"type": "string", "pattern": NODE_NAME}, edge]}},
            ],
        },
        "device": {"type": "string", "pattern": r"^(cpu|cuda)(:\d+)?$", "default": "cpu",
                   "description": "cpu, cpu:N (pin the node's thread to CPU core N), cuda or cuda:N"},
        "on_error": {"enum": [p.value for p in ErrorPolicy], "default": ErrorPolicy.CONTINUE.value},
        "join": {
            "description": "join the inputs by (stream, seq); process() then gets {input: data}",
            "anyOf": [
                {"type": ["boolean", "null"]},
                {"type": "object", "additionalProperties": False, "properties": {
                    "timeout_s": {"type": "number", "exclusiveMinimum": 0, "default": 0.1},
                    "max_pending": {"type": "integer", "minimum": 1, "default": 64}}},
            ],
        },
        "rate_hz": {
            "description": "sources only: frames per second, 'native', or omitted (free-running)",
            "anyOf": [{"type": "number", "exclusiveMinimum": 0}, {"const": "native"}, {"type": "null"}],
        },
        "max_batch": {"type": "integer", "minimum": 1, "default": 1},
        "fuse": {"type": "boolean", "default": False},
        "ray": {
            "description": "Ray executor only: where the node's actor may run and what happens when it dies",
            "type": "object", "additionalProperties": False, "properties": {
                "num_cpus": {"type": "number", "minimum": 0},
                "num_gpus": {"type": "number", "minimum": 0},
                "resources": {"type": "object", "additionalProperties": {"type": "number", "exclusiveMinimum": 0}},
                "labels": {"type": "object", "additionalProperties": {"type": ["string", "number"]}},
                "on_actor_death": {"enum": ["stop", "restart"], "default": "stop"},
                "max_restarts": {"type": "integer", "minimum": 0, "default": 3}}},
    }


INTERPOLATION = {"type": "string", "pattern": r"\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}",
                 "description": "${VAR} or ${VAR:-default}, read as YAML after substitution"}


def _allow_interpolation(schema: Any) -> Any:
    """Let non-string scalars also be a `${VAR}` reference (e.g. `count: ${FRAMES:-300}`)."""
    if isinstance(schema, list):
        return [_allow_interpolation(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: (_allow_interpolation(v) if k in ("additionalProperties", "items", "prefixItems",
                                                 "anyOf") else v) for k, v in schema.items()}
    if "properties" in schema:
        out["properties"] = {k: _allow_interpolation(v) for k, v in schema["properties"].items()}
    if schema.get("type") in ("integer", "number", "boolean", "null") or "enum" in schema:
        return {"anyOf": [out, INTERPOLATION]}
    return out


def pipeline_schema(kind_classes: dict[str, type] | None = None) -> dict[str, Any]:
    """The schema document; `kind_classes` defaults to every registered kind."""
    kind_classes = kinds() if kind_classes is None else kind_classes
    branches: list[dict[str, Any]] = []
    defs: dict[str, Any] = {}
    for name, cls in sorted(kind_classes.items()):
        ref = f"params_{name}"
        params = _allow_interpolation(params_json_schema(cls.Params))
        params.setdefault("description", f"params of {cls.role} kind {name!r} ({cls.__module__}.{cls.__qualname__})")
        defs[ref] = {"anyOf": [params, {"type": "null"}]}
        branches.append({
            "properties": {"kind": {"const": name}, "params": {"$ref": f"#/$defs/{ref}"}},
            "required": ["kind"],
        })
    branches.append({"properties": {"kind": {"type": "string", "pattern": CLASS_REF}}, "required": ["kind"]})
    defs["node"] = {
        "type": "object",
        "properties": _common_node_properties(),
        "required": ["kind"],
        "additionalProperties": False,
        "oneOf": branches,
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "costream pipeline",
        "type": "object",
        "properties": {
            "version": {"const": 1},
            "name": {"type": "string"},
            "description": {"type": "string"},
            "executor": {"enum": executor_names(), "default": DEFAULT_EXECUTOR,
                         "description": "where the nodes run: local (threads in this process), ray (a Ray cluster)"},
            "options": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "allow_cpu_fallback": {"type": "boolean", "default": False},
                    "warmup_frames": {"type": "integer", "minimum": 0, "default": 10},
                    "drain_timeout_s": {
                        "anyOf": [{"type": "number", "exclusiveMinimum": 0}, {"type": "null"}],
                        "default": DEFAULT_DRAIN_TIMEOUT_S,
                        "description": "after a stop, queued frames flow for at most this long (null: no limit)"},
                    "max_failed_frames": {
                        "anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": PERCENT}],
                        "default": 0,
                        "description": "failed frames a run may have and still exit 0: N frames or 'P%'"},
                },
            },
            "nodes": {
                "type": "object",
                "minProperties": 1,
                "propertyNames": {"pattern": NODE_NAME},
                "additionalProperties": {"$ref": "#/$defs/node"},
            },
        },
        "required": ["nodes"],
        "additionalProperties": False,
        "$defs": defs,
    }


def write_schema(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(pipeline_schema(), indent=2) + "\n", encoding="utf-8")
    return path
