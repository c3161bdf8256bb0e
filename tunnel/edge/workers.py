"""The edge's worker pipeline: each public request of a tunnel with a policy or custom code runs
through its ``tunnel-<id>`` worker, whose ``env.TUNNEL.fetch`` comes back to the edge
(``tunnel.edge.binding.TunnelBinding``) to open a tunnel stream; finished exchanges feed
``metrics-<id>``.

Bodies do not enter JavaScript unless the worker reads them (docs/loader.md, "Streaming
pass-through"). The request a worker forwards carries the public client's ``ClientBody``
object; when the binding sees that very object it lets the public ``Exchange`` stream the upload
straight into the tunnel stream, on the same callback path as a tunnel without workers. The
response the binding returns carries a ``TunnelBody``; when the worker's final response still
carries it, unread, the ``Exchange`` adopts the stream and writes the origin's bytes to the client
as they arrive. Only bodies a worker reads are queued (bounded by the stream window).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import TYPE_CHECKING, Any

from generators import generate_config_worker, generate_custom_worker, generate_metrics_worker, generate_tunnel_worker
from generators.exposition import exchange as exchange_record
from generators.exposition import merge_expositions, observed_headers
from tunnel import http1
from tunnel.config.model import Config
from tunnel.config.patterns import url_authority
from tunnel.edge.binding import (
    NULL_BODY_STATUSES,
    ClientBody,
    CustomBinding,
    TunnelBinding,
    TunnelBody,
    TunnelCall,
    worker_error,
)
from tunnel.edge.exchange import Phase
from tunnel.errors import WorkerFailed, WorkerLimited
from tunnel.loader import Loader, Request, Response, close_later
from tunnel.protocol.messages import MAX_RESPONSE_HEAD

if TYPE_CHECKING:  # pragma: no cover
    from tunnel.edge.exchange import Exchange
    from tunnel.edge.registry import TunnelRegistry

log = logging.getLogger(__name__)


class _Tokens:
    """Unguessable 128-bit hex tokens, read from the OS 4 KiB at a time (one system call for 256)."""

    def __init__(self) -> None:
        self._hex = ""
        self._pos = 0

    def next(self) -> str:
        if self._pos >= len(self._hex):
            self._hex, self._pos = os.urandom(4096).hex(), 0
        token = self._hex[self._pos:self._pos + 32]
        self._pos += 32
        return token


_tokens = _Tokens()


class WorkerPipeline:
    """Workers of one config version: which tunnels run a worker, their stubs, metrics feeding.

    Keys are exactly ``tunnel-<id>``, ``metrics-<id>`` and ``config-<version>`` (generators.keys).
    """

    def __init__(self, loader: Loader, registry: "TunnelRegistry", config: Config, version: int,
                 extra_env: dict[str, dict[str, Any]] | None = None,
                 exchanges: dict[int, "Exchange"] | None = None):
        self.loader = loader
        self.extra_env = extra_env or {}
        self.response_timeout = 110.0  # wall-clock bound on a worker's answer (Edge sets origin timeout + 10 s)
        self.registry = registry
        self.config = config
        self.version = version
        self.exchanges = exchanges if exchanges is not None else {}  # shared by every version
        self._stubs: dict[str, Any] = {}
        self._observed: dict[str, frozenset[str]] = {}
        self._pending: dict[str, list[dict]] = {}
        self._flusher: asyncio.Task | None = None
        self._generated: dict[str, Any] = {}
        self._factories: dict[str, Any] = {}
        self._tunnel_keys: dict[str, str] = {}
        self._custom_keys: dict[str, str] = {}
        self._metrics_keys: dict[str, str] = {}
        self.ready = asyncio.Event()  # set once metrics state has moved over (see Edge)
        for name, tunnel in config.tunnels.items():
            limits = tunnel.worker.limits if tunnel.worker is not None else None
            extra = self.extra_env.get(name, {})
            custom = generate_custom_worker(tunnel)
            if custom is not None:  # the policy runs apart, trusted; the custom code behind env.CUSTOM
                self._custom_keys[name] = self._add(custom, {**extra, "TUNNEL": TunnelBinding(self, name)}, limits)
                self._tunnel_keys[name] = self._add(generate_tunnel_worker(tunnel), {
                    "TUNNEL": TunnelBinding(self, name), "CUSTOM": CustomBinding(self, name)})
            elif tunnel.needs_worker:
                self._tunnel_keys[name] = self._add(generate_tunnel_worker(tunnel),
                                                    {**extra, "TUNNEL": TunnelBinding(self, name)}, limits)
            if tunnel.metrics:
                self._metrics_keys[name] = self._add(generate_metrics_worker(tunnel), None)
                self._observed[name] = observed_headers(tunnel)

    # ------------------------------------------------------------------ stubs
    def _add(self, generated, env: dict[str, Any] | None, limits: Any = None) -> str:
        """Remember a generated worker and its factory; nothing is loaded until asked."""
        self._generated[generated.key] = generated
        limits = dict(limits) if limits else None

        async def factory():
            return generated.to_worker_code(env=env, limits=limits)

        self._factories[generated.key] = factory
        return generated.key

    def factory(self, key: str):
        """The loader factory of one of this version's workers."""
        return self._factories[key]

    def _stub(self, key: str):
        stub = self._stubs.get(key)
        if stub is None:
            stub = self._stubs[key] = self.loader.get(key, self._factories[key])
        return stub

    def config_stub(self):
        """The ``config-<version>`` worker (routing table and introspection)."""
        generated = generate_config_worker(self.config, self.version)

        async def factory():
            return generated.to_worker_code()

        return self.loader.get(generated.key, factory)

    def services(self, tunnel: str) -> tuple[str, ...]:
        """The services a worker may ask the connector to dial for ``tunnel``."""
        config = self.config.tunnels.get(tunnel)
        return config.ingress_services() if config is not None else ()

    def generated(self) -> dict[str, Any]:
        """Generated workers of this version by key (their ``hash`` tells what changed)."""
        return dict(self._generated)

    def tunnel_worker(self, tunnel: str):
        """The stub of ``tunnel-<id>``, or None when the tunnel is a pure pass-through."""
        key = self._tunnel_keys.get(tunnel)
        return self._stub(key) if key is not None else None

    def runs_worker(self, tunnel: str) -> bool:
        """Whether requests of ``tunnel`` go through its ``tunnel-<id>`` worker."""
        return tunnel in self._tunnel_keys

    def start(self, exchange: "Exchange", host: str, headers: list[tuple[str, str]]) -> None:
        """Hand a public request (``headers``: as it would be forwarded) to its tunnel's worker;
        the answer goes to the client (``WorkerCall``)."""
        tunnel = exchange.tunnel
        scheme = exchange.proto.scheme
        request = Request._checked(
            exchange.method, f"{scheme}://{url_authority(host)}{exchange.target}", headers,
            ClientBody(exchange) if exchange.has_body else None,
            {"clientIp": exchange.client_ip, "requestId": exchange.request_id, "tunnel": tunnel, "scheme": scheme})
        WorkerCall(self, exchange, self.tunnel_worker(tunnel), request)

    def metrics_worker(self, tunnel: str):
        """The stub of ``metrics-<id>``, or None when the tunnel has no custom metrics."""
        key = self._metrics_keys.get(tunnel)
        return self._stub(key) if key is not None else None

    def custom_worker(self, tunnel: str):
        """The stub of ``custom-<id>`` (custom code beside a policy), or None."""
        key = self._custom_keys.get(tunnel)
        return self._stub(key) if key is not None else None

    def register(self, exchange: "Exchange") -> str:
        """Make ``exchange`` findable by the binding (through ``request.cf.edgeExchange``). The
        ident is a random token: worker code can read and copy it, but cannot guess another
        request's, and the binding also checks that the exchange belongs to its own tunnel."""
        ident = _tokens.next()
        self.exchanges[ident] = exchange
        return ident

    def unregister(self, ident: str) -> None:
        self.exchanges.pop(ident, None)

    # ------------------------------------------------------------------ custom metrics
    def observe(self, tunnel: str, method: str, target: str, status: int, duration: float,
                headers: list[tuple[str, str]]) -> None:
        """Queue one finished exchange for ``metrics-<id>`` (no-op without custom metrics)."""
        only = self._observed.get(tunnel)
        if only is None:
            return
        pending = self._pending.setdefault(tunnel, [])
        pending.append(exchange_record(method, target, status, duration, headers, only=only))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(0.2)
        await self.flush()

    def adopt_pending(self, old: "WorkerPipeline") -> None:
        """Take over the observations the previous version had not sent yet."""
        for tunnel, records in old._pending.items():
            if tunnel in self._observed:
                self._pending.setdefault(tunnel, []).extend(records)
        old._pending = {}
        if self._pending and (self._flusher is None or self._flusher.done()):
            self._flusher = asyncio.get_running_loop().create_task(self._flush_later())

    async def flush(self) -> None:
        """Send every queued observation to its metrics worker now."""
        await self.ready.wait()
        pending, self._pending = self._pending, {}
        for tunnel, records in pending.items():
            stub = self.metrics_worker(tunnel)
            if stub is None or not records:
                continue
            try:
                await stub.fetch(Request("POST", "http://metrics/observe", body=json.dumps(records).encode(),
                                         headers={"content-type": "application/json"}))
            except Exception as exc:  # a metrics worker failing never affects traffic
                log.warning("tunnel %s: metrics worker failed: %s", tunnel, exc)

    async def custom_exposition(self, tunnels: list[str]) -> str:
        """The custom series of ``tunnels`` (merged), after flushing queued observations."""
        await self.flush()
        texts = []
        for tunnel in tunnels:
            stub = self.metrics_worker(tunnel)
            if stub is None:
                continue
            try:
                response = await stub.fetch(Request("GET", "http://metrics/metrics"))
                texts.append((await response.read()).decode())
            except Exception as exc:
                log.warning("tunnel %s: metrics worker failed: %s", tunnel, exc)
        return merge_expositions(texts) if texts else ""


# ---------------------------------------------------------------------- one request through a worker
class WorkerCall:
    """A public request while its tunnel's worker decides: the loader ticket, the wall-clock bound
    on the answer, and what the exchange is told at the end. It talks to the exchange only
    through the exchange's methods."""

    __slots__ = ("pipeline", "exchange", "ident", "ticket", "timer")

    def __init__(self, pipeline: WorkerPipeline, exchange: "Exchange", stub: Any, request: Request):
        self.pipeline, self.exchange = pipeline, exchange
        self.ident = pipeline.register(exchange)
        request.cf["edgeExchange"] = self.ident
        exchange.worker = self
        self.timer = exchange.proto.call_later(pipeline.response_timeout, self.timed_out)
        self.ticket = None
        self.ticket = stub.submit(request, self.answered)

    def _close(self) -> bool:
        """Stop waiting; False when this call is already over (answered, timed out, cancelled)."""
        if self.exchange.worker is not self:
            return False
        self.exchange.worker = None
        self.timer.cancel()
        self.pipeline.unregister(self.ident)
        return True

    def cancel(self) -> None:
        """The exchange gave up (client gone, or it answered itself): abandon the worker's request."""
        if self.exchange.worker is self:
            self.exchange.worker = None
            self.timer.cancel()
            self.pipeline.unregister(self.ident)
        if self.ticket is not None:
            self.ticket.cancel()

    def timed_out(self) -> None:
        exchange, pipeline = self.exchange, self.pipeline
        if not self._close():
            return
        self.ticket.cancel()
        exchange.stats.count_worker_error("Timeout")
        log.warning("tunnel %s request %s: worker gave no response within %.0f s", exchange.tunnel,
                    exchange.request_id, pipeline.response_timeout)
        exchange.fail(WorkerLimited(f"the tunnel's worker gave no response within {pipeline.response_timeout:.0f} s"))

    def answered(self, response: Response | None, error: BaseException | None) -> None:
        """The loader's answer (``WorkerStub.submit``'s ``done``)."""
        if not self._close():
            if response is not None:
                close_later(response.body)
            return
        exchange = self.exchange
        if error is None:
            respond(exchange, response)
            return
        exchange.fail(worker_error(exchange, error))


_RESPONSE_DROP = frozenset({"x-request-id", "content-length"})


def respond(exchange: "Exchange", response: Response) -> None:
    """Write a worker's final response to the client, adopting the tunnel stream when the body is
    still the origin's unread one."""
    call = exchange.last_call
    if exchange.phase is Phase.DONE or exchange.proto.closed:
        if call is not None:
            call.cancel()
        close_later(response.body)
        return
    status = response.status
    body = response.body
    pairs = response.header_pairs()
    upgrade = status == 101 and exchange.upgrade and call is not None
    headers = http1.strip_hop_by_hop(pairs, keep_upgrade=upgrade, also=_RESPONSE_DROP)
    size = sum(len(name) + len(value) + 4 for name, value in headers)
    if size > MAX_RESPONSE_HEAD:  # bounded as the edge bounds request heads and the connector's answers
        if call is not None:
            call.cancel()
        exchange.stats.count_worker_error("HeadTooLarge")
        exchange.fail(WorkerFailed(f"the worker's response head has {size} bytes, more than {MAX_RESPONSE_HEAD}"))
        return
    # Count apart what the origin answered and what the edge made: a Tunnel-Error names the
    # reason; an answer the worker made without forwarding is counted as "worker".
    exchange.edge_reason = http1.get_header(pairs, "tunnel-error") or (None if call is not None else "worker")
    if call is not None and not call.adopted and _adoptable(call, status, body):
        call.adopted = True
        content_length = http1.get_header(pairs, "content-length")
        has_length = content_length is not None and http1.get_header(call.head.headers, "content-length") == content_length
        if has_length:
            headers.append(("Content-Length", content_length))
        exchange.adopt(call, status, headers, has_length)
        return
    if call is not None:
        call.cancel()
    if body is None or isinstance(body, (bytes, bytearray, memoryview)):
        data = bytes(body or b"")
        if http1.response_has_body(exchange.method, status) or exchange.method == "HEAD":
            headers.append(("Content-Length", str(len(data))))
        exchange.write_head(status, "", headers, True)
        if exchange.method != "HEAD" and http1.response_has_body(exchange.method, status):
            exchange.write_body(data)
        exchange.finish_body()
        return
    exchange.write_head(status, "", headers, False)
    if not http1.response_has_body(exchange.method, status):
        close_later(body)
        exchange.finish_body()
        return
    task = asyncio.get_running_loop().create_task(_write_stream(exchange, body))
    _streams.add(task)
    task.add_done_callback(_streams.discard)


_streams: set[asyncio.Task] = set()  # response bodies being written from a worker's stream


def _adoptable(call: TunnelCall, status: int, body: Any) -> bool:
    """Whether the final response still carries the origin's unread body (or is the origin's
    bodiless answer), so the stream can be written straight to the client."""
    if isinstance(body, TunnelBody):
        return body.call is call and not body.consumed
    head = call.head
    if body is None and head is not None:
        return head.status in NULL_BODY_STATUSES and head.status == status
    return False


async def _write_stream(exchange: "Exchange", body: Any) -> None:
    proto = exchange.proto
    try:
        async for chunk in body:
            if proto.closed or exchange.phase is Phase.DONE:
                return
            exchange.write_body(bytes(chunk))
            if proto.write_paused:
                await proto.wait_writable()
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.warning("tunnel %s request %s: response body failed: %r", exchange.tunnel, exchange.request_id, exc)
        exchange.fail(WorkerFailed("the worker's response body failed"))
        return
    exchange.finish_body()
