"""The small pages the edge answers with itself (DESIGN.md, "Errors the public client sees").

Every one carries ``Tunnel-Error: <reason>`` and ``X-Request-Id``; HTML by default, JSON when the
client prefers it.
"""

from __future__ import annotations

import html
import json
import math

from tunnel.errors import EdgeHTTPError
from tunnel.http1 import REASONS

_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{status} {title}</title>
<style>body{{font:16px system-ui,sans-serif;margin:3em auto;max-width:40em;color:#222}}
code{{background:#f3f3f3;padding:.1em .3em}}</style></head>
<body><h1>{status} {title}</h1><p>{detail}</p>
<p>Error <code>{reason}</code> · request <code>{request_id}</code> · tunnel edge</p></body></html>
"""


def prefers_json(accept: str | None) -> bool:
    """Whether an Accept header asks for JSON before HTML."""
    if not accept:
        return False
    accept = accept.lower()
    j = accept.find("json")
    h = accept.find("html")
    return j >= 0 and (h < 0 or j < h)


def render(error: EdgeHTTPError, request_id: str, accept: str | None,
           extra_headers: list[tuple[str, str]] | None = None) -> tuple[int, str, list[tuple[str, str]], bytes]:
    """Return (status, reason phrase, headers, body) for an edge-generated error."""
    if prefers_json(accept):
        body = json.dumps({"error": error.reason, "status": error.status, "message": error.detail,
                           "request_id": request_id}).encode()
        ctype = "application/json"
    else:
        body = _PAGE.format(status=error.status, title=html.escape(error.title),
                            detail=html.escape(error.detail), reason=error.reason,
                            request_id=html.escape(request_id)).encode()
        ctype = "text/html; charset=utf-8"
    headers = [("Content-Type", ctype), ("Content-Length", str(len(body))),
               ("Cache-Control", "no-store"), ("Tunnel-Error", error.reason),
               ("X-Request-Id", request_id)]
    if error.retry_after is not None:
        headers.append(("Retry-After", str(max(1, math.ceil(error.retry_after)))))
    headers.extend(extra_headers or ())
    return error.status, REASONS.get(error.status, "Error"), headers, body
