"""Work a peer can cause without sending data is bounded (PROTOCOL.md §4.3, §7b).

Each case states the bound and shows that the core stops at it: the flood is refused with a
protocol error once the limit is reached, and the frames after that point are never decoded
(a malformed frame placed after the limit would raise a different error if they were).
"""

from __future__ import annotations

import pytest

from tunnel.errors import ProtocolError
from tunnel.protocol import frames as F
from tunnel.protocol.connection import (CONTROL_BURST, MAX_FRAMES_PER_MESSAGE, MAX_HELLO_MESSAGE, PING_BURST,
                                        PING_RATE, Connection, Role, State)
from tunnel.protocol.frames import FrameType
from tunnel.protocol.messages import RequestHead

PING = F.encode(FrameType.PING, 0, 0, b"\x01" * 8)
GARBAGE = bytes.fromhex("0f 00 00000000 00000000")  # an unknown frame type: a different error


def test_ping_flood_is_closed_at_its_limit_and_decoding_stops_there(link):
    with pytest.raises(ProtocolError, match="PING frames faster than this side accepts") as info:
        link.edge.receive(PING * 100_000 + GARBAGE, now=1.0)
    assert info.value.code == F.ErrorCode.PROTOCOL_ERROR
    assert link.edge.state is State.CLOSED
    queued = F.decode(link.edge.data_to_send())
    assert [f.type for f in queued].count(FrameType.PING) == PING_BURST  # the answers it gave first
    assert queued[-1].type == FrameType.GOAWAY


def test_pings_within_the_rate_are_answered(link):
    for second in range(10):  # a steady PING_RATE per second never trips the limit
        link.edge.receive(PING * int(PING_RATE), now=100.0 + second)
    assert link.edge.state is State.OPEN
    assert [f.type for f in link.queued(link.edge)].count(FrameType.PING) == 10 * int(PING_RATE)


def test_the_burst_is_all_a_peer_gets_at_once(link):
    link.edge.receive(PING * int(PING_BURST), now=5.0)
    with pytest.raises(ProtocolError, match="PING"):
        link.edge.receive(PING, now=5.0)


def test_the_bucket_refills_after_a_pause(link):
    link.edge.receive(PING * int(PING_BURST), now=5.0)
    link.edge.receive(PING * int(PING_RATE), now=6.0)  # one second later: PING_RATE more
    assert link.edge.state is State.OPEN


def test_without_a_clock_nothing_is_rate_limited(link):
    link.edge.receive(PING * 1000)
    assert link.edge.state is State.OPEN


def test_window_update_flood_is_closed(link):
    sid = link.edge.open_stream(RequestHead("GET", "/", []))
    link.to_connector()
    update = F.encode(FrameType.WINDOW_UPDATE, 0, sid, (1).to_bytes(4, "big"))
    link.edge.receive(update * 10_000, now=1.0)
    with pytest.raises(ProtocolError, match="WINDOW_UPDATE frames faster"):
        link.edge.receive(update * 15_000 + GARBAGE, now=1.0)
    assert link.edge.state is State.CLOSED


def test_frames_for_streams_already_gone_are_charged(link):
    sid = link.edge.open_stream(RequestHead("GET", "/", []))
    link.edge.reset_stream(sid)
    late = F.encode(FrameType.RST_STREAM, 0, sid, (4).to_bytes(4, "big"))
    with pytest.raises(ProtocolError, match="RST_STREAM frames faster"):
        for _ in range(3):
            link.edge.receive(late * 10_000, now=1.0)


def test_empty_data_frames_are_charged(link):
    sid = link.edge.open_stream(RequestHead("POST", "/", []))
    link.to_connector()
    empty = F.encode(FrameType.DATA, 0, sid, b"")
    with pytest.raises(ProtocolError, match="empty DATA frames faster"):
        for _ in range(3):
            link.connector.receive(empty * 10_000, now=1.0)
    assert CONTROL_BURST < 30_000


def test_a_message_holds_at_most_so_many_frames(link):
    sid = link.edge.open_stream(RequestHead("POST", "/", []))
    link.to_connector()
    one_byte = F.encode(FrameType.DATA, 0, sid, b"x")  # data, so not charged as control
    with pytest.raises(ProtocolError, match=f"more than {MAX_FRAMES_PER_MESSAGE} frames in one message"):
        link.connector.receive(one_byte * (MAX_FRAMES_PER_MESSAGE + 1) + GARBAGE, now=1.0)


def test_before_hello_a_large_message_is_refused_without_decoding_it():
    edge = Connection(Role.EDGE)
    with pytest.raises(ProtocolError, match="before the handshake"):
        edge.receive(PING * (MAX_HELLO_MESSAGE // len(PING) + 1), now=1.0)
    [refuse] = F.decode(edge.data_to_send())
    assert refuse.type == FrameType.REFUSE and edge.state is State.CLOSED


def test_before_hello_only_the_first_frame_is_looked_at():
    edge = Connection(Role.EDGE)
    with pytest.raises(ProtocolError, match="expected HELLO, got PING"):
        edge.receive(PING * 1000 + GARBAGE, now=1.0)
