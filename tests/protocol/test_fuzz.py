"""Hostile bytes into ``Connection.receive``: ProtocolError or events, never anything else.

Two generators: raw bytes (mostly dies in the frame header), and sequences of well-framed
frames with random types, flags, stream ids and payloads (reaches the handshake, heads, stream
states and credit). Each runs against both roles, before and after the handshake.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunnel.errors import ProtocolError
from tunnel.protocol import frames as F
from tunnel.protocol.connection import Connection, Settings, State
from tunnel.protocol.events import Event
from tunnel.protocol.messages import RequestHead

FUZZ = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SMALL = Settings(initial_window=4096, max_frame_size=1024, max_streams=4)
STAGES = ["edge before handshake", "edge open", "connector before handshake", "connector open"]


def target(make_link, stage: str) -> Connection:
    """The connection under attack, in the given stage; open ones hold a live stream 1."""
    link = make_link(SMALL, SMALL)
    if stage == "connector before handshake":
        link.connector.send_hello("tok")
        link.connector.data_to_send()
        return link.connector
    if stage == "edge before handshake":
        return link.edge
    link.handshake()
    link.edge.open_stream(RequestHead("POST", "/", []))
    link.to_connector()
    return link.edge if stage == "edge open" else link.connector


def feed(conn: Connection, messages: list[bytes]) -> None:
    """Feed messages until one fails; a failure must be a ProtocolError that leaves a
    GOAWAY or REFUSE queued and the connection closed."""
    for message in messages:
        try:
            events = conn.receive(message)
        except ProtocolError:
            queued = F.decode(conn.data_to_send())
            assert queued and queued[-1].type in (F.FrameType.GOAWAY, F.FrameType.REFUSE)
            assert conn.state is State.CLOSED
            return
        assert all(isinstance(event, Event) for event in events)
        F.decode(conn.data_to_send())  # whatever the core answers is well-framed


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 1 << 33) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(
        st.sampled_from(["versions", "token", "settings", "version", "code", "message", "initial_window",
                         "max_frame_size", "max_streams"]), inner, max_size=4),
    max_leaves=12,
)
plausible_payloads = st.one_of(
    st.binary(max_size=40),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.builds(lambda m, t, h, u, s: json.dumps([m, t, h, u, s]).encode(),
              st.sampled_from(["GET", "", "G\r\nET"]), st.sampled_from(["/", "/\n", ""]),
              st.lists(st.lists(st.text(max_size=3), min_size=2, max_size=2), max_size=2),
              st.booleans(), st.none()),
    st.builds(lambda s, r: json.dumps([s, r, []]).encode(), st.integers(0, 1000), st.sampled_from(["OK", "\0"])),
    st.builds(lambda v, w: json.dumps({"versions": v, "token": "t", "version": 1,
                                       "settings": {"initial_window": w}}).encode(),
              st.lists(st.integers(0, 3), max_size=3), st.integers(0, 1 << 32)),
    st.integers(0, 1 << 32).map(lambda n: (n % (1 << 32)).to_bytes(4, "big")),
    st.integers(0, 2000).map(lambda n: b"d" * n),
)
frames = st.builds(
    lambda t, f, s, p: F.encode(t, f, s, p),
    st.integers(0, 9), st.sampled_from([0, 1, 0xFF]), st.sampled_from([0, 1, 2, 3, 5, 7, 0xFFFFFFFF]),
    plausible_payloads,
)
framed_messages = st.lists(st.lists(frames, min_size=1, max_size=4).map(b"".join), min_size=1, max_size=4)


@pytest.mark.parametrize("stage", STAGES)
@FUZZ
@given(messages=st.lists(st.binary(max_size=64), min_size=1, max_size=3))
def test_arbitrary_bytes_raise_only_protocol_errors(make_link, stage, messages):
    feed(target(make_link, stage), messages)


@pytest.mark.parametrize("stage", STAGES)
@FUZZ
@given(messages=framed_messages)
def test_arbitrary_frames_raise_only_protocol_errors(make_link, stage, messages):
    feed(target(make_link, stage), messages)
