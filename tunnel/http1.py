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


# ---------------------------------------------------------------------- request paths (docs/config.md)
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset("0123456789abcdefABCDEF")
_REFUSED_BYTES = {0x2F: "an encoded slash (%2F)", 0x5C: "an encoded backslash (%5C)", 0x00: "an encoded NUL (%00)"}


def normalize_target(target: str) -> str:
    """The request target as the edge matches and forwards it when a tunnel looks at paths.

    The path (not the query) is normalised as RFC 3986 §6.2.2 says, and as most origins do
    before they route: percent-encoded unreserved characters are decoded (``%61`` → ``a``),
    other escapes are kept with upper-case hex, bytes outside ASCII are percent-encoded,
    dot-segments are removed (``/x/../a`` → ``/a``, also when spelled ``%2e%2e``) and repeated
    slashes are merged (``//a`` → ``/a``, as nginx's ``merge_slashes``). ``*`` (OPTIONS) is kept.

    Raises:
        ValueError: for what could be read two ways by an origin and cannot be normalised
            safely: an encoded slash, backslash or NUL, a raw backslash, a malformed escape, or a
            target that is not origin-form. The edge answers 400.
    """
    path, sep, query = target.partition("?")
    if not path.startswith("/"):
        if target == "*":
            return target
        raise ValueError("the request target must start with '/'")
    if "%" not in path and "//" not in path and "/." not in path and "\\" not in path and path.isascii():
        return target
    out: list[str] = []
    i, n = 0, len(path)
    while i < n:
        c = path[i]
        if c == "%":
            digits = path[i + 1:i + 3]
            if len(digits) != 2 or not _HEX.issuperset(digits):
                raise ValueError("the path has a malformed percent-escape")
            byte = int(digits, 16)
            if byte in _REFUSED_BYTES:
                raise ValueError(f"the path holds {_REFUSED_BYTES[byte]}")
            char = chr(byte)
            out.append(char if char in _UNRESERVED else "%" + digits.upper())
            i += 3
            continue
        if c == "\\":
            raise ValueError("the path holds a backslash")
        out.append(c if c < "\x80" else "%%%02X" % ord(c))  # latin-1: one char per byte
        i += 1
    segments = "".join(out).split("/")[1:]
    kept: list[str] = []
    last = len(segments) - 1
    for index, segment in enumerate(segments):
        if segment == "..":
            if kept:
                kept.pop()
        elif segment not in ("", "."):
            kept.append(segment)
            continue
        if index == last:  # "/a/", "/a/." and "/a/b/.." all end with a slash
            kept.append("")
    return "/" + "/".join(kept) + sep + query
