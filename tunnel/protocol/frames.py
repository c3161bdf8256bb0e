"""Frame codec of the tunnel protocol (PROTOCOL.md §2–§3). Pure: bytes in, frames out.

Every frame is a 10-byte header followed by its payload::

    type:u8  flags:u8  stream_id:u32  length:u32  payload[length]

One WebSocket binary message carries one or more whole frames. The declared length is checked
against the negotiated maximum *before* the payload is sliced, and a frame that does not fit in
the rest of the message is a protocol error.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator
from typing import NamedTuple

from tunnel.errors import FrameSizeError, ProtocolError

HEADER = struct.Struct("!BBII")
HEADER_SIZE = HEADER.size  # 10
U32 = struct.Struct("!I")
GOAWAY_HEAD = struct.Struct("!II")

#: Largest frame payload either side may ever declare; the negotiated limit is lower.
ABSOLUTE_MAX_FRAME = 16 * 1024 * 1024
#: Default negotiated payload limit.
DEFAULT_MAX_FRAME = 256 * 1024
#: Payloads of every frame but DATA never exceed this, whatever max_frame_size was negotiated.
MAX_CONTROL_PAYLOAD = 256 * 1024


class FrameType(enum.IntEnum):
    HELLO = 0x0
    WELCOME = 0x1
    REFUSE = 0x2
    HEADERS = 0x3
    DATA = 0x4
    WINDOW_UPDATE = 0x5
    RST_STREAM = 0x6
    PING = 0x7
    GOAWAY = 0x8
    CONFIG = 0x9  # edge → connector: the connector part of a config version
    CONFIG_ACK = 0xA  # connector → edge: applied (ACK) or rejected (NACK) a version


class Flags(enum.IntFlag):
    NONE = 0x0
    END_STREAM = 0x1  # HEADERS, DATA: the sender sends nothing more on this stream
    ACK = 0x1  # PING: this is the answer to a PING


class ErrorCode(enum.IntEnum):
    """Codes carried by RST_STREAM and GOAWAY (PROTOCOL.md §6)."""

    NO_ERROR = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2
    FLOW_CONTROL_ERROR = 3
    CANCEL = 4
    REFUSED_STREAM = 5
    ORIGIN_UNREACHABLE = 6
    ORIGIN_TIMEOUT = 7
    FRAME_SIZE_ERROR = 8
    ORIGIN_RESET = 9
    SERVICE_NOT_ALLOWED = 10
    SHUTDOWN = 11

    @classmethod
    def of(cls, value: int) -> "ErrorCode | int":
        """Return the named code, or the raw integer for a code this version does not know."""
        try:
            return cls(value)
        except ValueError:
            return value


_STREAM_FRAMES = frozenset({FrameType.HEADERS, FrameType.DATA, FrameType.WINDOW_UPDATE, FrameType.RST_STREAM})


class Frame(NamedTuple):
    type: int
    flags: int
    stream_id: int
    payload: bytes


def encode(frame_type: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """Return the wire bytes of one frame."""
    return HEADER.pack(frame_type, flags, stream_id, len(payload)) + payload


def encode_header(frame_type: int, flags: int, stream_id: int, length: int) -> bytes:
    """Return only the 10-byte header (for callers that send the payload without copying)."""
    return HEADER.pack(frame_type, flags, stream_id, length)


def iter_frames(message: bytes, max_frame_size: int = DEFAULT_MAX_FRAME) -> Iterator[Frame]:
    """Yield the frames of one WebSocket message, one at a time.

    Lazy on purpose: a receiver that finds a violation in one frame stops there, so a hostile
    message costs only the frames read before it (PROTOCOL.md §2). Raises FrameSizeError when a
    declared length exceeds ``max_frame_size`` (before its payload is touched) and ProtocolError
    when the message is truncated, a frame type is unknown, or a frame is on the wrong kind of
    stream.
    """
    view = memoryview(message)
    end = len(message)
    offset = 0
    unpack = HEADER.unpack_from
    while offset < end:
        if end - offset < HEADER_SIZE:
            raise ProtocolError(f"truncated frame header ({end - offset} bytes)")
        ftype, flags, stream_id, length = unpack(view, offset)
        offset += HEADER_SIZE
        if ftype > FrameType.CONFIG_ACK:
            raise ProtocolError(f"unknown frame type 0x{ftype:02x}")
        limit = max_frame_size if ftype == FrameType.DATA else MAX_CONTROL_PAYLOAD  # §2
        if length > limit:
            raise FrameSizeError(
                f"{FrameType(ftype).name} frame of {length} bytes exceeds the limit of {limit}"
            )
        if length > end - offset:
            raise ProtocolError(f"{FrameType(ftype).name} frame declares {length} bytes, {end - offset} remain")
        if (ftype in _STREAM_FRAMES) != (stream_id != 0):
            raise ProtocolError(f"{FrameType(ftype).name} frame on stream {stream_id}")
        yield Frame(ftype, flags, stream_id, bytes(view[offset:offset + length]))
        offset += length


def decode(message: bytes, max_frame_size: int = DEFAULT_MAX_FRAME) -> list[Frame]:
    """Every frame of one WebSocket message (see ``iter_frames``; raises as it does)."""
    return list(iter_frames(message, max_frame_size))


def parse_u32(frame: Frame) -> int:
    """Payload of WINDOW_UPDATE: a positive 31-bit increment."""
    if len(frame.payload) != 4:
        raise ProtocolError(f"{FrameType(frame.type).name} payload must be 4 bytes")
    (value,) = U32.unpack(frame.payload)
    if value == 0 or value > 0x7FFFFFFF:
        raise ProtocolError(f"window increment {value} out of range")
    return value


def parse_reset(frame: Frame) -> tuple[int, str]:
    """Payload of RST_STREAM: error code, then an optional UTF-8 message."""
    if len(frame.payload) < 4:
        raise ProtocolError("RST_STREAM payload must hold a 4-byte code")
    (code,) = U32.unpack_from(frame.payload)
    return code, frame.payload[4:].decode("utf-8", "replace")


def parse_goaway(frame: Frame) -> tuple[int, int, str]:
    """Payload of GOAWAY: last stream id, error code, optional UTF-8 message."""
    if len(frame.payload) < GOAWAY_HEAD.size:
        raise ProtocolError("GOAWAY payload must hold last stream id and code")
    last, code = GOAWAY_HEAD.unpack_from(frame.payload)
    return last, code, frame.payload[GOAWAY_HEAD.size:].decode("utf-8", "replace")
