"""A tiny synchronous client of the edge's admin API, for the CLI."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tunnel.runtime import DEFAULT_DATA_DIR
from tunnel.store import ADMIN_TOKEN_FILE

DEFAULT_ADMIN_URL = "http://127.0.0.1:8082"


class AdminError(Exception):
    """The admin API answered with an error (``status``, decoded ``body``), or could not be reached
    (``status`` 0)."""

    def __init__(self, message: str, status: int = 0, body: Any = None):
        super().__init__(message)
        self.status = status
        self.body = body


def add_admin_arguments(parser) -> None:
    """The flags every admin command shares."""
    parser.add_argument("--admin", default=os.environ.get("TUNNEL_ADMIN_URL", DEFAULT_ADMIN_URL),
                        help="admin API URL (env TUNNEL_ADMIN_URL; default %(default)s)")
    parser.add_argument("--admin-token", default=os.environ.get("TUNNEL_ADMIN_TOKEN"),
                        help="admin token (env TUNNEL_ADMIN_TOKEN; default: read from DATA_DIR/admin.token)")
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                        help="where to find admin.token when no token is given (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """The admin token must never follow a redirect to another place: redirects are errors."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def call(args, method: str, path: str, body: Any = None) -> Any:
    """Call the admin API; return the decoded JSON answer or raise AdminError."""
    token = args.admin_token
    if not token:
        try:
            token = (Path(args.data_dir) / ADMIN_TOKEN_FILE).read_text().strip()
        except OSError:
            raise AdminError("no admin token: pass --admin-token, set TUNNEL_ADMIN_TOKEN, or point "
                             "--data-dir at the edge's data directory") from None
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(args.admin.rstrip("/") + path, data=data, method=method,
                                     headers={"Authorization": f"Bearer {token}",
                                              "Content-Type": "application/json"})
    try:
        with _OPENER.open(request, timeout=30) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        answer = None
        try:
            answer = json.loads(exc.read())
            message = answer.get("error", exc.reason)
        except (ValueError, AttributeError):
            message = exc.reason
        raise AdminError(f"{exc.code}: {message}", exc.code, answer) from None
    except (urllib.error.URLError, OSError) as exc:
        raise AdminError(f"cannot reach the edge's admin API at {args.admin}: "
                         f"{getattr(exc, 'reason', exc)}") from None
