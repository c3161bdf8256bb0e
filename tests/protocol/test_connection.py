"""Connection state machine (tunnel/protocol/connection.py) driven as an edge↔connector pair.

Flow control lives in test_flow_control.py, malformed input in test_malformed.py.
"""

from __future__ import annotations

import pytest

from tunnel.errors import ProtocolError
from tunnel.protocol import frames as F
from tunnel.protocol.connection import Connection, Role, Settings, State
from tunnel.protocol.events import (
    DataReceived,
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
from tunnel.protocol.frames import ErrorCode, FrameType
from tunnel.protocol.messages import RequestHead, ResponseHead

GOLDEN_SETTINGS = Settings(initial_window=65536, max_frame_size=16384, max_streams=8)
SETTINGS_JSON = b'{"initial_window":65536,"max_frame_size":16384,"max_streams":8}'
GET = RequestHead("GET", "/x?y=1", [("host", "web.localhost")])


def hx(text: str) -> bytes:
    return bytes.fromhex(text)


# ---------------------------------------------------------------- golden bytes via Connection


def test_handshake_golden_bytes_both_ways():
    connector = Connection(Role.CONNECTOR, GOLDEN_SETTINGS)
    edge = Connection(Role.EDGE, GOLDEN_SETTINGS)

    connector.send_hello("tok", {"connector_id": "c1"})
    hello = hx("00 00 00000000 0000007d") + (b'{"connector_id":"c1","versions":[1],"token":"tok","settings":'
                                             + SETTINGS_JSON + b"}")
    assert connector.data_to_send() == hello
    assert edge.receive(hello) == [HelloReceived(1, "tok", {"connector_id": "c1"})]
    assert edge.remote == GOLDEN_SETTINGS and edge.state is State.HANDSHAKE

    edge.accept({"tunnel": "web", "hostnames": ["web.localhost"]})
    welcome = hx("01 00 00000000 00000085") + (b'{"tunnel":"web","hostnames":["web.localhost"],"version":1,'
                                               b'"settings":' + SETTINGS_JSON + b"}")
    assert edge.data_to_send() == welcome
    assert edge.state is State.OPEN
    assert connector.receive(welcome) == [Welcomed(1, {"tunnel": "web", "hostnames": ["web.localhost"]})]
    assert connector.state is State.OPEN and connector.version == 1 and connector.remote == GOLDEN_SETTINGS


def test_refuse_golden_bytes_both_ways(make_link):
    link = make_link()
    link.connector.send_hello("wrong")
    [hello] = link.to_edge()
    assert hello.token == "wrong"
    link.edge.refuse("unauthorized", "unknown token")
    refuse = hx("02 00 00000000 00000031") + b'{"code":"unauthorized","message":"unknown token"}'
    assert link.edge.data_to_send() == refuse
    assert link.edge.state is State.CLOSED
    assert link.connector.receive(refuse) == [Refused("unauthorized", "unknown token")]
    assert link.connector.state is State.CLOSED
    assert not link.connector.can_open_stream() and not link.edge.can_open_stream()


def test_stream_frames_golden_bytes_both_ways(make_link):
    link = make_link(GOLDEN_SETTINGS, GOLDEN_SETTINGS)
    link.handshake()
    edge, connector = link.edge, link.connector

    assert edge.open_stream(GET) == 1
    request = hx("03 00 00000001 00000036") + b'["GET","/x?y=1",[["host","web.localhost"]],false,null]'
    assert edge.data_to_send() == request
    assert connector.receive(request) == [RequestReceived(1, GET, False)]

    post = RequestHead("POST", "/", [], False, "api")
    assert edge.open_stream(post, end_stream=True) == 3
    request_end = hx("03 01 00000003 0000001b") + b'["POST","/",[],false,"api"]'
    assert edge.data_to_send() == request_end
    assert connector.receive(request_end) == [RequestReceived(3, post, True)]

    assert edge.send_data(1, b"hello") == 5
    data = hx("04 00 00000001 00000005 68656c6c6f")
    assert edge.data_to_send() == data
    assert connector.receive(data) == [DataReceived(1, b"hello", False)]

    assert edge.send_data(1, b"ok!", end_stream=True) == 3
    data_end = hx("04 01 00000001 00000003 6f6b21")
    assert edge.data_to_send() == data_end
    assert connector.receive(data_end) == [DataReceived(1, b"ok!", True)]

    ok = ResponseHead(200, "OK", [("content-length", "5")])
    connector.send_response(1, ok)
    response = hx("03 00 00000001 00000023") + b'[200,"OK",[["content-length","5"]]]'
    assert connector.data_to_send() == response
    assert edge.receive(response) == [ResponseReceived(1, ok, False)]

    no_content = ResponseHead(204, "No Content", [])
    connector.send_response(3, no_content, end_stream=True)
    response_end = hx("03 01 00000003 00000015") + b'[204,"No Content",[]]'
    assert connector.data_to_send() == response_end
    assert edge.receive(response_end) == [ResponseReceived(3, no_content, True)]
    assert 3 not in edge.streams and 3 not in connector.streams  # both directions ended

    assert edge.open_stream(GET) == 5
    edge.data_to_send()
    edge.end_stream(5)
    empty_end = hx("04 01 00000005 00000000")
    assert edge.data_to_send() == empty_end

    connector.consumed(1, 16384)  # a quarter of 65536: returned at once
    window_update = hx("05 00 00000001 00000004 00004000")
    # The request side of stream 1 has ended, so no credit is returned for it.
    assert connector.data_to_send() == b""
    edge.consumed(1, 16384)
    assert edge.data_to_send() == window_update
    assert connector.receive(window_update) == [WindowUpdated(1, 16384)]

    edge.reset_stream(1, ErrorCode.CANCEL, "client gone")
    reset = hx("06 00 00000001 0000000f 00000004 636c69656e7420676f6e65")
    assert edge.data_to_send() == reset
    assert connector.receive(reset) == [StreamReset(1, ErrorCode.CANCEL, "client gone")]


def test_ping_golden_bytes_and_automatic_ack(link):
    link.edge.ping(bytes(range(1, 9)))
    ping = hx("07 00 00000000 00000008 0102030405060708")
    assert link.edge.data_to_send() == ping
    assert link.connector.receive(ping) == []  # answered by the core, nothing to handle
    ack = hx("07 01 00000000 00000008 0102030405060708")
    assert link.connector.data_to_send() == ack
    assert link.edge.receive(ack) == [PingAcknowledged(bytes(range(1, 9)))]
    assert link.edge.data_to_send() == b""  # an ACK is not answered


def test_ping_from_the_connector_is_answered_by_the_edge(link):
    link.connector.ping(b"abc")  # padded to 8 bytes
    assert link.to_edge() == []
    assert link.edge.data_to_send() == hx("07 01 00000000 00000008 6162630000000000")


def test_goaway_golden_bytes_names_the_last_stream_seen(link):
    for _ in range(3):
        link.edge.open_stream(GET, end_stream=True)
    assert [type(e) for e in link.to_connector()] == [RequestReceived] * 3
    link.connector.goaway(ErrorCode.SHUTDOWN, "bye")
    goaway = hx("08 00 00000000 0000000b 00000005 0000000b 627965")
    assert link.connector.data_to_send() == goaway
    assert link.edge.receive(goaway) == [GoAwayReceived(5, ErrorCode.SHUTDOWN, "bye")]
    link.connector.goaway(ErrorCode.SHUTDOWN, "again")
    assert link.connector.data_to_send() == b""  # one GOAWAY per connection


# ---------------------------------------------------------------- handshake


def test_handshake_negotiates_each_sides_settings(make_link):
    edge_settings = Settings(initial_window=8192, max_frame_size=2048, max_streams=3)
    connector_settings = Settings(initial_window=4096, max_frame_size=1024, max_streams=5)
    link = make_link(edge_settings, connector_settings)
    link.handshake()
    assert link.edge.remote == connector_settings and link.connector.remote == edge_settings
    assert link.edge.version == link.connector.version == 1
    sid = link.edge.open_stream(GET)
    assert link.edge.send_window(sid) == 4096  # the connector's initial window
    link.to_connector()
    link.connector.send_response(sid, ResponseHead(200, "OK"))
    assert link.connector.send_window(sid) == 8192  # the edge's initial window


def test_hello_without_settings_uses_the_defaults():
    edge = Connection(Role.EDGE)
    [hello] = edge.receive(F.encode(FrameType.HELLO, 0, 0, b'{"versions":[1],"token":"t"}'))
    assert hello == HelloReceived(1, "t", {})
    assert edge.remote == Settings()
    edge2 = Connection(Role.EDGE)
    edge2.receive(F.encode(FrameType.HELLO, 0, 0, b'{"versions":[1],"token":"t","settings":{"max_streams":2}}'))
    assert edge2.remote == Settings(max_streams=2)


def test_edge_picks_the_highest_common_version():
    edge = Connection(Role.EDGE)
    [hello] = edge.receive(F.encode(FrameType.HELLO, 0, 0, b'{"versions":[7,1,3],"token":"t"}'))
    assert hello.version == 1 and edge.version == 1


@pytest.mark.parametrize("offered, shown", [(b"[2,3]", "[2, 3]"), (b"[]", "[]")])
def test_unknown_version_is_refused_by_the_core(make_link, offered, shown):
    link = make_link()
    hello = F.encode(FrameType.HELLO, 0, 0, b'{"versions":' + offered + b',"token":"tok"}')
    message = (f"this edge speaks tunnel protocol version(s) [1], the connector offered {shown}; "
               "install a matching connector release")
    assert link.edge.receive(hello) == [HandshakeFailed("unsupported-version", message)]
    assert link.edge.state is State.CLOSED
    wire = link.edge.data_to_send()
    assert F.decode(wire) == [F.Frame(FrameType.REFUSE, 0, 0,
                                      b'{"code":"unsupported-version","message":"' + message.encode() + b'"}')]
    assert link.connector.receive(wire) == [Refused("unsupported-version", message)]
    assert link.connector.state is State.CLOSED
    assert link.edge.receive(F.encode(FrameType.PING, 0, 0, b"\0" * 8)) == []  # closed: ignored


def test_refusal_ignores_the_frames_that_follow_it_in_the_message():
    edge = Connection(Role.EDGE)
    hello = F.encode(FrameType.HELLO, 0, 0, b'{"versions":[9],"token":"t"}')
    events = edge.receive(hello + F.encode(FrameType.DATA, 0, 1, b"x"))
    assert [type(e) for e in events] == [HandshakeFailed]
    assert [f.type for f in F.decode(edge.data_to_send())] == [FrameType.REFUSE]


def test_edge_may_not_open_a_stream_before_accepting():
    edge = Connection(Role.EDGE)
    edge.receive(F.encode(FrameType.HELLO, 0, 0, b'{"versions":[1],"token":"t"}'))
    assert not edge.can_open_stream()
    with pytest.raises(ProtocolError) as info:
        edge.open_stream(GET)
    assert info.value.code == ErrorCode.REFUSED_STREAM


def test_role_only_methods():
    edge, connector = Connection(Role.EDGE), Connection(Role.CONNECTOR)
    with pytest.raises(RuntimeError, match="only the connector side"):
        edge.send_hello("t")
    with pytest.raises(RuntimeError, match="only the edge side"):
        connector.accept()
    with pytest.raises(RuntimeError, match="only the edge side"):
        connector.refuse("unauthorized", "no")
    with pytest.raises(RuntimeError, match="only the edge side"):
        connector.open_stream(GET)
    with pytest.raises(RuntimeError, match="only the connector side"):
        edge.send_response(1, ResponseHead(200, "OK"))


# ---------------------------------------------------------------- streams


def test_request_and_response_with_bodies(link):
    sid = link.edge.open_stream(RequestHead("POST", "/upload", [("content-length", "11")]))
    assert link.edge.send_data(sid, b"hello ") == 6
    assert link.edge.send_data(sid, b"world", end_stream=True) == 5
    assert link.to_connector() == [
        RequestReceived(sid, RequestHead("POST", "/upload", [("content-length", "11")]), False),
        DataReceived(sid, b"hello ", False),
        DataReceived(sid, b"world", True),
    ]
    link.connector.send_response(sid, ResponseHead(201, "Created", [("content-length", "4")]))
    link.connector.send_data(sid, b"done", end_stream=True)
    assert link.to_edge() == [
        ResponseReceived(sid, ResponseHead(201, "Created", [("content-length", "4")]), False),
        DataReceived(sid, b"done", True),
    ]
    assert link.edge.streams == {} and link.connector.streams == {}
    assert link.edge.data_to_send() == b"" and link.connector.data_to_send() == b""


def test_response_may_arrive_before_the_request_body_is_complete(link):
    sid = link.edge.open_stream(RequestHead("POST", "/", []))
    link.edge.send_data(sid, b"part")
    link.to_connector()
    link.connector.send_response(sid, ResponseHead(413, "Payload Too Large"), end_stream=True)
    assert link.to_edge() == [ResponseReceived(sid, ResponseHead(413, "Payload Too Large"), True)]
    assert sid in link.edge.streams  # half-closed (remote): the edge may still end its side
    assert link.edge.send_data(sid, b"rest", end_stream=True) == 4
    assert link.edge.streams == {}
    assert link.to_connector() == [DataReceived(sid, b"rest", True)]
    assert link.connector.streams == {}


def test_upgrade_stream_relays_raw_bytes_both_ways(link):
    head = RequestHead("GET", "/ws", [("upgrade", "websocket"), ("connection", "Upgrade")], upgrade=True)
    sid = link.edge.open_stream(head)
    [request] = link.to_connector()
    assert request.head.upgrade is True and request.end_stream is False
    link.connector.send_response(sid, ResponseHead(101, "Switching Protocols", [("upgrade", "websocket")]))
    link.connector.send_data(sid, b"\x81\x02hi")
    assert [type(e) for e in link.to_edge()] == [ResponseReceived, DataReceived]
    link.edge.send_data(sid, b"\x88\x02\x03\xe8", end_stream=True)  # close frame, then half-close
    assert link.to_connector() == [DataReceived(sid, b"\x88\x02\x03\xe8", True)]
    link.connector.end_stream(sid)
    assert link.to_edge() == [DataReceived(sid, b"", True)]
    assert link.edge.streams == {} and link.connector.streams == {}


def test_many_concurrent_streams_interleave(make_link):
    link = make_link(Settings(max_streams=64), Settings(max_streams=64))
    link.handshake()
    ids = [link.edge.open_stream(RequestHead("GET", f"/{n}", [])) for n in range(50)]
    assert ids == list(range(1, 100, 2))
    for sid in reversed(ids):  # request bodies in reverse order
        link.edge.send_data(sid, f"req-{sid}".encode(), end_stream=True)
    events = link.to_connector()
    assert [(type(e), e.stream_id) for e in events[:50]] == [(RequestReceived, sid) for sid in ids]
    assert [(e.stream_id, e.data, e.end_stream) for e in events[50:]] == [
        (sid, f"req-{sid}".encode(), True) for sid in reversed(ids)]
    # Responses interleaved: heads for all, then body chunks round-robin.
    for sid in ids:
        link.connector.send_response(sid, ResponseHead(200, "OK"))
    for chunk in range(3):
        for sid in ids:
            link.connector.send_data(sid, f"{sid}:{chunk};".encode(), end_stream=chunk == 2)
    bodies: dict[int, bytes] = {}
    ended = []
    for event in link.to_edge():
        if isinstance(event, DataReceived):
            bodies[event.stream_id] = bodies.get(event.stream_id, b"") + event.data
            if event.end_stream:
                ended.append(event.stream_id)
    assert bodies == {sid: f"{sid}:0;{sid}:1;{sid}:2;".encode() for sid in ids}
    assert ended == ids
    assert link.edge.streams == {} and link.connector.streams == {}


def test_max_streams_of_the_peer_is_respected(make_link):
    link = make_link(None, Settings(max_streams=2))
    link.handshake()
    first = link.edge.open_stream(GET, end_stream=True)
    link.edge.open_stream(GET, end_stream=True)
    assert not link.edge.can_open_stream()
    with pytest.raises(ProtocolError, match="cannot open a stream now") as info:
        link.edge.open_stream(GET)
    assert info.value.code == ErrorCode.REFUSED_STREAM
    link.to_connector()
    link.connector.send_response(first, ResponseHead(204, "No Content"), end_stream=True)
    link.to_edge()
    assert link.edge.can_open_stream()
    assert link.edge.open_stream(GET) == 5


def test_reset_by_the_edge_cancels_the_stream_at_the_connector(link):
    sid = link.edge.open_stream(GET)
    link.to_connector()
    link.edge.reset_stream(sid, ErrorCode.CANCEL, "client gone")
    assert sid not in link.edge.streams
    assert link.to_connector() == [StreamReset(sid, ErrorCode.CANCEL, "client gone")]
    assert sid not in link.connector.streams
    # The connector's asyncio layer may still try to answer: nothing goes out.
    link.connector.send_response(sid, ResponseHead(200, "OK"))
    assert link.connector.send_data(sid, b"late") == 0
    assert link.connector.send_window(sid) == 0
    link.connector.reset_stream(sid)  # resetting a gone stream sends nothing either
    assert link.connector.data_to_send() == b""
    link.edge.reset_stream(sid)
    assert link.edge.data_to_send() == b""


def test_reset_by_the_connector_reaches_the_edge(link):
    sid = link.edge.open_stream(GET, end_stream=True)
    link.to_connector()
    link.connector.send_response(sid, ResponseHead(200, "OK"))
    link.connector.send_data(sid, b"partial")
    link.connector.reset_stream(sid, ErrorCode.ORIGIN_RESET)
    assert link.to_edge() == [
        ResponseReceived(sid, ResponseHead(200, "OK"), False),
        DataReceived(sid, b"partial", False),
        StreamReset(sid, ErrorCode.ORIGIN_RESET, ""),
    ]
    assert link.edge.streams == {} and link.connector.streams == {}


def test_reset_message_is_cut_at_1_kib(link):
    sid = link.edge.open_stream(GET)
    link.to_connector()
    link.edge.reset_stream(sid, ErrorCode.CANCEL, "x" * 5000)
    [frame] = link.queued(link.edge)
    assert frame.payload == b"\x00\x00\x00\x04" + b"x" * 1024


def test_frames_racing_a_reset_from_the_edge_are_ignored(link):
    sid = link.edge.open_stream(RequestHead("POST", "/", []))
    link.edge.send_data(sid, b"body")
    link.to_connector()
    # The connector answers while the edge's RST is in flight.
    link.edge.reset_stream(sid, ErrorCode.CANCEL)
    link.connector.send_response(sid, ResponseHead(200, "OK"))
    link.connector.send_data(sid, b"late body", end_stream=True)
    link.connector.consumed(sid, 1 << 20)  # WINDOW_UPDATE
    link.connector.reset_stream(sid, ErrorCode.ORIGIN_RESET)  # and even its own RST
    assert link.to_edge() == []
    assert link.edge.data_to_send().startswith(bytes([FrameType.RST_STREAM]))  # only our RST
    assert link.edge.state is State.OPEN
    assert link.to_connector() == []  # the connector's stream is already gone too
    assert link.connector.data_to_send() == b""


def test_frames_racing_a_reset_from_the_connector_are_ignored(link):
    sid = link.edge.open_stream(RequestHead("POST", "/", []))
    link.to_connector()
    link.connector.reset_stream(sid, ErrorCode.ORIGIN_UNREACHABLE)
    link.edge.send_data(sid, b"more body", end_stream=True)
    link.edge.ping()
    assert link.to_connector() == []  # DATA for the reset stream dropped; PING answered
    assert [f.type for f in link.queued(link.connector)] == [FrameType.RST_STREAM, FrameType.PING]
    assert link.connector.state is State.OPEN


def test_frames_for_a_stream_closed_normally_are_ignored(link):
    sid = link.edge.open_stream(GET, end_stream=True)
    link.to_connector()
    link.connector.send_response(sid, ResponseHead(204, "No Content"), end_stream=True)
    link.to_edge()
    assert link.edge.streams == {} and link.connector.streams == {}
    late = F.encode(FrameType.WINDOW_UPDATE, 0, sid, F.U32.pack(10)) + F.encode(FrameType.RST_STREAM, 0, sid, F.U32.pack(4))
    assert link.edge.receive(late) == []
    assert link.connector.receive(late) == []


def test_goaway_blocks_new_streams_but_open_ones_carry_on(link):
    sid = link.edge.open_stream(GET, end_stream=True)
    link.to_connector()
    assert link.edge.can_open_stream()
    link.connector.goaway(ErrorCode.NO_ERROR, "draining")
    assert link.to_edge() == [GoAwayReceived(sid, ErrorCode.NO_ERROR, "draining")]
    assert link.edge.goaway_received and not link.edge.can_open_stream()
    with pytest.raises(ProtocolError) as info:
        link.edge.open_stream(GET)
    assert info.value.code == ErrorCode.REFUSED_STREAM
    assert link.edge.data_to_send() == b""
    link.connector.send_response(sid, ResponseHead(200, "OK"))
    link.connector.send_data(sid, b"still here", end_stream=True)
    assert [type(e) for e in link.to_edge()] == [ResponseReceived, DataReceived]
    assert link.edge.streams == {}


def test_goaway_sent_by_the_edge_blocks_its_own_new_streams(link):
    link.edge.goaway(ErrorCode.SHUTDOWN, "edge shutting down; reconnect")
    assert not link.edge.can_open_stream()
    assert link.to_connector() == [GoAwayReceived(0, ErrorCode.SHUTDOWN, "edge shutting down; reconnect")]


def test_close_returns_the_open_streams(link):
    a = link.edge.open_stream(GET)
    b = link.edge.open_stream(GET)
    assert link.edge.close() == [a, b]
    assert link.edge.state is State.CLOSED and not link.edge.can_open_stream()
    assert link.edge.receive(F.encode(FrameType.PING, 0, 0, b"\0" * 8)) == []


def test_config_versions_travel_to_the_connector_and_acks_come_back(link):
    from tunnel.protocol.events import ConfigAcknowledged, ConfigReceived
    link.edge.send_config(7, {"ingress": [{"service": "http://127.0.0.1:1"}]})
    assert link.to_connector() == [ConfigReceived(7, {"ingress": [{"service": "http://127.0.0.1:1"}]})]
    link.connector.send_config_ack(7, False, "bad rule")
    assert link.to_edge() == [ConfigAcknowledged(7, False, "bad rule")]


@pytest.mark.parametrize("payload", [b'{"version":"7","config":{}}', b'{"version":7,"config":[]}', b"[1]",
                                     b'{"version":-1,"config":{}}'])
def test_malformed_config_is_a_protocol_error(link, payload):
    from tunnel.errors import ProtocolError
    from tunnel.protocol import frames as F
    with pytest.raises(ProtocolError):
        link.connector.receive(F.encode(F.FrameType.CONFIG, 0, 0, payload))


def test_config_frames_only_flow_one_way(link):
    from tunnel.errors import ProtocolError
    from tunnel.protocol import frames as F
    with pytest.raises(ProtocolError):
        link.edge.receive(F.encode(F.FrameType.CONFIG, 0, 0, b'{"version":1,"config":{}}'))
    with pytest.raises(ProtocolError):
        link.connector.receive(F.encode(F.FrameType.CONFIG_ACK, 0, 0, b'{"version":1,"ok":true,"error":""}'))


def test_a_ping_flood_does_not_grow_the_outbound_queue_without_bound(link):
    from tunnel.protocol import frames as F
    from tunnel.protocol.connection import MAX_QUEUED_FOR_PINGS
    ping = F.encode(F.FrameType.PING, 0, 0, b"\0" * 8)
    for _ in range(MAX_QUEUED_FOR_PINGS // 18 + 1000):
        link.connector.receive(ping)
    assert link.connector.outbound_size <= MAX_QUEUED_FOR_PINGS + 18
