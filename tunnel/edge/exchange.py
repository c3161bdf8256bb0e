"""One public request and its answer: the bridge between a client socket and a tunnel stream.

A request's life is here, as one ``Phase`` that only this module changes (``_move`` checks every
change against ``_MOVES``)::

    PENDING ──start──▶ FORWARDED ──head──▶ RESPONDING ──end──▶ DONE
       │                  ▲  │ (reset, retried on another connection)
       └──start──▶ WORKER ┘  └──101──▶ RELAYING ──end──▶ DONE
                      │
                      └──answer (the worker's own, or the origin's it adopted)──▶ RESPONDING
    any phase ──fail / client gone / framing violation──▶ DONE

The upload (request body) runs beside it: sent as the stream's credit allows; beyond it the
client socket stops being read (``pause_reading``) until WINDOW_UPDATE arrives. The response
body is written to the client as it arrives; credit goes back to the connector only while the
client socket is writable, so a client that reads nothing holds at most one window at the edge.
Tunnels with a worker go through ``tunnel.edge.workers`` for the heads; their bodies still flow
here. Headers dropped, retries and reset meanings: ``tunnel.edge.forwarding``.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re
import uuid
from collections import deque
from typing import TYPE_CHECKING

from tunnel import http1
from tunnel.edge import pages
from tunnel.edge.forwarding import DROP_FROM_CLIENT, DROP_FROM_ORIGIN, may_retry, reset_error
from tunnel.errors import BadRequest, BodyTooLarge, EdgeHTTPError, HeadersTooLarge, HeadTooLarge, UnknownHost
from tunnel.protocol import RequestHead, ResponseHead
from tunnel.protocol.frames import ErrorCode

if TYPE_CHECKING:  # pragma: no cover
    from tunnel.edge.binding import TunnelCall
    from tunnel.edge.connectors import EdgeSession
    from tunnel.edge.public import PublicProtocol
    from tunnel.edge.workers import WorkerCall

log = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_UPLOAD_BUFFER = 256 * 1024  # request bytes held at the edge before the client is paused


class Phase(enum.Enum):
    PENDING = "pending"        # parsed, not started (routing, or pipelined behind another request)
    WORKER = "worker"          # the tunnel's worker is deciding (it may have opened streams)
    FORWARDED = "forwarded"    # a tunnel stream carries the request; no response head yet
    RESPONDING = "responding"  # the response head is out (or queued); its body follows
    RELAYING = "relaying"      # the origin switched protocols (101): raw bytes both ways
    DONE = "done"              # answered (or given up) and counted


_MOVES = {
    (Phase.PENDING, Phase.WORKER), (Phase.PENDING, Phase.FORWARDED), (Phase.FORWARDED, Phase.FORWARDED),
    (Phase.FORWARDED, Phase.RESPONDING), (Phase.WORKER, Phase.RESPONDING),
    (Phase.FORWARDED, Phase.RELAYING), (Phase.WORKER, Phase.RELAYING),
    *((phase, Phase.DONE) for phase in Phase if phase is not Phase.DONE),
}


class Exchange:
    """One public request and its tunnel stream (see the module docstring)."""

    __slots__ = ("proto", "url", "headers", "head_size", "method", "version", "keep_alive",
                 "upgrade", "phase", "session", "stream_id", "pending", "pending_size", "body_size",
                 "request_done", "request_ended", "attached", "chunked", "close_after", "unacked", "request_id",
                 "has_body", "awaiting_request_end", "retried", "tunnel", "stats", "started_at", "status",
                 "edge_reason", "bytes_out", "target", "content_length", "worker", "last_call", "body_waiter",
                 "remaining", "client_ip", "head_out", "forward_head", "service")

    def __init__(self, proto: "PublicProtocol"):
        self.proto = proto
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.head_size = 0
        self.method = ""
        self.version = "1.1"
        self.keep_alive = True
        self.upgrade = False
        self.phase = Phase.PENDING
        self.session: EdgeSession | None = None
        self.stream_id = 0
        self.pending: deque[bytes] = deque()  # request bytes not sent yet
        self.pending_size = 0
        self.body_size = 0
        self.request_done = False  # the whole request body has arrived from the client
        self.request_ended = False  # END_STREAM sent on the tunnel stream
        self.attached = False  # the upload flows into ``stream_id``
        self.chunked = False
        self.close_after = False
        self.unacked = 0
        self.request_id = ""
        self.has_body = True  # until the head says otherwise
        self.awaiting_request_end = False
        self.retried = False
        self.tunnel: str | None = None
        self.stats = None
        self.started_at = 0.0
        self.status = 0
        self.edge_reason: str | None = None
        self.bytes_out = 0
        self.target = "/"
        self.content_length: str | None = None
        self.worker: WorkerCall | None = None  # the worker deciding this request, while it does
        self.last_call: TunnelCall | None = None  # the last stream a worker opened for it
        self.body_waiter: asyncio.Future | None = None
        self.remaining: int | None = None  # response body bytes still due (None: not length-framed)
        self.client_ip = ""  # what workers see as request.cf.clientIp
        self.head_out: bytes | None = None  # a response head not written yet (write_head)
        self.forward_head: RequestHead | None = None  # what the plain path sent (kept for a retry)
        self.service: str | None = None  # the ingress service a policy chose (ab_split), for a custom worker

    # ------------------------------------------------------------------ state
    def _move(self, phase: Phase) -> None:
        if (self.phase, phase) not in _MOVES:
            raise RuntimeError(f"request {self.request_id}: {self.phase.value} -> {phase.value} is not a move")
        self.phase = phase

    # ------------------------------------------------------------------ request side
    def start(self) -> None:
        """Route the request and open its tunnel stream, hand it to the tunnel's worker, or
        answer it with an error page."""
        proto = self.proto
        settings = proto.settings
        headers = self.headers
        host = content_length = transfer_encoding = expect = client_rid = forwarded_for = None
        hosts = 0
        for name, value in headers:
            lname = name.lower()
            if lname == "host":
                host = value
                hosts += 1
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
        self.request_id = client_rid if client_rid and _REQUEST_ID.match(client_rid) else uuid.uuid4().hex
        self.started_at = proto.loop_time()
        self.content_length = content_length
        self.has_body = self.upgrade or transfer_encoding is not None or (
            content_length is not None and content_length.strip() not in ("", "0"))
        target = self.url.decode("latin-1")
        if not target.startswith("/") and "://" in target:  # absolute-form: its authority is the host
            rest = target.split("://", 1)[1]
            host, _, path = rest.partition("/")
            target = "/" + path
            headers = self.headers = [(n, v) for n, v in headers if n.lower() != "host"] + [("Host", host)]
            hosts = 1
        self.target = target
        pipeline = session = None
        try:
            if hosts > 1:  # RFC 9112 §3.2: the edge and the connector must not pick different ones
                raise BadRequest("the request has more than one Host header")
            if not host:
                raise BadRequest("the request has no Host header")
            found = settings.routing.lookup(host)
            if found is None:
                settings.metrics.unknown_host += 1
                raise UnknownHost(f"no tunnel serves {host.split(':')[0]!r} on this edge")
            self.tunnel = found[0]
            self.stats = settings.metrics.stats(self.tunnel)
            self.stats.in_flight += 1
            if self.tunnel in settings.https_only and proto.scheme == "http" and settings.https_port:
                self.redirect_to_https(host)
                return
            if content_length is not None and int(content_length) > settings.max_body_size:
                raise BodyTooLarge(f"the body is larger than {settings.max_body_size} bytes")
            if self.tunnel in settings.normalize_paths:  # matched and forwarded in one form
                try:
                    target = self.target = http1.normalize_target(target)
                except ValueError as exc:
                    raise BadRequest(f"{exc}; this edge does not forward such a path") from None
            if settings.pipeline is not None and settings.pipeline.runs_worker(self.tunnel):
                pipeline = settings.pipeline
            else:
                session = settings.registry.pick_for(self.tunnel)
        except EdgeHTTPError as error:
            if isinstance(error, BadRequest):
                self.close_after = True  # its framing or routing cannot be trusted
            self.fail(error)
            return
        fwd = http1.strip_hop_by_hop(headers, keep_upgrade=self.upgrade, also=DROP_FROM_CLIENT)
        peer = proto.peer_ip
        if forwarded_for and settings.trusts(peer):
            fwd.append(("X-Forwarded-For", f"{forwarded_for}, {peer}"))
        else:
            fwd.append(("X-Forwarded-For", peer))
        self.client_ip = settings.client_ip(peer, forwarded_for)
        fwd.append(("X-Forwarded-Proto", proto.scheme))
        fwd.append(("X-Forwarded-Host", host))
        fwd.append(("X-Request-Id", self.request_id))
        if (expect and expect.lower() == "100-continue" and self.has_body and not self.request_done
                and self.version == "1.1"):
            proto.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if pipeline is not None:
            self._move(Phase.WORKER)
            pipeline.start(self, host, fwd)
            return
        self.forward_head = RequestHead(self.method, target, fwd, self.upgrade)
        self._forward(session)

    def _forward(self, session: "EdgeSession") -> None:
        """Send the request (``forward_head``) on a new stream of ``session``."""
        try:
            stream_id = session.conn.open_stream(self.forward_head, end_stream=not self.has_body)
        except HeadersTooLarge as exc:
            self.fail(HeadTooLarge(str(exc)))
            return
        self._move(Phase.FORWARDED)
        session.handlers[stream_id] = self
        self.attach_upload(session, stream_id)

    def attach_upload(self, session: "EdgeSession", stream_id: int) -> None:
        """Stream the request body into ``stream_id`` (also when a worker forwards it)."""
        self.session = session
        self.stream_id = stream_id
        self.attached = True
        if not self.has_body:
            self.request_ended = True
        session.flush_soon()
        self._pump()

    def receive_body(self, data: bytes) -> None:
        """Request body bytes from the client (or raw bytes after an upgrade)."""
        if self.phase is Phase.DONE or (self.upgrade and self.phase is Phase.RESPONDING):
            return  # answered, or the origin refused the upgrade: the client's raw bytes go nowhere
        self.body_size += len(data)
        if not self.upgrade and self.body_size > self.proto.settings.max_body_size:
            self.fail(BodyTooLarge(f"the body is larger than {self.proto.settings.max_body_size} bytes"))
            return
        if self.upgrade and self.phase is not Phase.RELAYING:
            # Bytes after an upgrade head wait for the origin's 101: sent earlier, an origin that
            # ignores Upgrade would read them as a request that never passed the edge.
            self.pending.append(data)
            self.pending_size += len(data)
            if self.pending_size > _UPLOAD_BUFFER:
                self.proto.pause_reading("upload")
            return
        if self.attached and not self.pending:
            if self.session.congested:  # the tunnel connection is backed up: wait for it
                self.session.when_uncongested(self.on_window)
            else:
                taken = self.session.conn.send_data(self.stream_id, data)
                self.session.flush_soon()
                if taken == len(data):
                    return
                data = data[taken:]
        self.pending.append(data)
        self.pending_size += len(data)
        if self.pending_size > _UPLOAD_BUFFER or self.attached:
            self.proto.pause_reading("upload")
        self._wake_body_reader()

    def request_complete(self) -> None:
        """The client finished sending the request (for an upgrade: its head; raw bytes follow)."""
        if self.upgrade:
            return
        self.request_done = True
        self._wake_body_reader()
        if self.awaiting_request_end:
            self.awaiting_request_end = False
            self.proto.exchange_done(self)
            return
        self._end_upload()

    def client_eof(self) -> None:
        """Upgraded connection: the client half-closed."""
        self.request_done = True
        self._wake_body_reader()
        self._end_upload()

    def _end_upload(self) -> None:
        if self.attached and not self.pending and not self.request_ended:
            self.request_ended = True
            self.session.conn.end_stream(self.stream_id)
            self.session.flush_soon()

    def _pump(self) -> None:
        if self.upgrade and self.phase is not Phase.RELAYING:
            return  # held until the origin switches protocols (see receive_body)
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
            if self.request_done and not self.request_ended:
                self.request_ended = True
                conn.end_stream(self.stream_id)
        self.session.flush_soon()

    async def iterate_request_body(self):
        """Worker mode, when the worker reads the body: yield it chunk by chunk."""
        while True:
            while self.pending:
                chunk = self.pending.popleft()
                self.pending_size -= len(chunk)
                if self.pending_size <= _UPLOAD_BUFFER // 2:
                    self.proto.resume_reading("upload")
                yield chunk
            if self.request_done or self.phase is Phase.DONE:
                return
            self.body_waiter = asyncio.get_running_loop().create_future()
            await self.body_waiter

    def _wake_body_reader(self) -> None:
        waiter = self.body_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def upload_reset(self) -> None:
        """The stream carrying our upload was reset: stop sending to it."""
        self.attached = False
        self.proto.resume_reading("upload")

    # ------------------------------------------------------------------ response side (stream)
    def on_window(self) -> None:
        if self.pending and self.attached:
            self._pump()

    def on_head(self, head: ResponseHead, end_stream: bool) -> None:
        """The connector answered with a response head."""
        if self.proto.closed or self.phase is Phase.DONE:
            return
        self.write_head(head.status, head.reason,
                        http1.strip_hop_by_hop(head.headers, keep_upgrade=head.status == 101, also=DROP_FROM_ORIGIN),
                        http1.get_header(head.headers, "content-length") is not None)
        if end_stream:
            self._response_end()

    def adopt(self, call: "TunnelCall", status: int, headers: list[tuple[str, str]], has_length: bool) -> None:
        """The worker answered with the origin's unread response of ``call``: write it to the
        client straight from the stream (``headers``: the worker's, already free of hop-by-hop)."""
        session = call.session
        self.session = session
        self.stream_id = call.stream_id
        if not self.attached:
            self.attached = True
            self.request_ended = True  # the worker's own body, if any, was sent by the call
        session.handlers[call.stream_id] = self
        self.write_head(status, "", headers, has_length)
        chunks, call.chunks = call.chunks, deque()
        for chunk in chunks:
            self.on_data(chunk, False)
        if call.ended:
            self.on_data(b"", True)
        elif call.error is not None:
            self.on_reset(ErrorCode.INTERNAL_ERROR, call.error)

    def write_head(self, status: int, reason: str, headers: list[tuple[str, str]], has_length: bool) -> None:
        """Write the response head to the client; ``headers`` are already free of hop-by-hop
        headers. Decides the framing of the body that follows."""
        proto = self.proto
        self.status = status
        headers.append(("X-Request-Id", self.request_id))
        if status == 101 and self.upgrade:
            self._move(Phase.RELAYING)
            if http1.get_header(headers, "connection") is None:
                headers.append(("Connection", "Upgrade"))
            proto.write(http1.head_bytes(f"HTTP/1.1 101 {reason or 'Switching Protocols'}", headers))
            self.keep_alive = False
            if self.pending:
                self._pump()
            elif self.request_done and not self.request_ended:
                self.client_eof()
            return
        self._move(Phase.RESPONDING)
        if self.upgrade:  # the origin refused the upgrade: drop the client's raw bytes, then close
            self.close_after = True
            self.pending.clear()
            self.pending_size = 0
        if not http1.response_has_body(self.method, status):
            self.remaining = 0
        elif has_length:
            lengths = {v.strip() for k, v in headers if k.lower() == "content-length"}
            value = lengths.pop() if len(lengths) == 1 else ""
            if value.isdigit():
                self.remaining = int(value)
            else:  # conflicting or malformed lengths: never pass them on, frame the body ourselves
                headers[:] = [(k, v) for k, v in headers if k.lower() != "content-length"]
                has_length = False
        if http1.response_has_body(self.method, status) and not has_length:
            if self.version == "1.1":
                headers.append(("Transfer-Encoding", "chunked"))
                self.chunked = True
            else:
                self.close_after = True
        if not self.keep_alive or self.close_after or proto.settings.draining:
            headers.append(("Connection", "close"))
        elif self.version == "1.0":
            headers.append(("Connection", "keep-alive"))
        # The head leaves with the first body bytes (one write, one syscall) or at the end of this
        # loop turn at the latest, so a slow first chunk (SSE) never holds the head back.
        self.head_out = http1.head_bytes(f"HTTP/1.1 {status} {reason or http1.REASONS.get(status, 'Status')}",
                                         headers)
        proto.call_soon(self.flush_head)

    def flush_head(self) -> None:
        """Write the response head if it is still waiting (see write_head)."""
        head, self.head_out = self.head_out, None
        if head is not None:
            self.proto.write(head)

    def on_data(self, data: bytes, end_stream: bool) -> None:
        """Response body bytes (or raw bytes after an upgrade)."""
        proto = self.proto
        if data:
            remaining = self.remaining
            if remaining is not None:
                if len(data) > remaining:  # more than the head announced: never let it reach the client
                    self._framing_violation(f"{len(data) - remaining} bytes beyond the response's length")
                    return
                self.remaining = remaining - len(data)
            self.bytes_out += len(data)
            if proto.closed:
                self.session.conn.consumed(self.stream_id, len(data))
            else:
                out = http1.chunk(data) if self.chunked else data
                head = self.head_out
                if head is not None:
                    self.head_out = None
                    if len(out) <= 65536:
                        out = head + out
                    else:
                        proto.transport.write(head)
                proto.transport.write(out)
                if proto.write_paused:
                    self.unacked += len(data)
                else:
                    self.session.conn.consumed(self.stream_id, len(data))
                    self.session.flush_soon()
        if end_stream:
            if self.remaining:
                self._framing_violation(f"the response ended {self.remaining} bytes short")
                return
            self._response_end()

    def write_body(self, data: bytes) -> None:
        """Response body bytes made at the edge (a worker's own body), framed as the head said;
        a head still waiting leaves with them, in one write."""
        if not data or self.proto.closed:
            return
        self.bytes_out += len(data)
        out = http1.chunk(data) if self.chunked else data
        head, self.head_out = self.head_out, None
        if head is not None and len(out) <= 65536:
            out = head + out
        elif head is not None:
            self.proto.write(head)
        self.proto.write(out)

    def _framing_violation(self, detail: str) -> None:
        """The connector sent a body that does not match the response head: reset the stream and
        abort the client connection, so nothing can be read as the answer to a later request."""
        log.warning("request %s (tunnel %s): %s; closing the client connection", self.request_id, self.tunnel, detail)
        if self.session is not None:
            self.session.reset(self.stream_id, ErrorCode.PROTOCOL_ERROR, detail)
        self.attached = False
        self._finish_phase()
        if not self.proto.closed:
            self.flush_head()
            self.proto.closed = True
            self.proto.transport.close()  # what was written (within the framing) still leaves

    def grant_credit(self) -> None:
        """The client socket drained: let the connector send what we held back."""
        if self.unacked and self.session is not None:
            self.session.conn.consumed(self.stream_id, self.unacked)
            self.unacked = 0
            self.session.flush_soon()

    def on_reset(self, code: int, message: str) -> None:
        """The stream was reset by the connector or its connection was lost."""
        self.attached = False
        phase = self.phase
        if phase is Phase.DONE:
            return
        if (phase is Phase.FORWARDED and not self.retried and not self.proto.closed
                and may_retry(self.method, self.has_body, code)):
            # Its connector connection died before any answer: safe to send it on another one.
            self.retried = True
            try:
                session = self.proto.settings.registry.pick_for(self.tunnel)
            except EdgeHTTPError as error:  # no other connection (530) or all full (503)
                self.fail(error)
                return
            log.info("request %s: %s; retrying on another connection", self.request_id, message)
            self._forward(session)
            return
        if phase in (Phase.RESPONDING, Phase.RELAYING):
            log.info("request %s: stream reset after the response began (%s: %s)", self.request_id,
                     ErrorCode.of(code), message)
            self._finish_phase()
            if not self.proto.closed:
                self.proto.transport.abort()
            return
        self.fail(reset_error(code, message))

    def _response_end(self) -> None:
        if self.phase is Phase.DONE:
            return
        relaying = self.phase is Phase.RELAYING
        self._finish_phase()
        proto = self.proto
        if relaying:
            if not proto.closed:
                proto.transport.close()
                proto.closed = True
            return
        head, self.head_out = self.head_out, None
        if self.chunked:
            proto.write(head + http1.LAST_CHUNK if head is not None else http1.LAST_CHUNK)
        elif head is not None:
            proto.write(head)
        if self.session is not None:
            self.session.finished(self.stream_id)
        if not self.request_done and self.has_body:  # answered before the body came: the framing is lost
            self.close_after = True
            if self.attached and not self.request_ended:
                self.session.reset(self.stream_id, ErrorCode.NO_ERROR, "response complete")
        proto.exchange_done(self)

    def finish_body(self) -> None:
        """A response written here (not from a stream) is complete."""
        self._response_end()

    # ------------------------------------------------------------------ answers made at the edge
    def fail(self, error: EdgeHTTPError) -> None:
        """Answer with an edge error page (only while no response has started; else abort)."""
        proto = self.proto
        if self.attached and self.session is not None:
            self.session.reset(self.stream_id, ErrorCode.CANCEL, error.reason)
            self.attached = False
        self._stop_worker()
        if self.phase in (Phase.RESPONDING, Phase.RELAYING, Phase.DONE):  # too late for a page
            self._finish_phase()
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
        self.status = status
        self.edge_reason = error.reason
        self._finish_phase()
        proto.write(http1.head_bytes(f"HTTP/1.1 {status} {reason}", headers)
                    + (b"" if self.method == "HEAD" else body))
        proto.exchange_done(self)

    def redirect_to_https(self, host: str) -> None:
        """308 to the same URL over HTTPS (a tunnel configured ``https_only``)."""
        port = self.proto.settings.https_port
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        location = f"https://{name}{'' if port == 443 else f':{port}'}{self.target}"
        if not self.request_done and self.has_body:
            self.close_after = True
        headers = [("Location", location), ("Content-Length", "0"), ("X-Request-Id", self.request_id)]
        if self.close_after or not self.keep_alive:
            headers.append(("Connection", "close"))
        self.status, self.edge_reason = 308, "https-redirect"
        self._finish_phase()
        self.proto.write(http1.head_bytes("HTTP/1.1 308 Permanent Redirect", headers))
        self.proto.exchange_done(self)

    def client_gone(self) -> None:
        """The client connection closed: abort the origin request if it is still running."""
        if self.attached and self.phase is not Phase.DONE and self.session is not None:
            self.session.reset(self.stream_id, ErrorCode.CANCEL, "client disconnected")
        self._stop_worker()
        self.attached = False
        if self.phase is not Phase.DONE:
            if self.status == 0:
                self.status, self.edge_reason = 499, "client-closed"
            self._finish_phase()
        self._wake_body_reader()

    def _stop_worker(self) -> None:
        worker, self.worker = self.worker, None
        if worker is not None:
            worker.cancel()
        call = self.last_call
        if call is not None and not call.adopted:
            call.cancel()

    def _finish_phase(self) -> None:
        """Move to DONE and count the exchange (standard metrics, and the tunnel's custom ones)."""
        if self.phase is Phase.DONE:
            return
        self._move(Phase.DONE)
        stats = self.stats
        if stats is None:
            return
        stats.in_flight -= 1
        duration = self.proto.loop_time() - self.started_at
        stats.finished(self.status, self.edge_reason, duration, self.body_size, self.bytes_out)
        pipeline = self.proto.settings.pipeline
        if pipeline is not None:
            pipeline.observe(self.tunnel, self.method, self.target, self.status, duration, self.headers)
