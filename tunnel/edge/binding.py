"""``env.TUNNEL``: how a worker's ``fetch`` reaches the tunnel, and the body objects that let
bodies stream through a worker without entering JavaScript (see tunnel/edge/workers.py).

The request a worker forwards carries the public client's ``ClientBody``; when the binding sees
that very object it lets the public ``Exchange`` stream the upload straight into the tunnel
stream. The response the binding returns carries a ``TunnelBody``; when the worker's final
response still carries it, unread, the ``Exchange`` adopts the stream and writes the origin's
bytes to the client as they arrive. Only bodies a worker reads are queued (bounded by the window).

``TunnelBinding.fetch`` opens the stream at once and returns a Future of the ``Response`` (no
task: the loader answers the worker when the head arrives).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from typing import TYPE_CHECKING, Any

from tunnel import http1
from tunnel.edge import pages
from tunnel.edge.forwarding import DROP_FROM_ORIGIN, DROP_FROM_WORKER, may_retry, reset_error
from tunnel.errors import BadRequest, EdgeHTTPError, HeadersTooLarge, OriginUnreachable, WorkerFailed, WorkerLimited
from tunnel.loader import Request, Response, WorkerQuarantined, close_later
from tunnel.protocol import RequestHead, ResponseHead
from tunnel.protocol.frames import ErrorCode

if TYPE_CHECKING:  # pragma: no cover
    from tunnel.edge.connectors import EdgeSession
    from tunnel.edge.exchange import Exchange
    from tunnel.edge.workers import WorkerPipeline

log = logging.getLogger(__name__)

_METHOD = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}$")  # an RFC 9110 token
_TARGET = re.compile(r"^/[\x21-\x7e]*$")  # origin-form, visible ASCII only
#: Statuses whose Response must have a null body (Fetch standard); 101 is the upgrade.
NULL_BODY_STATUSES = frozenset({101, 204, 205, 304})


def error_response(error: EdgeHTTPError, request_id: str, accept: str | None) -> Response:
    """An edge error page as a loader Response (so on_response policy rules still apply)."""
    status, _reason, headers, body = pages.render(error, request_id, accept)
    return Response(status, [(k, v) for k, v in headers if k.lower() != "content-length"], body=body)


def worker_error(exchange: "Exchange", error: BaseException) -> EdgeHTTPError:
    """Count and log a worker's failure on ``exchange``; the edge error the client is shown:
    503 ``worker-limit`` (with Retry-After while quarantined) or 500 ``worker-error``."""
    kind = "Quarantined" if isinstance(error, WorkerQuarantined) else type(error).__name__
    exchange.stats.count_worker_error(kind)
    if isinstance(error, WorkerQuarantined):
        return WorkerLimited(f"the tunnel's worker keeps exceeding its limits; retry in {error.retry_after:.0f} s",
                             retry_after=error.retry_after)
    log.warning("tunnel %s request %s: worker %s: %s", exchange.tunnel, exchange.request_id, kind, error)
    error_class = WorkerLimited if getattr(error, "status", 500) == 503 else WorkerFailed
    return error_class(f"{kind}: {getattr(error, 'js_message', '') or error}")


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
    """One ``env.TUNNEL.fetch``: a tunnel stream opened on behalf of a worker.

    ``response`` resolves with the origin's ``Response`` (or an edge error page) once the head
    arrives; a bodiless idempotent request whose connection died first is re-sent once on
    another connection (``forwarding.may_retry``)."""

    def __init__(self, binding: "TunnelBinding", head: RequestHead, exchange: "Exchange | None", body: Any,
                 has_body: bool, request_id: str, accept: str | None):
        self.binding = binding
        self.head_out = head
        self.exchange = exchange  # the public exchange whose upload is attached, if any
        self.body = body  # a body of the worker's own (bytes or a stream) to send, else None
        self.has_body = has_body
        self.request_id, self.accept = request_id, accept
        self.response: asyncio.Future = asyncio.get_running_loop().create_future()
        self.session: EdgeSession | None = None
        self.stream_id = 0
        self.chunks: deque[bytes] = deque()
        self.ended = False
        self.error: str | None = None
        self.adopted = False
        self.retried = False
        self.head: ResponseHead | None = None
        self.sender: asyncio.Task | None = None
        self._wake: asyncio.Future | None = None  # a reader of the response body waits on it
        self._upload_wake: asyncio.Future | None = None  # send_body waits on it for credit
        self.response.add_done_callback(self._abandoned)

    def open(self, session: "EdgeSession") -> bool:
        """Open the stream on ``session``; False (and ``response`` answered) when it cannot be."""
        try:
            stream_id = session.conn.open_stream(self.head_out, end_stream=not self.has_body and not self.head_out.upgrade)
        except HeadersTooLarge as exc:
            self._answer(error_response(OriginUnreachable(str(exc)), self.request_id, self.accept))
            return False
        self.session, self.stream_id = session, stream_id
        session.handlers[stream_id] = self
        session.flush_soon()
        if self.exchange is not None:
            self.exchange.attach_upload(session, stream_id)
        elif self.has_body:
            self.sender = asyncio.ensure_future(self.send_body(self.body))
        return True

    def _answer(self, response: Response) -> None:
        if not self.response.done():
            self.response.set_result(response)

    def _abandoned(self, fut: asyncio.Future) -> None:
        if fut.cancelled():  # the worker's request was given up on: the stream goes too
            if self.session is not None:
                self.session.reset(self.stream_id, ErrorCode.CANCEL, "cancelled")
            if self.sender is not None:
                self.sender.cancel()

    # stream handler interface ------------------------------------------------------------
    def on_head(self, head: ResponseHead, end_stream: bool) -> None:
        if end_stream:
            self.ended = True
        headers = http1.strip_hop_by_hop(head.headers, keep_upgrade=head.status == 101, also=DROP_FROM_ORIGIN)
        body = None if head.status in NULL_BODY_STATUSES else TunnelBody(self)
        self.head = head
        self._answer(Response._checked(head.status, headers, body, head.reason))

    def on_data(self, data: bytes, end_stream: bool) -> None:
        if data:
            self.chunks.append(data)
        if end_stream:
            self.ended = True
        self._wake_reader()

    def _wake_reader(self) -> None:
        waiter, self._wake = self._wake, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_sender(self) -> None:
        waiter, self._upload_wake = self._upload_wake, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_reset(self, code: int, message: str) -> None:
        exchange = self.exchange
        if exchange is not None and exchange.stream_id == self.stream_id:
            exchange.upload_reset()
        if not self.response.done():
            if not self.retried and may_retry(self.head_out.method, self.has_body or self.head_out.upgrade, code):
                # Its connector connection died before any answer: send it on another one.
                self.retried = True
                session = self.binding.pipeline.registry.pick(self.binding.tunnel)
                if session is not None:
                    log.info("request %s: %s; retrying on another connection", self.request_id, message)
                    self.open(session)
                    return
            self._answer(error_response(reset_error(code, message), self.request_id, self.accept))
        self.error = message or "stream reset"
        self._wake_reader()
        self._wake_sender()

    def on_window(self) -> None:
        if self.exchange is not None and self.exchange.stream_id == self.stream_id:
            self.exchange.on_window()
        self._wake_sender()

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
                self._upload_wake = asyncio.get_running_loop().create_future()
                await self._upload_wake

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
            self._wake = asyncio.get_running_loop().create_future()
            await self._wake

    def cancel(self) -> None:
        if not self.ended and self.error is None and not self.adopted and self.session is not None:
            self.session.reset(self.stream_id, ErrorCode.CANCEL, "worker dropped the response")


class TunnelBinding:
    """``env.TUNNEL`` of one tunnel's worker: ``await env.TUNNEL.fetch(request, opts)``."""

    def __init__(self, pipeline: "WorkerPipeline", tunnel: str):
        self.pipeline = pipeline
        self.tunnel = tunnel

    def fetch(self, request: Request, opts: dict | None = None) -> "asyncio.Future[Response]":
        """Send ``request`` to one of the tunnel's connectors; return a Future of the origin's response.

        ``opts.service`` names an ingress service chosen by the policy (A/B split); without it, a
        service the tunnel's policy chose for this request is used. Failures become edge error
        responses (530, 503, 502, 504) carrying ``Tunnel-Error``.
        """
        pipeline = self.pipeline
        cf = request.cf or {}
        exchange = pipeline.exchanges.get(cf.get("edgeExchange"))
        if exchange is not None and exchange.tunnel != self.tunnel:
            exchange = None  # another tunnel's request: never touch it
        request_id = str(cf.get("requestId") or "")
        pairs = request.header_pairs()
        accept = http1.get_header(pairs, "accept")
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        try:
            session = pipeline.registry.pick_for(self.tunnel)
        except EdgeHTTPError as error:
            fut.set_result(error_response(error, request_id, accept))
            return fut
        url = request.url
        start = url.find("/", url.find("//") + 2)
        target = url[start:] if start >= 0 else "/"
        if "#" in target:
            target = target[:target.index("#")]
        if not _METHOD.match(request.method) or not _TARGET.match(target):
            # Refuse it here, for this request only: the connector would take a malformed head
            # as a protocol violation and drop the whole connection.
            fut.set_result(error_response(BadRequest(f"the worker sent an invalid method or URL ({request.method!r})"),
                                          request_id, accept))
            return fut
        host = http1.get_header(pairs, "host") or url[url.find("//") + 2:start if start >= 0 else None]
        headers = [("Host", host)] + [(k, v) for k, v in pairs if k.lower() not in DROP_FROM_WORKER]
        upgrade = exchange is not None and exchange.upgrade and http1.get_header(pairs, "upgrade") is not None
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
        service = opts.get("service") if isinstance(opts, dict) else None
        if service is None and exchange is not None:
            service = exchange.service
        if service is not None and (not isinstance(service, str) or service not in pipeline.services(self.tunnel)):
            fut.set_result(error_response(OriginUnreachable(f"service {service!r} is not one of this tunnel's services"),
                                          request_id, accept))
            return fut
        call = TunnelCall(self, RequestHead(request.method, target, headers, upgrade, service),
                          exchange if attach else None, None if attach else body, has_body, request_id, accept)
        if exchange is not None:
            exchange.last_call = call
        call.open(session)
        return call.response


class CustomBinding:
    """``env.CUSTOM`` of a tunnel whose policy (``tunnel-<id>``, trusted) runs apart from its
    custom code (``custom-<id>``, untrusted): ``env.CUSTOM.fetch(request, {service})`` hands the
    request the policy lets through to the custom code, whose own ``env.TUNNEL`` reaches the origin.

    A failure of the custom code becomes an edge error response here (503 ``worker-limit``, with
    Retry-After while it is quarantined; 500 ``worker-error``), so the policy's on_response rules
    still apply to it.
    """

    def __init__(self, pipeline: "WorkerPipeline", tunnel: str):
        self.pipeline = pipeline
        self.tunnel = tunnel

    def fetch(self, request: Request, opts: dict | None = None) -> "asyncio.Future[Response]":
        """Run ``custom-<id>`` on ``request``; a Future of its response (or of an error page)."""
        pipeline = self.pipeline
        cf = request.cf or {}
        exchange = pipeline.exchanges.get(cf.get("edgeExchange"))
        if exchange is not None and exchange.tunnel != self.tunnel:
            exchange = None
        request_id = str(cf.get("requestId") or "")
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        service = opts.get("service") if isinstance(opts, dict) else None
        if service is not None:
            if not isinstance(service, str) or service not in pipeline.services(self.tunnel):
                fut.set_result(error_response(OriginUnreachable(f"service {service!r} is not one of this tunnel's services"),
                                              request_id, http1.get_header(request.header_pairs(), "accept")))
                return fut
            if exchange is not None:
                exchange.service = service  # the custom code's env.TUNNEL.fetch dials it

        def done(response: Response | None, error: BaseException | None) -> None:
            if fut.done():
                if response is not None:
                    close_later(response.body)
            elif error is None:
                fut.set_result(response)
            elif exchange is None:
                fut.set_exception(error)
            else:
                fut.set_result(error_response(worker_error(exchange, error), request_id,
                                              http1.get_header(request.header_pairs(), "accept")))

        ticket = pipeline.custom_worker(self.tunnel).submit(request, done)
        fut.add_done_callback(lambda f: ticket.cancel() if f.cancelled() else None)
        return fut
