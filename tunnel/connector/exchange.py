"""One tunnel stream on the connector side: a request to the origin and its response.

Bodies flow with bounded buffers in both directions (PROTOCOL.md §5.3): request bytes are
acknowledged to the edge only while the origin socket is writable; response bytes are read from
the origin only while the stream has credit.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING

from tunnel import http1
from tunnel.connector.origin import Origin, OriginConnection, OriginPool
from tunnel.errors import HeadersTooLarge
from tunnel.protocol import RequestHead, ResponseHead
from tunnel.protocol.frames import ErrorCode

if TYPE_CHECKING:  # pragma: no cover
    from tunnel.connector.agent import ConnectorSession

log = logging.getLogger(__name__)


class OriginExchange:
    """Bridges one stream of a ConnectorSession and one OriginConnection."""

    __slots__ = ("session", "stream_id", "head", "origin", "pool", "timeout", "conn", "buffered",
                 "request_done", "request_written", "chunked", "unacked", "response_started",
                 "response_done", "pending", "end_pending", "timer", "close_delimited", "retried",
                 "cancelled", "keep_alive", "loop", "body_written", "switched")

    def __init__(self, session: "ConnectorSession", stream_id: int, head: RequestHead, end_stream: bool,
                 origin: Origin, pool: OriginPool, timeout: float):
        self.session = session
        self.stream_id = stream_id
        self.head = head
        self.origin = origin
        self.pool = pool
        self.timeout = timeout
        self.conn: OriginConnection | None = None
        self.buffered: list[bytes] = []  # request body that arrived before the origin connection
        self.request_done = end_stream  # the edge sent the whole request
        self.request_written = False  # ... and it is all written to the origin
        self.chunked = False
        self.unacked = 0
        self.response_started = False
        self.response_done = False
        self.pending: deque[bytes] = deque()  # response body waiting for stream credit
        self.end_pending = False
        self.timer: asyncio.TimerHandle | None = None
        self.close_delimited = False
        self.retried = False
        self.cancelled = False
        self.keep_alive = True
        self.body_written = 0
        self.switched = False  # an upgrade the origin accepted (101)
        self.loop = asyncio.get_running_loop()

    # ------------------------------------------------------------------ start
    def start(self) -> None:
        """Send the request on an idle pooled connection, or open a new one."""
        self.timer = self.loop.call_later(self.timeout, self._timed_out)
        conn = self.pool.take(self.origin)
        if conn is not None:
            self._attach(conn)
        else:
            self.loop.create_task(self._connect())

    async def _connect(self) -> None:
        try:
            conn = await self.pool.connect(self.origin)
        except asyncio.TimeoutError:
            self._fail(ErrorCode.ORIGIN_UNREACHABLE, f"connecting to {self.origin.url} timed out")
            return
        except OSError as exc:
            self._fail(ErrorCode.ORIGIN_UNREACHABLE, f"cannot connect to {self.origin.url}: {exc.strerror or exc}")
            return
        if self.cancelled or self.response_done:
            self.pool.release(conn)
            return
        self._attach(conn)

    def _attach(self, conn: OriginConnection) -> None:
        self.conn = conn
        conn.handler = self
        head = self.head
        headers = head.headers
        if not head.upgrade and not self.request_done and http1.get_header(headers, "content-length") is None:
            headers = headers + [("Transfer-Encoding", "chunked")]
            self.chunked = True
        conn.write(http1.head_bytes(f"{head.method} {head.target} HTTP/1.1", headers))
        if head.upgrade:
            return  # raw bytes wait for the origin's 101 (origin_head)
        buffered, self.buffered = self.buffered, []
        for data in buffered:
            self._write_body(data)
        if self.request_done:
            self._finish_request()

    # ------------------------------------------------------------------ request body (from the edge)
    def on_data(self, data: bytes, end_stream: bool) -> None:
        if self.cancelled:
            return
        if data:
            if self.conn is None or (self.head.upgrade and not self.switched):
                self.buffered.append(data)  # bounded by the stream window: no credit is returned
            else:
                self._write_body(data)
        if end_stream:
            self.request_done = True
            if self.conn is not None and (not self.head.upgrade or self.switched):
                self._finish_request()

    def _write_body(self, data: bytes) -> None:
        conn = self.conn
        self.body_written += len(data)
        if self.timer is not None:  # the origin timeout measures the origin's silence, not the upload
            self.timer.cancel()
            self.timer = self.loop.call_later(self.timeout, self._timed_out)
        conn.write(http1.chunk(data) if self.chunked else data)
        if conn.write_paused:
            self.unacked += len(data)
        else:
            self.session.conn.consumed(self.stream_id, len(data))
            self.session.flush_soon()

    def _finish_request(self) -> None:
        if self.request_written:
            return
        self.request_written = True
        if self.chunked:
            self.conn.write(http1.LAST_CHUNK)
        elif self.head.upgrade and self.conn.upgraded and not self.conn.closed:
            try:
                self.conn.transport.write_eof()
            except (OSError, RuntimeError):
                pass
        if self.response_done:
            self._release()

    def origin_writable(self) -> None:
        if self.unacked:
            self.session.conn.consumed(self.stream_id, self.unacked)
            self.unacked = 0
            self.session.flush_soon()

    # ------------------------------------------------------------------ response (from the origin)
    def origin_head(self, status: int, reason: str, headers: list[tuple[str, str]], keep_alive: bool) -> None:
        self._cancel_timer()
        if status == 101 and not self.head.upgrade:
            self.keep_alive = False
            self._fail(ErrorCode.ORIGIN_UNREACHABLE, "the origin switched protocols on a request that did not ask to")
            return
        self.response_started = True
        self.keep_alive = keep_alive and not self.head.upgrade
        upgrade = status == 101 and self.head.upgrade
        out = http1.strip_hop_by_hop(headers, keep_upgrade=upgrade)
        has_body = http1.response_has_body(self.head.method, status)
        if has_body and not upgrade:
            self.close_delimited = (http1.get_header(headers, "content-length") is None
                                    and http1.get_header(headers, "transfer-encoding") is None)
        end = not has_body and not upgrade
        if upgrade:
            self.switched = True
        try:
            self.session.conn.send_response(self.stream_id, ResponseHead(status, reason, out), end_stream=end)
        except HeadersTooLarge as exc:
            self.response_started = False
            self._fail(ErrorCode.ORIGIN_UNREACHABLE, f"the origin's {exc}")
            return
        if upgrade:  # now the client's raw bytes may flow
            buffered, self.buffered = self.buffered, []
            for data in buffered:
                self._write_body(data)
            if self.request_done:
                self._finish_request()
        self.session.flush_soon()
        if end:
            self.response_done = True
            if self.head.method == "HEAD":
                self.keep_alive = False  # httptools cannot be told the response has no body
            self._release()

    def origin_body(self, data: bytes) -> None:
        self._send_response_body(data)

    def origin_raw(self, data: bytes) -> None:
        self._send_response_body(data)

    def _send_response_body(self, data: bytes) -> None:
        if self.pending:
            self.pending.append(data)
            return
        taken = self.session.conn.send_data(self.stream_id, data)
        self.session.flush_soon()
        if taken < len(data):
            self.pending.append(data[taken:] if taken else data)
            self.conn.pause_reading()
        elif self.session.congested:
            self.conn.pause_reading()
            self.session.when_uncongested(self.on_window)

    def on_window(self) -> None:
        """More stream credit (or the tunnel drained): send what waits, then read again."""
        conn = self.session.conn
        pending = self.pending
        while pending:
            chunk = pending[0]
            taken = conn.send_data(self.stream_id, chunk)
            if taken < len(chunk):
                pending[0] = chunk[taken:]
                break
            pending.popleft()
        self.session.flush_soon()
        if pending:
            return
        if self.end_pending:
            self.end_pending = False
            conn.end_stream(self.stream_id)
            self.session.finished(self.stream_id)
        elif self.conn is not None and not self.response_done:
            self.conn.resume_reading()

    def origin_complete(self) -> None:
        self.response_done = True
        self._end_response()
        self._release()

    def _end_response(self) -> None:
        if self.pending:
            self.end_pending = True
        else:
            self.session.conn.end_stream(self.stream_id)
            self.session.flush_soon()
            self.session.finished(self.stream_id)

    def origin_lost(self, exc: Exception | None) -> None:
        conn, self.conn = self.conn, None
        if self.cancelled or self.response_done:
            return
        if not self.response_started:
            if (conn is not None and conn.reused and not conn.received and not self.retried
                    and self.body_written == 0 and self.request_done and not self.head.upgrade):
                # A keep-alive connection the origin had already closed: one retry on a new one.
                self.retried = True
                self.request_written = False
                self.chunked = False
                self.loop.create_task(self._connect())
                return
            if isinstance(exc, ValueError):  # the parser refused what the origin sent
                self._fail(ErrorCode.ORIGIN_UNREACHABLE, str(exc))
            else:
                self._fail(ErrorCode.ORIGIN_UNREACHABLE,
                           f"the origin closed the connection without answering ({exc or 'EOF'})")
            return
        if self.close_delimited or (conn is not None and conn.upgraded):
            self.response_done = True  # the body ends where the connection does
            self._end_response()
            return
        self._fail(ErrorCode.ORIGIN_RESET, f"the origin reset the connection mid-response ({exc or 'EOF'})")

    # ------------------------------------------------------------------ ending
    def _release(self) -> None:
        conn = self.conn
        if conn is None or not self.response_done:
            return
        if not self.request_written:
            if self.request_done:
                return  # _finish_request releases once the body is out
            conn.abort()  # the origin answered before the request ended: the connection is spent
            self.conn = None
            return
        self.conn = None
        if self.keep_alive and not conn.upgraded and not conn.closed:
            conn.resume_reading()
            self.pool.release(conn)
        else:
            conn.close()

    def on_reset(self, code: int, message: str) -> None:
        """The edge cancelled the stream (client gone) or the tunnel connection was lost."""
        self.cancelled = True
        self._cancel_timer()
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.abort()

    def _fail(self, code: int, message: str) -> None:
        self._cancel_timer()
        self.response_done = True
        if self.conn is not None:
            self.conn.abort()
            self.conn = None
        if not self.cancelled:
            log.info("stream %d (%s %s): %s", self.stream_id, self.head.method, self.head.target, message)
            self.session.reset(self.stream_id, code, message)

    def _timed_out(self) -> None:
        self.timer = None
        if not self.response_started and not self.cancelled:
            self._fail(ErrorCode.ORIGIN_TIMEOUT, f"{self.origin.url} did not answer within {self.timeout:g} s")

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
