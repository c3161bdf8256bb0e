"""A test origin: every behaviour the tunnel tests need, on a real aiohttp server.

Run as a module (``python -m tests.tunnel.origin_app PORT``) to serve it from its own process.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys

from aiohttp import WSMsgType, web

BLOCK = hashlib.sha256(b"seed").digest() * 32768  # 1 MiB of deterministic bytes


def pattern(size: int) -> bytes:
    """The first ``size`` bytes of the download pattern (for small sizes)."""
    return (BLOCK * (size // len(BLOCK) + 1))[:size]


def pattern_sha256(size: int) -> str:
    digest = hashlib.sha256()
    full, rest = divmod(size, len(BLOCK))
    for _ in range(full):
        digest.update(BLOCK)
    digest.update(BLOCK[:rest])
    return digest.hexdigest()


class Events:
    """What the origin observed, for assertions."""

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()
        self.requests: list[dict] = []


EVENTS_KEY: web.AppKey[Events] = web.AppKey("events", Events)
NAME_KEY: web.AppKey[str] = web.AppKey("name", str)


async def whoami(request: web.Request) -> web.Response:
    return web.Response(text=request.app[NAME_KEY])


async def named_echo(request: web.Request) -> web.Response:
    """Which origin answered, and the path it saw."""
    return web.json_response({"origin": request.app[NAME_KEY], "path": request.path_qs})


async def small(request: web.Request) -> web.Response:
    return web.Response(body=pattern(1024), content_type="application/octet-stream",
                        headers={"X-Origin": "small", "ETag": '"abc"'})


async def download(request: web.Request) -> web.StreamResponse:
    size = int(request.query.get("size", str(1 << 20)))
    chunked = request.query.get("chunked") == "1"
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    if not chunked:
        response.content_length = size
    await response.prepare(request)
    sent = 0
    while sent < size:
        piece = BLOCK[: min(len(BLOCK), size - sent)]
        await response.write(piece)
        sent += len(piece)
    await response.write_eof()
    return response


async def upload(request: web.Request) -> web.Response:
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.content.iter_chunked(1 << 18):
        digest.update(chunk)
        size += len(chunk)
    return web.json_response({"bytes": size, "sha256": digest.hexdigest(),
                              "chunked": request.headers.get("Transfer-Encoding") == "chunked"})


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    request.app[EVENTS_KEY].requests.append({"method": request.method, "path": request.path_qs,
                                             "headers": list(request.headers.items())})
    return web.json_response({"method": request.method, "path": request.path_qs,
                              "headers": [[k, v] for k, v in request.headers.items()],
                              "body": body.decode("latin-1")})


async def sse(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    count = int(request.query.get("n", "3"))
    interval = float(request.query.get("interval", "0.3"))
    for i in range(count):
        await response.write(f"data: event {i}\n\n".encode())
        await asyncio.sleep(interval)
    await response.write_eof()
    return response


async def websocket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(autoping=True)
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            if msg.data == "close-me":
                await ws.close(code=4001, message=b"bye")
                break
            await ws.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


async def status(request: web.Request) -> web.Response:
    code = int(request.match_info["code"])
    headers = {"X-Origin": "status"}
    if code in (301, 302, 303, 307, 308):
        headers["Location"] = request.query.get("to", "/elsewhere?a=1&b=%20")
    if code == 304:
        return web.Response(status=304, headers={"ETag": '"abc"'})
    if code == 204:
        return web.Response(status=204, headers=headers)
    return web.Response(status=code, text=f"status {code}\n", headers=headers)


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("delay", "3")))
    return web.Response(text="slow done\n")


async def forever(request: web.Request) -> web.StreamResponse:
    """Streams until the client goes away; records the cancellation."""
    response = web.StreamResponse()
    await response.prepare(request)
    try:
        for _ in range(100_000):
            await response.write(BLOCK[:65536])
            await asyncio.sleep(0.01)
    except (asyncio.CancelledError, ConnectionError):
        request.app[EVENTS_KEY].cancelled.set()
        raise
    return response


async def reset(request: web.Request) -> web.StreamResponse:
    """Sends part of a declared body, then drops the connection."""
    response = web.StreamResponse()
    response.content_length = 10 << 20
    await response.prepare(request)
    await response.write(BLOCK[:65536])
    await asyncio.sleep(0.1)
    request.transport.abort()
    return response


async def forged(request: web.Request) -> web.Response:
    return web.Response(text="forged\n", headers={"Tunnel-Error": "no-connector", "X-Request-Id": "origin-made"})


def create_app(name: str = "origin") -> web.Application:
    app = web.Application(client_max_size=1 << 40)
    app[EVENTS_KEY] = Events()
    app[NAME_KEY] = name
    app.router.add_get("/small", small)
    app.router.add_get("/download", download)
    app.router.add_route("*", "/upload", upload)
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/sse", sse)
    app.router.add_get("/ws", websocket)
    app.router.add_route("*", "/status/{code}", status)
    app.router.add_get("/slow", slow)
    app.router.add_get("/forever", forever)
    app.router.add_get("/reset", reset)
    app.router.add_get("/forged", forged)
    app.router.add_get("/whoami", whoami)
    app.router.add_get("/checkout/{tail:.*}", whoami)
    app.router.add_route("*", "/api/{tail:.*}", named_echo)
    return app


if __name__ == "__main__":  # pragma: no cover - used by subprocess tests
    port = int(sys.argv[1])
    name = sys.argv[2] if len(sys.argv) > 2 else "origin"
    web.run_app(create_app(name), host="127.0.0.1", port=port, print=None, access_log=None)
