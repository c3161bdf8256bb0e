"""The edge's connector listener: connectors dial in over WebSocket (aiohttp) and authenticate
with their tunnel's token in HELLO (PROTOCOL.md §4)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from typing import TYPE_CHECKING

from aiohttp import WSMsgType, web

from tunnel.protocol import Connection, Role, Settings
from tunnel.protocol import events as ev
from tunnel.session import MAX_MESSAGE, Session

if TYPE_CHECKING:  # pragma: no cover
    from tunnel.edge.server import Edge

log = logging.getLogger(__name__)

#: A connector sends HELLO right after the upgrade: a connection silent this long is closed.
HELLO_TIMEOUT = 5.0
#: Connections waiting for their HELLO: at most this many per source address, and overall.
MAX_PENDING_PER_ADDRESS = 8
MAX_PENDING_HANDSHAKES = 64
EDGE_KEY: web.AppKey["Edge"] = web.AppKey("edge")


class HandshakeSlots:
    """The connections that have not sent an accepted HELLO yet, by source address.

    Bounded without locking anyone out: a new connection beyond the per-address bound closes
    the oldest pending one of its own address; beyond the global bound it closes the oldest
    pending one of the address that holds the most. A connector that sends its HELLO at once
    (as ours do) is therefore never refused by others' silent connections, and one address
    cannot take more than its share of the slots.
    """

    def __init__(self, per_address: int = MAX_PENDING_PER_ADDRESS, total: int = MAX_PENDING_HANDSHAKES):
        self.per_address, self.total = per_address, total
        self._by_address: dict[str, deque["EdgeSession"]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, session: "EdgeSession") -> None:
        """Hold ``session`` until ``release``; close whichever pending one must make room."""
        mine = self._by_address.get(session.peer)
        if mine is not None and len(mine) >= self.per_address:
            self._evict(mine[0], f"more than {self.per_address} handshakes pending from {session.peer}")
        elif self._count >= self.total:
            busiest = max(self._by_address.values(), key=len)
            self._evict(busiest[0], f"more than {self.total} handshakes pending")
        self._by_address.setdefault(session.peer, deque()).append(session)
        self._count += 1

    def release(self, session: "EdgeSession") -> None:
        """``session`` authenticated or ended: it no longer holds a slot (no-op if it did not)."""
        queue = self._by_address.get(session.peer)
        if queue is None or session not in queue:
            return
        queue.remove(session)
        self._count -= 1
        if not queue:
            del self._by_address[session.peer]

    def _evict(self, session: "EdgeSession", reason: str) -> None:
        log.warning("closing a connector connection from %s that sent no HELLO: %s", session.peer, reason)
        self.release(session)
        session.close(f"no HELLO: {reason}")


class EdgeSession(Session):
    """One connector connection as the edge sees it."""

    def __init__(self, edge: "Edge", ws: web.WebSocketResponse, peer: str):
        self.edge = edge
        self.ws = ws
        self.peer = peer
        self.connection_id = uuid.uuid4().hex[:12]
        self.tunnel: str | None = None
        self.connector_id = ""
        self.acked_version = 0
        self.last_error = ""
        super().__init__(Connection(Role.EDGE, Settings()), ws.send_bytes, self._messages(),
                         name=f"connector-conn {self.connection_id}")

    async def _messages(self):
        async for msg in self.ws:
            if msg.type == WSMsgType.BINARY:
                yield msg.data
            else:
                if msg.type == WSMsgType.TEXT:
                    log.warning("%s: text message from %s; closing", self.name, self.peer)
                return

    def handle_event(self, event: ev.Event) -> None:
        kind = type(event)
        if kind is ev.ResponseReceived:
            handler = self.handlers.get(event.stream_id)
            if handler is not None:
                handler.on_head(event.head, event.end_stream)
        elif kind is ev.HelloReceived:
            self._on_hello(event)
        elif kind is ev.HandshakeFailed:
            log.warning("refused connector at %s: %s", self.peer, event.message)
            self.close(event.message)
        elif kind is ev.GoAwayReceived:
            log.info("tunnel %s: connector connection %s is going away (%s)", self.tunnel,
                     self.connection_id, event.message or "drain")
        elif kind is ev.ConfigAcknowledged:
            if event.ok:
                self.acked_version = max(self.acked_version, event.version)
                self.last_error = ""
            else:
                self.last_error = f"version {event.version}: {event.error}"
                log.warning("tunnel %s: connector %s rejected config version %d: %s", self.tunnel,
                            self.connector_id or self.connection_id, event.version, event.error)

    def send_config(self) -> None:
        """Send the active config version's part for this connection's tunnel."""
        if self.tunnel is not None and not self.closed:
            self.conn.send_config(self.edge.version, self.edge.connector_config(self.tunnel))
            self.flush_soon()

    def _on_hello(self, hello: ev.HelloReceived) -> None:
        self.edge.handshakes.release(self)
        tunnel = self.edge.store.tunnel_for_token(hello.token)
        if tunnel is None:
            message = ("the token is not valid on this edge (unknown, rotated or its tunnel was deleted); "
                       "get a new one with `tunnel tunnels token rotate NAME`")
            log.warning("refused connector at %s: unknown or revoked token", self.peer)
            self.conn.refuse("unauthorized", message)
            self.close("refused: unauthorized")
            return
        self.tunnel = tunnel
        self.connector_id = str(hello.info.get("connector_id", ""))[:64]
        self.conn.accept({
            "tunnel": tunnel,
            "hostnames": self.edge.hostnames_of(tunnel),
            "connection_id": self.connection_id,
            "origin_timeout": self.edge.options.origin_timeout,
        })
        self.edge.registry.add(tunnel, self)
        self.send_config()
        log.info("tunnel %s: connector %s connected from %s (connection %s)", tunnel,
                 self.connector_id or "?", self.peer, self.connection_id)


async def connector_handler(request: web.Request) -> web.StreamResponse:
    """Accept one connector WebSocket and serve it until it closes."""
    edge = request.app[EDGE_KEY]
    if edge.draining:
        return web.Response(status=503, text="edge is shutting down; reconnect shortly\n")
    ws = web.WebSocketResponse(max_msg_size=2 * MAX_MESSAGE + 1024 * 1024, compress=False,
                               autoping=True, heartbeat=None)
    await ws.prepare(request)
    peer = request.remote or "?"
    session = EdgeSession(edge, ws, peer)
    edge.sessions.add(session)
    edge.handshakes.add(session)
    hello_timer = asyncio.get_running_loop().call_later(
        HELLO_TIMEOUT, lambda: session.tunnel is None and session.close("no HELLO in time"))
    try:
        await session.run()
    finally:
        hello_timer.cancel()
        edge.handshakes.release(session)
        edge.sessions.discard(session)
        if session.tunnel is not None:
            edge.registry.remove(session.tunnel, session)
            log.info("tunnel %s: connector connection %s closed (%s)", session.tunnel,
                     session.connection_id, session.close_reason)
        await ws.close()
    return ws


def create_connector_app(edge: "Edge") -> web.Application:
    """The aiohttp application behind ``--connectors``: one WebSocket endpoint."""
    app = web.Application()
    app[EDGE_KEY] = edge
    app.router.add_get("/", connector_handler)
    app.router.add_get("/connect", connector_handler)
    return app
