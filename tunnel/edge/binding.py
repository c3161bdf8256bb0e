"""``env.TUNNEL``: how a worker's ``fetch`` reaches the tunnel, and the body objects that let
bodies stream through a worker without entering JavaScript (see tunnel/edge/workers.py).

The request a worker forwards carries the public client's ``ClientBody``; when the binding sees
that very object it lets the public ``Exchange`` stream the upload straight into the tunnel
stream. The response the binding returns carries a ``TunnelBody``; when the worker's final
response still carries it, unread, the ``Exchange`` adopts the stream and writes the origin's
bytes to the client as they arrive. Only bodies a worker reads are queued (bounded by the window).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from tunnel import http1
from tunnel.edge import pages
from tunnel.errors import BadRequest, EdgeHTTPError, HeadersTooLarge, OriginTimeout, OriginUnreachable
from tunnel.loader import Request, Response
from tunnel.protocol import RequestHead, ResponseHead
from tunnel.protocol.frames import ErrorCode

if TYPE_CHECKING:  # pragma: no cover
    from tunnel.edge.exchange import Exchange
    from tunnel.edge.workers import WorkerPipeline

log = logging.getLogger(__name__)

_DROP = frozenset({"host", "content-length"})
_RETRYABLE = frozenset({"GET", "HEAD", "OPTIONS"})
_RETRY_CODES = frozenset({ErrorCode.INTERNAL_ERROR, ErrorCode.REFUSED_STREAM})
_METHOD = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}$")  # an RFC 9110 token
_TARGET = re.compile(r"^/[\x21-\x7e]*$")  # origin-form, visible ASCII only
_ORIGIN_DROP = frozenset({"tunnel-error", "x-request-id"})  # an origin cannot forge these
#: Statuses whose Response must have a null body (Fetch standard); 101 is the upgrade.
NULL_BODY_STATUSES = frozenset({101, 204, 205, 304})


def error_response(error: EdgeHTTPError, request_id: str, accept: str | None) -> Response:
    """An edge error page as a loader Response (so on_response policy rules still apply)."""
    status, _reason, headers, body = pages.render(error, request_id, accept)
    return Response(status, [(k, v) for k, v in headers if k.lower() != "content-length"], body=body)


class ClientBody:
    """The public request body as the worker sees it: an async iterable of bytes.

    While nobody iterates it, the bytes stay in the ``Exchange`` (which pauses reading the client
    beyond a bound). If the worker reads it, chunks are handed over one by one.
    """

    def __init__(self, exchange: "Exchange"):
        self.exchange = exchange
        self.consumed = False

    def __aiter__(self):
        self.consumed = True
        return self.exchange.iterate_request_body()


class TunnelBody:
    """A tunnel response body as the worker sees it (an async iterable of bytes)."""

    def __init__(self, call: "TunnelCall"):
        self.call = call
        self.consumed = False

    def __aiter__(self):
        self.consumed = True
        return self.call.iterate()

    async def aclose(self) -> None:
        """The worker dropped this body (the loader calls this): release the tunnel stream."""
        self.call.cancel()


class TunnelCall:
    """One ``env.TUNNEL.fetch``: a tunnel stream opened on behalf of a worker."""

    def __init__(self, session, stream_id: int, exchange: "Exchange | None"):
        self.session = session
        self.stream_id = stream_id
        self.exchange = exchange  # the public exchange whose upload is attached, if any
        self.head: asyncio.Future = asyncio.get_running_loop().create_future()
        self.chunks: deque[bytes] = deque()
        self.ended = False
        self.error: str | None = None
        self.error_code = 0
        self.adopted = False
        self._wake: asyncio.Event = asyncio.Event()
        self._upload_wake = asyncio.Event()

    # stream handler interface ------------------------------------------------------------
    def on_head(self, head: ResponseHead, end_stream: bool) -> None:
        if end_stream:
            self.ended = True
        if not self.head.done():
            self.head.set_result(head)

    def on_data(self, data: bytes, end_stream: bool) -> None:
        if data:
            self.chunks.append(data)
        if end_stream:
            self.ended = True
        self._wake.set()

    def on_reset(self, code: int, message: str) -> None:
        self.error = message or "stream reset"
        self.error_code = code
        if not self.head.done():
            self.head.set_exception(_error_for(code, message))
        if self.exchange is not None and self.exchange.stream_id == self.stream_id:
            self.exchange.upload_reset()
        self._wake.set()
        self._upload_wake.set()

    def on_window(self) -> None:
        if self.exchange is not None and self.exchange.stream_id == self.stream_id:
            self.exchange.on_window()
        self._upload_wake.set()

    # sending a body that is not the public client's ---------------------------------------
    async def send_body(self, body: Any) -> None:
        conn = self.session.conn
        try:
            if isinstance(body, (bytes, bytearray, memoryview)):
                await self._send(bytes(body))
            else:
                async for chunk in body:
                    await self._send(bytes(chunk))
            if self.error is None:
                conn.end_stream(self.stream_id)
                self.session.flush_soon()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a worker-made body failed: abort the stream
            log.warning("stream %d: request body failed: %r", self.stream_id, exc)
            self.session.reset(self.stream_id, ErrorCode.CANCEL, "request body failed")

    async def _send(self, data: bytes) -> None:
        conn = self.session.conn
        while data and self.error is None:
            taken = conn.send_data(self.stream_id, data)
            self.session.flush_soon()
            data = data[taken:]
            if data:
                self._upload_wake.clear()
                await self._upload_wake.wait()

    # reading the response ------------------------------------------------------------------
    async def iterate(self):
        conn = self.session.conn
        while True:
            while self.chunks:
                chunk = self.chunks.popleft()
                conn.consumed(self.stream_id, len(chunk))
                self.session.flush_soon()
                yield chunk
            if self.ended:
                return
            if self.error is not None:
                raise ConnectionError(f"the tunnel stream failed: {self.error}")
            self._wake.clear()
            await self._wake.wait()

    def cancel(self) -> None:
        if not self.ended and self.error is None and not self.adopted:
            self.session.reset(self.stream_id, ErrorCode.CANCEL, "worker dropped the response")


def _error_for(code: int, message: str) -> EdgeHTTPError:
    if code == ErrorCode.ORIGIN_TIMEOUT:
        return OriginTimeout(message or OriginTimeout.title)
    return OriginUnreachable(message or OriginUnreachable.title)


class TunnelBinding:
    """``env.TUNNEL`` of one tunnel's worker: ``await env.TUNNEL.fetch(request, opts)``."""

    def __init__(self, pipeline: "WorkerPipeline", tunnel: str):
        self._pipeline = pipeline
        self._tunnel = tunnel

    async def fetch(self, request: Request, opts: dict | None = None) -> Response:
        """Send ``request`` to one of the tunnel's connectors; return the origin's response.

        ``opts.service`` names an ingress service chosen by the policy (A/B split). Failures
        become edge error responses (530, 502, 504) carrying ``Tunnel-Error``.
        """
        pipeline = self._pipeline
        cf = request.cf or {}
        exchange = pipeline.exchanges.get(cf.get("edgeExchange"))
        if exchange is not None and exchange.tunnel != self._tunnel:
            exchange = None  # another tunnel's request: never touch it
        request_id = str(cf.get("requestId") or "")
        accept = request.headers.get("accept")
        try:
            session = pipeline.registry.pick_for(self._tunnel)
        except EdgeHTTPError as error:
            return error_response(error, request_id, accept)
        url = urlsplit(request.url)
        target = (url.path or "/") + (f"?{url.query}" if url.query else "")
        if not _METHOD.match(request.method) or not _TARGET.match(target):
            # Refuse it here, for this request only: the connector would take a malformed head
            # as a protocol violation and drop the whole connection.
            return error_response(BadRequest(f"the worker sent an invalid method or URL ({request.method!r})"),
                                  request_id, accept)
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _DROP]
        headers.insert(0, ("Host", request.headers.get("host") or url.netloc))
        upgrade = exchange is not None and exchange.upgrade and request.headers.get("upgrade") is not None
        headers = http1.strip_hop_by_hop(headers, keep_upgrade=upgrade)
        body = request.body
        attach = (exchange is not None and isinstance(body, ClientBody) and not body.consumed
                  and body.exchange is exchange and exchange.stream_id == 0)
        if attach:
            has_body = exchange.has_body
            if exchange.content_length is not None:
                headers.append(("Content-Length", exchange.content_length))
        elif isinstance(body, (bytes, bytearray, memoryview)) or body is None:
            has_body = bool(body)
            if has_body:
                headers.append(("Content-Length", str(len(body))))
        else:
            has_body = True
        service = (opts or {}).get("service") if isinstance(opts, dict) else None
        if service is not None and service not in pipeline.services(self._tunnel):
            return error_response(OriginUnreachable(f"service {service!r} is not one of this tunnel's services"),
                                  request_id, accept)
        head_out = RequestHead(request.method, target, headers, upgrade, service if isinstance(service, str) else None)
        retryable = not has_body and not upgrade and request.method in _RETRYABLE
        for attempt in (1, 2):
            try:
                stream_id = session.conn.open_stream(head_out, end_stream=not has_body and not upgrade)
            except HeadersTooLarge as exc:
                return error_response(OriginUnreachable(str(exc)), request_id, accept)
            call = TunnelCall(session, stream_id, exchange if attach else None)
            session.handlers[stream_id] = call
            session.flush_soon()
            sender = None
            if attach:
                exchange.attach_upload(session, stream_id)
            elif has_body:
                sender = asyncio.ensure_future(call.send_body(body))
            try:
                head = await call.head
                break
            except EdgeHTTPError as error:
                if attempt == 1 and retryable and call.error_code in _RETRY_CODES:
                    # Its connector connection died before any answer: send it on another one.
                    session = pipeline.registry.pick(self._tunnel)
                    if session is not None:
                        log.info("request %s: %s; retrying on another connection", request_id, error)
                        continue
                return error_response(error, request_id, accept)
            except asyncio.CancelledError:
                session.reset(stream_id, ErrorCode.CANCEL, "cancelled")
                if sender is not None:
                    sender.cancel()
                raise
        response_headers = http1.strip_hop_by_hop(head.headers, keep_upgrade=head.status == 101,
                                                  also=_ORIGIN_DROP)
        if exchange is not None:
            exchange.pending_call = call
        body_out = None if head.status in NULL_BODY_STATUSES else TunnelBody(call)
        return Response(head.status, response_headers, body=body_out)
