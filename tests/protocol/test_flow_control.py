"""Per-stream credit (PROTOCOL.md §5.3) and message batching (§8) in the protocol core.

Both sides receive with SMALL settings: 4096-byte windows, 1024-byte DATA frames, so a quarter
window is 1024 bytes.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tunnel.protocol import frames as F
from tunnel.protocol.connection import Connection, Settings
from tunnel.protocol.events import DataReceived, WindowUpdated
from tunnel.protocol.frames import Flags, FrameType
from tunnel.protocol.messages import RequestHead, ResponseHead

POST = RequestHead("POST", "/", [])


def data_frames(frames: list[F.Frame]) -> list[tuple[int, int, int]]:
    """(stream, flags, length) of each frame, which must all be DATA."""
    assert all(f.type == FrameType.DATA for f in frames)
    return [(f.stream_id, f.flags, len(f.payload)) for f in frames]


def test_partial_send_takes_only_the_credit_and_withholds_end_stream(small_link):
    edge = small_link.edge
    sid = edge.open_stream(POST)
    edge.data_to_send()
    assert edge.send_window(sid) == 4096
    assert edge.send_data(sid, b"x" * 5000, end_stream=True) == 4096
    assert edge.send_window(sid) == 0
    assert data_frames(small_link.queued(edge)) == [(sid, 0, 1024)] * 4  # no END_STREAM
    assert edge.send_data(sid, b"x" * 904, end_stream=True) == 0
    assert edge.data_to_send() == b""
    assert sid in edge.streams  # not half-closed: the body is not finished


def test_window_update_only_after_a_quarter_window_is_consumed(small_link):
    edge, connector = small_link.edge, small_link.connector
    sid = edge.open_stream(POST)
    edge.send_data(sid, b"a" * 5000, end_stream=True)
    events = small_link.to_connector()
    assert [(type(e), len(e.data), e.end_stream) for e in events[1:]] == [(DataReceived, 1024, False)] * 4

    connector.consumed(sid, 1000)
    connector.consumed(sid, 23)
    assert connector.data_to_send() == b""  # 1023 < 4096 // 4
    connector.consumed(sid, 1)
    assert connector.data_to_send() == bytes.fromhex("05 00 00000001 00000004 00000400")
    connector.consumed(sid, 3000)
    assert connector.data_to_send() == bytes.fromhex("05 00 00000001 00000004 00000bb8")


def test_credit_returned_lets_the_rest_through_with_end_stream_on_the_last_byte(small_link):
    edge, connector = small_link.edge, small_link.connector
    sid = edge.open_stream(POST)
    body = bytes(range(256)) * 20  # 5120 bytes
    sent = edge.send_data(sid, body, end_stream=True)
    assert sent == 4096
    received = b"".join(e.data for e in small_link.to_connector()[1:])
    connector.consumed(sid, len(received))
    assert small_link.to_edge() == [WindowUpdated(sid, 4096)]
    assert edge.send_window(sid) == 4096
    assert edge.send_data(sid, body[sent:], end_stream=True) == 1024
    frames = small_link.queued(edge)
    assert data_frames(frames) == [(sid, Flags.END_STREAM, 1024)]
    events = connector.receive(F.encode(FrameType.DATA, frames[0].flags, sid, frames[0].payload))
    assert events == [DataReceived(sid, body[4096:], True)]
    assert received + events[0].data == body
    assert edge.send_window(sid) == 3072


def test_send_data_splits_at_the_peers_max_frame_size(make_link):
    link = make_link(Settings(max_frame_size=4096), Settings(initial_window=1 << 20, max_frame_size=1500))
    link.handshake()
    sid = link.edge.open_stream(POST)
    link.edge.data_to_send()
    assert link.edge.send_data(sid, b"z" * 4000, end_stream=True) == 4000
    assert data_frames(link.queued(link.edge)) == [(sid, 0, 1500), (sid, 0, 1500), (sid, Flags.END_STREAM, 1000)]


def test_end_stream_alone_needs_no_credit(small_link):
    edge = small_link.edge
    sid = edge.open_stream(POST)
    edge.send_data(sid, b"y" * 4096)
    edge.data_to_send()
    assert edge.send_window(sid) == 0
    assert edge.send_data(sid, b"", end_stream=True) == 0
    assert edge.data_to_send() == bytes.fromhex("04 01 00000001 00000000")
    assert edge.send_data(sid, b"more") == 0  # half-closed (local): nothing more


def test_no_window_update_once_the_peer_has_ended_its_side(small_link):
    sid = small_link.edge.open_stream(POST)
    small_link.edge.send_data(sid, b"q" * 2000, end_stream=True)
    small_link.to_connector()
    small_link.connector.consumed(sid, 2000)
    assert small_link.connector.data_to_send() == b""


def test_stalled_stream_does_not_stop_another(small_link):
    edge, connector = small_link.edge, small_link.connector
    stalled = edge.open_stream(RequestHead("GET", "/slow", []), end_stream=True)
    busy = edge.open_stream(RequestHead("GET", "/fast", []), end_stream=True)
    small_link.to_connector()
    for sid in (stalled, busy):
        connector.send_response(sid, ResponseHead(200, "OK"))
    body = b"b" * 50_000
    stalled_sent = busy_sent = 0
    received = {stalled: 0, busy: 0}
    done = False
    for _ in range(200):
        stalled_sent += connector.send_data(stalled, b"s" * 10_000)
        busy_sent += connector.send_data(busy, body[busy_sent:], end_stream=True)
        for event in small_link.to_edge():
            if isinstance(event, DataReceived):
                received[event.stream_id] += len(event.data)
                if event.stream_id == busy:  # the client of /fast reads; /slow's never does
                    edge.consumed(busy, len(event.data))
                    done = done or event.end_stream
        small_link.to_connector()
        if done:
            break
    assert done and received[busy] == 50_000 and busy not in edge.streams
    assert stalled_sent == received[stalled] == 4096  # exactly one window, never more
    assert connector.send_window(stalled) == 0 and stalled in edge.streams


def test_flow_control_in_the_edge_to_connector_direction_is_independent(small_link):
    edge, connector = small_link.edge, small_link.connector
    sid = edge.open_stream(POST)
    small_link.to_connector()
    connector.send_response(sid, ResponseHead(200, "OK"))
    assert connector.send_data(sid, b"r" * 4096) == 4096
    small_link.to_edge()
    assert edge.send_window(sid) == 4096  # untouched by the response body
    assert connector.send_window(sid) == 0


@settings(max_examples=60, deadline=None, database=None)
@given(st.lists(st.one_of(st.tuples(st.just("send"), st.integers(0, 9000), st.booleans()),
                          st.tuples(st.just("consume"), st.integers(0, 5000), st.just(False)),
                          st.tuples(st.just("deliver"), st.integers(0, 8000), st.just(False))),
                max_size=40))
def test_sender_never_exceeds_the_window(make_link, ops):
    """Whatever the application asks, the sender stays within credit and the receiver never
    sees a flow-control violation; END_STREAM goes out only with the last byte of the body."""
    link = make_link(Settings(initial_window=4096, max_frame_size=1024),
                     Settings(initial_window=4096, max_frame_size=1024))
    link.handshake()
    edge, connector = link.edge, link.connector
    sid = edge.open_stream(POST)
    link.to_connector()
    offered = taken = received = consumed = 0
    ended = False
    for op, size, end in ops:
        if op == "send" and not ended:
            took = edge.send_data(sid, b"d" * size, end_stream=end)
            assert 0 <= took <= size
            offered += size
            taken += took
            ended = end and took == size
        elif op == "consume":
            size = min(size, received - consumed)
            connector.consumed(sid, size)
            consumed += size
        # Deliver in whole-frame chunks, as the asyncio layer cuts messages.
        for event in link.to_connector(limit=size if op == "deliver" else None):
            assert isinstance(event, DataReceived)
            received += len(event.data)
            assert event.end_stream == (ended and received == taken)
        link.to_edge()
        assert taken - consumed <= 4096  # in flight + unconsumed never exceeds one window
        assert edge.send_window(sid) + (taken - consumed) <= 4096 or sid not in edge.streams


@settings(max_examples=60, deadline=None, database=None)
@given(sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=30),
       limits=st.lists(st.integers(-1, 6000), min_size=1, max_size=10))
def test_data_to_send_with_a_limit_cuts_only_at_frame_boundaries(make_link, sizes, limits):
    """Messages hold whole frames, stop at the first frame that reaches the limit, and
    together carry exactly what one unlimited call would have."""
    twins = []
    for _ in range(2):  # the same frames queued on both connectors
        link = make_link(Settings(initial_window=1 << 24, max_frame_size=1024), Settings(initial_window=1 << 24))
        link.handshake()
        link.edge.open_stream(POST)
        link.to_connector()
        _queue_mixed_frames(link.connector, sizes)
        twins.append(link.connector)
    cut, reference = twins
    whole = reference.data_to_send()
    assert reference.outbound_size == 0 and whole
    chunks = []
    for index in range(10_000):
        limit = limits[index % len(limits)]
        before = cut.outbound_size
        chunk = cut.data_to_send(limit)
        if not chunk:
            break
        assert cut.outbound_size == before - len(chunk)
        frames = F.decode(chunk, F.ABSOLUTE_MAX_FRAME)  # whole frames, or this raises
        lengths = [F.HEADER_SIZE + len(f.payload) for f in frames]
        assert sum(lengths) == len(chunk)
        assert len(frames) == 1 or sum(lengths[:-1]) < limit  # stops at the first frame reaching it
        assert len(chunk) >= limit or cut.outbound_size == 0  # short only when the queue ran dry
        chunks.append(chunk)
    assert b"".join(chunks) == whole
    assert cut.data_to_send() == b"" and cut.outbound_size == 0


def _queue_mixed_frames(conn: Connection, sizes: list[int]) -> None:
    """Queue a response head, DATA frames (sent as header + payload parts) and PINGs on stream 1."""
    conn.send_response(1, ResponseHead(200, "OK"))
    for n, size in enumerate(sizes):
        if size % 3 == 0:
            conn.ping(bytes([n % 256]) * 8)
        else:
            assert conn.send_data(1, bytes([n % 256]) * size) == size


def test_data_to_send_stops_at_the_frame_that_reaches_the_limit(link):
    def ping(n: int) -> bytes:
        return bytes.fromhex("07 00 00000000 00000008") + bytes([n]) * 8

    for n in range(4):
        link.edge.ping(bytes([n]) * 8)  # 18 bytes each
    assert link.edge.outbound_size == 72
    assert link.edge.data_to_send(18) == ping(0)  # ends exactly at the limit: stop there
    assert link.edge.data_to_send(19) == ping(1) + ping(2)  # the frame that crosses it is included
    assert link.edge.outbound_size == 18
    assert link.edge.data_to_send(0) == ping(3)
    assert link.edge.data_to_send(0) == b"" and link.edge.outbound_size == 0
