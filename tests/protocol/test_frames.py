"""Frame codec (tunnel/protocol/frames.py): golden bytes both ways, payload parsers, limits.

Every wire literal below is written out by hand from PROTOCOL.md §2–§3:
``type u8 | flags u8 | stream id u32 | length u32 | payload``.
"""

from __future__ import annotations

import pytest

from tunnel.errors import FrameSizeError, ProtocolError
from tunnel.protocol import frames as F
from tunnel.protocol.frames import ErrorCode, Flags, Frame, FrameType

HELLO_JSON = (b'{"connector_id":"c1","versions":[1],"token":"tok","settings":'
              b'{"initial_window":65536,"max_frame_size":16384,"max_streams":8}}')
WELCOME_JSON = (b'{"tunnel":"web","hostnames":["web.localhost"],"version":1,"settings":'
                b'{"initial_window":65536,"max_frame_size":16384,"max_streams":8}}')
REFUSE_JSON = b'{"code":"unauthorized","message":"unknown token"}'
REQUEST_JSON = b'["GET","/x?y=1",[["host","web.localhost"]],false,null]'
REQUEST_END_JSON = b'["POST","/",[],false,"api"]'
RESPONSE_JSON = b'[200,"OK",[["content-length","5"]]]'
RESPONSE_END_JSON = b'[204,"No Content",[]]'
CONFIG_JSON = b'{"version":3,"config":{"ingress":[]}}'
CONFIG_ACK_JSON = b'{"version":3,"ok":false,"error":"bad"}'

#: name -> (wire bytes, decoded frame)
GOLDEN: dict[str, tuple[bytes, Frame]] = {
    "HELLO": (bytes.fromhex("00 00 00000000 0000007d") + HELLO_JSON,
              Frame(FrameType.HELLO, 0, 0, HELLO_JSON)),
    "WELCOME": (bytes.fromhex("01 00 00000000 00000085") + WELCOME_JSON,
                Frame(FrameType.WELCOME, 0, 0, WELCOME_JSON)),
    "REFUSE": (bytes.fromhex("02 00 00000000 00000031") + REFUSE_JSON,
               Frame(FrameType.REFUSE, 0, 0, REFUSE_JSON)),
    "HEADERS request": (bytes.fromhex("03 00 00000001 00000036") + REQUEST_JSON,
                        Frame(FrameType.HEADERS, 0, 1, REQUEST_JSON)),
    "HEADERS request END_STREAM": (bytes.fromhex("03 01 00000003 0000001b") + REQUEST_END_JSON,
                                   Frame(FrameType.HEADERS, Flags.END_STREAM, 3, REQUEST_END_JSON)),
    "HEADERS response": (bytes.fromhex("03 00 00000001 00000023") + RESPONSE_JSON,
                         Frame(FrameType.HEADERS, 0, 1, RESPONSE_JSON)),
    "HEADERS response END_STREAM": (bytes.fromhex("03 01 00000003 00000015") + RESPONSE_END_JSON,
                                    Frame(FrameType.HEADERS, Flags.END_STREAM, 3, RESPONSE_END_JSON)),
    "DATA": (bytes.fromhex("04 00 00000001 00000005 68656c6c6f"),
             Frame(FrameType.DATA, 0, 1, b"hello")),
    "DATA END_STREAM": (bytes.fromhex("04 01 00000001 00000003 6f6b21"),
                        Frame(FrameType.DATA, Flags.END_STREAM, 1, b"ok!")),
    "DATA empty END_STREAM": (bytes.fromhex("04 01 00000005 00000000"),
                              Frame(FrameType.DATA, Flags.END_STREAM, 5, b"")),
    "WINDOW_UPDATE": (bytes.fromhex("05 00 00000001 00000004 00040000"),
                      Frame(FrameType.WINDOW_UPDATE, 0, 1, b"\x00\x04\x00\x00")),
    "RST_STREAM with message": (bytes.fromhex("06 00 00000003 0000000f 00000004 636c69656e7420676f6e65"),
                                Frame(FrameType.RST_STREAM, 0, 3, b"\x00\x00\x00\x04client gone")),
    "PING": (bytes.fromhex("07 00 00000000 00000008 0102030405060708"),
             Frame(FrameType.PING, 0, 0, bytes(range(1, 9)))),
    "PING ACK": (bytes.fromhex("07 01 00000000 00000008 0102030405060708"),
                 Frame(FrameType.PING, Flags.ACK, 0, bytes(range(1, 9)))),
    "GOAWAY": (bytes.fromhex("08 00 00000000 0000000b 00000005 0000000b 627965"),
               Frame(FrameType.GOAWAY, 0, 0, b"\x00\x00\x00\x05\x00\x00\x00\x0bbye")),
    "CONFIG": (bytes.fromhex("09 00 00000000 00000025") + CONFIG_JSON,
               Frame(FrameType.CONFIG, 0, 0, CONFIG_JSON)),
    "CONFIG_ACK": (bytes.fromhex("0a 00 00000000 00000026") + CONFIG_ACK_JSON,
                   Frame(FrameType.CONFIG_ACK, 0, 0, CONFIG_ACK_JSON)),
}


@pytest.mark.parametrize("name", GOLDEN)
def test_encode_golden(name):
    wire, frame = GOLDEN[name]
    assert F.encode(frame.type, frame.flags, frame.stream_id, frame.payload) == wire
    assert F.encode_header(frame.type, frame.flags, frame.stream_id, len(frame.payload)) == wire[:10]


@pytest.mark.parametrize("name", GOLDEN)
def test_decode_golden(name):
    wire, frame = GOLDEN[name]
    [decoded] = F.decode(wire)
    assert decoded == frame
    assert type(decoded.payload) is bytes  # not a memoryview into the message


def test_every_frame_type_has_a_golden():
    assert {frame.type for _, frame in GOLDEN.values()} == set(FrameType)


def test_one_message_carries_several_frames_in_order():
    names = ["HEADERS response", "DATA", "DATA END_STREAM", "PING ACK", "GOAWAY"]
    message = b"".join(GOLDEN[name][0] for name in names)
    assert F.decode(message) == [GOLDEN[name][1] for name in names]


def test_empty_message_holds_no_frames():
    assert F.decode(b"") == []


def test_payload_parsers_on_goldens():
    assert F.parse_u32(GOLDEN["WINDOW_UPDATE"][1]) == 262144
    assert F.parse_reset(GOLDEN["RST_STREAM with message"][1]) == (ErrorCode.CANCEL, "client gone")
    assert F.parse_goaway(GOLDEN["GOAWAY"][1]) == (5, ErrorCode.SHUTDOWN, "bye")


def test_reset_without_message_and_invalid_utf8_message():
    assert F.parse_reset(Frame(FrameType.RST_STREAM, 0, 1, bytes.fromhex("00000009"))) == (9, "")
    assert F.parse_reset(Frame(FrameType.RST_STREAM, 0, 1, bytes.fromhex("00000002 ff"))) == (2, "\ufffd")


@pytest.mark.parametrize("payload", ["", "00", "000000", "0000000001"])
def test_window_update_payload_must_be_four_bytes(payload):
    with pytest.raises(ProtocolError, match="must be 4 bytes"):
        F.parse_u32(Frame(FrameType.WINDOW_UPDATE, 0, 1, bytes.fromhex(payload)))


@pytest.mark.parametrize("payload, ok", [("00000000", False), ("00000001", True), ("7fffffff", True),
                                         ("80000000", False), ("ffffffff", False)])
def test_window_increment_range(payload, ok):
    frame = Frame(FrameType.WINDOW_UPDATE, 0, 1, bytes.fromhex(payload))
    if ok:
        assert F.parse_u32(frame) == int(payload, 16)
    else:
        with pytest.raises(ProtocolError, match="out of range"):
            F.parse_u32(frame)


def test_short_reset_and_goaway_payloads():
    with pytest.raises(ProtocolError, match="4-byte code"):
        F.parse_reset(Frame(FrameType.RST_STREAM, 0, 1, b"\0\0\0"))
    with pytest.raises(ProtocolError, match="last stream id and code"):
        F.parse_goaway(Frame(FrameType.GOAWAY, 0, 0, b"\0" * 7))


def test_error_code_of_unknown_value_is_the_integer():
    assert F.ErrorCode.of(9) is ErrorCode.ORIGIN_RESET
    assert F.ErrorCode.of(4242) == 4242 and not isinstance(F.ErrorCode.of(4242), ErrorCode)


# ---------------------------------------------------------------- malformed messages


@pytest.mark.parametrize("wire, match", [
    ("07 00 000000", "truncated frame header \\(5 bytes\\)"),
    ("07 00 00000000 00000008 01020304", "PING frame declares 8 bytes, 4 remain"),
    ("04 00 00000001 00000005 68656c6c6f 05", "truncated frame header \\(1 bytes\\)"),
    ("0f 00 00000000 00000000", "unknown frame type 0x0f"),
    ("ff 00 00000000 00000000", "unknown frame type 0xff"),
    ("04 00 00000000 00000000", "DATA frame on stream 0"),
    ("03 00 00000000 00000002 5b5d", "HEADERS frame on stream 0"),
    ("05 00 00000000 00000004 00000001", "WINDOW_UPDATE frame on stream 0"),
    ("06 00 00000000 00000004 00000000", "RST_STREAM frame on stream 0"),
    ("07 00 00000001 00000008 0102030405060708", "PING frame on stream 1"),
    ("08 00 00000003 00000008 0000000000000000", "GOAWAY frame on stream 3"),
    ("00 00 00000001 00000002 7b7d", "HELLO frame on stream 1"),
])
def test_malformed_message_is_a_protocol_error(wire, match):
    with pytest.raises(ProtocolError, match=match) as info:
        F.decode(bytes.fromhex(wire))
    assert type(info.value) is ProtocolError and info.value.code == ErrorCode.PROTOCOL_ERROR


def test_malformed_frame_after_good_ones_still_fails_the_message():
    with pytest.raises(ProtocolError, match="unknown frame type"):
        F.decode(GOLDEN["PING"][0] + bytes.fromhex("0b 00 00000000 00000000"))


@pytest.mark.parametrize("ftype", [t for t in FrameType if t != FrameType.DATA])
def test_control_frame_over_256_kib_is_a_frame_size_error_whatever_max_frame_size(ftype):
    stream = 1 if ftype in (FrameType.HEADERS, FrameType.WINDOW_UPDATE, FrameType.RST_STREAM) else 0
    header = F.encode_header(ftype, 0, stream, 256 * 1024 + 1)
    # The payload is absent: were it read before the size check, this would be "truncated".
    with pytest.raises(FrameSizeError, match=f"{ftype.name} frame of 262145 bytes exceeds the limit of 262144") as info:
        F.decode(header, max_frame_size=F.ABSOLUTE_MAX_FRAME)
    assert info.value.code == ErrorCode.FRAME_SIZE_ERROR


def test_control_frame_of_exactly_256_kib_is_accepted():
    payload = b"[" + b" " * (256 * 1024 - 2) + b"]"
    [frame] = F.decode(F.encode(FrameType.HEADERS, 0, 1, payload), max_frame_size=1024)
    assert len(frame.payload) == 256 * 1024


def test_data_over_negotiated_limit_is_a_frame_size_error_before_its_payload_is_read():
    header = bytes.fromhex("04 00 00000001 ffffffff")  # declares 4 GiB, carries nothing
    with pytest.raises(FrameSizeError, match="DATA frame of 4294967295 bytes exceeds the limit of 1024"):
        F.decode(header, max_frame_size=1024)
    with pytest.raises(FrameSizeError, match="DATA frame of 1025 bytes exceeds the limit of 1024"):
        F.decode(bytes.fromhex("04 00 00000001 00000401"), max_frame_size=1024)


def test_data_of_exactly_the_negotiated_limit_is_accepted():
    [frame] = F.decode(F.encode(FrameType.DATA, 0, 1, b"x" * 1024), max_frame_size=1024)
    assert frame == Frame(FrameType.DATA, 0, 1, b"x" * 1024)


def test_flag_values():
    assert int(Flags.END_STREAM) == 1 and int(Flags.ACK) == 1
    assert [int(t) for t in FrameType] == list(range(11))
    assert [int(c) for c in ErrorCode] == list(range(12))
