"""Malformed and hostile input to ``Connection.receive`` (PROTOCOL.md §2, §5, §6).

Every violation raises ProtocolError (or FrameSizeError) carrying the GOAWAY code, closes the
connection, and leaves a GOAWAY with that code and message queued (a REFUSE
``protocol-error`` while the edge is still in its handshake).
"""

from __future__ import annotations

import json

import pytest

from tunnel.errors import FrameSizeError, ProtocolError
from tunnel.protocol import frames as F
from tunnel.protocol.connection import Connection, Role, Settings, State
from tunnel.protocol.frames import ErrorCode, Flags, FrameType
from tunnel.protocol.events import StreamReset
from tunnel.protocol.messages import RequestHead, ResponseHead

SMALL = Settings(initial_window=4096, max_frame_size=1024, max_streams=4)
GET = RequestHead("GET", "/", [])

PROTOCOL, FLOW, SIZE, REFUSED = (ErrorCode.PROTOCOL_ERROR, ErrorCode.FLOW_CONTROL_ERROR,
                                 ErrorCode.FRAME_SIZE_ERROR, ErrorCode.REFUSED_STREAM)


def frame(ftype: int, stream: int, payload: bytes = b"", flags: int = 0) -> bytes:
    return F.encode(ftype, flags, stream, payload)


def head(payload: str | bytes, stream: int = 1, flags: int = 0) -> bytes:
    return frame(FrameType.HEADERS, stream, payload if isinstance(payload, bytes) else payload.encode(), flags)


def u32(value: int) -> bytes:
    return value.to_bytes(4, "big")


def reject(conn: Connection, wire: bytes, code: int, match: str, error: type = ProtocolError) -> ProtocolError:
    """Feed ``wire``; check the exact error, the queued GOAWAY and the closed connection."""
    with pytest.raises(ProtocolError, match=match) as info:
        conn.receive(wire)
    exc = info.value
    assert type(exc) is error and exc.code == code
    queued = F.decode(conn.data_to_send())
    assert queued[-1].type == FrameType.GOAWAY
    _last, goaway_code, message = F.parse_goaway(queued[-1])
    assert (goaway_code, message) == (code, str(exc))
    assert conn.state is State.CLOSED and conn.streams == {}
    assert conn.receive(frame(FrameType.PING, 0, b"\0" * 8)) == []  # closed: nothing more
    return exc


# ---------------------------------------------------------------- setups


def open_pair(link_cls, edge_settings=None, connector_settings=None):
    link = link_cls(edge_settings, connector_settings)
    link.handshake()
    return link


def connector_open(link_cls):
    """A connector just after the handshake, no streams."""
    return open_pair(link_cls).connector


def connector_stream(link_cls):
    """A connector with stream 1 open both ways."""
    link = open_pair(link_cls, None, SMALL)
    link.edge.open_stream(GET)
    link.to_connector()
    return link.connector


def connector_stream_ended(link_cls):
    """A connector whose stream 1 request ended with its HEADERS."""
    link = open_pair(link_cls)
    link.edge.open_stream(GET, end_stream=True)
    link.to_connector()
    return link.connector


def edge_stream(link_cls):
    """An edge with stream 1 open, no response head yet."""
    link = open_pair(link_cls, SMALL, None)
    link.edge.open_stream(GET)
    link.edge.data_to_send()
    return link.edge


def edge_answered(link_cls):
    """An edge with stream 1 answered by a response head (body still coming)."""
    link = open_pair(link_cls, SMALL, None)
    link.edge.open_stream(GET)
    link.to_connector()
    link.connector.send_response(1, ResponseHead(200, "OK"))
    link.to_edge()
    return link.edge


def edge_answered_ended(link_cls):
    """An edge whose stream 1 response ended with its head; the request side is still open."""
    link = open_pair(link_cls)
    link.edge.open_stream(GET)
    link.to_connector()
    link.connector.send_response(1, ResponseHead(204, "No Content"), end_stream=True)
    link.to_edge()
    assert 1 in link.edge.streams
    return link.edge


SETUPS = {f.__name__: f for f in (connector_open, connector_stream, connector_stream_ended, edge_stream,
                                  edge_answered, edge_answered_ended)}

BOTH_OPEN = ["connector_stream", "edge_answered"]

CASES = [
    # -- framing (§2) -- on either role
    *[(s, "truncated header", "07 00 000000", PROTOCOL, r"truncated frame header \(5 bytes\)") for s in BOTH_OPEN],
    *[(s, "truncated payload", "07 00 00000000 00000008 01020304", PROTOCOL, "PING frame declares 8 bytes, 4 remain")
      for s in BOTH_OPEN],
    *[(s, "unknown type", "0f 00 00000000 00000000", PROTOCOL, "unknown frame type 0x0f") for s in BOTH_OPEN],
    *[(s, "DATA on stream 0", "04 00 00000000 00000001 00", PROTOCOL, "DATA frame on stream 0") for s in BOTH_OPEN],
    *[(s, "WINDOW_UPDATE on stream 0", "05 00 00000000 00000004 00000001", PROTOCOL,
       "WINDOW_UPDATE frame on stream 0") for s in BOTH_OPEN],
    *[(s, "RST_STREAM on stream 0", "06 00 00000000 00000004 00000000", PROTOCOL,
       "RST_STREAM frame on stream 0") for s in BOTH_OPEN],
    *[(s, "PING on a stream", "07 00 00000001 00000008 0000000000000000", PROTOCOL, "PING frame on stream 1")
      for s in BOTH_OPEN],
    *[(s, "GOAWAY on a stream", "08 00 00000001 00000008 0000000000000000", PROTOCOL, "GOAWAY frame on stream 1")
      for s in BOTH_OPEN],
    *[(s, "PING of 7 bytes", "07 00 00000000 00000007 00000000000000", PROTOCOL, "PING payload must be 8 bytes")
      for s in BOTH_OPEN],
    *[(s, "RST_STREAM of 3 bytes", "06 00 00000001 00000003 000000", PROTOCOL, "4-byte code") for s in BOTH_OPEN],
    *[(s, "GOAWAY of 4 bytes", "08 00 00000000 00000004 00000000", PROTOCOL, "last stream id and code")
      for s in BOTH_OPEN],
    *[(s, "HELLO once open", '00 00 00000000 00000002 7b7d', PROTOCOL, "unexpected HELLO frame on an open connection")
      for s in BOTH_OPEN],
    *[(s, "WELCOME once open", '01 00 00000000 00000002 7b7d', PROTOCOL, "unexpected WELCOME frame")
      for s in BOTH_OPEN],
    *[(s, "REFUSE once open", '02 00 00000000 00000002 7b7d', PROTOCOL, "unexpected REFUSE frame")
      for s in BOTH_OPEN],
    # -- credit (§5.3)
    *[(s, "window increment 0", "05 00 00000001 00000004 00000000", PROTOCOL, "window increment 0 out of range")
      for s in BOTH_OPEN],
    *[(s, "window increment 2^31", "05 00 00000001 00000004 80000000", PROTOCOL,
       "window increment 2147483648 out of range") for s in BOTH_OPEN],
    *[(s, "window overflow", "05 00 00000001 00000004 7fffffff", FLOW, "send window overflow") for s in BOTH_OPEN],
    ("connector_stream", "window overflow in two steps",
     "05 00 00000001 00000004 40000000 05 00 00000001 00000004 40000000", FLOW, "send window overflow"),
    ("connector_stream", "data beyond credit", ("04 00 00000001 00000400" + "00" * 1024) * 5, FLOW,
     "stream 1 sent 1024 bytes with 0 of credit"),
    ("edge_answered", "data beyond credit in one frame", "04 00 00000001 00000400" + "00" * 1024 + "04 00 00000001 00000400"
     + "00" * 1024 + "04 00 00000001 00000400" + "00" * 1024 + "04 00 00000001 00000400" + "00" * 1024
     + "04 00 00000001 00000001 00", FLOW, "stream 1 sent 1 bytes with 0 of credit"),
    # -- heads (§5.1)
    ("connector_open", "request head not JSON", head("[not json").hex(), PROTOCOL, "request head is not valid JSON"),
    ("connector_open", "request head too deep", head("[" * 100_000).hex(), PROTOCOL, "request head is nested too deeply"),
    ("connector_open", "request head not an array", head('{"a":1}').hex(), PROTOCOL, "5-element array"),
    ("connector_open", "CR in a header value", head(r'["GET","/",[["x","a\rb"]],false,null]').hex(), PROTOCOL,
     "bad header"),
    ("connector_open", "LF in a header name", head(r'["GET","/",[["x\ny","v"]],false,null]').hex(), PROTOCOL,
     "bad header"),
    ("connector_open", "NUL in a header value", head(r'["GET","/",[["x","a\u0000b"]],false,null]').hex(), PROTOCOL,
     "bad header"),
    ("connector_open", "CRLF in the method", head(r'["GET\r\nX: y","/",[],false,null]').hex(), PROTOCOL,
     "bad method"),
    ("connector_open", "LF in the target", head(r'["GET","/\nX",[],false,null]').hex(), PROTOCOL, "bad target"),
    ("connector_open", "TAB in a request header name", head(r'["GET","/",[["x\ty","v"]],false,null]').hex(),
     PROTOCOL, "bad header"),
    ("connector_open", "VT in a request header value", head(r'["GET","/",[["x","a\u000bb"]],false,null]').hex(),
     PROTOCOL, "bad header"),
    # -- stream states (§5.2)
    ("edge_stream", "DATA before HEADERS", "04 00 00000001 00000002 6869", PROTOCOL, "DATA before HEADERS on stream 1"),
    ("edge_answered", "second HEADERS", head("[200,\"OK\",[]]").hex(), PROTOCOL, "second HEADERS on stream 1"),
    ("connector_stream_ended", "DATA after END_STREAM", "04 00 00000001 00000002 6869", PROTOCOL,
     "DATA after END_STREAM on stream 1"),
    ("connector_stream", "DATA after END_STREAM in the same message",
     "04 01 00000001 00000001 61 04 00 00000001 00000001 62", PROTOCOL, "DATA after END_STREAM on stream 1"),
    ("edge_answered_ended", "response DATA after END_STREAM", "04 00 00000001 00000001 61", PROTOCOL,
     "DATA after END_STREAM on stream 1"),
    ("connector_open", "HEADERS opening an even stream", head('["GET","/",[],false,null]', stream=2).hex(), PROTOCOL,
     "HEADERS opening stream 2 out of order"),
    ("connector_stream", "HEADERS reusing an open stream id", head('["GET","/",[],false,null]', stream=1).hex(),
     PROTOCOL, "HEADERS opening stream 1 out of order"),
    ("connector_open", "HEADERS ids going down",
     (head('["GET","/",[],false,null]', stream=5) + head('["GET","/",[],false,null]', stream=3)).hex(), PROTOCOL,
     "HEADERS opening stream 3 out of order"),
    ("connector_open", "DATA on a never-opened stream", "04 00 00000007 00000001 61", PROTOCOL,
     "frame for stream 7, which was never opened"),
    ("connector_stream", "WINDOW_UPDATE on a never-opened stream", "05 00 00000009 00000004 00000001", PROTOCOL,
     "frame for stream 9, which was never opened"),
    ("connector_stream", "RST_STREAM on a never-opened stream", "06 00 00000003 00000004 00000004", PROTOCOL,
     "frame for stream 3, which was never opened"),
    ("edge_stream", "HEADERS for a stream the edge never opened", head("[200,\"OK\",[]]", stream=3).hex(), PROTOCOL,
     "frame for stream 3, which was never opened"),
    ("edge_stream", "DATA on an even stream", "04 00 00000002 00000001 61", PROTOCOL,
     "frame for stream 2, which was never opened"),
    ("edge_stream", "RST_STREAM on an even stream", "06 00 00000002 00000004 00000004", PROTOCOL,
     "frame for stream 2, which was never opened"),
]


@pytest.mark.parametrize("setup, name, wire, code, match", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_violation_on_an_open_connection(make_link, setup, name, wire, code, match):
    conn = SETUPS[setup](make_link)
    reject(conn, bytes.fromhex(wire), code, match)


# A response head that is wrong in itself (not its framing) fails its stream alone: RST_STREAM
# PROTOCOL_ERROR goes back, the edge answers that request 502, and the connection carries on.
RESPONSE_HEADS = [
    ("not JSON", b"\xff\xfe", "response head is not valid JSON"),
    ("not an array", '{"status":200}', "3-element array"),
    ("status out of range", '[42,"OK",[]]', "bad status"),
    ("status 600", '[600,"OK",[]]', "bad status"),
    ("interim 100 as final", '[100,"Continue",[]]', "status 100 is not a final response"),
    ("103 Early Hints as final", '[103,"Early Hints",[["link","</a>"]]]', "status 103 is not a final response"),
    ("101 to a request that asked for no upgrade", '[101,"Switching Protocols",[]]', "status 101 is not a final"),
    ("CR in a header value", r'[200,"OK",[["set-cookie","a\r\nb"]]]', "bad header"),
    ("TAB in a header name", r'[200,"OK",[["x\ty","v"]]]', "bad header"),
    ("DEL in a header name", r'[200,"OK",[["x\u007fy","v"]]]', "bad header"),
    ("VT in a header name", r'[200,"OK",[["x\u000by","v"]]]', "bad header"),
    ("space in a header name", r'[200,"OK",[["x y","v"]]]', "bad header"),
    ("VT in a header value", r'[200,"OK",[["x","a\u000bb"]]]', "bad header"),
    ("NUL in the reason", r'[200,"O\u0000K",[]]', "bad reason"),
    ("head over 64 KiB", json.dumps([200, "OK", [["x-big", "v" * 70000]]]), "exceeds 65536"),
    ("reason over 64 KiB", json.dumps([200, "x" * 70000, []]), "exceeds 65536"),
]


@pytest.mark.parametrize("name, payload, match", RESPONSE_HEADS, ids=[c[0] for c in RESPONSE_HEADS])
def test_bad_response_head_fails_only_its_stream(make_link, name, payload, match):
    link = open_pair(make_link)
    bad, good = link.edge.open_stream(GET), link.edge.open_stream(GET)
    link.to_connector()
    [event] = link.edge.receive(head(payload, stream=bad))
    assert isinstance(event, StreamReset) and (event.stream_id, event.code) == (bad, PROTOCOL)
    assert match in event.message
    [reset] = F.decode(link.edge.data_to_send())
    assert (reset.type, reset.stream_id, F.parse_reset(reset)[0]) == (FrameType.RST_STREAM, bad, PROTOCOL)
    assert link.edge.state is State.OPEN and bad not in link.edge.streams
    # what the connector still sends on it (racing the reset) is dropped; the other stream is served
    assert link.edge.receive(frame(FrameType.DATA, bad, b"late")) == []
    link.connector.send_response(good, ResponseHead(200, "OK"), end_stream=True)
    [answer] = link.edge.receive(link.connector.data_to_send())
    assert answer.stream_id == good and answer.head.status == 200


def test_101_answers_an_upgrade_request(make_link):
    link = open_pair(make_link)
    sid = link.edge.open_stream(RequestHead("GET", "/ws", [], upgrade=True))
    link.to_connector()
    link.connector.send_response(sid, ResponseHead(101, "Switching Protocols", [("upgrade", "websocket")]))
    [event] = link.edge.receive(link.connector.data_to_send())
    assert event.head.status == 101 and link.edge.state is State.OPEN


# ---------------------------------------------------------------- size limits before the payload


@pytest.mark.parametrize("setup", BOTH_OPEN + ["connector_open"])
@pytest.mark.parametrize("wire, limit", [
    ("04 00 00000001 ffffffff", None),  # declares 4 GiB, carries nothing
    ("04 00 00000001 00000401", None),  # one byte over the negotiated limit, carries nothing
    ("03 00 00000001 00040001", 262144),  # HEADERS one byte over 256 KiB
    ("07 00 00000000 00100000", 262144),  # PING declaring 1 MiB
    ("08 00 00000000 ffffffff", 262144),
])
def test_oversized_frame_is_refused_before_its_payload_is_read(make_link, setup, wire, limit):
    link = make_link(SMALL, SMALL)
    link.handshake()
    if setup != "connector_open":
        link.edge.open_stream(GET)
        link.to_connector()
        link.connector.send_response(1, ResponseHead(200, "OK"))
        link.to_edge()
    conn = link.connector if setup.startswith("connector") else link.edge
    ftype = FrameType(int(wire[:2], 16))
    declared = int(wire[-8:], 16)
    reject(conn, bytes.fromhex(wire), SIZE,
           f"{ftype.name} frame of {declared} bytes exceeds the limit of {limit or 1024}$", FrameSizeError)


def test_data_at_exactly_the_negotiated_limit_is_accepted(make_link):
    link = make_link(SMALL, SMALL)
    link.handshake()
    link.edge.open_stream(GET)
    link.to_connector()
    [event] = link.connector.receive(bytes.fromhex("04 00 00000001 00000400") + b"\xaa" * 1024)
    assert event.data == b"\xaa" * 1024 and link.connector.state is State.OPEN


def test_a_stream_over_the_limit_is_refused_alone(make_link):
    link = make_link(None, SMALL)  # the connector accepts 4 concurrent streams
    link.handshake()
    wire = b"".join(head('["GET","/",[],false,null]', stream=sid) for sid in (1, 3, 5, 7))
    assert len(link.connector.receive(wire)) == 4
    link.connector.data_to_send()
    # The fifth is answered with RST_STREAM(REFUSED_STREAM) for stream 9 only (PROTOCOL.md §5.2);
    # the connection and its four streams carry on.
    assert link.connector.receive(head('["GET","/",[],false,null]', stream=9)) == []
    reset = F.decode(link.connector.data_to_send())
    assert [(f.type, f.stream_id) for f in reset] == [(F.FrameType.RST_STREAM, 9)]
    assert F.parse_reset(reset[0]) == (REFUSED, "too many concurrent streams")
    assert sorted(link.connector.streams) == [1, 3, 5, 7]


def test_violation_after_a_drain_goaway_still_queues_its_own_goaway(link):
    link.connector.goaway(ErrorCode.NO_ERROR, "draining")
    assert F.parse_goaway(link.queued(link.connector)[0]) == (0, 0, "draining")
    reject(link.connector, bytes.fromhex("0f 00 00000000 00000000"), PROTOCOL, "unknown frame type")


def test_violation_discards_the_events_of_the_message(link):
    sid = link.edge.open_stream(GET)
    link.edge.data_to_send()
    good = head('["GET","/",[],false,null]', stream=sid)
    with pytest.raises(ProtocolError):
        link.connector.receive(good + bytes.fromhex("04 00 00000002 00000000"))
    assert link.connector.streams == {}


# ---------------------------------------------------------------- during the handshake


def hello(doc) -> bytes:
    return frame(FrameType.HELLO, 0, doc if isinstance(doc, bytes) else json.dumps(doc).encode())


def welcome(doc) -> bytes:
    return frame(FrameType.WELCOME, 0, doc if isinstance(doc, bytes) else json.dumps(doc).encode())


EDGE_HANDSHAKE = [
    ("PING first", frame(FrameType.PING, 0, b"\0" * 8), "expected HELLO, got PING"),
    ("HEADERS first", head('["GET","/",[],false,null]'), "expected HELLO, got HEADERS"),
    ("truncated", bytes.fromhex("00 00 0000"), "truncated frame header"),
    ("not JSON", hello(b"{versions"), "HELLO is not valid JSON"),
    ("too deep", hello(b"[" * 60_000), "HELLO is nested too deeply"),
    ("message over 64 KiB", hello({"versions": [1], "token": "t", "pad": "x" * 70_000}),
     "a 70[0-9]*-byte message before the handshake"),
    ("a second frame after HELLO", hello({"versions": [1], "token": "t"}) + frame(FrameType.PING, 0, b"\0" * 8),
     "expected HELLO, got PING"),
    ("not an object", hello([1]), "HELLO must be a JSON object"),
    ("versions not a list", hello({"versions": 1, "token": "t"}), "versions must be a list of integers"),
    ("versions of strings", hello({"versions": ["1"], "token": "t"}), "versions must be a list of integers"),
    ("versions of booleans", hello({"versions": [True], "token": "t"}), "versions must be a list of integers"),
    ("no token", hello({"versions": [1]}), "token must be a string"),
    ("settings not an object", hello({"versions": [1], "token": "t", "settings": [1]}), "settings must be an object"),
    ("window too small", hello({"versions": [1], "token": "t", "settings": {"initial_window": 10}}),
     r"setting initial_window=10 out of range \[1024, 2147483647\]"),
    ("frame size too large", hello({"versions": [1], "token": "t", "settings": {"max_frame_size": 1 << 30}}),
     "setting max_frame_size=1073741824 out of range"),
    ("max_streams zero", hello({"versions": [1], "token": "t", "settings": {"max_streams": 0}}),
     "setting max_streams=0 out of range"),
    ("max_streams boolean", hello({"versions": [1], "token": "t", "settings": {"max_streams": True}}),
     "setting max_streams=True out of range"),
    ("oversized HELLO", bytes.fromhex("00 00 00000000 00040001"), "HELLO frame of 262145 bytes exceeds"),
]


@pytest.mark.parametrize("name, wire, match", EDGE_HANDSHAKE, ids=[c[0] for c in EDGE_HANDSHAKE])
def test_bad_hello_is_refused_with_protocol_error(name, wire, match):
    edge = Connection(Role.EDGE)
    with pytest.raises(ProtocolError, match=match) as info:
        edge.receive(wire)
    [refuse] = F.decode(edge.data_to_send())
    assert refuse.type == FrameType.REFUSE
    assert json.loads(refuse.payload) == {"code": "protocol-error", "message": str(info.value)}
    assert edge.state is State.CLOSED and not edge.goaway_sent


CONNECTOR_HANDSHAKE = [
    ("DATA first", frame(FrameType.DATA, 1, b"x"), "expected WELCOME or REFUSE, got DATA"),
    ("HELLO back", hello({"versions": [1], "token": "t"}), "expected WELCOME or REFUSE, got HELLO"),
    ("unknown version", welcome({"version": 2}), "WELCOME chose unsupported version 2"),
    ("no version", welcome({"settings": {}}), "WELCOME chose unsupported version None"),
    ("version true", welcome({"version": True}), "WELCOME chose unsupported version True"),
    ("version 1.0", welcome({"version": 1.0}), "WELCOME chose unsupported version 1.0"),
    ("bad settings", welcome({"version": 1, "settings": {"initial_window": -1}}), "setting initial_window=-1"),
    ("WELCOME not JSON", welcome(b"\x00"), "WELCOME is not valid JSON"),
    ("REFUSE not an object", frame(FrameType.REFUSE, 0, b'"no"'), "REFUSE must be a JSON object"),
]


@pytest.mark.parametrize("name, wire, match", CONNECTOR_HANDSHAKE, ids=[c[0] for c in CONNECTOR_HANDSHAKE])
def test_bad_welcome_is_a_protocol_error(name, wire, match):
    connector = Connection(Role.CONNECTOR)
    connector.send_hello("t")
    connector.data_to_send()
    reject(connector, wire, PROTOCOL, match)


def test_end_stream_flag_on_a_frame_without_that_flag_is_ignored(link):
    """Unused flag bits carry no meaning in version 1 (e.g. END_STREAM on WINDOW_UPDATE)."""
    sid = link.edge.open_stream(GET)
    link.to_connector()
    wire = F.encode(FrameType.WINDOW_UPDATE, Flags.END_STREAM | 0x80, sid, u32(5))
    assert [e.delta for e in link.connector.receive(wire)] == [5]
    assert link.connector.state is State.OPEN
