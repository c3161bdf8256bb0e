"""HTTP semantics end to end: real origin, real edge, real connector, real sockets.

Each behaviour is compared with what the same client gets from the origin directly.
"""

from __future__ import annotations

import asyncio
import hashlib
import time

import aiohttp
import pytest

from tests.tunnel.origin_app import pattern

HOST = "web.localhost"


@pytest.fixture
async def web_tunnel(edge, origin):
    await edge.tunnel("web", HOST, origin.url)
    return edge


async def fetch(client, base, path, host=None, **kwargs):
    headers = dict(kwargs.pop("headers", {}))
    if host:
        headers["Host"] = host
    method = kwargs.pop("method", "GET")
    async with client.request(method, base + path, headers=headers, allow_redirects=False, **kwargs) as resp:
        return resp.status, resp.headers.copy(), await resp.read()


def comparable(headers) -> dict:
    drop = {"date", "x-request-id", "server", "connection", "keep-alive", "transfer-encoding"}
    return {k.lower(): v for k, v in headers.items() if k.lower() not in drop}


async def test_small_get_is_identical(web_tunnel, origin, client):
    direct = await fetch(client, origin.url, "/small")
    tunneled = await fetch(client, web_tunnel.public, "/small", HOST)
    assert tunneled[0] == direct[0] == 200
    assert tunneled[2] == direct[2] == pattern(1024)
    assert comparable(tunneled[1]) == comparable(direct[1])


@pytest.mark.parametrize("path", ["/status/204", "/status/304", "/status/302?to=/new%20place?x=1&y",
                                  "/status/301", "/status/404", "/status/500"])
async def test_statuses_and_redirects_untouched(web_tunnel, origin, client, path):
    direct = await fetch(client, origin.url, path)
    tunneled = await fetch(client, web_tunnel.public, path, HOST)
    assert tunneled[0] == direct[0]
    assert tunneled[2] == direct[2]
    assert comparable(tunneled[1]) == comparable(direct[1])
    if direct[0] in (301, 302):
        assert tunneled[1]["Location"] == direct[1]["Location"]


async def test_head_has_headers_and_no_body(web_tunnel, origin, client):
    direct = await fetch(client, origin.url, "/small", method="HEAD")
    tunneled = await fetch(client, web_tunnel.public, "/small", HOST, method="HEAD")
    assert tunneled[0] == direct[0] == 200
    assert tunneled[2] == b""
    assert tunneled[1]["Content-Length"] == direct[1]["Content-Length"] == "1024"
    # The connection stays usable after a HEAD.
    again = await fetch(client, web_tunnel.public, "/small", HOST)
    assert again[2] == pattern(1024)


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND"])
async def test_every_method(web_tunnel, client, method):
    status, _, body = await fetch(client, web_tunnel.public, "/echo?q=1", HOST, method=method,
                                  data=b"payload" if method not in ("GET", "OPTIONS") else None)
    assert status == 200
    doc = __import__("json").loads(body)
    assert doc["method"] == method
    assert doc["path"] == "/echo?q=1"


async def test_forwarding_headers_request_id_and_hop_by_hop(web_tunnel, client):
    status, headers, body = await fetch(
        client, web_tunnel.public, "/echo", HOST,
        headers={"X-Forwarded-For": "6.6.6.6", "Forwarded": "for=6.6.6.6", "X-Real-IP": "6.6.6.6", "Connection": "keep-alive, X-Secret-Hop",
                 "X-Secret-Hop": "1", "Keep-Alive": "timeout=5", "X-Request-Id": "client-id-42",
                 "X-Custom": "kept"})
    seen = {k.lower(): v for k, v in __import__("json").loads(body)["headers"]}
    assert seen["x-forwarded-for"] == "127.0.0.1"  # the client's claim is not trusted
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == HOST
    assert seen["x-request-id"] == "client-id-42"
    assert seen["x-custom"] == "kept"
    assert "x-secret-hop" not in seen and "keep-alive" not in seen
    assert "forwarded" not in seen and "x-real-ip" not in seen
    assert headers["X-Request-Id"] == "client-id-42"
    # A malformed request id is replaced by a generated one.
    _, headers, body = await fetch(client, web_tunnel.public, "/echo", HOST, headers={"X-Request-Id": "bad id\t!"})
    seen = {k.lower(): v for k, v in __import__("json").loads(body)["headers"]}
    assert seen["x-request-id"] == headers["X-Request-Id"] != "bad id\t!"
    assert len(headers["X-Request-Id"]) == 32


async def test_sse_events_arrive_while_the_stream_is_open(web_tunnel, client):
    arrivals = []
    async with client.get(web_tunnel.public + "/sse?n=4&interval=0.4", headers={"Host": HOST}) as resp:
        assert resp.headers["Content-Type"] == "text/event-stream"
        start = time.monotonic()
        async for line in resp.content:
            if line.startswith(b"data:"):
                arrivals.append((time.monotonic() - start, line.strip()))
    assert [a[1] for a in arrivals] == [f"data: event {i}".encode() for i in range(4)]
    # Each event was delivered on its own, about one interval after the previous one,
    # not all together at the end.
    gaps = [b[0] - a[0] for a, b in zip(arrivals, arrivals[1:])]
    assert all(gap > 0.2 for gap in gaps), gaps


async def test_websocket_session_passes_through(web_tunnel, client):
    async with client.ws_connect(web_tunnel.public + "/ws", headers={"Host": HOST}, autoping=False) as ws:
        await ws.send_str("hello ünïcode")
        msg = await ws.receive(timeout=5)
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.TEXT, "hello ünïcode")
        blob = bytes(range(256)) * 1000
        await ws.send_bytes(blob)
        msg = await ws.receive(timeout=5)
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.BINARY, blob)
        await ws.ping(b"are-you-there")
        msg = await ws.receive(timeout=5)
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.PONG, b"are-you-there")
        await ws.send_str("close-me")
        msg = await ws.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert msg.data == 4001 and msg.extra == "bye"


@pytest.mark.parametrize("chunked", [False, True])
async def test_download_streams_identically(web_tunnel, origin, client, chunked):
    size = 48 << 20
    query = f"/download?size={size}&chunked={int(chunked)}"
    digests = []
    for base, host in ((origin.url, None), (web_tunnel.public, HOST)):
        digest = hashlib.sha256()
        async with client.get(base + query, headers={"Host": host} if host else {}) as resp:
            assert resp.status == 200
            async for chunk in resp.content.iter_chunked(1 << 20):
                digest.update(chunk)
        digests.append(digest.hexdigest())
    assert digests[0] == digests[1]


@pytest.mark.parametrize("chunked", [False, True])
async def test_upload_streams_identically(web_tunnel, origin, client, chunked):
    size = 32 << 20
    block = hashlib.sha256(b"up").digest() * 32768

    def body():
        async def gen():
            for _ in range(size // len(block)):
                yield block
        return gen()

    results = []
    for base, host in ((origin.url, None), (web_tunnel.public, HOST)):
        headers = {"Host": host} if host else {}
        if not chunked:
            headers["Content-Length"] = str(size)
        async with client.post(base + "/upload", data=body(), headers=headers) as resp:
            assert resp.status == 200
            results.append(await resp.json())
    assert results[0]["sha256"] == results[1]["sha256"] == hashlib.sha256(block * (size // len(block))).hexdigest()
    assert results[1]["bytes"] == size


async def test_pipelined_requests_are_answered_in_order(web_tunnel):
    reader, writer = await asyncio.open_connection("127.0.0.1", web_tunnel.edge.public_port)
    request = (f"GET /echo?n=1 HTTP/1.1\r\nHost: {HOST}\r\n\r\n"
               f"POST /echo?n=2 HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 3\r\n\r\nabc"
               f"GET /small HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n").encode()
    writer.write(request)
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert data.count(b"HTTP/1.1 200 OK") == 3
    assert data.index(b'"/echo?n=1"') < data.index(b'"/echo?n=2"') < data.index(pattern(64))


async def test_expect_continue(web_tunnel):
    reader, writer = await asyncio.open_connection("127.0.0.1", web_tunnel.edge.public_port)
    writer.write(f"POST /upload HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n".encode())
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"hello")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200 OK")
    writer.close()


async def test_bytes_after_an_upgrade_head_wait_for_101(edge):
    """An origin that ignores Upgrade must never read the client's next bytes as a request:
    they would not have passed the edge (routing, policy, X-Forwarded-For)."""
    seen: list[bytes] = []

    async def origin(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno")
        await writer.drain()
        try:
            seen.append(await asyncio.wait_for(reader.read(1000), 1.0))
        except asyncio.TimeoutError:
            pass
        writer.close()

    server = await asyncio.start_server(origin, "127.0.0.1", 0)
    try:
        await edge.tunnel("smuggle", "s.localhost", f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.edge.public_port)
        writer.write(b"GET /public HTTP/1.1\r\nHost: s.localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
                     b"GET /admin HTTP/1.1\r\nHost: s.localhost\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b"no")
        await asyncio.sleep(1.2)
        assert b"/admin" not in b"".join(seen)
    finally:
        server.close()


def test_client_ip_behind_trusted_proxies():
    import ipaddress

    from tunnel.edge.public import PublicSettings
    settings = PublicSettings(routing=None, registry=None, metrics=None,
                              trusted_proxies=[ipaddress.ip_network("10.0.0.0/8")])
    assert settings.client_ip("127.0.0.1", "6.6.6.6") == "127.0.0.1"  # untrusted peer: its claim is ignored
    assert settings.client_ip("10.0.0.1", "6.6.6.6, 10.0.0.2") == "6.6.6.6"
    assert settings.client_ip("10.0.0.1", "1.1.1.1, 6.6.6.6, 10.0.0.2") == "6.6.6.6"  # right-most untrusted
    assert settings.client_ip("10.0.0.1", "10.0.0.3") == "10.0.0.1"
