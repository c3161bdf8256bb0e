"""Rules for forwarding a request over a tunnel stream, kept in one place: which headers the
edge drops in each direction, which failures may be retried on another connection, and what a
stream reset means for the client. Both the plain path (``exchange``) and workers' forwards
(``binding``) use these.
"""

from __future__ import annotations

from tunnel.errors import EdgeHTTPError, OriginTimeout, OriginUnreachable
from tunnel.protocol.frames import ErrorCode

#: Request headers a client cannot set: the edge vouches for these itself (X-Forwarded-*, the
#: request id) or handles them (Expect).
DROP_FROM_CLIENT = frozenset({"expect", "x-request-id", "x-forwarded-for", "x-forwarded-proto",
                              "x-forwarded-host", "forwarded", "x-real-ip"})
#: Response headers an origin cannot set: the edge's own error marker and the request id it echoes.
DROP_FROM_ORIGIN = frozenset({"tunnel-error", "x-request-id"})
#: Headers a worker's forwarded request never carries as given: the Host comes first from its
#: URL or its own Host header, the framing from its body.
DROP_FROM_WORKER = frozenset({"host", "content-length"})

#: Requests that may be sent again on another connection when theirs died before any answer.
RETRYABLE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Resets that mean the connector never processed the stream (its connection died, or it refused).
RETRYABLE_RESETS = frozenset({ErrorCode.INTERNAL_ERROR, ErrorCode.REFUSED_STREAM})


def may_retry(method: str, has_body: bool, code: int) -> bool:
    """Whether a request whose stream was reset with ``code`` before any answer may be sent again."""
    return code in RETRYABLE_RESETS and not has_body and method in RETRYABLE_METHODS


def reset_error(code: int, message: str) -> EdgeHTTPError:
    """What the client is told when a stream is reset before the response began."""
    if code == ErrorCode.ORIGIN_TIMEOUT:
        return OriginTimeout(message or OriginTimeout.title)
    return OriginUnreachable(message or OriginUnreachable.title)
