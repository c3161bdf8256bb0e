"""The admin listener: a token-protected JSON API used by the CLI, plus /ready.

Routes (all JSON; ``Authorization: Bearer <admin token>`` except /ready):

    GET    /ready                       200 {"status": "ready"} or 503 while starting/draining
    GET    /metrics                     Prometheus text, every tunnel (admin token)
    GET    /tunnels/{name}/metrics      that tunnel's series (admin token, or the tunnel's metrics_token)
    GET    /api/tunnels                 [{"name", "hostnames", "connections"}]
    POST   /api/tunnels                 {"name", "hostnames"} -> 201 {"name", "hostnames", "token"}
    DELETE /api/tunnels/{name}          -> {"name", "deleted": true, "version"}
    POST   /api/tunnels/{name}/token    -> {"name", "hostnames", "token"} (old token revoked)
    GET    /api/config[?version=V]      {"version", "hash", "created_at", "author", "config" (redacted)}
    POST   /api/config                  {"yaml": text | "document": {...}, "base": V|null}
                                        -> {"version", "changed", "hash", "message"}; 400 {"error", "errors"}; 409
    POST   /api/config/rollback         {"version": V|null, "base": V|null} -> as a push
    GET    /api/config/status           {"active_version", "connectors": [{"id", "acked_version", "last_error"}]}
    GET    /api/config/history          [{"version", "created_at", "author", "hash"}], oldest first
    GET    /api/workers                 the loader's cached workers and counters

Errors are ``{"error": message}`` with 400/401/404/409.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from tunnel.config import ConfigError
from tunnel.config.credentials import verify_secret
from tunnel.edge.versions import StaleBase
from tunnel.errors import Conflict, NotFound

if TYPE_CHECKING:  # pragma: no cover
    from tunnel.edge.server import Edge

EDGE_KEY: web.AppKey["Edge"] = web.AppKey("admin-edge")
AUTHOR_KEY: web.RequestKey[str] = web.RequestKey("author", str)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def _auth(request: web.Request, handler: Any) -> web.StreamResponse:
    if request.path == "/ready":
        return await handler(request)
    edge = request.app[EDGE_KEY]
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip() if scheme.lower() == "bearer" else ""
    name = edge.store.admin_name(token) if token else None
    tunnel = request.match_info.get("name") if request.match_info.route.name == "tunnel-metrics" else None
    if name is None and tunnel is not None and token:
        config = edge.config.tunnels.get(tunnel)
        if config is not None and config.metrics_token and verify_secret(token, config.metrics_token):
            name = f"metrics:{tunnel}"
    if name is None:
        return _error(401, "missing or wrong admin token (use --admin-token or TUNNEL_ADMIN_TOKEN)")
    request[AUTHOR_KEY] = name
    return await handler(request)


async def _ready(request: web.Request) -> web.Response:
    edge = request.app[EDGE_KEY]
    if edge.ready:
        return web.json_response({"status": "ready"})
    return web.json_response({"status": "draining" if edge.draining else "starting"}, status=503)


async def _metrics(request: web.Request) -> web.Response:
    edge = request.app[EDGE_KEY]
    tunnel = request.match_info.get("name")
    if tunnel is not None and tunnel not in edge.config.tunnels:
        return _error(404, f"tunnel {tunnel!r} does not exist")
    body = await edge.metrics_exposition(tunnel)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"})


async def _list_tunnels(request: web.Request) -> web.Response:
    edge = request.app[EDGE_KEY]
    return web.json_response(edge.list_tunnels())


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise web.HTTPBadRequest(text=json.dumps({"error": "the body must be JSON"}),
                                 content_type="application/json") from None
    except RecursionError:
        raise web.HTTPBadRequest(text=json.dumps({"error": "the body is nested too deeply"}),
                                 content_type="application/json") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text=json.dumps({"error": "the body must be a JSON object"}),
                                 content_type="application/json")
    return body


async def _create_tunnel(request: web.Request) -> web.Response:
    edge = request.app[EDGE_KEY]
    body = await _body(request)
    name = body.get("name")
    hostnames = body.get("hostnames")
    if not isinstance(name, str) or not isinstance(hostnames, list) or not hostnames \
            or not all(isinstance(h, str) for h in hostnames):
        return _error(400, 'expected {"name": str, "hostnames": [str, ...]}')
    try:
        token = edge.create_tunnel(name, hostnames, author=request[AUTHOR_KEY])
    except Conflict as exc:
        return _error(409, str(exc))
    return web.json_response({"name": name, "hostnames": edge.hostnames_of(name), "token": token}, status=201)


async def _delete_tunnel(request: web.Request) -> web.Response:
    edge = request.app[EDGE_KEY]
    name = request.match_info["name"]
    try:
        version = edge.delete_tunnel(name, author=request[AUTHOR_KEY])
    except NotFound as exc:
        return _error(404, str(exc))
    return web.json_response({"name": name, "deleted": True, "version": version})


async def _rotate_token(request: web.Request) -> web.Response:
    edge = request.app[EDGE_KEY]
    name = request.match_info["name"]
    try:
        token = edge.rotate_token(name)
    except NotFound as exc:
        return _error(404, str(exc))
    return web.json_response({"name": name, "hostnames": edge.hostnames_of(name), "token": token})


def _config_errors(exc: ConfigError) -> web.Response:
    return web.json_response({"error": "the config is invalid; nothing changed", "errors": exc.errors}, status=400)


_MAX_VERSION = 2**63 - 1  # what SQLite stores


def _version(value: Any, what: str) -> int | None:
    """A version number from a request (None when absent); 400 unless 0 <= value < 2**63."""
    if isinstance(value, str):
        value = int(value) if value.isdigit() and len(value) <= 19 else ""
    if value is not None and (type(value) is not int or not 0 <= value <= _MAX_VERSION):
        raise web.HTTPBadRequest(text=json.dumps({"error": f"{what} must be a version number"}),
                                 content_type="application/json")
    return value


def _base(body: dict[str, Any]) -> int | None:
    return _version(body.get("base"), "base")


async def _push_config(request: web.Request) -> web.Response:
    edge = request.app[EDGE_KEY]
    body = await _body(request)
    raw = body.get("yaml") if isinstance(body.get("yaml"), str) else body.get("document")
    if not isinstance(raw, (str, dict)):
        return _error(400, 'expected {"yaml": "<text>"} or {"document": {...}}, and optionally "base"')
    try:
        return web.json_response(await edge.versions.push(raw, request[AUTHOR_KEY], _base(body)))
    except ConfigError as exc:
        return _config_errors(exc)
    except StaleBase as exc:
        return _error(409, str(exc))


async def _rollback(request: web.Request) -> web.Response:
    edge = request.app[EDGE_KEY]
    body = await _body(request)
    version = _version(body.get("version"), "version")
    try:
        return web.json_response(await edge.versions.rollback(version, request[AUTHOR_KEY], _base(body)))
    except ConfigError as exc:
        return _config_errors(exc)
    except StaleBase as exc:
        return _error(409, str(exc))


async def _pull(request: web.Request) -> web.Response:
    edge = request.app[EDGE_KEY]
    version = _version(request.query.get("version"), "version")
    try:
        return web.json_response(edge.versions.pull(version))
    except NotFound as exc:
        return _error(404, str(exc))


async def _status(request: web.Request) -> web.Response:
    return web.json_response(request.app[EDGE_KEY].versions.status())


async def _history(request: web.Request) -> web.Response:
    return web.json_response(request.app[EDGE_KEY].versions.history())


async def _workers(request: web.Request) -> web.Response:
    return web.json_response(request.app[EDGE_KEY].loader.stats())


def create_admin_app(edge: "Edge") -> web.Application:
    """The aiohttp application behind ``--admin``."""
    app = web.Application(middlewares=[_auth])
    app[EDGE_KEY] = edge
    app.router.add_get("/ready", _ready)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/tunnels/{name}/metrics", _metrics, name="tunnel-metrics")
    app.router.add_get("/api/tunnels", _list_tunnels)
    app.router.add_post("/api/tunnels", _create_tunnel)
    app.router.add_delete("/api/tunnels/{name}", _delete_tunnel)
    app.router.add_post("/api/tunnels/{name}/token", _rotate_token)
    app.router.add_get("/api/config", _pull)
    app.router.add_post("/api/config", _push_config)
    app.router.add_post("/api/config/rollback", _rollback)
    app.router.add_get("/api/config/status", _status)
    app.router.add_get("/api/config/history", _history)
    app.router.add_get("/api/workers", _workers)
    return app
