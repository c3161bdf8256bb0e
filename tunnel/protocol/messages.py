"""Payloads of the control frames (PROTOCOL.md §4): handshake documents and message heads.

Heads travel as compact JSON arrays. Header names and values are the HTTP/1.1 bytes decoded as
latin-1, so every byte survives the trip; CR, LF and NUL are refused in both, which keeps a peer
from splitting the HTTP/1.1 messages the other side writes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from tunnel.errors import ProtocolError

Headers = list[tuple[str, str]]

_FORBIDDEN = str.maketrans("", "", "\r\n\x00")
_BAD_NAME = re.compile(r"[\r\n\x00: ]")
_BAD_VALUE = re.compile(r"[\r\n\x00]")


@dataclass(slots=True)
class RequestHead:
    """A request as the edge forwards it: method, target (path + query), headers, upgrade."""

    method: str
    target: str
    headers: Headers
    upgrade: bool = False
    service: str | None = None  # an origin chosen by the edge's policy (ab_split), else None

    def encode(self) -> bytes:
        return _dumps([self.method, self.target, self.headers, self.upgrade, self.service])

    @classmethod
    def decode(cls, payload: bytes) -> "RequestHead":
        doc = _loads(payload, "request head")
        if not (isinstance(doc, list) and len(doc) == 5):
            raise ProtocolError("request head must be a 5-element array")
        method, target, headers, upgrade, service = doc
        if not (isinstance(method, str) and method and method.isascii() and " " not in method
                and _clean(method)):
            raise ProtocolError("request head: bad method")
        if not (isinstance(target, str) and target and _clean(target)) or " " in target:
            raise ProtocolError("request head: bad target")
        if not isinstance(upgrade, bool) or not (service is None or isinstance(service, str)):
            raise ProtocolError("request head: bad upgrade or service")
        return cls(method, target, _headers(headers), upgrade, service)


@dataclass(slots=True)
class ResponseHead:
    """A response as the connector returns it: status, reason phrase, headers."""

    status: int
    reason: str
    headers: Headers = field(default_factory=list)

    def encode(self) -> bytes:
        return _dumps([self.status, self.reason, self.headers])

    @classmethod
    def decode(cls, payload: bytes) -> "ResponseHead":
        doc = _loads(payload, "response head")
        if not (isinstance(doc, list) and len(doc) == 3):
            raise ProtocolError("response head must be a 3-element array")
        status, reason, headers = doc
        if not (type(status) is int and 100 <= status <= 999):
            raise ProtocolError("response head: bad status")
        if not (isinstance(reason, str) and _clean(reason)):
            raise ProtocolError("response head: bad reason")
        return cls(status, reason, _headers(headers))


def encode_document(doc: dict[str, Any]) -> bytes:
    """Encode a handshake document (HELLO, WELCOME, REFUSE)."""
    return _dumps(doc)


def decode_document(payload: bytes, what: str) -> dict[str, Any]:
    """Decode a handshake document; it must be a JSON object."""
    doc = _loads(payload, what)
    if not isinstance(doc, dict):
        raise ProtocolError(f"{what} must be a JSON object")
    return doc


def _dumps(value: Any) -> bytes:
    # UTF-8, not \u escapes: a latin-1 byte >= 0x80 costs 2 bytes instead of 6, so a 64 KiB
    # request head stays far below the 256 KiB control-frame limit (PROTOCOL.md §2) the peer enforces.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _loads(payload: bytes, what: str) -> Any:
    try:
        return json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:  # e.g. 256 KiB of "[": legal frame size, too deep for the parser
        raise ProtocolError(f"{what} is nested too deeply") from None


def _clean(text: str) -> bool:
    return len(text.translate(_FORBIDDEN)) == len(text)


def _headers(raw: Any) -> Headers:
    if not isinstance(raw, list):
        raise ProtocolError("headers must be an array")
    out: Headers = []
    for item in raw:
        if not (type(item) is list and len(item) == 2):
            raise ProtocolError("each header must be a [name, value] pair")
        name, value = item
        if not (type(name) is str and type(value) is str and name):
            raise ProtocolError(f"bad header {name!r}")
        out.append((name, value))
    # One scan of everything instead of one per string: names and values must not hold CR, LF or
    # NUL, and names no ':' or space (a tab separates the fields of the joined text).
    names = "\t".join(n for n, _ in out)
    values = "\t".join(v for _, v in out)
    if _BAD_NAME.search(names) or _BAD_VALUE.search(values):
        bad = next(n for n, v in out if _BAD_NAME.search(n) or _BAD_VALUE.search(v))
        raise ProtocolError(f"bad header {bad!r}")
    return out
