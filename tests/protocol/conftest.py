"""An in-memory edge↔connector link for the sans-I/O protocol core (no sockets, no asyncio).

``Link`` holds two ``Connection`` objects and moves whatever one has queued
(``data_to_send()``) into the other's ``receive``, the way the asyncio session layer does with
WebSocket messages.
"""

from __future__ import annotations

import pytest

from tunnel.protocol import frames as F
from tunnel.protocol.connection import Connection, Role, Settings
from tunnel.protocol.events import Event, HelloReceived, Welcomed

#: Small limits so flow-control tests run out of credit after a few KiB.
SMALL = Settings(initial_window=4096, max_frame_size=1024, max_streams=4)


class Link:
    """An edge and a connector joined by an in-memory link."""

    def __init__(self, edge_settings: Settings | None = None, connector_settings: Settings | None = None):
        self.edge = Connection(Role.EDGE, edge_settings)
        self.connector = Connection(Role.CONNECTOR, connector_settings)

    def to_edge(self, limit: int | None = None) -> list[Event]:
        """Deliver what the connector has queued (one message) to the edge; return the events."""
        message = self.connector.data_to_send(limit)
        return self.edge.receive(message) if message else []

    def to_connector(self, limit: int | None = None) -> list[Event]:
        """Deliver what the edge has queued (one message) to the connector; return the events."""
        message = self.edge.data_to_send(limit)
        return self.connector.receive(message) if message else []

    def handshake(self, token: str = "tok") -> None:
        """HELLO → accept → WELCOME; both sides end open."""
        self.connector.send_hello(token, {"connector_id": "c1"})
        [hello] = self.to_edge()
        assert isinstance(hello, HelloReceived) and hello.token == token
        self.edge.accept({"tunnel": "web"})
        [welcome] = self.to_connector()
        assert isinstance(welcome, Welcomed) and welcome.version == 1

    @staticmethod
    def queued(conn: Connection) -> list[F.Frame]:
        """Collect and decode everything ``conn`` has queued (any frame size)."""
        return F.decode(conn.data_to_send(), F.ABSOLUTE_MAX_FRAME)


@pytest.fixture(scope="session")
def make_link():
    """The ``Link`` class, for tests that pick their own settings (session-scoped, so
    hypothesis tests may use it)."""
    return Link


@pytest.fixture
def link() -> Link:
    """A handshaken link with default settings."""
    pair = Link()
    pair.handshake()
    return pair


@pytest.fixture
def small_link() -> Link:
    """A handshaken link where both sides receive with ``SMALL`` settings."""
    pair = Link(SMALL, SMALL)
    pair.handshake()
    return pair
