"""Payloads of the control frames (PROTOCOL.md §4): handshake documents and message heads.

Heads travel as compact JSON arrays. Header names and values are the HTTP/1.1 bytes decoded as
latin-1, so every byte survives the trip. Names must be RFC 9110 tokens; values, the reason
phrase and the request target hold no control character but HTAB (values) — which keeps a
peer from splitting, or smuggling through, the HTTP/1.1 messages the other side writes.
A response head is at most ``MAX_RESPONSE_HEAD`` bytes, as the edge bounds request heads.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from tunnel.errors import ProtocolError

Headers = list[tuple[str, str]]

_METHOD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,64}\Z")
_BAD_TARGET = re.compile(r"[\x00-\x20\x7f]")
#: Names: RFC 9110 tchar only (a tab joins the names, so it is allowed in the joined text alone).
_BAD_NAME = re.compile(r"[^\t!#$%&'*+\-.^_`|~0-9A-Za-z]")
#: Values and the reason phrase: no CTL but HTAB (a tab also joins the values for the scan).
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
#: Response heads larger than this (names, values and reason; as the edge bounds request heads).
MAX_RESPONSE_HEAD = 64 * 1024


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
        if not (isinstance(method, str) and _METHOD.match(method)):
            raise ProtocolError("request head: bad method")
        if not (isinstance(target, str) and target and not _BAD_TARGET.search(target)):
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
        if not (type(status) is int and 100 <= status <= 599):
            raise ProtocolError("response head: bad status")
        if not (isinstance(reason, str) and not _BAD_VALUE.search(reason)):
            raise ProtocolError("response head: bad reason")
        head = cls(status, reason, _headers(headers))
        size = len(reason) + sum(len(n) + len(v) + 4 for n, v in head.headers)
        if size > MAX_RESPONSE_HEAD:
            raise ProtocolError(f"response head of {size} bytes exceeds {MAX_RESPONSE_HEAD}")
        return head


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
    # One scan of everything instead of one per string (a tab separates the fields of the joined
    # text; a tab inside a name is caught below, where each name is checked alone).
    names = "\t".join(n for n, _ in out)
    values = "\t".join(v for _, v in out)
    one_tab_per_gap = not out or names.count("\t") == len(out) - 1
    if _BAD_NAME.search(names) or _BAD_VALUE.search(values) or not one_tab_per_gap:
        bad = next((n for n, v in out if _BAD_NAME.search(n) or "\t" in n or _BAD_VALUE.search(v)), "?")
        raise ProtocolError(f"bad header {bad[:64]!r}")
    return out
