"""Where a `zmq_sink` in reply mode meets the `zmq_source` whose ROUTER socket must carry its replies.

A ROUTER socket is not thread-safe, so only the source's thread touches it. The source opens an
inproc PULL socket next to it and publishes a `ReplyChannel` here under its endpoint; a reply sink
(another thread) looks the channel up by the same endpoint and PUSHes finished replies into it. The
table is explicit and per process: a channel exists from the source's `setup` to its `teardown`, and
registering a second source on the same endpoint is an error.
"""
from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass
from typing import Callable

import zmq

_counter = itertools.count()


@dataclass(frozen=True)
class ReplyChannel:
    """The inproc address (in `context`) that carries replies back to a router source's thread."""

    endpoint: str
    context: zmq.Context
    inproc: str
    stop: Callable[[], None]  # asks the source to finish (used by `costream serve` on Ctrl-C)
    stats: Callable[[], dict]
    # Route (request key, RESULT parts) straight onto the ROUTER when called from the source's own
    # thread (a reply sink fused into it); False elsewhere, and the sink uses `inproc`.
    deliver: Callable[[int, list], bool] | None = None
    # Called by a sink before it first PUSHes replies to `inproc`: until then the source waits on its
    # data socket alone (a blocking receive, cheaper than polling two sockets), so that first reply
    # may wait up to one poll interval (50 ms) to be forwarded.
    attach: Callable[[], None] | None = None


class ReplyHub:
    """Endpoint -> ReplyChannel table, shared by the nodes of the pipelines running in this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._channels: dict[str, ReplyChannel] = {}

    @staticmethod
    def new_inproc_address() -> str:
        return f"inproc://costream-replies-{next(_counter)}"

    def register(self, channel: ReplyChannel) -> None:
        with self._lock:
            if channel.endpoint in self._channels:
                raise ValueError(f"a zmq_source in router mode is already serving {channel.endpoint!r} in this "
                                 "process; give each router source its own endpoint")
            self._channels[channel.endpoint] = channel

    def unregister(self, endpoint: str) -> None:
        with self._lock:
            self._channels.pop(endpoint, None)

    def lookup(self, endpoint: str | None) -> ReplyChannel:
        """The channel for `endpoint`; with None, the only registered one."""
        with self._lock:
            if endpoint is None:
                if len(self._channels) == 1:
                    return next(iter(self._channels.values()))
                raise LookupError(f"zmq_sink in reply mode has no endpoint and {len(self._channels)} router "
                                  f"sources are running ({sorted(self._channels)}); set the sink's endpoint "
                                  "to the endpoint of its zmq_source")
            channel = self._channels.get(endpoint)
            if channel is None:
                raise LookupError(f"no zmq_source in router mode serves {endpoint!r} in this process (running: "
                                  f"{sorted(self._channels) or 'none'}); a reply sink's endpoint must equal its "
                                  "router source's endpoint")
            return channel

    def endpoints(self) -> list[str]:
        with self._lock:
            return sorted(self._channels)


HUB = ReplyHub()
"""The process's reply table (an explicit registry, like the node-kind registry)."""
