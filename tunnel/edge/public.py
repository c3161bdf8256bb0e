"""The edge's public HTTP/1.1 listener: parse with httptools, forward over a tunnel stream.

This is the hot path, so it is a plain ``asyncio.Protocol`` rather than an aiohttp
application (README, design notes: aiohttp's request machinery costs more per request than the
whole tunnel hop). One ``PublicProtocol`` per client connection; one ``Exchange`` per request,
which bridges the client socket and one tunnel stream in both directions with bounded buffers:

* request body: sent as the stream's credit allows; beyond it the client socket stops being
  read (``pause_reading``) until WINDOW_UPDATE arrives;
* response body: written to the client as it arrives; credit goes back to the connector only
  while the client socket is writable, so a client that reads nothing holds at most one
  window of data at the edge.

Pipelined requests are answered in order; a WebSocket upgrade turns the connection into a raw
byte relay once the origin answers 101.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httptools

from tunnel import http1
from tunnel.edge import pages
from tunnel.errors import (BadRequest, BodyTooLarge, EdgeHTTPError, HeadersTooLarge, HeadTooLarge, NoConnector,
                           OriginTimeout, OriginUnreachable, UnknownHost)
from tunnel.protocol import RequestHead, ResponseHead
from tunnel.protocol.frames import ErrorCode

if TYPE_CHECKING:  # pragma: no cover
    from tunnel.edge.connectors import EdgeSession
    from tunnel.edge.registry import TunnelRegistry
    from generators.routing import RoutingTable

log = logging.getLogger(__name__)

MAX_HEAD_SIZE = 64 * 1024
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_UPLOAD_BUFFER = 256 * 1024  # request bytes held at the edge before the client is paused
_DROP_REQUEST = frozenset({"expect", "x-request-id", "x-forwarded-for", "x-forwarded-proto",
                           "x-forwarded-host"})
_DROP_RESPONSE = frozenset({"tunnel-error", "x-request-id"})
#: Requests that may be sent again on another connection when theirs died before any answer.
_RETRYABLE = frozenset({"GET", "HEAD", "OPTIONS"})
_RETRYABLE_CODES = frozenset({ErrorCode.INTERNAL_ERROR, ErrorCode.REFUSED_STREAM})


@dataclass
class PublicSettings:
    """What the public listener needs to know; ``routing`` is swapped when config changes."""

    routing: "RoutingTable"
    registry: "TunnelRegistry"
    max_body_size: int = 1 << 30
    head_timeout: float = 30.0
    idle_timeout: float = 75.0
    trusted_proxies: list = field(default_factory=list)
    draining: bool = False
    connections: set = field(default_factory=set)  # live PublicProtocol objects

    def trusts(self, ip: str) -> bool:
        if not self.trusted_proxies:
            return False
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self.trusted_proxies)


class PublicProtocol(asyncio.Protocol):
    """One public client connection."""

    def __init__(self, settings: PublicSettings, scheme: str = "http"):
        self.settings = settings
        self.scheme = scheme
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.peer_ip = ""
        self.exchanges: deque[Exchange] = deque()  # parsed requests; [0] is being answered
        self.parsing: Exchange | None = None
        self.upgraded: Exchange | None = None
        self.write_paused = False
        self.closed = False
        self._read_pause: set[str] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_event_loop()

    # ------------------------------------------------------------------ transport events
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.settings.connections.add(self)
        peer = transport.get_extra_info("peername")
        self.peer_ip = peer[0] if peer else ""
        self._arm_timer(self.settings.head_timeout)

    def data_received(self, data: bytes) -> None:
        if self.upgraded is not None:
            self.upgraded.receive_body(data)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            offset = upgrade.args[0]
            exchange = self.exchanges[-1] if self.exchanges else None
            if exchange is not None and exchange.upgrade:
                self.upgraded = exchange
                if offset < len(data):
                    exchange.receive_body(data[offset:])
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__ or exc.__cause__
            if isinstance(cause, EdgeHTTPError):
                self._reject(cause)
            else:
                log.error("public request handling failed", exc_info=cause or exc)
                self._reject(BadRequest("the edge failed to handle this request"))
        except httptools.HttpParserError as exc:
            self._reject(BadRequest(f"malformed HTTP request: {exc}"))

    def eof_received(self) -> bool | None:
        if self.upgraded is not None:
            self.upgraded.client_eof()
            # Keep writing what the origin still sends (TLS transports cannot half-close).
            return self.scheme == "http"
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.settings.connections.discard(self)
        self._cancel_timer()
        for exchange in self.exchanges:
            exchange.client_gone()
        self.exchanges.clear()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        active = self.upgraded or (self.exchanges[0] if self.exchanges else None)
        if active is not None:
            active.grant_credit()

    @property
    def busy(self) -> bool:
        """Whether a request on this connection is in flight (or it is an upgraded relay)."""
        return bool(self.exchanges) or self.upgraded is not None or self.parsing is not None

    def close_if_idle(self) -> None:
        """Drain: close a keep-alive connection that waits for its next request."""
        if not self.busy and not self.closed:
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()
        self.closed = True

    # ------------------------------------------------------------------ httptools callbacks
    def on_message_begin(self) -> None:
        self.parsing = Exchange(self)
        if self._timer is None:
            self._arm_timer(self.settings.head_timeout)

    def on_url(self, url: bytes) -> None:
        exchange = self.parsing
        exchange.url += url
        exchange.head_size += len(url)
        if exchange.head_size > MAX_HEAD_SIZE:
            raise HeadTooLarge(f"the request line exceeds {MAX_HEAD_SIZE // 1024} KiB")

    def on_header(self, name: bytes, value: bytes) -> None:
        exchange = self.parsing
        exchange.head_size += len(name) + len(value) + 4
        if exchange.head_size > MAX_HEAD_SIZE:
            raise HeadTooLarge(f"the request head exceeds {MAX_HEAD_SIZE // 1024} KiB")
        exchange.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self._cancel_timer()
        parser = self.parser
        exchange = self.parsing
        exchange.method = parser.get_method().decode("ascii")
        exchange.version = parser.get_http_version()
        exchange.keep_alive = parser.should_keep_alive()
        exchange.upgrade = parser.should_upgrade()
        self.exchanges.append(exchange)
        if len(self.exchanges) == 1:
            exchange.start()
        else:
            self.pause_reading("pipeline")

    def on_body(self, body: bytes) -> None:
        self.parsing.receive_body(body)

    def on_message_complete(self) -> None:
        exchange, self.parsing = self.parsing, None
        if exchange is not None:
            exchange.request_complete()

    # ------------------------------------------------------------------ helpers for exchanges
    def write(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)

    def pause_reading(self, reason: str) -> None:
        if not self._read_pause and not self.closed:
            self.transport.pause_reading()
        self._read_pause.add(reason)

    def resume_reading(self, reason: str) -> None:
        if reason in self._read_pause:
            self._read_pause.discard(reason)
            if not self._read_pause and not self.closed:
                self.transport.resume_reading()

    def exchange_done(self, exchange: Exchange) -> None:
        """The response to ``exchange`` is complete: keep the connection alive or close it."""
        if not exchange.request_done and not exchange.close_after and not exchange.has_body:
            exchange.awaiting_request_end = True  # on_message_complete is about to fire
            return
        if self.exchanges and self.exchanges[0] is exchange:
            self.exchanges.popleft()
        if self.closed:
            return
        if (exchange.close_after or not exchange.keep_alive or not exchange.request_done
                or self.settings.draining):
            self.transport.close()
            self.closed = True
            return
        if self.exchanges:
            self.exchanges[0].start()
            if len(self.exchanges) == 1:
                self.resume_reading("pipeline")
        else:
            self.resume_reading("pipeline")
            self._arm_timer(self.settings.idle_timeout)

    def _reject(self, error: EdgeHTTPError) -> None:
        """Answer a request the parser refused, then close (its framing cannot be trusted)."""
        exchange = self.parsing or Exchange(self)
        exchange.close_after = True
        if exchange.method == "":
            exchange.method = "GET"
        for queued in list(self.exchanges):
            if queued is not exchange:
                queued.client_gone()
        self.exchanges.clear()
        self.exchanges.append(exchange)
        exchange.fail(error)

    def _arm_timer(self, delay: float) -> None:
        self._cancel_timer()
        self._timer = self._loop.call_later(delay, self._timed_out)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if not self.closed and not self.exchanges and self.upgraded is None:
            self.transport.close()
            self.closed = True


class Exchange:
    """One public request and its tunnel stream (see the module docstring)."""

    __slots__ = ("proto", "url", "headers", "head_size", "method", "version", "keep_alive",
                 "upgrade", "session", "stream_id", "pending", "pending_size", "body_size",
                 "request_done", "request_ended", "started", "response_started", "response_done",
                 "chunked", "close_after", "unacked", "request_id", "upgraded", "has_body",
                 "awaiting_request_end", "retried")

    def __init__(self, proto: PublicProtocol):
        self.proto = proto
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.head_size = 0
        self.method = ""
        self.version = "1.1"
        self.keep_alive = True
        self.upgrade = False
        self.session: EdgeSession | None = None
        self.stream_id = 0
        self.pending: deque[bytes] = deque()
        self.pending_size = 0
        self.body_size = 0
        self.request_done = False  # the whole request body has arrived from the client
        self.request_ended = False  # END_STREAM sent on the tunnel stream
        self.started = False
        self.response_started = False
        self.response_done = False
        self.chunked = False
        self.close_after = False
        self.unacked = 0
        self.request_id = ""
        self.upgraded = False
        self.has_body = True  # until the head says otherwise
        self.awaiting_request_end = False
        self.retried = False

    # ------------------------------------------------------------------ request side
    def start(self) -> None:
        """Route the request and open its tunnel stream (or answer it with an error page)."""
        proto = self.proto
        settings = proto.settings
        headers = self.headers
        host = content_length = transfer_encoding = expect = client_rid = forwarded_for = None
        for name, value in headers:
            lname = name.lower()
            if lname == "host":
                host = value
            elif lname == "content-length":
                content_length = value
            elif lname == "transfer-encoding":
                transfer_encoding = value
            elif lname == "expect":
                expect = value
            elif lname == "x-request-id":
                client_rid = value
            elif lname == "x-forwarded-for":
                forwarded_for = value
        if not self.request_id:
            self.request_id = client_rid if client_rid and _REQUEST_ID.match(client_rid) else uuid.uuid4().hex
        self.has_body = self.upgrade or transfer_encoding is not None or (
            content_length is not None and content_length.strip() not in ("", "0"))
        try:
            if not host:
                raise BadRequest("the request has no Host header")
            found = settings.routing.lookup(host)
            if found is None:
                raise UnknownHost(f"no tunnel serves {host.split(':')[0]!r} on this edge")
            tunnel = found[0]
            if content_length is not None and int(content_length) > settings.max_body_size:
                raise BodyTooLarge(f"the body is larger than {settings.max_body_size} bytes")
            session = settings.registry.pick(tunnel)
            if session is None:
                raise NoConnector(f"tunnel {tunnel!r} has no connector connected right now")
        except EdgeHTTPError as error:
            self.fail(error)
            return
        target = self.url.decode("latin-1")
        if not target.startswith("/") and "://" in target:  # absolute-form
            rest = target.split("://", 1)[1]
            target = "/" + rest.split("/", 1)[1] if "/" in rest else "/"
        fwd = http1.strip_hop_by_hop(headers, keep_upgrade=self.upgrade, also=_DROP_REQUEST)
        peer = proto.peer_ip
        if forwarded_for and settings.trusts(peer):
            fwd.append(("X-Forwarded-For", f"{forwarded_for}, {peer}"))
        else:
            fwd.append(("X-Forwarded-For", peer))
        fwd.append(("X-Forwarded-Proto", proto.scheme))
        fwd.append(("X-Forwarded-Host", host))
        fwd.append(("X-Request-Id", self.request_id))
        end_now = not self.has_body
        try:
            stream_id = session.conn.open_stream(RequestHead(self.method, target, fwd, self.upgrade),
                                                 end_stream=end_now)
        except HeadersTooLarge as exc:
            self.fail(HeadTooLarge(str(exc)))
            return
        self.session = session
        self.stream_id = stream_id
        session.handlers[self.stream_id] = self
        self.started = True
        if end_now:
            self.request_ended = True
        session.flush_soon()
        if expect and expect.lower() == "100-continue" and not self.request_done and self.version == "1.1":
            proto.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self._pump()

    def receive_body(self, data: bytes) -> None:
        """Request body bytes from the client (or raw bytes after an upgrade)."""
        if self.response_done and not self.upgraded:
            return
        self.body_size += len(data)
        if not self.upgrade and self.body_size > self.proto.settings.max_body_size:
            self.fail(BodyTooLarge(f"the body is larger than {self.proto.settings.max_body_size} bytes"))
            return
        if self.started and not self.pending:
            taken = self.session.conn.send_data(self.stream_id, data)
            self.session.flush_soon()
            if taken == len(data):
                return
            data = data[taken:]
        self.pending.append(data)
        self.pending_size += len(data)
        if self.pending_size > _UPLOAD_BUFFER or self.started:
            self.proto.pause_reading("upload")

    def request_complete(self) -> None:
        """The client finished sending the request (for an upgrade: its head; raw bytes follow)."""
        if self.upgrade:
            return
        self.request_done = True
        if self.awaiting_request_end:
            self.awaiting_request_end = False
            self.proto.exchange_done(self)
            return
        if self.started and not self.pending and not self.request_ended and not self.upgrade:
            self.request_ended = True
            self.session.conn.end_stream(self.stream_id)
            self.session.flush_soon()

    def client_eof(self) -> None:
        """Upgraded connection: the client half-closed."""
        self.request_done = True
        if self.started and not self.pending and not self.request_ended:
            self.request_ended = True
            self.session.conn.end_stream(self.stream_id)
            self.session.flush_soon()

    def _pump(self) -> None:
        conn = self.session.conn
        pending = self.pending
        while pending:
            chunk = pending[0]
            taken = conn.send_data(self.stream_id, chunk)
            self.pending_size -= taken
            if taken < len(chunk):
                pending[0] = chunk[taken:]
                break
            pending.popleft()
        if not pending:
            self.proto.resume_reading("upload")
            if self.request_done and not self.request_ended and (not self.upgrade or self.upgraded):
                self.request_ended = True
                conn.end_stream(self.stream_id)
        self.session.flush_soon()

    # ------------------------------------------------------------------ response side
    def on_window(self) -> None:
        if self.pending:
            self._pump()

    def on_head(self, head: ResponseHead, end_stream: bool) -> None:
        """The connector answered with a response head."""
        proto = self.proto
        if proto.closed or self.response_done:
            return
        self.response_started = True
        status = head.status
        if status == 101 and self.upgrade:
            headers = http1.strip_hop_by_hop(head.headers, keep_upgrade=True, also=_DROP_RESPONSE)
            headers.append(("X-Request-Id", self.request_id))
            proto.write(http1.head_bytes(f"HTTP/1.1 101 {head.reason or 'Switching Protocols'}", headers))
            self.upgraded = True
            proto.upgraded = self
            self.keep_alive = False
            if self.pending:
                self._pump()
            elif self.request_done and not self.request_ended:
                self.client_eof()
        else:
            headers = http1.strip_hop_by_hop(head.headers, also=_DROP_RESPONSE)
            headers.append(("X-Request-Id", self.request_id))
            if self.upgrade:
                self.close_after = True
                self.upgrade = False
            if http1.response_has_body(self.method, status):
                if http1.get_header(head.headers, "content-length") is None:
                    if self.version == "1.1":
                        headers.append(("Transfer-Encoding", "chunked"))
                        self.chunked = True
                    else:
                        self.close_after = True
            if not self.keep_alive or self.close_after or proto.settings.draining:
                headers.append(("Connection", "close"))
            elif self.version == "1.0":
                headers.append(("Connection", "keep-alive"))
            proto.write(http1.head_bytes(f"HTTP/1.1 {status} {head.reason}", headers))
        if end_stream:
            self._response_end()

    def on_data(self, data: bytes, end_stream: bool) -> None:
        """Response body bytes (or raw bytes after an upgrade)."""
        proto = self.proto
        if data:
            if proto.closed:
                self.session.conn.consumed(self.stream_id, len(data))
            else:
                proto.transport.write(http1.chunk(data) if self.chunked else data)
                if proto.write_paused:
                    self.unacked += len(data)
                else:
                    self.session.conn.consumed(self.stream_id, len(data))
                    self.session.flush_soon()
        if end_stream:
            self._response_end()

    def grant_credit(self) -> None:
        """The client socket drained: let the connector send what we held back."""
        if self.unacked and self.session is not None:
            self.session.conn.consumed(self.stream_id, self.unacked)
            self.unacked = 0
            self.session.flush_soon()

    def on_reset(self, code: int, message: str) -> None:
        """The stream was reset by the connector or its connection was lost."""
        self.started = False
        if self.response_done:
            return
        if (code in _RETRYABLE_CODES and not self.response_started and not self.has_body
                and not self.retried and self.method in _RETRYABLE and not self.proto.closed):
            # Its connector connection died before any answer: safe to send it on another one.
            self.retried = True
            log.info("request %s: %s; retrying on another connection", self.request_id, message)
            self.start()
            return
        if self.response_started:
            log.info("request %s: stream reset after the response began (%s: %s)", self.request_id,
                     ErrorCode.of(code), message)
            self.response_done = True
            if not self.proto.closed:
                self.proto.transport.abort()
            return
        if code == ErrorCode.ORIGIN_TIMEOUT:
            error: EdgeHTTPError = OriginTimeout(message or OriginTimeout.title)
        else:
            error = OriginUnreachable(message or OriginUnreachable.title)
        self.fail(error)

    def _response_end(self) -> None:
        if self.response_done:
            return
        self.response_done = True
        proto = self.proto
        if self.upgraded:
            if not proto.closed:
                proto.transport.close()
                proto.closed = True
            return
        if self.chunked:
            proto.write(http1.LAST_CHUNK)
        if self.session is not None:
            self.session.finished(self.stream_id)
        if not self.request_done:
            self.close_after = True
            if self.started and not self.request_ended:
                self.session.reset(self.stream_id, ErrorCode.NO_ERROR, "response complete")
        proto.exchange_done(self)

    def fail(self, error: EdgeHTTPError) -> None:
        """Answer with an edge error page (only while no response has started)."""
        proto = self.proto
        if self.started and self.session is not None:
            self.session.reset(self.stream_id, ErrorCode.CANCEL, error.reason)
            self.started = False
        if self.response_started or self.response_done:
            self.response_done = True
            if not proto.closed:
                proto.transport.abort()
            return
        if not self.request_id:
            self.request_id = uuid.uuid4().hex
        if not self.request_done and self.has_body:
            self.close_after = True
        accept = http1.get_header(self.headers, "accept")
        status, reason, headers, body = pages.render(error, self.request_id, accept)
        if self.close_after or not self.keep_alive:
            headers.append(("Connection", "close"))
        self.response_started = True
        self.response_done = True
        proto.write(http1.head_bytes(f"HTTP/1.1 {status} {reason}", headers)
                    + (b"" if self.method == "HEAD" else body))
        proto.exchange_done(self)

    def client_gone(self) -> None:
        """The client connection closed: abort the origin request if it is still running."""
        if self.started and not self.response_done and self.session is not None:
            self.session.reset(self.stream_id, ErrorCode.CANCEL, "client disconnected")
        self.started = False
        self.response_done = True
