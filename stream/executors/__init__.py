"""Executors by name: `executor: local` in the YAML, `--executor local` on the command line.

    executor = create_executor(spec)                 # spec.executor, "local" unless the YAML says otherwise
    executor = create_executor(spec, "ray", free_running=True)

An executor's module is imported only when it is asked for, so `ray` costs nothing unless a pipeline
uses it. Adding one is one line in `EXECUTORS` ("module:Class"); the class follows the protocol in
`stream.executors.base`.
"""
from __future__ import annotations

import importlib
from typing import Any

from stream.executors.base import Executor, PipelineStartError
from stream.spec import PipelineSpec
from stream.suggest import suggest

# name -> "module:Class", and the optional extra (`pip install costream[extra]`) it needs, if any.
EXECUTORS: dict[str, tuple[str, str | None]] = {
    "local": ("stream.executors.local:LocalExecutor", None),
    "ray": ("stream.executors.ray:RayExecutor", "ray"),
}


class UnknownExecutorError(ValueError):
    """An executor name that is not in `EXECUTORS`."""


class ExecutorUnavailableError(RuntimeError):
    """A known executor whose optional dependency is not installed."""


def executor_names() -> list[str]:
    return list(EXECUTORS)


def check_executor_name(name: object) -> str | None:
    """The problem with `name` as an executor name, or None (no import happens)."""
    if isinstance(name, str) and name in EXECUTORS:
        return None
    hint = suggest(name, EXECUTORS, listing=None)
    return f"unknown executor {name!r}{hint}{' ' if hint else '; '}valid executors: {', '.join(EXECUTORS)}"


def executor_class(name: str) -> type:
    """The executor class registered as `name`, imported now."""
    problem = check_executor_name(name)
    if problem is not None:
        raise UnknownExecutorError(problem)
    target, extra = EXECUTORS[name]
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or ""
        if extra is not None and missing.split(".")[0] == extra:
            raise ExecutorUnavailableError(
                f"executor {name!r} needs the optional dependency {missing or extra!r} ({exc}); install it with "
                f"pip install costream[{extra}]") from exc
        raise ExecutorUnavailableError(f"executor {name!r} is not available in this installation of costream "
                                       f"({module_name} cannot be imported: {exc})") from exc
    return getattr(module, attr)


def create_executor(spec: PipelineSpec, name: str | None = None, **options: Any) -> Executor:
    """An executor for `spec`: `name`, else the spec's own `executor`. `options` are the executor's
    keyword arguments (`free_running`, `max_frames`, `fuse`, and its own)."""
    return executor_class(name or spec.executor)(spec, **options)


__all__ = ["EXECUTORS", "Executor", "ExecutorUnavailableError", "PipelineStartError", "UnknownExecutorError",
           "check_executor_name", "create_executor", "executor_class", "executor_names"]
