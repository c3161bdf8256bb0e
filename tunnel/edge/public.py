"""The edge's public HTTP/1.1 listener: parse with httptools, forward over a tunnel stream.

This is the hot path, so it is a plain ``asyncio.Protocol`` rather than an aiohttp
application (README, design notes: aiohttp's request machinery costs more per request than the
whole tunnel hop). One ``PublicProtocol`` per client connection; one ``Exchange``
(tunnel/edge/exchange.py) per request, bridging the client socket and one tunnel stream.

Pipelined requests are answered in order; a WebSocket upgrade turns the connection into a raw
byte relay once the origin answers 101.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httptools

from tunnel.edge.exchange import Exchange
from tunnel.errors import BadRequest, EdgeHTTPError, HeadTooLarge, RequestTimeout

if TYPE_CHECKING:  # pragma: no cover
    from generators.routing import RoutingTable
    from tunnel.edge.metrics import EdgeMetrics
    from tunnel.edge.registry import TunnelRegistry
    from tunnel.edge.workers import WorkerPipeline

log = logging.getLogger(__name__)

MAX_HEAD_SIZE = 64 * 1024


@dataclass
class PublicSettings:
    """What the public listener needs to know; ``routing`` is swapped when config changes."""

    routing: "RoutingTable"
    registry: "TunnelRegistry"
    metrics: "EdgeMetrics"
    pipeline: "WorkerPipeline | None" = None  # None: no tunnel runs a worker
    max_body_size: int = 1 << 30
    head_timeout: float = 30.0
    idle_timeout: float = 75.0
    body_timeout: float = 60.0  # a request body that makes no progress this long is cut off (408)
    trusted_proxies: list = field(default_factory=list)
    draining: bool = False
    connections: set = field(default_factory=set)  # live PublicProtocol objects
    https_only: frozenset = frozenset()  # tunnels whose plain-HTTP requests are redirected to HTTPS
    normalize_paths: frozenset = frozenset()  # tunnels whose paths are normalised (TunnelConfig.normalizes_paths)
    https_port: int = 0  # the HTTPS public listener's port (0: none)

    def client_ip(self, peer: str, forwarded_for: str | None) -> str:
        """The client's address as the edge vouches for it: the socket peer, or, when the peer is
        a trusted proxy, the right-most address in X-Forwarded-For that is not a trusted proxy."""
        if not forwarded_for or not self.trusts(peer):
            return peer
        for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
            if not self.trusts(hop):
                return hop
        return peer

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
        self.raw: Exchange | None = None  # bytes after an upgrade head go here, not to the parser
        self.write_paused = False
        self.closed = False
        self.half_closed = False
        self.lingering = False
        self.in_head = True  # between requests or inside a request head
        self.head_bytes = 0
        self.boundary = False  # a request began or ended during the current data_received
        self._read_pause: set[str] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._writable: asyncio.Future | None = None
        self._loop = asyncio.get_event_loop()
        self.last_read = self._loop.time()

    # ------------------------------------------------------------------ transport events
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.settings.connections.add(self)
        peer = transport.get_extra_info("peername")
        self.peer_ip = peer[0] if peer else ""
        self._arm_timer(self.settings.head_timeout)

    def data_received(self, data: bytes) -> None:
        self.last_read = self._loop.time()
        if self.lingering:
            return  # closing: what the client still sends is read and dropped
        if self.raw is not None:
            self.raw.receive_body(data)
            return
        self.boundary = False
        try:
            self.parser.feed_data(data)
            if self.in_head:
                # httptools buffers a header line until its end, so on_header alone cannot bound a
                # head that never ends: count the reads that arrive while one head is incomplete.
                # A read in which a request began or ended (pipelined requests, the end of a body)
                # starts the count afresh: the complete lines of a head are bounded by on_header.
                self.head_bytes = 0 if self.boundary else self.head_bytes + len(data)
                if self.head_bytes > MAX_HEAD_SIZE + 1024 and not self.closed:
                    self._reject(HeadTooLarge(f"the request head exceeds {MAX_HEAD_SIZE // 1024} KiB"))
        except httptools.HttpParserUpgrade as upgrade:
            offset = upgrade.args[0]
            exchange = self.exchanges[-1] if self.exchanges else None
            if exchange is not None and exchange.upgrade:
                self.raw = exchange
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
        if self.lingering:
            return None
        if self.raw is not None:
            self.raw.client_eof()
            # Keep writing what the origin still sends (TLS transports cannot half-close).
            return self.scheme == "http"
        if self.exchanges and self.parsing is None and self.scheme == "http":
            # The client half-closed after whole requests: answer them, then close.
            self.half_closed = True
            return True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._wake_writer()
        self.settings.connections.discard(self)
        self._cancel_timer()
        for exchange in self.exchanges:
            exchange.client_gone()
        self.exchanges.clear()

    def pause_writing(self) -> None:
        self.write_paused = True

    async def wait_writable(self) -> None:
        """Wait until the client socket takes writes again (or is gone)."""
        while self.write_paused and not self.closed:
            self._writable = self._loop.create_future()
            await self._writable

    def _wake_writer(self) -> None:
        waiter, self._writable = self._writable, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake_writer()
        active = self.exchanges[0] if self.exchanges else self.raw
        if active is not None:
            active.grant_credit()

    def loop_time(self) -> float:
        return self._loop.time()

    def call_soon(self, callback) -> None:
        self._loop.call_soon(callback)

    def call_later(self, delay: float, callback) -> asyncio.TimerHandle:
        return self._loop.call_later(delay, callback)

    @property
    def busy(self) -> bool:
        """Whether a request on this connection is in flight (or it is an upgraded relay)."""
        return bool(self.exchanges) or self.raw is not None or self.parsing is not None

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
        self.boundary = True
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
        self.in_head = False
        self.head_bytes = 0
        if self.parser.get_method() not in (b"GET", b"HEAD"):  # a body may follow: watch its progress
            self._timer = self._loop.call_later(self.settings.body_timeout, self._check_body)
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
        self.in_head = True
        self.boundary = True
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
                or self.settings.draining or (self.half_closed and not self.exchanges)):
            if exchange.request_done or self.half_closed:
                self.transport.close()
                self.closed = True
            else:
                self.linger()
            return
        if self.exchanges:
            self.exchanges[0].start()
            if len(self.exchanges) == 1:
                self.resume_reading("pipeline")
        else:
            self.resume_reading("pipeline")
            self._arm_timer(self.settings.idle_timeout)

    def linger(self) -> None:
        """Close after an answer sent while the client may still be sending (a refused upload, a
        bad head): stop writing, drop what arrives for a moment, then close. Closing at once
        would make the kernel reset the connection, and the client could lose the answer."""
        if self.closed or self.lingering:
            return
        self.lingering = True
        self._cancel_timer()
        for queued in self.exchanges:
            queued.client_gone()
        self.exchanges.clear()
        self.resume_reading_all()
        try:
            self.transport.write_eof()
        except (OSError, RuntimeError, NotImplementedError):  # TLS cannot half-close
            pass
        self._timer = self._loop.call_later(2.0, self._end_linger)

    def _end_linger(self) -> None:
        self._timer = None
        if not self.closed:
            self.closed = True
            self.transport.close()

    def resume_reading_all(self) -> None:
        if self._read_pause and not self.closed:
            self._read_pause.clear()
            self.transport.resume_reading()

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

    def _check_body(self) -> None:
        """A request body that stalls for ``body_timeout`` (while we are not the ones holding it
        back) is cut off: 408 if no response has started, else the connection is aborted."""
        self._timer = None
        if self.closed:
            return
        exchange = self.exchanges[0] if self.exchanges else self.parsing
        if exchange is None or exchange.request_done or exchange.upgrade:
            return
        idle = self._loop.time() - self.last_read
        if self._read_pause or idle < self.settings.body_timeout:
            delay = self.settings.body_timeout - (0 if self._read_pause else idle)
            self._timer = self._loop.call_later(max(delay, 1.0), self._check_body)
            return
        exchange.close_after = True
        exchange.fail(RequestTimeout(f"the request body made no progress for {idle:.0f} s"))

    def _timed_out(self) -> None:
        self._timer = None
        if not self.closed and not self.exchanges and self.raw is None:
            self.transport.close()
            self.closed = True
