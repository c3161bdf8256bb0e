"""The thin asyncio layer around a protocol ``Connection`` (PROTOCOL.md §7).

A ``Session`` feeds WebSocket messages into the sans-I/O core, dispatches the events to the
handler of each stream, and writes what the core queued. Writes are batched: every frame queued
during one event-loop tick leaves in a single WebSocket message, sent by one writer task, so a
request costs a fraction of a message each way instead of one message per frame.

The WebSocket library is hidden behind two callables (``send`` and an async iterator of
messages), so the edge (aiohttp) and the connector (websockets) share this code.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

from tunnel.errors import ProtocolError
from tunnel.protocol import Connection
from tunnel.protocol import events as ev
from tunnel.protocol.frames import ErrorCode

log = logging.getLogger(__name__)

#: Largest WebSocket message this side sends; the receiving side accepts twice that.
MAX_MESSAGE = 1024 * 1024
#: Above this many queued outbound bytes, producers are asked to pause (``congested``).
HIGH_WATER = 8 * 1024 * 1024


class StreamHandler(Protocol):
    """What a session calls for events on one stream."""

    def on_data(self, data: bytes, end_stream: bool) -> None: ...

    def on_reset(self, code: int, message: str) -> None: ...

    def on_window(self) -> None: ...


class Session:
    """One tunnel connection's asyncio side: reader loop, batched writer, stream dispatch.

    ``send`` writes one WebSocket binary message; ``messages`` yields received ones.
    Subclasses (edge, connector) handle the events that are not stream-bound by overriding
    ``handle_event``.
    """

    def __init__(self, conn: Connection, send: Callable[[bytes], Awaitable[None]],
                 messages: AsyncIterator[bytes], *, name: str = "session",
                 ping_interval: float = 4.0, dead_after: float = 12.0):
        self.conn = conn
        self.name = name
        self.handlers: dict[int, StreamHandler] = {}
        self._send = send
        self._messages = messages
        self._wake = asyncio.Event()
        self._closed = asyncio.Event()
        self._writer: asyncio.Task | None = None
        self._pinger: asyncio.Task | None = None
        self._ping_interval = ping_interval
        self._dead_after = dead_after
        self._congestion_waiters: list[Callable[[], None]] = []
        self.last_received = time.monotonic()
        self.close_reason = ""

    # ---------------------------------------------------------------- writing
    def flush_soon(self) -> None:
        """Have the writer send what the core queued, once this tick's work is done."""
        self._wake.set()

    @property
    def congested(self) -> bool:
        """True while more than HIGH_WATER bytes wait for the WebSocket."""
        return self.conn.outbound_size > HIGH_WATER

    def when_uncongested(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the outbound queue has drained below HIGH_WATER."""
        self._congestion_waiters.append(callback)

    async def _write_loop(self) -> None:
        conn = self.conn
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                # Let the rest of this tick queue its frames before the message is cut.
                await asyncio.sleep(0)
                while conn.outbound_size:
                    data = conn.data_to_send(MAX_MESSAGE)
                    try:
                        await asyncio.wait_for(self._send(data), self._dead_after)
                    except asyncio.TimeoutError:
                        self.close_reason = f"the peer read nothing for {self._dead_after:.0f} s"
                        log.warning("%s: %s; closing", self.name, self.close_reason)
                        self._closed.set()
                        return
                if self._congestion_waiters and not self.congested:
                    waiters, self._congestion_waiters = self._congestion_waiters, []
                    for callback in waiters:
                        callback()
                if self._closed.is_set():
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the WebSocket is gone
            log.debug("%s: write failed: %r", self.name, exc)
            self.close_reason = self.close_reason or f"write failed: {exc!r}"
            self._closed.set()

    async def _ping_loop(self) -> None:
        """Liveness (PROTOCOL.md §7): PING after ``ping_interval`` of silence from the peer,
        close once it has been silent for ``dead_after``. Checked every second."""
        last_ping = 0.0
        while not self._closed.is_set():
            await asyncio.sleep(1.0)
            now = time.monotonic()
            idle = now - self.last_received
            if idle > self._dead_after:
                self.close_reason = f"no traffic from the peer for {idle:.0f} s"
                log.warning("%s: %s; closing", self.name, self.close_reason)
                self._closed.set()
                return
            if idle >= self._ping_interval and now - last_ping >= self._ping_interval:
                last_ping = now
                self.conn.ping(int(now * 1000).to_bytes(8, "big"))
                self.flush_soon()

    # ---------------------------------------------------------------- reading
    async def run(self) -> None:
        """Read until the WebSocket closes or the peer breaks the protocol; then fail every
        open stream and return. The caller closes the WebSocket afterwards."""
        self._writer = asyncio.create_task(self._write_loop(), name=f"{self.name}-writer")
        self._pinger = asyncio.create_task(self._ping_loop(), name=f"{self.name}-pinger")
        reader = asyncio.create_task(self._read_loop(), name=f"{self.name}-reader")
        closed = asyncio.create_task(self._closed.wait())
        try:
            await asyncio.wait({reader, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, closed, self._pinger):
                task.cancel()
            await self._drain_writer()
            self._fail_streams(self.close_reason or "connection closed")

    async def _read_loop(self) -> None:
        conn = self.conn
        try:
            async for message in self._messages:
                now = self.last_received = time.monotonic()
                try:
                    events = conn.receive(message, now)
                except ProtocolError as exc:
                    log.warning("%s: protocol error from peer: %s", self.name, exc)
                    self.close_reason = f"protocol error: {exc}"
                    self.flush_soon()
                    return
                for event in events:
                    self._dispatch(event)
                if conn.outbound_size:
                    self.flush_soon()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.debug("%s: read failed: %r", self.name, exc)
            self.close_reason = self.close_reason or f"read failed: {exc!r}"
        self.close_reason = self.close_reason or "the peer closed the connection"

    async def _drain_writer(self) -> None:
        """Give queued frames (a final GOAWAY or REFUSE) a moment to leave, then stop."""
        self._closed.set()
        self._wake.set()
        if self._writer is not None:
            try:
                await asyncio.wait_for(self._writer, 1.0)
            except (asyncio.TimeoutError, asyncio.CancelledError, Exception):
                self._writer.cancel()

    def close(self, reason: str) -> None:
        """Stop the session: ``run`` returns and every open stream fails with ``reason``."""
        self.close_reason = self.close_reason or reason
        self._closed.set()
        self._wake.set()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def _dispatch(self, event: ev.Event) -> None:
        if type(event) is ev.DataReceived:
            handler = self.handlers.get(event.stream_id)
            if handler is not None:
                if event.end_stream and event.stream_id not in self.conn.streams:
                    self.handlers.pop(event.stream_id, None)
                handler.on_data(event.data, event.end_stream)
            else:
                self.conn.consumed(event.stream_id, len(event.data))
        elif type(event) is ev.WindowUpdated:
            handler = self.handlers.get(event.stream_id)
            if handler is not None:
                handler.on_window()
        elif type(event) is ev.StreamReset:
            handler = self.handlers.pop(event.stream_id, None)
            if handler is not None:
                handler.on_reset(event.code, event.message)
        else:
            self.handle_event(event)

    def handle_event(self, event: ev.Event) -> None:
        """Handle an event that is not plain stream data (heads, handshake, GOAWAY)."""

    def _fail_streams(self, reason: str) -> None:
        self.conn.close()
        handlers, self.handlers = self.handlers, {}
        for handler in handlers.values():
            try:
                handler.on_reset(ErrorCode.INTERNAL_ERROR, reason)
            except Exception:  # pragma: no cover - a handler bug must not stop the others
                log.exception("%s: stream handler failed while closing", self.name)

    # ---------------------------------------------------------------- stream helpers
    def finished(self, stream_id: int) -> None:
        """Forget a stream's handler once both directions are done."""
        if stream_id not in self.conn.streams:
            self.handlers.pop(stream_id, None)

    def reset(self, stream_id: int, code: int = ErrorCode.CANCEL, message: str = "") -> None:
        """Abort a stream and forget its handler."""
        self.handlers.pop(stream_id, None)
        self.conn.reset_stream(stream_id, code, message)
        self.flush_soon()
