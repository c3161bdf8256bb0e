"""Events the protocol core hands to the I/O layer (PROTOCOL.md §5)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunnel.protocol.messages import RequestHead, ResponseHead


class Event:
    """Base class of every protocol event."""

    __slots__ = ()


@dataclass(slots=True)
class HelloReceived(Event):
    """Edge side: a connector introduced itself with a supported version; accept or refuse it."""

    version: int
    token: str
    info: dict[str, Any]


@dataclass(slots=True)
class Welcomed(Event):
    """Connector side: the edge accepted the connection."""

    version: int
    info: dict[str, Any]


@dataclass(slots=True)
class Refused(Event):
    """Connector side: the edge refused the connection (``code`` as in PROTOCOL.md §4.3)."""

    code: str
    message: str


@dataclass(slots=True)
class HandshakeFailed(Event):
    """Edge side: the core refused a HELLO by itself (for example an unsupported version)."""

    code: str
    message: str


@dataclass(slots=True)
class RequestReceived(Event):
    """Connector side: the edge opened a stream with a request head."""

    stream_id: int
    head: RequestHead
    end_stream: bool


@dataclass(slots=True)
class ResponseReceived(Event):
    """Edge side: the connector answered a stream with a response head."""

    stream_id: int
    head: ResponseHead
    end_stream: bool


@dataclass(slots=True)
class DataReceived(Event):
    """Body bytes on a stream. The receiver must call ``Connection.consumed`` once it has
    passed them on, or the sender runs out of credit (flow control, PROTOCOL.md §5.3)."""

    stream_id: int
    data: bytes
    end_stream: bool


@dataclass(slots=True)
class StreamReset(Event):
    """The peer aborted a stream."""

    stream_id: int
    code: int
    message: str


@dataclass(slots=True)
class WindowUpdated(Event):
    """The peer granted more send credit on a stream."""

    stream_id: int
    delta: int


@dataclass(slots=True)
class PingAcknowledged(Event):
    """The peer answered one of our PINGs."""

    payload: bytes


@dataclass(slots=True)
class GoAwayReceived(Event):
    """The peer is going away: open no new streams on this connection."""

    last_stream_id: int
    code: int
    message: str


@dataclass(slots=True)
class ConfigReceived(Event):
    """Connector side: the edge sent the connector part of a config version (PROTOCOL.md §7a)."""

    version: int
    config: dict[str, Any]


@dataclass(slots=True)
class ConfigAcknowledged(Event):
    """Edge side: the connector applied (``ok``) or rejected a config version."""

    version: int
    ok: bool
    error: str
