"""Framing of the messages between the loader (event loop) and a shard process.

A frame is ``[u32 total][u32 header_len][header JSON, UTF-8][blob]``. The header is a JSON
object; the blob carries raw bytes (bodies, data modules) so they never go through JSON.
JSON (not pickle) on purpose: a shard runs hostile code, and a compromised shard must not be
able to make the loader execute anything by what it sends back.
"""

from __future__ import annotations

import json
import struct

_HEAD = struct.Struct(">II")
MAX_FRAME = 256 * 1024 * 1024
# built once: json.dumps/json.loads with non-default arguments build a new encoder per call
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_loads = json.JSONDecoder().decode


class ProtocolError(Exception):
    """A frame is malformed or too large."""


def encode(header: dict, blob: bytes = b"") -> bytes:
    """Encode one frame.

    Args:
        header: a JSON-serialisable dict.
        blob: raw bytes carried after the header.
    Returns:
        The frame bytes.
    """
    h = _dumps(header).encode("utf-8", "surrogatepass")
    return _HEAD.pack(4 + len(h) + len(blob), len(h)) + h + blob


def encode_hot(kind: bytes, wid: int, rid: int, seq: int, blob: bytes, extra: bytes = b"") -> bytes:
    """Encode a ``req``/``done`` frame without going through ``json``: the header is
    ``{"t":kind,"wid":wid,"rid":rid<extra>,"seq":seq}`` formatted from integers (same JSON as
    ``encode`` gives).

    Args:
        kind: ``b"req"`` or ``b"done"``. extra: further members, already JSON (``b',"n":12'``).
    """
    h = b'{"t":"%b","wid":%d,"rid":%d%b,"seq":%d}' % (kind, wid, rid, extra, seq)
    return b"".join((_HEAD.pack(4 + len(h) + len(blob), len(h)), h, blob))


class FrameBuffer:
    """Accumulates bytes and yields complete frames as ``(header, blob)`` pairs."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[dict, bytes]]:
        """Add received bytes; return every frame now complete.

        Raises:
            ProtocolError: on an oversized or malformed frame.
        """
        buf = self._buf
        buf += data
        frames: list[tuple[dict, bytes]] = []
        pos = 0
        n = len(buf)
        while n - pos >= 8:
            total, hlen = _HEAD.unpack_from(buf, pos)
            if total > MAX_FRAME or hlen > total - 4:
                raise ProtocolError(f"bad frame: total={total} header={hlen}")
            if n - pos - 4 < total:
                break
            start = pos + 8
            try:
                header = _loads(buf[start:start + hlen].decode("utf-8", "surrogatepass"))
            except ValueError as exc:
                raise ProtocolError(f"bad frame header: {exc}") from None
            if not isinstance(header, dict):
                raise ProtocolError("frame header is not an object")
            blob = bytes(buf[start + hlen:pos + 4 + total])
            frames.append((header, blob))
            pos += 4 + total
        if pos:
            del buf[:pos]
        return frames
