"""Socket set-up shared by the nodes, the server and the client: loopback-only unless allowed,
bounded high-water marks, heartbeats and reconnect intervals (peer restarts), and CurveZMQ.

CurveZMQ keys are the files `zmq.auth.create_certificates` writes (`NAME.key` public,
`NAME.key_secret` secret); `generate_keypair` makes them. A server lists the public keys of the
clients it accepts in a directory; anything else is refused by the ZAP authenticator.
"""
from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import zmq
import zmq.auth
import zmq.utils.z85
from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger("costream.zmq")


def generate_keypair(directory: str | Path, name: str) -> tuple[Path, Path]:
    """Write a CurveZMQ key pair `name.key` / `name.key_secret` into `directory`; returns both paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(str(directory), name)
    return Path(public), Path(secret)


def check_endpoint(endpoint: str, bind: bool, allow_remote: bool) -> None:
    """Refuse to bind a TCP endpoint beyond loopback unless `allow_remote` says so."""
    if not isinstance(endpoint, str) or "://" not in endpoint:
        raise ValueError(f"endpoint {endpoint!r} is not a ZeroMQ endpoint; expected e.g. tcp://127.0.0.1:5555")
    transport = endpoint.split("://", 1)[0]
    if transport not in ("tcp", "ipc", "inproc"):
        raise ValueError(f"endpoint {endpoint!r}: transport {transport!r} is not supported; use tcp, ipc or inproc")
    if not bind or transport != "tcp" or allow_remote:
        return
    host = urlsplit(endpoint).hostname or ""
    loopback = host == "localhost"
    if not loopback:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
    if not loopback:
        raise ValueError(f"refusing to bind {endpoint!r}: only loopback (127.0.0.1) is bound by default. "
                         "To accept other machines set allow_remote: true (--allow-remote) and consider "
                         "CurveZMQ authentication (curve_secret_key + curve_clients_dir)")


@dataclass(frozen=True)
class CurveServer:
    """This side's secret key file and the directory of accepted client public keys."""

    secret_key: str
    clients_dir: str


@dataclass(frozen=True)
class CurveClient:
    """This side's secret key file and the server's public key file."""

    secret_key: str
    server_public_key: str


def _load_pair(path: str) -> tuple[bytes, bytes]:
    public, secret = zmq.auth.load_certificate(path)
    if secret is None:
        raise ValueError(f"{path} holds no secret key; pass the NAME.key_secret file made by generate_keypair")
    return public, secret


class KeyNameAuthenticator(ThreadAuthenticator):
    """ZAP handler that names each accepted client after its public key file (`robot7` for
    `robot7.key`): the ZAP User-Id that every message from that client then carries
    (`zmq.Frame.get("User-Id")`), which a router source scopes streams by. A key the handler cannot
    name (not among the files) is named by its Z85 text, as pyzmq does."""

    def __init__(self, context: zmq.Context, names: dict[bytes, str]) -> None:
        super().__init__(context, log=logging.getLogger("costream.zmq.auth"))
        self.names = names

    def curve_user_id(self, client_public_key: bytes) -> str:
        z85 = zmq.utils.z85.encode(client_public_key)
        return self.names.get(z85) or z85.decode("ascii")


def client_key_names(clients_dir: str | Path) -> dict[bytes, str]:
    """Z85 public key -> the name of its `NAME.key` file, for every key in `clients_dir` (the first
    file name in sorted order when one key is in several files)."""
    names: dict[bytes, str] = {}
    for path in sorted(Path(clients_dir).glob("*.key")):
        public, _ = zmq.auth.load_certificate(str(path))
        if public:
            names.setdefault(public, path.name[:-len(".key")])
    return names


def start_authenticator(context: zmq.Context, curve: CurveServer) -> ThreadAuthenticator:
    """A ZAP handler on `context` that accepts only clients whose public key is in `clients_dir`, and
    names each by its key file (`KeyNameAuthenticator`)."""
    if not Path(curve.clients_dir).is_dir():
        raise ValueError(f"curve clients_dir {curve.clients_dir!r} is not a directory of client public keys")
    auth = KeyNameAuthenticator(context, client_key_names(curve.clients_dir))
    auth.start()
    auth.configure_curve(domain="*", location=curve.clients_dir)
    return auth


def configure(sock: zmq.Socket, *, hwm: int, max_message_bytes: int | None = None,
              curve_server: CurveServer | None = None, curve_client: CurveClient | None = None) -> None:
    """Bounded queues, heartbeats to notice dead peers, fast reconnects, optional CurveZMQ."""
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.LINGER, 500)
    sock.setsockopt(zmq.RECONNECT_IVL, 100)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
    sock.setsockopt(zmq.HEARTBEAT_IVL, 1000)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3000)
    sock.setsockopt(zmq.HEARTBEAT_TTL, 3000)
    if max_message_bytes is not None:
        # Transport-level guard: one part larger than the whole-message limit drops the connection
        # before the part is allocated. Smaller oversize messages get an error reply instead.
        sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
    if curve_server is not None:
        public, secret = _load_pair(curve_server.secret_key)
        sock.curve_publickey = public
        sock.curve_secretkey = secret
        sock.curve_server = True
    if curve_client is not None:
        public, secret = _load_pair(curve_client.secret_key)
        server_public, _ = zmq.auth.load_certificate(curve_client.server_public_key)
        sock.curve_publickey = public
        sock.curve_secretkey = secret
        sock.curve_serverkey = server_public


_MORE = int(zmq.SNDMORE)
# pyzmq's Python-level `Socket.send` only adds DRAFT routing options before calling the compiled send
# of its base class; the hot paths call that compiled send directly (one Python frame less per part).
_BASE_SEND = zmq.backend.Socket.send if zmq.backend.Socket in zmq.Socket.__mro__ else None


def send_parts(sock: zmq.Socket, parts: list, flags: int = 0) -> None:
    """`send_multipart` for the hot paths, without its per-call type checks and flag enums.

    Parts are bytes, memoryviews or zmq.Frames; parts below the socket's `copy_threshold` (64 KiB)
    are copied, larger ones sent zero-copy, and a zmq.Frame is handed to libzmq as is.
    """
    flags = int(flags)
    more = flags | _MORE
    last = len(parts) - 1
    if sock.__class__ is zmq.Socket and _BASE_SEND is not None:  # not a subclass that overrides send (asyncio)
        send = _BASE_SEND
        for i, part in enumerate(parts):
            send(sock, part, more if i < last else flags, False)
        return
    send = sock.send
    for i, part in enumerate(parts):
        send(part, more if i < last else flags, copy=False)


def recv_parts(sock: zmq.Socket, flags: int = 0) -> list[zmq.Frame]:
    """`recv_multipart(flags, copy=False)` for the hot paths: reads each Frame's `more` flag instead of
    asking the socket for RCVMORE after every part."""
    recv = sock.recv
    part = recv(flags, copy=False)
    parts = [part]
    while part.more:
        part = recv(flags, copy=False)
        parts.append(part)
    return parts


def open_socket(context: zmq.Context, socket_type: int, endpoint: str, *, bind: bool, allow_remote: bool,
                hwm: int, max_message_bytes: int | None = None, curve_server: CurveServer | None = None,
                curve_client: CurveClient | None = None) -> zmq.Socket:
    """Create, configure and bind or connect a socket."""
    check_endpoint(endpoint, bind, allow_remote)
    sock = context.socket(socket_type)
    try:
        configure(sock, hwm=hwm, max_message_bytes=max_message_bytes, curve_server=curve_server,
                  curve_client=curve_client)
        if socket_type == zmq.ROUTER:
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # unroutable replies raise (counted) instead of vanishing
        if socket_type == zmq.SUB:
            sock.setsockopt(zmq.SUBSCRIBE, b"")
        (sock.bind if bind else sock.connect)(endpoint)
    except Exception:
        sock.close(linger=0)
        raise
    return sock


_HANDSHAKE_EVENTS = {
    zmq.EVENT_HANDSHAKE_SUCCEEDED: None,
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "the server refused this client's CurveZMQ key (its public key is not in the "
                                     "server's clients directory, or the server key given here is not the server's)",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "the handshake with the server failed: one side uses CurveZMQ and the other "
                                         "does not, or the keys do not match",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "the handshake with the server failed: one side uses CurveZMQ and the other "
                                          "does not, or the keys do not match",
}


class HandshakeWatch:
    """Why a connecting socket gets no answers: the outcome of its last handshake, from a ZeroMQ
    monitor (a refused CurveZMQ key looks, to the sender, like a server that never answers: the
    messages queue up and, once `hwm` are queued, sending blocks)."""

    def __init__(self, sock: zmq.Socket) -> None:
        self._pair = sock.get_monitor_socket(sum(_HANDSHAKE_EVENTS))
        self._monitor = zmq.Socket.shadow(self._pair.underlying)  # read blocking-style, also for asyncio sockets
        self._sock = sock
        self.problem: str | None = None

    def explain(self) -> str:
        """The last handshake failure (empty when none was seen)."""
        from zmq.utils.monitor import recv_monitor_message

        while True:
            try:
                event = recv_monitor_message(self._monitor, zmq.NOBLOCK)
            except zmq.Again:
                break
            self.problem = _HANDSHAKE_EVENTS.get(event["event"], self.problem)
        return self.problem or ""

    def close(self) -> None:
        try:
            self._sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self._pair.close(linger=0)
