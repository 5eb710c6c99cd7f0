"""What a `zmq_source` makes of one received message: a request (the fields of a frame), a ping, or a
protocol error with the request id to answer it with.

Pure functions of the message parts and the source's settings; no sockets, no threads.
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Any, NamedTuple

from stream.zmq import protocol as P

_NO_META = MappingProxyType({})  # default client meta
_new = tuple.__new__


class Inbound(NamedTuple):
    """One decoded FRAME message: what the frame will hold, and whom to answer (router mode)."""

    stream: str | None
    seq: int | None
    t_capture: int
    data: Any
    meta: MappingProxyType  # the client's meta (without reserved `zmq.` keys) plus the source's `zmq.` keys
    request_id: Any
    client_stream: Any  # the stream as the client named it (echoed in replies)


def peer_name(peer: bytes) -> str:
    """A client that did not name itself: its ROUTER routing id (new on each reconnect)."""
    return "peer-" + peer.hex()


def decode_request(parts: list[Any], limits: P.Limits, t_recv: int, *, scoped: bool, unwrap_single: bool,
                   peer: bytes | None) -> Inbound | tuple[int, Any]:
    """An `Inbound` for a FRAME message, or (MSG_PING, request_id) for a ping. Raises
    `ProtocolError` for anything else or anything malformed."""
    msg_type, header, tensors, _ = P.decode_fields(parts, limits)
    request_id = header.get("request_id")
    if msg_type == P.MSG_PING:
        return P.MSG_PING, request_id
    if msg_type != P.MSG_FRAME:
        raise P.ProtocolError(P.BAD_TYPE, f"a source accepts frame (1) or ping (3) messages, got "
                              f"{P.MSG_TYPES[msg_type]} ({msg_type})")
    # Fast checks for the usual types; header_field gives the error (or None) for anything else.
    stream = header.get("stream", "zmq")
    if stream.__class__ is not str:
        stream = P.header_field(header, "stream", str, "zmq")
    seq = header.get("seq")
    if seq.__class__ is not int:
        seq = P.header_field(header, "seq", int, None)
    t_capture = header.get("t_capture_ns")
    if t_capture.__class__ is not int:
        t_capture = P.header_field(header, "t_capture_ns", int, None)
    client_meta = header.get("meta", _NO_META)
    if client_meta.__class__ is not dict:
        client_meta = P.header_field(header, "meta", dict, _NO_META)
    client = header.get("client")
    if client is not None:
        client = P.client_name(client)
    if request_id is not None and request_id.__class__ is not int and not isinstance(request_id, (int, str)):
        raise P.ProtocolError(P.MALFORMED_HEADER, f"request_id must be an integer or string, got {request_id!r}")
    meta = {k: v for k, v in client_meta.items() if not str(k).startswith("zmq.")} if client_meta else {}
    meta["zmq.t_recv_ns"] = t_recv
    client_stream = stream
    if scoped and stream is not None:
        if client is None and peer is not None:
            client = peer_name(peer)
        if client is not None:
            meta["zmq.stream"] = stream  # the client's own name for it, echoed in the reply
            stream = f"{client}/{stream}"
    if unwrap_single and len(tensors) == 1:
        (name, data), = tensors.items()
        meta["zmq.tensor"] = name
    else:
        data = tensors
    if peer is not None:
        meta["zmq.peer"] = peer
        meta["zmq.request_id"] = request_id
    # tuple.__new__: an Inbound without NamedTuple's Python-level __new__ (one is made per request)
    return _new(Inbound, (stream, seq, t_capture or t_recv, data, MappingProxyType(meta), request_id, client_stream))


def request_id_of(parts: list[Any], limits: P.Limits) -> Any:
    """The request id of a message that failed to decode, if its header says one (for the error reply)."""
    try:
        rid = P.parse_prefix(parts[0].bytes, limits)[1].get("request_id") if parts else None
    except P.ProtocolError:
        return None
    return rid if isinstance(rid, (int, str)) else None


__all__ = ["Inbound", "decode_request", "peer_name", "request_id_of"]
