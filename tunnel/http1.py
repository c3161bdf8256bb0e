"""HTTP/1.1 pieces shared by the edge's public side and the connector's origin side.

Header lists are ``[(name, value)]`` of latin-1 strings, in order, duplicates kept.
"""

from __future__ import annotations

import re

#: Hop-by-hop headers (RFC 9110 §7.6.1) plus the legacy ones proxies also drop.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
    "te", "trailer", "transfer-encoding", "upgrade",
})

_TOKEN_SPLIT = re.compile(r"\s*,\s*")

REASONS = {
    100: "Continue", 101: "Switching Protocols", 200: "OK", 201: "Created", 204: "No Content",
    301: "Moved Permanently", 302: "Found", 304: "Not Modified", 308: "Permanent Redirect",
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    408: "Request Timeout", 413: "Content Too Large", 429: "Too Many Requests",
    431: "Request Header Fields Too Large", 500: "Internal Server Error", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Gateway Timeout", 530: "Origin Unavailable",
}


def strip_hop_by_hop(headers: list[tuple[str, str]], keep_upgrade: bool = False,
                     also: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    """Drop hop-by-hop headers, those named in ``Connection``, and the names in ``also``.

    With ``keep_upgrade`` the ``Connection: upgrade`` / ``Upgrade`` pair survives, as a proxy
    must forward it for a WebSocket handshake.
    """
    drop = _drop_set(also)
    out = []
    listed: set[str] | None = None
    for name, value in headers:
        lname = name.lower()
        if lname in drop:
            if lname == "connection":
                tokens = {t.lower() for t in _TOKEN_SPLIT.split(value.strip()) if t}
                listed = tokens if listed is None else listed | tokens
            elif keep_upgrade and lname == "upgrade":
                out.append((name, value))
            continue
        out.append((name, value))
    if listed:  # rare: headers named in Connection are hop-by-hop too
        out = [(n, v) for n, v in out if n.lower() not in listed or (keep_upgrade and n.lower() == "upgrade")]
    if keep_upgrade:
        out.append(("Connection", "Upgrade"))
    return out


_DROP_SETS: dict[frozenset[str], frozenset[str]] = {}


def _drop_set(also: frozenset[str]) -> frozenset[str]:
    drop = _DROP_SETS.get(also)
    if drop is None:
        drop = _DROP_SETS[also] = HOP_BY_HOP | also
    return drop


def get_header(headers: list[tuple[str, str]], name: str) -> str | None:
    """Return the first value of ``name`` (case-insensitive), or None."""
    lname = name.lower()
    for key, value in headers:
        if key.lower() == lname:
            return value
    return None


def head_bytes(start_line: str, headers: list[tuple[str, str]]) -> bytes:
    """Serialize a start line and headers into an HTTP/1.1 head (ending in a blank line)."""
    lines = [start_line]
    lines.extend(f"{name}: {value}" for name, value in headers)
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1")


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body."""
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


def response_has_body(method: str, status: int) -> bool:
    """Whether a response to ``method`` with ``status`` carries a body (RFC 9112 §6.3)."""
    return not (method == "HEAD" or status in (204, 304) or 100 <= status < 200)
