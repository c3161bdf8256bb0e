"""The project's one error tree. Each error the edge can answer with carries its HTTP status.

    TunnelError                       base of every error raised by this project's own code
    ├── ProtocolError                 the peer broke the tunnel protocol (PROTOCOL.md §6); the
    │   │                             connection is closed with GOAWAY(code)
    │   └── FrameSizeError            a frame larger than the negotiated maximum
    ├── HeadersTooLarge               a head we were about to send exceeds the control-frame limit
    │                                 (nothing was sent; the caller answers 431 or 502)
    ├── HandshakeRefused              the edge refused a connector (bad token, unsupported version);
    │                                 ``permanent`` says whether retrying can help
    ├── EdgeHTTPError                 a public request the edge answers itself (status + reason)
    │   ├── UnknownHost               404 unknown-host
    │   ├── NoConnector               530 no-connector
    │   ├── AtCapacity                503 at-capacity (every connection holds its most streams)
    │   ├── OriginUnreachable         502 origin-unreachable
    │   ├── OriginTimeout             504 origin-timeout
    │   ├── HeadTooLarge              431 head-too-large
    │   ├── RequestTimeout            408 request-timeout (a request body stalled)
    │   ├── BodyTooLarge              413 body-too-large
    │   ├── WorkerFailed              500 worker-error (the tunnel's worker threw or failed to load)
    │   └── WorkerLimited             503 worker-limit (CPU or memory limit, or worker unavailable)
    └── StoreError                    the state in --data-dir cannot be read or changed
        ├── NotFound                  (admin API 404)
        └── Conflict                  (admin API 409: a name or hostname already taken)

Config errors live with the config model (`tunnel.config.ConfigError`), worker errors with the
loader (`tunnel.loader.WorkerError`); both are mapped to responses at the edge.
"""

from __future__ import annotations


class TunnelError(Exception):
    """Base of every error this project raises on purpose."""


class ProtocolError(TunnelError):
    """The peer violated the tunnel protocol; ``code`` is the GOAWAY error code to send."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


class FrameSizeError(ProtocolError):
    """A frame's declared length exceeds the negotiated maximum (checked before the payload)."""

    def __init__(self, message: str):
        super().__init__(message, code=8)


class HeadersTooLarge(TunnelError):
    """A request or response head is too large to send in one HEADERS frame."""


class HandshakeRefused(TunnelError):
    """The edge refused a connector's HELLO.

    ``code`` is the refusal code from the REFUSE frame (for example ``unauthorized`` or
    ``unsupported-version``); ``permanent`` is true when retrying with the same settings cannot help.
    """

    def __init__(self, code: str, message: str, permanent: bool = True):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.permanent = permanent


class EdgeHTTPError(TunnelError):
    """A public request the edge answers itself with ``status`` and a ``Tunnel-Error: reason``."""

    status = 500
    reason = "internal"
    title = "Internal error"

    def __init__(self, detail: str = "", *, retry_after: float | None = None):
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.retry_after = retry_after  # seconds, sent as Retry-After when set


class UnknownHost(EdgeHTTPError):
    status, reason, title = 404, "unknown-host", "No tunnel serves this hostname"


class NoConnector(EdgeHTTPError):
    status, reason, title = 530, "no-connector", "The tunnel has no connected connector"


class AtCapacity(EdgeHTTPError):
    status, reason, title = 503, "at-capacity", "The tunnel is at capacity; retry shortly"


class OriginUnreachable(EdgeHTTPError):
    status, reason, title = 502, "origin-unreachable", "The origin service could not be reached"


class OriginTimeout(EdgeHTTPError):
    status, reason, title = 504, "origin-timeout", "The origin service did not answer in time"


class HeadTooLarge(EdgeHTTPError):
    status, reason, title = 431, "head-too-large", "Request header fields too large"


class RequestTimeout(EdgeHTTPError):
    status, reason, title = 408, "request-timeout", "The request body stopped arriving"


class BodyTooLarge(EdgeHTTPError):
    status, reason, title = 413, "body-too-large", "Request body too large"


class WorkerFailed(EdgeHTTPError):
    status, reason, title = 500, "worker-error", "The tunnel's worker failed"


class WorkerLimited(EdgeHTTPError):
    status, reason, title = 503, "worker-limit", "The tunnel's worker exceeded its limits"


class BadRequest(EdgeHTTPError):
    status, reason, title = 400, "bad-request", "Malformed request"


class StoreError(TunnelError):
    """State in --data-dir cannot be read or changed."""


class NotFound(StoreError):
    """The named object does not exist."""


class Conflict(StoreError):
    """The name or hostname is already taken."""
