"""The tunnel protocol state machine (PROTOCOL.md §4–§6), sans-I/O.

A ``Connection`` takes whole WebSocket messages in (``receive``), hands events out, and queues
the bytes to send (``data_to_send``). It never touches a socket, a clock or asyncio.

Everything that changes connection or stream state lives in this module: the handshake, the
stream table with its transition table below, and both directions of per-stream credit.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from tunnel.errors import HeadersTooLarge, ProtocolError
from tunnel.protocol import frames as F
from tunnel.protocol.events import (
    ConfigAcknowledged,
    ConfigReceived,
    DataReceived,
    Event,
    GoAwayReceived,
    HandshakeFailed,
    HelloReceived,
    PingAcknowledged,
    Refused,
    RequestReceived,
    ResponseReceived,
    StreamReset,
    Welcomed,
    WindowUpdated,
)
from tunnel.protocol.messages import RequestHead, ResponseHead, decode_document, encode_document

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = (1,)

DEFAULT_WINDOW = 1024 * 1024
MAX_QUEUED_FOR_PINGS = 4 * 1024 * 1024
#: The most send credit a stream holds at once, whatever the peer announces or grants (§5.3).
MAX_SEND_WINDOW = 4 * 1024 * 1024
DEFAULT_MAX_STREAMS = 1024
#: Before its HELLO is accepted, a peer's message may be this large and hold one frame (§4.3): an
#: unauthenticated client cannot make the edge decode more than that.
MAX_HELLO_MESSAGE = 64 * 1024
#: The most frames one message may carry once open (a legitimate peer batches a few per stream).
MAX_FRAMES_PER_MESSAGE = 16384
#: Frames that cost the receiver work without carrying data (PING, WINDOW_UPDATE, GOAWAY,
#: CONFIG_ACK, empty DATA, frames for streams already gone) are rate-limited per connection (§7b):
#: a token bucket of this many frames per second and this burst; PINGs have a tighter one.
CONTROL_RATE, CONTROL_BURST = 10_000.0, 20_000.0
PING_RATE, PING_BURST = 8.0, 32.0


class Role(enum.Enum):
    EDGE = "edge"  # accepts connectors, opens streams (odd ids)
    CONNECTOR = "connector"  # dials the edge, answers streams


class State(enum.Enum):
    HANDSHAKE = "handshake"
    OPEN = "open"
    CLOSED = "closed"


class StreamState(enum.Enum):
    OPEN = "open"
    HALF_CLOSED_LOCAL = "half-closed-local"  # we sent END_STREAM
    HALF_CLOSED_REMOTE = "half-closed-remote"  # the peer sent END_STREAM
    CLOSED = "closed"


# (state, transition) -> next state. RST in either direction closes from any state.
_STREAM_TRANSITIONS = {
    (StreamState.OPEN, "send_end"): StreamState.HALF_CLOSED_LOCAL,
    (StreamState.OPEN, "recv_end"): StreamState.HALF_CLOSED_REMOTE,
    (StreamState.HALF_CLOSED_LOCAL, "recv_end"): StreamState.CLOSED,
    (StreamState.HALF_CLOSED_REMOTE, "send_end"): StreamState.CLOSED,
}


@dataclass(frozen=True, slots=True)
class Settings:
    """What one side is willing to receive; exchanged in HELLO and WELCOME (PROTOCOL.md §4.1)."""

    initial_window: int = DEFAULT_WINDOW
    max_frame_size: int = F.DEFAULT_MAX_FRAME
    max_streams: int = DEFAULT_MAX_STREAMS

    def to_dict(self) -> dict[str, int]:
        return {"initial_window": self.initial_window, "max_frame_size": self.max_frame_size,
                "max_streams": self.max_streams}

    @classmethod
    def from_dict(cls, raw: Any) -> "Settings":
        if not isinstance(raw, dict):
            raise ProtocolError("settings must be an object")
        values = {}
        defaults = cls()  # with slots=True the class attributes are descriptors, not the defaults
        for name, low, high in (("initial_window", 1024, 0x7FFFFFFF),
                                ("max_frame_size", 1024, F.ABSOLUTE_MAX_FRAME),
                                ("max_streams", 1, 1 << 20)):
            value = raw.get(name, getattr(defaults, name))
            if type(value) is not int or not low <= value <= high:
                raise ProtocolError(f"setting {name}={value!r} out of range [{low}, {high}]")
            values[name] = value
        return cls(**values)


@dataclass(slots=True)
class _Stream:
    stream_id: int
    send_window: int  # credit we may use now (never above MAX_SEND_WINDOW)
    recv_window: int
    state: StreamState = StreamState.OPEN
    head_received: bool = False
    unacked: int = 0
    peer_window: int = 0  # the credit as the peer counts it (for the overflow check)
    upgrade: bool = False  # edge: the request asked for an upgrade (a 101 answer is final)

    def move(self, transition: str) -> None:
        try:
            self.state = _STREAM_TRANSITIONS[(self.state, transition)]
        except KeyError:
            raise ProtocolError(f"stream {self.stream_id}: {transition} in state {self.state.value}") from None


@dataclass(slots=True)
class _Bucket:
    """A token bucket fed by the caller's clock (the core reads none)."""

    rate: float
    burst: float
    tokens: float = -1.0
    stamp: float = 0.0

    def take(self, now: float | None) -> bool:
        """Spend one token; False when none is left. ``now`` None: no limit (no clock given)."""
        if now is None:
            return True
        if self.tokens < 0:
            self.tokens, self.stamp = self.burst, now
        elif now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


@dataclass(slots=True)
class _Outbox:
    """Queued frames; ``ends`` records where each frame ends so messages hold whole frames."""

    parts: list[bytes] = field(default_factory=list)
    ends: list[tuple[int, int]] = field(default_factory=list)  # (parts index, cumulative size)
    size: int = 0

    def add(self, *chunks: bytes) -> None:
        """Queue one frame given as one or more byte strings."""
        for chunk in chunks:
            self.parts.append(chunk)
            self.size += len(chunk)
        self.ends.append((len(self.parts), self.size))

    def take(self, limit: int | None) -> bytes:
        """Remove and return whole frames: all of them, or as few as exceed ``limit``."""
        if limit is None or self.size <= limit:
            data = b"".join(self.parts)
            self.parts, self.ends, self.size = [], [], 0
            return data
        for index, (part_end, cumulative) in enumerate(self.ends):
            if cumulative >= limit:
                break
        data = b"".join(self.parts[:part_end])
        del self.parts[:part_end]
        self.ends = [(p - part_end, c - cumulative) for p, c in self.ends[index + 1:]]
        self.size -= cumulative
        return data


class Connection:
    """One end of a tunnel connection.

    ``role`` decides who opens streams (the edge) and who answers them (the connector).
    ``settings`` is what this side is willing to receive. Methods that send queue frames; call
    ``data_to_send`` to collect them as one message. ``receive`` raises ProtocolError for any
    violation after queueing a GOAWAY that says why; the caller then sends what is queued and
    closes the WebSocket.
    """

    def __init__(self, role: Role, settings: Settings | None = None):
        self.role = role
        self.local = settings or Settings()
        self.remote = Settings()
        self.state = State.HANDSHAKE
        self.version: int | None = None
        self.streams: dict[int, _Stream] = {}
        self.goaway_received = False
        self.goaway_sent = False
        self._next_stream_id = 1
        self._highest_remote_id = 0
        self._out = _Outbox()
        self._control = _Bucket(CONTROL_RATE, CONTROL_BURST)
        self._pings = _Bucket(PING_RATE, PING_BURST)
        self._now: float | None = None

    # ------------------------------------------------------------------ output
    @property
    def outbound_size(self) -> int:
        """Bytes queued and not yet collected by ``data_to_send``."""
        return self._out.size

    def data_to_send(self, limit: int | None = None) -> bytes:
        """Return queued frames as one message body (empty when nothing is queued).

        With ``limit``, stop after the first frame that reaches it, so a message holds whole
        frames and is at most ``limit`` plus one frame long; call again for the rest.
        """
        if not self._out.parts:
            return b""
        return self._out.take(limit)

    # ------------------------------------------------------------------ handshake
    def send_hello(self, token: str, info: dict[str, Any] | None = None) -> None:
        """Connector: introduce ourselves (PROTOCOL.md §4.1)."""
        self._require_role(Role.CONNECTOR)
        doc = dict(info or {})
        doc.update(versions=list(SUPPORTED_VERSIONS), token=token, settings=self.local.to_dict())
        self._out.add(F.encode(F.FrameType.HELLO, 0, 0, encode_document(doc)))

    def accept(self, info: dict[str, Any] | None = None) -> None:
        """Edge: accept the HELLO just received; the connection is open."""
        self._require_role(Role.EDGE)
        doc = dict(info or {})
        doc.update(version=self.version, settings=self.local.to_dict())
        self._out.add(F.encode(F.FrameType.WELCOME, 0, 0, encode_document(doc)))
        self.state = State.OPEN

    def refuse(self, code: str, message: str) -> None:
        """Edge: refuse the HELLO just received; the connection is closed."""
        self._require_role(Role.EDGE)
        self._out.add(F.encode(F.FrameType.REFUSE, 0, 0, encode_document({"code": code, "message": message})))
        self.state = State.CLOSED

    # ------------------------------------------------------------------ streams (sending)
    def can_open_stream(self) -> bool:
        """Whether a new stream may be opened now (open, no GOAWAY, under the peer's limit)."""
        return (self.state is State.OPEN and not self.goaway_received and not self.goaway_sent
                and len(self.streams) < self.remote.max_streams)

    def open_stream(self, head: RequestHead, end_stream: bool = False) -> int:
        """Edge: open a stream with a request head; return its id."""
        self._require_role(Role.EDGE)
        if not self.can_open_stream():
            raise ProtocolError("cannot open a stream now", code=F.ErrorCode.REFUSED_STREAM)
        stream_id = self._next_stream_id
        self._next_stream_id += 2
        payload = head.encode()
        if len(payload) > F.MAX_CONTROL_PAYLOAD:
            raise HeadersTooLarge(f"request head of {len(payload)} bytes exceeds {F.MAX_CONTROL_PAYLOAD}")
        stream = _Stream(stream_id, min(self.remote.initial_window, MAX_SEND_WINDOW), self.local.initial_window,
                         peer_window=self.remote.initial_window, upgrade=head.upgrade)
        self.streams[stream_id] = stream
        self._send_head(stream, payload, end_stream)
        return stream_id

    def send_response(self, stream_id: int, head: ResponseHead, end_stream: bool = False) -> None:
        """Connector: answer a stream with a response head."""
        self._require_role(Role.CONNECTOR)
        stream = self.streams.get(stream_id)
        if stream is not None:
            payload = head.encode()
            if len(payload) > F.MAX_CONTROL_PAYLOAD:
                raise HeadersTooLarge(f"response head of {len(payload)} bytes exceeds {F.MAX_CONTROL_PAYLOAD}")
            self._send_head(stream, payload, end_stream)

    def send_window(self, stream_id: int) -> int:
        """Bytes that may be sent on the stream now (0 for an unknown or closed stream)."""
        stream = self.streams.get(stream_id)
        return stream.send_window if stream is not None else 0

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> int:
        """Queue as much of ``data`` as the stream's credit allows; return the bytes taken.

        END_STREAM goes out only with the last byte, so a partial send never ends the stream.
        An unknown or closed stream takes nothing (returns 0): the peer reset it.
        """
        stream = self.streams.get(stream_id)
        if stream is None or stream.state in (StreamState.HALF_CLOSED_LOCAL, StreamState.CLOSED):
            return 0
        total = len(data)
        taken = min(total, stream.send_window)
        limit = self.remote.max_frame_size
        offset = 0
        view = memoryview(data)
        while offset < taken:
            size = min(limit, taken - offset)
            last = offset + size == total
            flags = F.Flags.END_STREAM if (end_stream and last) else 0
            self._out.add(F.encode_header(F.FrameType.DATA, flags, stream_id, size),
                          bytes(view[offset:offset + size]) if size != total else data)
            offset += size
        stream.send_window -= taken
        stream.peer_window -= taken
        if end_stream and taken == total:
            if total == 0:
                self._out.add(F.encode(F.FrameType.DATA, F.Flags.END_STREAM, stream_id))
            self._local_end(stream)
        return taken

    def end_stream(self, stream_id: int) -> None:
        """Send END_STREAM with no more data."""
        self.send_data(stream_id, b"", end_stream=True)

    def reset_stream(self, stream_id: int, code: int = F.ErrorCode.CANCEL, message: str = "") -> None:
        """Abort a stream in both directions."""
        if self.streams.pop(stream_id, None) is None:
            return
        payload = F.U32.pack(int(code)) + message.encode("utf-8")[:1024]
        self._out.add(F.encode(F.FrameType.RST_STREAM, 0, stream_id, payload))

    def consumed(self, stream_id: int, size: int) -> None:
        """Report ``size`` received body bytes as passed on, so the peer may send more.

        Credit goes back in WINDOW_UPDATE frames once a quarter of the window is consumed, which
        keeps the number of control frames low (PROTOCOL.md §5.3).
        """
        stream = self.streams.get(stream_id)
        if stream is None or stream.state in (StreamState.HALF_CLOSED_REMOTE, StreamState.CLOSED):
            return
        stream.unacked += size
        if stream.unacked >= self.local.initial_window // 4:
            self._out.add(F.encode(F.FrameType.WINDOW_UPDATE, 0, stream_id, F.U32.pack(stream.unacked)))
            stream.recv_window += stream.unacked
            stream.unacked = 0

    # ------------------------------------------------------------------ connection control
    def ping(self, payload: bytes = b"\0" * 8) -> None:
        """Send a PING; the peer answers with PING+ACK (PingAcknowledged)."""
        self._out.add(F.encode(F.FrameType.PING, 0, 0, payload[:8].ljust(8, b"\0")))

    def goaway(self, code: int = F.ErrorCode.NO_ERROR, message: str = "") -> None:
        """Tell the peer to open no more streams here; open streams carry on."""
        if self.goaway_sent:
            return
        self.goaway_sent = True
        payload = F.GOAWAY_HEAD.pack(self._highest_remote_id, int(code)) + message.encode("utf-8")[:1024]
        self._out.add(F.encode(F.FrameType.GOAWAY, 0, 0, payload))

    # ------------------------------------------------------------------ config (PROTOCOL.md §7a)
    def send_config(self, version: int, config: dict[str, Any]) -> None:
        """Edge: send the connector part of config ``version``."""
        self._require_role(Role.EDGE)
        self._out.add(F.encode(F.FrameType.CONFIG, 0, 0, encode_document({"version": version, "config": config})))

    def send_config_ack(self, version: int, ok: bool, error: str = "") -> None:
        """Connector: report that ``version`` was applied (``ok``) or rejected with ``error``."""
        self._require_role(Role.CONNECTOR)
        doc = {"version": version, "ok": ok, "error": error[:1024]}
        self._out.add(F.encode(F.FrameType.CONFIG_ACK, 0, 0, encode_document(doc)))

    # ------------------------------------------------------------------ input
    def receive(self, message: bytes, now: float | None = None) -> list[Event]:
        """Feed one WebSocket message; return the events it carried.

        ``now`` (seconds, any monotonic clock) feeds the control-frame rate limits (§7b); without
        it they are not applied. Raises ProtocolError (after queueing a GOAWAY or REFUSE with its
        code) when the peer broke the protocol; the connection is then closed and must not be
        used for streams. Frames are decoded one at a time, so a violation stops the work.
        """
        if self.state is State.CLOSED:
            return []
        self._now = now
        try:
            events: list[Event] = []
            if self.state is State.HANDSHAKE and self.role is Role.EDGE and len(message) > MAX_HELLO_MESSAGE:
                raise ProtocolError(f"a {len(message)}-byte message before the handshake (at most "
                                    f"{MAX_HELLO_MESSAGE} bytes, one HELLO frame)")
            count = 0
            for frame in F.iter_frames(message, self.local.max_frame_size):
                count += 1
                if count > MAX_FRAMES_PER_MESSAGE:
                    raise ProtocolError(f"more than {MAX_FRAMES_PER_MESSAGE} frames in one message")
                self._handle(frame, events)
                if self.state is State.CLOSED:
                    break
            return events
        except ProtocolError as exc:
            self._fail(exc)
            raise

    def _spend(self, what: str, pings: bool = False) -> None:
        """Charge one work-only frame to the rate limits (§7b); over them is a protocol error."""
        if not self._control.take(self._now) or (pings and not self._pings.take(self._now)):
            raise ProtocolError(f"{what} frames faster than this side accepts (flood)")

    def _handle(self, frame: F.Frame, events: list[Event]) -> None:
        ftype = frame.type
        if self.state is State.HANDSHAKE:
            self._handle_handshake(frame, events)
            return
        if self.state is State.CLOSED:
            return
        if ftype == F.FrameType.DATA:
            self._on_data(frame, events)
        elif ftype == F.FrameType.HEADERS:
            self._on_headers(frame, events)
        elif ftype == F.FrameType.WINDOW_UPDATE:
            self._spend("WINDOW_UPDATE")
            stream = self.streams.get(frame.stream_id)
            delta = F.parse_u32(frame)
            if stream is not None:
                stream.peer_window += delta
                if stream.peer_window > 0x7FFFFFFF:
                    raise ProtocolError("send window overflow", code=F.ErrorCode.FLOW_CONTROL_ERROR)
                # Never hold more than MAX_SEND_WINDOW of credit, whatever the peer grants: a peer
                # that grants much and reads nothing would otherwise make us queue without bound.
                stream.send_window = min(stream.send_window + delta, MAX_SEND_WINDOW)
                events.append(WindowUpdated(frame.stream_id, delta))
            else:
                self._check_known(frame.stream_id)
        elif ftype == F.FrameType.RST_STREAM:
            code, text = F.parse_reset(frame)
            if self.streams.pop(frame.stream_id, None) is not None:
                events.append(StreamReset(frame.stream_id, code, text))
            else:
                self._spend("RST_STREAM")
                self._check_known(frame.stream_id)
        elif ftype == F.FrameType.PING:
            self._spend("PING", pings=True)
            if len(frame.payload) != 8:
                raise ProtocolError("PING payload must be 8 bytes")
            if frame.flags & F.Flags.ACK:
                events.append(PingAcknowledged(frame.payload))
            elif self._out.size < MAX_QUEUED_FOR_PINGS:
                # A peer that floods PINGs without reading our answers must not grow our queue
                # without bound: beyond this, PINGs go unanswered (PROTOCOL.md §7).
                self._out.add(F.encode(F.FrameType.PING, F.Flags.ACK, 0, frame.payload))
        elif ftype == F.FrameType.GOAWAY:
            self._spend("GOAWAY", pings=True)
            last, code, text = F.parse_goaway(frame)
            self.goaway_received = True
            events.append(GoAwayReceived(last, code, text))
        elif ftype == F.FrameType.CONFIG and self.role is Role.CONNECTOR:
            doc = decode_document(frame.payload, "CONFIG")
            version, config = doc.get("version"), doc.get("config")
            if type(version) is not int or version < 0 or not isinstance(config, dict):
                raise ProtocolError("CONFIG must hold an integer version and a config object")
            events.append(ConfigReceived(version, config))
        elif ftype == F.FrameType.CONFIG_ACK and self.role is Role.EDGE:
            self._spend("CONFIG_ACK", pings=True)
            doc = decode_document(frame.payload, "CONFIG_ACK")
            version, ok, error = doc.get("version"), doc.get("ok"), doc.get("error", "")
            if type(version) is not int or not isinstance(ok, bool) or not isinstance(error, str):
                raise ProtocolError("CONFIG_ACK must hold an integer version, ok and error")
            events.append(ConfigAcknowledged(version, ok, error))
        else:
            raise ProtocolError(f"unexpected {F.FrameType(ftype).name} frame on an open connection")

    def _handle_handshake(self, frame: F.Frame, events: list[Event]) -> None:
        ftype = frame.type
        if self.role is Role.EDGE:
            if ftype != F.FrameType.HELLO:
                raise ProtocolError(f"expected HELLO, got {F.FrameType(ftype).name}")
            doc = decode_document(frame.payload, "HELLO")
            versions = doc.get("versions")
            token = doc.get("token")
            if not (isinstance(versions, list) and all(type(v) is int for v in versions)):
                raise ProtocolError("HELLO: versions must be a list of integers")
            common = sorted(set(versions) & set(SUPPORTED_VERSIONS))
            if not common:
                message = (f"this edge speaks tunnel protocol version(s) {list(SUPPORTED_VERSIONS)}, "
                           f"the connector offered {versions[:8]}; install a matching connector release")
                self.refuse("unsupported-version", message)
                events.append(HandshakeFailed("unsupported-version", message))
                return
            if not isinstance(token, str):
                raise ProtocolError("HELLO: token must be a string")
            self.remote = Settings.from_dict(doc.get("settings", {}))
            self.version = common[-1]
            info = {k: v for k, v in doc.items() if k not in ("versions", "token", "settings")}
            events.append(HelloReceived(self.version, token, info))
            return
        if ftype == F.FrameType.WELCOME:
            doc = decode_document(frame.payload, "WELCOME")
            version = doc.get("version")
            if type(version) is not int or version not in SUPPORTED_VERSIONS:  # True == 1 == 1.0
                raise ProtocolError(f"WELCOME chose unsupported version {version!r}")
            self.version = doc["version"]
            self.remote = Settings.from_dict(doc.get("settings", {}))
            self.state = State.OPEN
            events.append(Welcomed(self.version, {k: v for k, v in doc.items() if k not in ("version", "settings")}))
        elif ftype == F.FrameType.REFUSE:
            doc = decode_document(frame.payload, "REFUSE")
            self.state = State.CLOSED
            events.append(Refused(str(doc.get("code", "refused")), str(doc.get("message", ""))))
        else:
            raise ProtocolError(f"expected WELCOME or REFUSE, got {F.FrameType(ftype).name}")

    def _on_headers(self, frame: F.Frame, events: list[Event]) -> None:
        end = bool(frame.flags & F.Flags.END_STREAM)
        sid = frame.stream_id
        if self.role is Role.CONNECTOR:
            if sid % 2 == 0 or sid <= self._highest_remote_id:
                raise ProtocolError(f"HEADERS opening stream {sid} out of order")
            self._highest_remote_id = sid
            if len(self.streams) >= self.local.max_streams:
                # Over our limit: refuse this stream alone; the edge may retry it elsewhere.
                self._out.add(F.encode(F.FrameType.RST_STREAM, 0, sid,
                                       F.U32.pack(F.ErrorCode.REFUSED_STREAM) + b"too many concurrent streams"))
                return
            head = RequestHead.decode(frame.payload)
            stream = _Stream(sid, min(self.remote.initial_window, MAX_SEND_WINDOW), self.local.initial_window,
                             head_received=True, peer_window=self.remote.initial_window)
            self.streams[sid] = stream
            if end:
                stream.move("recv_end")
            events.append(RequestReceived(sid, head, end))
            return
        stream = self.streams.get(sid)
        if stream is None:
            self._spend("HEADERS")
            self._check_known(sid)
            return
        if stream.head_received:
            raise ProtocolError(f"second HEADERS on stream {sid}")
        stream.head_received = True
        try:
            head = ResponseHead.decode(frame.payload)
            if head.status < 200 and not (head.status == 101 and stream.upgrade):
                raise ProtocolError(f"status {head.status} is not a final response to this request")
        except ProtocolError as exc:
            # The framing is intact, only this head is wrong: fail the stream alone (§5.1).
            self._stream_error(stream, f"bad response head: {exc}", events)
            return
        if end:
            self._remote_end(stream)
        events.append(ResponseReceived(sid, head, end))

    def _on_data(self, frame: F.Frame, events: list[Event]) -> None:
        sid = frame.stream_id
        stream = self.streams.get(sid)
        if stream is None:
            self._spend("DATA")
            self._check_known(sid)  # data racing a reset we sent: dropped
            return
        if not frame.payload and not frame.flags & F.Flags.END_STREAM:
            self._spend("empty DATA")
        if not stream.head_received:
            raise ProtocolError(f"DATA before HEADERS on stream {sid}")
        if stream.state in (StreamState.HALF_CLOSED_REMOTE, StreamState.CLOSED):
            raise ProtocolError(f"DATA after END_STREAM on stream {sid}")
        size = len(frame.payload)
        if size > stream.recv_window:
            raise ProtocolError(f"stream {sid} sent {size} bytes with {stream.recv_window} of credit",
                                code=F.ErrorCode.FLOW_CONTROL_ERROR)
        stream.recv_window -= size
        end = bool(frame.flags & F.Flags.END_STREAM)
        if end:
            self._remote_end(stream)
        events.append(DataReceived(sid, frame.payload, end))

    # ------------------------------------------------------------------ helpers
    def _send_head(self, stream: _Stream, payload: bytes, end_stream: bool) -> None:
        flags = F.Flags.END_STREAM if end_stream else 0
        self._out.add(F.encode(F.FrameType.HEADERS, flags, stream.stream_id, payload))
        if end_stream:
            self._local_end(stream)

    def _local_end(self, stream: _Stream) -> None:
        stream.move("send_end")
        if stream.state is StreamState.CLOSED:
            del self.streams[stream.stream_id]

    def _remote_end(self, stream: _Stream) -> None:
        stream.move("recv_end")
        if stream.state is StreamState.CLOSED:
            del self.streams[stream.stream_id]

    def _stream_error(self, stream: _Stream, message: str, events: list[Event]) -> None:
        """Reset one stream for a violation that leaves the connection in sync (PROTOCOL_ERROR)."""
        del self.streams[stream.stream_id]
        payload = F.U32.pack(F.ErrorCode.PROTOCOL_ERROR) + message.encode("utf-8")[:1024]
        self._out.add(F.encode(F.FrameType.RST_STREAM, 0, stream.stream_id, payload))
        events.append(StreamReset(stream.stream_id, F.ErrorCode.PROTOCOL_ERROR, message))

    def _check_known(self, stream_id: int) -> None:
        """A frame for a stream we do not hold: fine if it existed once, else a violation."""
        if self.role is Role.EDGE:
            known = stream_id % 2 == 1 and stream_id < self._next_stream_id
        else:
            known = stream_id % 2 == 1 and stream_id <= self._highest_remote_id
        if not known:
            raise ProtocolError(f"frame for stream {stream_id}, which was never opened")

    def _require_role(self, role: Role) -> None:
        if self.role is not role:
            raise RuntimeError(f"only the {role.value} side may do this")

    def _fail(self, exc: ProtocolError) -> None:
        if self.state is State.HANDSHAKE and self.role is Role.EDGE:
            self.refuse("protocol-error", str(exc))
        else:
            self.goaway_sent = False  # a drain GOAWAY sent earlier does not say why we close now
            self.goaway(exc.code, str(exc))
        self.state = State.CLOSED
        self.streams.clear()

    def close(self) -> list[int]:
        """Mark the connection closed (its transport is gone); return the ids of open streams."""
        self.state = State.CLOSED
        ids = list(self.streams)
        self.streams.clear()
        return ids
