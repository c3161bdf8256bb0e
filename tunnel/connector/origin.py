"""The connector's HTTP/1.1 client to local origins: raw asyncio + httptools, keep-alive pool.

This replaces aiohttp's ClientSession on the hot path on purpose: measured on this machine kind
it costs about 200 µs less per request (README, design notes). It speaks only what a reverse
proxy needs: write a request head and stream its body, parse the response with httptools and
hand each piece to the exchange that owns the connection.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

import httptools

from tunnel.errors import HeadersTooLarge
from tunnel.protocol.messages import MAX_RESPONSE_HEAD


@dataclass(frozen=True)
class Origin:
    """Where a service lives: ``http://127.0.0.1:3000`` or ``https://host:port``."""

    scheme: str
    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> "Origin":
        """Parse a service URL; raise ValueError when it is not http(s)://host[:port]."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"service URL must be http://host[:port] or https://…, got {url!r}")
        if parts.path not in ("", "/") or parts.query:
            raise ValueError(f"service URL must not have a path or query: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(parts.scheme, parts.hostname, port)

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


class OriginHandler(Protocol):
    """What an origin connection reports to the exchange using it."""

    def origin_head(self, status: int, reason: str, headers: list[tuple[str, str]], keep_alive: bool) -> None: ...
    def origin_body(self, data: bytes) -> None: ...
    def origin_complete(self) -> None: ...
    def origin_raw(self, data: bytes) -> None: ...
    def origin_lost(self, exc: Exception | None) -> None: ...
    def origin_writable(self) -> None: ...


class OriginConnection(asyncio.Protocol):
    """One TCP (or TLS) connection to an origin, used by one exchange at a time."""

    def __init__(self, pool: "OriginPool", origin: Origin):
        self.pool = pool
        self.origin = origin
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.handler: OriginHandler | None = None
        self.closed = False
        self.reused = False
        self.received = False
        self.upgraded = False
        self.write_paused = False
        self.read_paused = False
        self.idle_timer: asyncio.TimerHandle | None = None
        self._reason = ""
        self._headers: list[tuple[str, str]] = []
        self._head_size = 0
        self._interim = False

    # ------------------------------------------------------------------ transport events
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received = True
        handler = self.handler
        if handler is None:  # bytes on an idle connection: it cannot be trusted any more
            self.close()
            return
        if self.upgraded:
            handler.origin_raw(data)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self.upgraded = True
            rest = data[upgrade.args[0]:]
            if rest and self.handler is not None:
                self.handler.origin_raw(rest)
        except httptools.HttpParserError as exc:
            handler = self.handler  # abort() forgets it: take it first, or nobody hears of the failure
            self.abort()
            cause = exc.__context__
            detail = str(cause) if isinstance(cause, HeadersTooLarge) else f"malformed response from the origin: {exc}"
            if handler is not None:
                handler.origin_lost(ValueError(detail))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        handler, self.handler = self.handler, None
        if handler is not None:
            handler.origin_lost(exc)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.handler is not None:
            self.handler.origin_writable()

    # ------------------------------------------------------------------ httptools callbacks
    def on_status(self, status: bytes) -> None:
        self._reason = status.decode("latin-1")
        self._head_size = len(status)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        if self._head_size > MAX_RESPONSE_HEAD:  # the edge refuses larger ones (PROTOCOL.md §5.1)
            raise HeadersTooLarge(f"the origin's response head exceeds {MAX_RESPONSE_HEAD // 1024} KiB")
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        headers, self._headers = self._headers, []
        if 100 <= status < 200:
            # 100 Continue and friends: the real response follows. 101 is final, but the
            # parser still reports a message end for it, which must not end the stream.
            self._interim = True
            if status != 101:
                return
        else:
            self._interim = False
        if self.handler is not None:
            self.handler.origin_head(status, self._reason, headers, self.parser.should_keep_alive())

    def on_body(self, body: bytes) -> None:
        if self.handler is not None:
            self.handler.origin_body(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if self.handler is not None:
            self.handler.origin_complete()

    # ------------------------------------------------------------------ used by exchanges
    def write(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)

    def pause_reading(self) -> None:
        if not self.closed and not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused and not self.closed:
            self.read_paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        self.handler = None
        if not self.closed:
            self.closed = True
            self.transport.close()
        self.pool.forget(self)

    def abort(self) -> None:
        """Drop the connection at once (the origin sees a reset): used to cancel a request."""
        self.handler = None
        if not self.closed:
            self.closed = True
            self.transport.abort()
        self.pool.forget(self)


class OriginPool:
    """Idle keep-alive connections per origin, bounded in number and idle time."""

    def __init__(self, max_idle_per_origin: int = 256, idle_timeout: float = 60.0,
                 connect_timeout: float = 10.0):
        self.max_idle = max_idle_per_origin
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self._idle: dict[Origin, deque[OriginConnection]] = {}
        self._ssl: ssl.SSLContext | None = None

    def take(self, origin: Origin) -> OriginConnection | None:
        """An idle connection to ``origin``, or None."""
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if conn.idle_timer is not None:
                conn.idle_timer.cancel()
                conn.idle_timer = None
            if not conn.closed:
                conn.reused = True
                conn.received = False
                return conn
        return None

    async def connect(self, origin: Origin) -> OriginConnection:
        """Open a new connection; raise OSError or asyncio.TimeoutError when that fails."""
        loop = asyncio.get_running_loop()
        ssl_context = None
        if origin.scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            ssl_context = self._ssl
        _, conn = await asyncio.wait_for(
            loop.create_connection(lambda: OriginConnection(self, origin), origin.host, origin.port,
                                   ssl=ssl_context), self.connect_timeout)
        return conn

    def release(self, conn: OriginConnection) -> None:
        """Return a connection whose exchange finished cleanly; it may be reused."""
        conn.handler = None
        if conn.closed:
            return
        idle = self._idle.setdefault(conn.origin, deque())
        if len(idle) >= self.max_idle:
            conn.close()
            return
        conn.idle_timer = asyncio.get_running_loop().call_later(self.idle_timeout, conn.close)
        idle.append(conn)

    def forget(self, conn: OriginConnection) -> None:
        idle = self._idle.get(conn.origin)
        if idle and conn in idle:
            idle.remove(conn)
        if conn.idle_timer is not None:
            conn.idle_timer.cancel()
            conn.idle_timer = None

    def close(self) -> None:
        """Close every idle connection."""
        for idle in self._idle.values():
            for conn in list(idle):
                conn.close()
        self._idle.clear()
