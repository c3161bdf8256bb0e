"""The connector's own small HTTP server (`tunnel connect --metrics H:P`): /ready and /metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:  # pragma: no cover
    from tunnel.connector.agent import Connector

CONNECTOR_KEY: web.AppKey["Connector"] = web.AppKey("connector")


async def _ready(request: web.Request) -> web.Response:
    connector = request.app[CONNECTOR_KEY]
    connections = connector.connected
    body = {"status": "ready" if connections else "connecting", "connections": connections,
            "connector_id": connector.connector_id}
    return web.json_response(body, status=200 if connections else 503)


async def _metrics(request: web.Request) -> web.Response:
    connector = request.app[CONNECTOR_KEY]
    lines = [
        "# HELP tunnel_connector_connections Connections to the edge that take new requests.",
        "# TYPE tunnel_connector_connections gauge",
        f"tunnel_connector_connections {connector.connected}",
        "# HELP tunnel_connector_streams Requests in flight through this connector.",
        "# TYPE tunnel_connector_streams gauge",
        f"tunnel_connector_streams {sum(len(s.conn.streams) for s in connector.sessions.values())}",
        "",
    ]
    return web.Response(text="\n".join(lines), content_type="text/plain", charset="utf-8",
                        headers={"Cache-Control": "no-store"})


async def start_status_server(connector: "Connector", host: str, port: int) -> web.AppRunner:
    """Serve /ready and /metrics for ``connector`` on host:port; return the runner to clean up."""
    app = web.Application()
    app[CONNECTOR_KEY] = connector
    app.router.add_get("/ready", _ready)
    app.router.add_get("/metrics", _metrics)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
