"""Building RESULT messages: pipeline outputs, error replies and stats replies."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from stream.frame import Frame, now_ns
from stream.zmq import protocol as P

_COPY_THRESHOLD = 64 * 1024  # below this pyzmq copies anyway; above it we send zero-copy


_UNKNOWN_CAPTURE = "zmq.t_capture_ns"  # meta key of a capture time not on this host's clock, as the client sent it


def stage_latency_ms(frame: Frame, t_reply: int) -> dict[str, float]:
    """Per-stage latency from the frame trace: each stamp minus the one before (the first minus the
    capture time), plus `reply` (last stamp to reply) and `total` (capture to reply), in ms.

    A frame whose client sent no capture time on this host's clock starts at its arrival: it has no
    `receive` stage, and its `total` is arrival to reply."""
    latency: dict[str, float] = {}
    prev = t_capture = frame.t_capture
    meta = frame.meta
    t_recv = meta.get("zmq.t_recv_ns")
    if t_recv.__class__ is int or isinstance(t_recv, int):
        if _UNKNOWN_CAPTURE not in meta:
            latency["receive"] = (t_recv - prev) / 1e6
        prev = t_recv
    for node, t in frame.trace:
        latency[node] = (t - prev) / 1e6
        prev = t
    latency["reply"] = (t_reply - prev) / 1e6
    latency["total"] = (t_reply - t_capture) / 1e6
    return latency


def frame_arrays(frame: Frame) -> dict[str, Any]:
    """The tensors a frame's data becomes on the wire: a dict as is, one array under its input name."""
    data = frame.data
    if data is None:
        return {}
    # An ndarray is ruled out first: isinstance against the Mapping ABC costs ~1 us per reply.
    if data.__class__ is dict or (data.__class__ is not np.ndarray and isinstance(data, Mapping)):
        return dict(data)
    return {str(frame.meta.get("zmq.tensor", "output")): data}


def result_parts(frame: Frame, encodings: Mapping[str, str] | None = None, quality: int = 90) -> list[Any]:
    """Header and buffers of a RESULT for `frame` (status ok)."""
    meta = frame.meta
    data = frame.data
    if data.__class__ is np.ndarray and not encodings and data.dtype in P.DTYPE_NAMES and data.flags.c_contiguous:
        # The usual reply, one raw array, without the general encoder's loop (this runs cold, per request).
        buf = P.raw_buffer(data)
        descriptors = [P.raw_descriptor(str(meta.get("zmq.tensor", "output")), data, len(buf))]
        buffers = [buf]
    else:
        descriptors, buffers = P.encode_tensors(frame_arrays(frame), encodings, quality)
    t_reply = now_ns()
    unknown = _UNKNOWN_CAPTURE in meta
    header = {
        "request_id": meta.get("zmq.request_id"),
        "stream": meta.get("zmq.stream", frame.stream),  # the client's name for a client-scoped stream
        "seq": frame.seq,
        "t_capture_ns": meta[_UNKNOWN_CAPTURE] if unknown else frame.t_capture,  # as the client sent it
        "capture_clock": "unknown" if unknown else "server",
        "t_reply_ns": t_reply,
        "status": "ok",
        "error": None,
        "latency": stage_latency_ms(frame, t_reply),
        "meta": P.json_safe(meta),
        "tensors": descriptors,
    }
    return [P.pack_header(P.MSG_RESULT, header, strict=False), *buffers]  # json_safe meta, finite latency


def error_reply_parts(request_id: Any, code: str, message: str, info: Mapping[str, Any] | None = None) -> list[bytes]:
    """A RESULT with status error; `info` may carry the request's stream and seq."""
    info = info or {}
    header = {"request_id": request_id, "stream": info.get("stream"), "seq": info.get("seq"),
              "t_reply_ns": now_ns(), "status": "error", "error": {"code": code, "message": message},
              "latency": {}, "meta": {}, "tensors": []}
    return [P.pack_header(P.MSG_RESULT, header, strict=False)]


def no_output_reply_parts(request_id: Any, stream: Any, seq: Any, node: str, frame: Frame) -> list[bytes]:
    """A RESULT with status ok and no tensors: the pipeline emitted nothing for this frame (node `node`,
    e.g. a continual model filling its receptive field); `meta.no_output` names the node."""
    t_reply = now_ns()
    latency = stage_latency_ms(frame.stamped(node, t_reply), t_reply)  # the node's stage ends now
    unknown = _UNKNOWN_CAPTURE in frame.meta
    header = {"request_id": request_id, "stream": stream, "seq": seq,
              "t_capture_ns": frame.meta[_UNKNOWN_CAPTURE] if unknown else frame.t_capture,
              "capture_clock": "unknown" if unknown else "server", "t_reply_ns": t_reply, "status": "ok", "error": None,
              "latency": latency, "meta": {"no_output": node}, "tensors": []}
    return [P.pack_header(P.MSG_RESULT, header, strict=False)]


def stats_reply_parts(request_id: Any, stats: Mapping[str, int]) -> list[bytes]:
    """The answer to a PING: status ok and the source's counters (every one, zeros included)."""
    header = {"request_id": request_id, "t_reply_ns": now_ns(), "status": "ok", "error": None,
              "latency": {}, "meta": {}, "stats": dict(stats), "tensors": []}
    return [P.pack_header(P.MSG_RESULT, header, strict=False)]


def needs_zero_copy(parts: list[Any]) -> bool:
    return any(len(p) >= _COPY_THRESHOLD for p in parts[1:])
