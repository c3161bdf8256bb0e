"""Every error the public client can see: status, page, Tunnel-Error, and no forgery."""

from __future__ import annotations

import asyncio
import io
import socket

import aiohttp
import pytest

HOST = "web.localhost"


def closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


async def get(client, base, path, host=HOST, **kwargs):
    headers = {"Host": host, **kwargs.pop("headers", {})}
    async with client.request(kwargs.pop("method", "GET"), base + path, headers=headers, **kwargs) as resp:
        return resp.status, resp.headers.copy(), await resp.read()


def assert_edge_page(status, headers, body, expected_status, reason):
    assert status == expected_status
    assert headers["Tunnel-Error"] == reason
    assert headers["Content-Type"].startswith("text/html")
    assert f"{expected_status}".encode() in body and reason.encode() in body
    assert headers["X-Request-Id"].encode() in body


async def test_unknown_host_is_404(edge, client):
    result = await get(client, edge.public, "/", host="nobody.localhost")
    assert_edge_page(*result, 404, "unknown-host")


async def test_json_when_the_client_prefers_it(edge, client):
    status, headers, body = await get(client, edge.public, "/", host="nobody.localhost",
                                      headers={"Accept": "application/json"})
    assert status == 404 and headers["Content-Type"] == "application/json"
    doc = __import__("json").loads(body)
    assert doc["error"] == "unknown-host" and doc["status"] == 404
    assert doc["request_id"] == headers["X-Request-Id"]


async def test_tunnel_without_connector_is_530(edge, client):
    edge.create_tunnel("web", HOST)
    result = await get(client, edge.public, "/")
    assert_edge_page(*result, 530, "no-connector")


async def test_unreachable_origin_is_502(edge, client):
    await edge.tunnel("web", HOST, f"http://127.0.0.1:{closed_port()}")
    result = await get(client, edge.public, "/")
    assert_edge_page(*result, 502, "origin-unreachable")


async def test_slow_origin_is_504(edge, origin, client):
    await edge.tunnel("web", HOST, origin.url, origin_timeout=0.5)
    result = await get(client, edge.public, "/slow?delay=3")
    assert_edge_page(*result, 504, "origin-timeout")


async def test_origin_timeout_comes_from_the_edge_flag(make_edge, origin, client):
    edge = await make_edge(origin_timeout=0.5)
    await edge.tunnel("web", HOST, origin.url)
    result = await get(client, edge.public, "/slow?delay=3")
    assert_edge_page(*result, 504, "origin-timeout")
    ok = await get(client, edge.public, "/slow?delay=0.05")
    assert ok[0] == 200


async def test_head_over_64_kib_is_431(edge, origin, client):
    await edge.tunnel("web", HOST, origin.url)
    headers = {f"X-Fill-{i}": "x" * 8000 for i in range(9)}  # aiohttp itself would 400 on any one > 8 KiB
    result = await get(client, edge.public, "/small", headers=headers)
    assert_edge_page(*result, 431, "head-too-large")
    # A 60 KiB head still goes through.
    headers = {f"X-Fill-{i}": "x" * 7000 for i in range(8)}
    assert (await get(client, edge.public, "/echo", headers=headers))[0] == 200


async def test_body_over_the_limit_is_413(make_edge, origin, client):
    edge = await make_edge(max_body_size=1 << 20)
    await edge.tunnel("web", HOST, origin.url)
    declared = await get(client, edge.public, "/upload", method="POST", data=io.BytesIO(b"x" * (2 << 20)))
    assert_edge_page(*declared, 413, "body-too-large")

    async def chunks():
        for _ in range(40):
            yield b"y" * 65536
    streamed = await get(client, edge.public, "/upload", method="POST", data=chunks())
    assert_edge_page(*streamed, 413, "body-too-large")
    assert (await get(client, edge.public, "/upload", method="POST", data=b"z" * 1000))[0] == 200


async def test_forged_tunnel_error_from_the_origin_is_stripped(edge, origin, client):
    await edge.tunnel("web", HOST, origin.url)
    status, headers, body = await get(client, edge.public, "/forged")
    assert status == 200 and body == b"forged\n"
    assert "Tunnel-Error" not in headers
    assert headers["X-Request-Id"] != "origin-made"


async def test_origin_reset_mid_body_ends_the_client_connection(edge, origin, client):
    await edge.tunnel("web", HOST, origin.url)
    with pytest.raises(aiohttp.ClientPayloadError):
        async with client.get(edge.public + "/reset", headers={"Host": HOST}) as resp:
            assert resp.status == 200
            await resp.read()


async def test_malformed_request_is_400(edge):
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.edge.public_port)
    writer.write(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert data.startswith(b"HTTP/1.1 400 ")
    assert b"Tunnel-Error: bad-request" in data


async def test_an_oversized_origin_head_is_502_and_the_tunnel_survives(edge, origin, client):
    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        filler = "".join(f"X-Fill-{i}: {'v' * 1000}\r\n" for i in range(300))  # ~300 KiB head
        writer.write(f"HTTP/1.1 200 OK\r\n{filler}Content-Length: 2\r\n\r\nok".encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        await edge.tunnel("big", "big.localhost", f"http://127.0.0.1:{port}")
        await edge.tunnel("web", HOST, origin.url)
        result = await get(client, edge.public, "/", host="big.localhost")
        assert_edge_page(*result, 502, "origin-unreachable")
        assert b"response head exceeds 64 KiB" in result[2]
        assert (await get(client, edge.public, "/small"))[0] == 200
        assert (await get(client, edge.public, "/", host="big.localhost"))[0] == 502
    finally:
        server.close()


async def test_a_stalled_request_body_is_cut_off_with_408(edge, origin):
    await edge.tunnel("web", HOST, origin.url)
    edge.edge.public_settings.body_timeout = 0.5
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.edge.public_port)
    writer.write(f"POST /upload HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 100\r\n\r\n0123456789".encode())
    started = asyncio.get_running_loop().time()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert data.startswith(b"HTTP/1.1 408 ") and b"Tunnel-Error: request-timeout" in data
    assert asyncio.get_running_loop().time() - started < 5


async def test_a_slow_but_moving_body_is_not_cut_off(edge, origin):
    await edge.tunnel("web", HOST, origin.url)
    edge.edge.public_settings.body_timeout = 0.5
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.edge.public_port)
    writer.write(f"POST /upload HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 8\r\n\r\n".encode())
    for _ in range(8):  # one byte every 0.2 s: 1.6 s in all, never 0.5 s without progress
        await asyncio.sleep(0.2)
        writer.write(b"x")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    writer.close()
    assert head.startswith(b"HTTP/1.1 200 ")


async def test_a_header_line_that_never_ends_is_bounded(edge, origin):
    await edge.tunnel("web", HOST, origin.url)
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.edge.public_port)
    writer.write(f"GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Endless: ".encode())
    answer = b""
    try:
        for _ in range(64):  # at most 4 MiB, never a line end
            writer.write(b"a" * 65536)
            await writer.drain()
            await asyncio.sleep(0)
    except ConnectionError:
        pass
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 431 ") and b"head-too-large" in answer


async def test_two_host_headers_are_refused(edge, origin):
    await edge.tunnel("web", HOST, origin.url)
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.edge.public_port)
    writer.write(f"GET /small HTTP/1.1\r\nHost: {HOST}\r\nHost: other.localhost\r\n\r\n".encode())
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 400 ") and b"more than one Host" in answer


async def test_absolute_form_targets_are_routed_by_their_authority(edge, origin):
    await edge.tunnel("web", HOST, origin.url)
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.edge.public_port)
    writer.write(f"GET http://{HOST}/echo?x=1 HTTP/1.1\r\nHost: nobody.localhost\r\nConnection: close\r\n\r\n".encode())
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200 ") and b'"/echo?x=1"' in answer


async def test_a_half_closed_client_still_gets_its_answer(edge, origin):
    await edge.tunnel("web", HOST, origin.url)
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.edge.public_port)
    writer.write(f"GET /small HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
    writer.write_eof()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200 ") and len(answer) > 1024
