"""The connector daemon (`tunnel connect`): N WebSocket connections to the edge, each serving
streams against the local origin; reconnects forever on transient failures."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

import websockets
from websockets.asyncio.client import connect as ws_connect

from tunnel.connector.exchange import OriginExchange
from tunnel.connector.origin import Origin, OriginPool
from tunnel.connector.routing import ConfigError, ConnectorConfig, build_config, origin_of
from tunnel.errors import HandshakeRefused, TunnelError
from tunnel.protocol import Connection, RequestHead, ResponseHead, Role, Settings
from tunnel.protocol import events as ev
from tunnel.protocol.frames import ErrorCode
from tunnel.session import MAX_MESSAGE, Session
from tunnel.tls import client_context, is_loopback, normalize_pin, spki_pin_of_der

log = logging.getLogger(__name__)

AGENT = "tunnel-connector/0.1"
WELCOME_TIMEOUT = 10.0
DRAIN_PING = b"drain\0\0\0"


class PinMismatch(TunnelError):
    """The edge presented a public key other than the pinned one (transient: retried)."""


@dataclass
class ConnectorOptions:
    """Settings of one connector (the flags of `tunnel connect`)."""

    edge: str
    token: str
    url: str
    connections: int = 2
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    origin_timeout: float | None = None  # None: use what the edge says
    grace_period: float = 30.0
    ca: str | None = None  # private CA bundle to verify the edge (default: the system store)
    pin: str | None = None  # sha256:<base64> of the edge's public key
    insecure: bool = False  # allow plain ws:// to a host that is not loopback
    allow_services: tuple[str, ...] = ()  # if set, config services must start with one of these


class ConnectorSession(Session):
    """One connection to the edge, as the connector sees it."""

    def __init__(self, connector: "Connector", ws, index: int):
        self.connector = connector
        self.ws = ws
        self.index = index
        self.welcomed = asyncio.get_running_loop().create_future()
        self.info: dict = {}
        self.drain_acknowledged = asyncio.Event()
        self.going_away = False
        super().__init__(Connection(Role.CONNECTOR, Settings()), ws.send, self._messages(),
                         name=f"edge-conn #{index}")

    async def _messages(self):
        async for message in self.ws:
            if isinstance(message, str):
                log.warning("%s: text message from the edge; closing", self.name)
                return
            yield message

    def handle_event(self, event: ev.Event) -> None:
        kind = type(event)
        if kind is ev.RequestReceived:
            self._on_request(event)
        elif kind is ev.Welcomed:
            self.info = event.info
            if not self.welcomed.done():
                self.welcomed.set_result(event.info)
        elif kind is ev.Refused:
            permanent = event.code in ("unauthorized", "unsupported-version")
            if not self.welcomed.done():
                self.welcomed.set_exception(HandshakeRefused(event.code, event.message, permanent))
            self.close(f"refused: {event.code}")
        elif kind is ev.GoAwayReceived:
            log.info("%s: the edge is going away (%s); reconnecting once in-flight requests finish",
                     self.name, event.message or "no reason given")
            self.connector.on_goaway(self)
        elif kind is ev.PingAcknowledged and event.payload == DRAIN_PING:
            self.drain_acknowledged.set()
        elif kind is ev.ConfigReceived:
            ok, error = self.connector.apply_config(event.version, event.config)
            self.conn.send_config_ack(event.version, ok, error)
            self.flush_soon()

    def start_drain(self) -> None:
        """Tell the edge to send no new streams here (GOAWAY), then PING: once the PING is
        answered, every stream the edge opened before it saw the GOAWAY has arrived."""
        if self.going_away or self.closed:
            return
        self.going_away = True
        self.conn.goaway(ErrorCode.NO_ERROR, "connector draining")
        self.conn.ping(DRAIN_PING)
        self.flush_soon()

    async def wait_idle(self, deadline: float) -> bool:
        """Wait until the drain is acknowledged and no stream is open, or until ``deadline``
        (loop time); return True when idle."""
        loop = asyncio.get_running_loop()
        while not self.closed:
            if self.drain_acknowledged.is_set() and not self.conn.streams:
                return True
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def _on_request(self, event: ev.RequestReceived) -> None:
        head = event.head
        connector = self.connector
        target = connector.route(head)
        if target is None:
            self.reset(event.stream_id, ErrorCode.SERVICE_NOT_ALLOWED,
                       f"service {head.service} is not allowed for this connector")
            return
        if isinstance(target, int):  # http_status:NNN
            self.conn.send_response(event.stream_id, ResponseHead(target, "", [("Content-Length", "0")]),
                                    end_stream=True)
            if not event.end_stream:
                self.conn.reset_stream(event.stream_id, ErrorCode.NO_ERROR, "answered")
            self.flush_soon()
            return
        timeout = connector.options.origin_timeout or float(self.info.get("origin_timeout") or 100.0)
        exchange = OriginExchange(self, event.stream_id, head, event.end_stream, target, connector.pool, timeout)
        self.handlers[event.stream_id] = exchange
        exchange.start()


class Connector:
    """Keeps ``options.connections`` connections to the edge and serves the origin through them.

    ``run()`` returns only when ``stop()`` is called or the edge refuses permanently (then it
    raises HandshakeRefused, whose message says what to do).
    """

    def __init__(self, options: ConnectorOptions):
        self.options = options
        self.origin = Origin.parse(options.url)
        self.config = ConnectorConfig()
        self.config_error = ""
        edge = urlsplit(options.edge)
        if edge.scheme not in ("ws", "wss") or not edge.hostname:
            raise ValueError(f"--edge must be ws://HOST:PORT or wss://HOST:PORT, got {options.edge!r}")
        if edge.scheme == "ws" and not is_loopback(edge.hostname) and not options.insecure:
            raise ValueError(f"refusing to send the tunnel token in clear text to {edge.hostname}: use "
                             f"wss:// (the edge's --tls-cert), or pass --insecure if a trusted network "
                             f"or TLS terminator sits in between")
        self._pin = normalize_pin(options.pin) if options.pin else None
        self._ssl = client_context(options.ca, options.pin) if edge.scheme == "wss" else None
        if edge.scheme == "ws" and (options.ca or options.pin):
            raise ValueError("--ca and --pin need a wss:// edge URL")
        self.pool = OriginPool()
        self.connector_id = uuid.uuid4().hex[:12]
        self.sessions: dict[int, ConnectorSession] = {}
        self.registered = asyncio.Event()
        self._stop = asyncio.Event()
        self._fatal: HandshakeRefused | None = None
        self._tasks: list[asyncio.Task] = []
        self._draining = False

    def route(self, head: RequestHead) -> Origin | int | None:
        """Where a request goes: the service the edge's policy chose (if this connector may dial
        it), else the first matching ingress rule, else ``--url``. None: not allowed."""
        config = self.config
        service = head.service
        if service is None:
            host = next((v for k, v in head.headers if k.lower() == "host"), "")
            service = config.service_for(host, head.target.split("?", 1)[0])
            if service is None:
                return self.origin
        elif service not in config.services and service.rstrip("/") != self.options.url.rstrip("/"):
            return None
        try:
            return origin_of(service)
        except ValueError:
            return None

    def apply_config(self, version: int, raw: dict) -> tuple[bool, str]:
        """Apply the connector part of a config version; return (ok, error). A rejected version
        leaves the last good one in force (like an xDS NACK)."""
        if version == self.config.version and version:
            return True, ""  # already applied (every connection receives each version)
        try:
            self.config = build_config(version, raw, tuple(self.options.allow_services))
        except ConfigError as exc:
            self.config_error = "; ".join(exc.errors)
            log.error("rejected config version %d (keeping version %d): %s", version, self.config.version,
                      self.config_error)
            return False, self.config_error
        self.config_error = ""
        log.info("applied config version %d (%d ingress rule(s))", version, len(self.config.ingress))
        return True, ""

    @property
    def connected(self) -> int:
        """Connections currently registered with the edge and taking new requests."""
        return sum(1 for s in self.sessions.values() if s.welcomed.done() and not s.closed
                   and not s.welcomed.exception() and not s.going_away)

    async def run(self) -> None:
        self._tasks = [asyncio.create_task(self._keep_connected(i), name=f"edge-conn-{i}")
                       for i in range(self.options.connections)]
        stop = asyncio.create_task(self._stop.wait())
        slots = asyncio.gather(*self._tasks)
        try:
            await asyncio.wait([stop, slots], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            slots.cancel() if not slots.done() else slots.exception()
            self.pool.close()
        if self._fatal is not None:
            raise self._fatal

    def stop(self) -> None:
        """Stop at once: close every connection (open streams fail)."""
        self._stop.set()

    async def drain(self, grace_period: float | None = None) -> bool:
        """Graceful stop: GOAWAY on every connection, let in-flight requests finish within the
        grace period, then stop. Return True when nothing was cut off."""
        grace = self.options.grace_period if grace_period is None else grace_period
        self._draining = True
        sessions = [s for s in self.sessions.values() if not s.closed]
        for session in sessions:
            session.start_drain()
        deadline = asyncio.get_running_loop().time() + grace
        results = await asyncio.gather(*(s.wait_idle(deadline) for s in sessions))
        clean = all(results)
        if not clean:
            open_streams = sum(len(s.conn.streams) for s in sessions)
            log.warning("grace period of %.0f s over; cutting %d request(s) off", grace, open_streams)
        self.stop()
        return clean

    def on_goaway(self, session: ConnectorSession) -> None:
        """The edge asked us to go: close this connection once its streams are done, then the
        slot reconnects (to the next edge process, after a restart)."""
        if session.going_away:
            return
        session.going_away = True

        async def close_when_idle() -> None:
            deadline = asyncio.get_running_loop().time() + self.options.grace_period
            session.drain_acknowledged.set()
            await session.wait_idle(deadline)
            session.close("edge sent GOAWAY")

        asyncio.get_running_loop().create_task(close_when_idle())

    async def _keep_connected(self, index: int) -> None:
        attempt = 0
        while not self._stop.is_set() and not self._draining:
            served = False
            try:
                served = await self._connect_once(index)
            except HandshakeRefused as exc:
                if exc.permanent:
                    log.error("the edge refused this connector: %s", exc.message)
                    self._fatal = exc
                    self._stop.set()
                    return
                log.warning("edge-conn #%d refused (%s); retrying", index, exc)
            except PinMismatch as exc:
                log.error("edge-conn #%d: %s", index, exc)
            except (OSError, asyncio.TimeoutError, websockets.exceptions.WebSocketException) as exc:
                log.warning("edge-conn #%d: cannot reach the edge at %s: %s", index, self.options.edge,
                            _describe(exc))
            if self._draining:
                return
            attempt = 0 if served else attempt + 1
            delay = self._backoff(attempt)
            log.info("edge-conn #%d: reconnecting in %.1f s (attempt %d)", index, delay, attempt + 1)
            try:
                await asyncio.wait_for(self._stop.wait(), delay)
            except asyncio.TimeoutError:
                pass

    def _check_pin(self, ws) -> None:
        """Refuse an edge whose public key is not the pinned one, before sending the token."""
        ssl_object = ws.transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
        seen = spki_pin_of_der(der) if der else None
        if seen is None or normalize_pin(seen) != self._pin:
            raise PinMismatch(f"the edge's public key is {seen}, not the pinned {self.options.pin}; "
                              f"refusing to send the token (check --pin, or the edge's new certificate)")

    def _backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(cap, initial * 2^attempt)), at least 0.1 s."""
        if attempt == 0:
            return random.uniform(0.1, self.options.backoff_initial)
        ceiling = min(self.options.backoff_max, self.options.backoff_initial * (2 ** attempt))
        return max(0.1, random.uniform(0, ceiling))

    async def _connect_once(self, index: int) -> bool:
        """Connect, register and serve until the connection ends; True if it was registered."""
        async with ws_connect(self.options.edge, compression=None, max_size=2 * MAX_MESSAGE + (1 << 20),
                              ping_interval=None, open_timeout=10, close_timeout=2,
                              write_limit=2 * 1024 * 1024, user_agent_header=AGENT, ssl=self._ssl) as ws:
            _tune_socket(ws)
            if self._pin is not None:
                self._check_pin(ws)
            session = ConnectorSession(self, ws, index)
            self.sessions[index] = session
            session.conn.send_hello(self.options.token, {"connector_id": self.connector_id, "agent": AGENT})
            session.flush_soon()
            runner = asyncio.create_task(session.run())
            try:
                info = await asyncio.wait_for(asyncio.shield(session.welcomed), WELCOME_TIMEOUT)
            except BaseException:
                session.close("handshake failed")
                await asyncio.gather(runner, return_exceptions=True)
                raise
            log.info("edge-conn #%d registered: tunnel %s, hostnames %s (connection %s)", index,
                     info.get("tunnel"), ", ".join(info.get("hostnames", [])), info.get("connection_id"))
            self.registered.set()
            try:
                await runner
            finally:
                self.sessions.pop(index, None)
            level = logging.INFO if session.going_away or self._draining else logging.WARNING
            log.log(level, "edge-conn #%d closed: %s", index, session.close_reason)
            return True


def _tune_socket(ws) -> None:
    sock = ws.transport.get_extra_info("socket") if ws.transport else None
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, websockets.exceptions.InvalidStatus):
        return f"HTTP {exc.response.status_code} instead of a WebSocket handshake"
    return str(exc) or type(exc).__name__
