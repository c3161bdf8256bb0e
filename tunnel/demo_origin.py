"""A small built-in origin for `tunnel demo`: pages that show what crosses the tunnel."""

from __future__ import annotations

import asyncio
import hashlib
import json

from aiohttp import WSMsgType, web

_INDEX = """<!doctype html>
<html><head><meta charset="utf-8"><title>tunnel demo origin</title>
<style>body{font:16px system-ui,sans-serif;margin:3em auto;max-width:44em;color:#222}
code{background:#f3f3f3;padding:.1em .3em}</style></head><body>
<h1>Hello through the tunnel</h1>
<p>This page is served by a demo origin on 127.0.0.1, reached through the tunnel edge and a
connector over a multiplexed WebSocket connection.</p>
<ul>
<li><a href="/headers">/headers</a>: the request as the origin saw it (note X-Forwarded-For, X-Request-Id)</li>
<li><a href="/sse">/sse</a>: Server-Sent Events, one per second, flushed as they happen</li>
<li><code>/ws</code>: a WebSocket echo (try <code>websocat ws://HOST/ws</code>)</li>
<li><a href="/download?mib=16">/download?mib=16</a>: a streamed download</li>
<li><code>curl -T file HOST/upload</code>: upload; the origin answers with the SHA-256 it received</li>
</ul></body></html>
"""


async def index(request: web.Request) -> web.Response:
    return web.Response(text=_INDEX, content_type="text/html")


async def headers(request: web.Request) -> web.Response:
    body = {"method": request.method, "path": request.path_qs,
            "headers": [[k, v] for k, v in request.headers.items()]}
    return web.json_response(body, dumps=lambda v: json.dumps(v, indent=2))


async def sse(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    count = min(int(request.query.get("n", "5")), 60)
    for i in range(count):
        await response.write(f"id: {i}\ndata: event {i}\n\n".encode())
        await asyncio.sleep(float(request.query.get("interval", "1")))
    await response.write_eof()
    return response


async def websocket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


async def upload(request: web.Request) -> web.Response:
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.content.iter_chunked(1 << 16):
        digest.update(chunk)
        size += len(chunk)
    return web.json_response({"bytes": size, "sha256": digest.hexdigest()})


async def download(request: web.Request) -> web.StreamResponse:
    mib = min(int(request.query.get("mib", "16")), 4096)
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = mib << 20
    await response.prepare(request)
    block = bytes(range(256)) * 4096  # 1 MiB
    for _ in range(mib):
        await response.write(block)
    await response.write_eof()
    return response


def create_demo_origin() -> web.Application:
    """The demo origin application."""
    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/headers", headers)
    app.router.add_get("/sse", sse)
    app.router.add_get("/ws", websocket)
    app.router.add_route("*", "/upload", upload)
    app.router.add_get("/download", download)
    return app
