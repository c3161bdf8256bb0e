"""Multiplexing, back-pressure, cancellation and tunnel isolation."""

from __future__ import annotations

import asyncio

import pytest
import websockets
from websockets.asyncio.client import connect as ws_connect

from tests.tunnel.conftest import start_origin
from tests.tunnel.origin_app import pattern
from tunnel.errors import HandshakeRefused
from tunnel.protocol import Connection, Role
from tunnel.protocol import events as ev
from tunnel.protocol import frames as F
from tunnel.protocol.messages import encode_document

HOST = "web.localhost"


async def test_many_requests_complete_while_one_client_reads_nothing(edge, origin, client):
    await edge.tunnel("web", HOST, origin.url)
    # A client that asks for 256 MiB and never reads: its stream fills its window and stops.
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.edge.public_port, limit=1024)
    writer.write(f"GET /download?size={256 << 20} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
    await writer.drain()
    await asyncio.sleep(0.5)

    async def one(i: int) -> bytes:
        async with client.get(edge.public + "/small", headers={"Host": HOST}) as resp:
            assert resp.status == 200
            return await resp.read()

    bodies = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(200))), 30)
    assert all(body == pattern(1024) for body in bodies)
    # The stalled stream holds bounded memory: the edge's write buffer for that client plus
    # one stream window, not the 256 MiB the origin would like to send.
    writer.close()


async def test_client_disconnect_cancels_the_origin_request(edge, origin, client):
    await edge.tunnel("web", HOST, origin.url)
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.edge.public_port)
    writer.write(f"GET /forever HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    await reader.read(100_000)
    assert not origin.events.cancelled.is_set()
    writer.transport.abort()
    await asyncio.wait_for(origin.events.cancelled.wait(), 5)


async def test_connector_only_ever_serves_its_own_tunnel(edge, client):
    origin_a = await start_origin("origin-a")
    origin_b = await start_origin("origin-b")
    try:
        await edge.tunnel("a", "a.localhost", origin_a.url)
        await edge.tunnel("b", "b.localhost", origin_b.url)
        for _ in range(20):
            for host, expected in (("a.localhost", b"origin-a"), ("b.localhost", b"origin-b")):
                async with client.get(edge.public + "/whoami", headers={"Host": host}) as resp:
                    assert await resp.read() == expected
        # A second connector with A's token only adds capacity to A.
        token_a2 = edge.edge.rotate_token("a")
        await edge.connect(token_a2, origin_a.url)
        async with client.get(edge.public + "/whoami", headers={"Host": "b.localhost"}) as resp:
            assert await resp.read() == b"origin-b"
    finally:
        await origin_a.runner.cleanup()
        await origin_b.runner.cleanup()


async def test_unknown_token_is_refused_with_a_clear_message(edge, origin):
    edge.create_tunnel("web", HOST)
    connector, task = await edge.connect("web.not-the-token", origin.url, wait=False)
    with pytest.raises(HandshakeRefused) as info:
        await asyncio.wait_for(task, 10)
    assert info.value.code == "unauthorized"
    assert "token rotate" in info.value.message


async def test_rotated_token_stops_working(edge, origin, client):
    token = edge.create_tunnel("web", HOST)
    connector, task = await edge.connect(token, origin.url)
    edge.edge.rotate_token("web")
    with pytest.raises(HandshakeRefused):
        await asyncio.wait_for(task, 15)
    async with client.get(edge.public + "/small", headers={"Host": HOST}) as resp:
        assert resp.status == 530


async def test_unsupported_protocol_version_is_refused(edge):
    edge.create_tunnel("web", HOST)
    async with ws_connect(edge.ws_url, compression=None) as ws:
        doc = {"versions": [7, 8], "token": "x"}
        await ws.send(F.encode(F.FrameType.HELLO, 0, 0, encode_document(doc)))
        reply = await asyncio.wait_for(ws.recv(), 5)
        conn = Connection(Role.CONNECTOR)
        events = conn.receive(reply)
        assert isinstance(events[0], ev.Refused)
        assert events[0].code == "unsupported-version"
        assert "[1]" in events[0].message and "[7, 8]" in events[0].message
        with pytest.raises(websockets.exceptions.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)


async def test_garbage_from_a_connector_closes_only_that_connection(edge, origin, client):
    await edge.tunnel("web", HOST, origin.url)
    async with ws_connect(edge.ws_url, compression=None) as ws:
        await ws.send(b"\x0f" + b"\x00" * 20)  # unknown frame type before HELLO
        with pytest.raises(websockets.exceptions.ConnectionClosed):
            for _ in range(3):
                await asyncio.wait_for(ws.recv(), 5)
    async with client.get(edge.public + "/small", headers={"Host": HOST}) as resp:
        assert resp.status == 200


async def test_unauthenticated_connections_are_bounded_without_locking_anyone_out(edge):
    """Silent handshakes hold at most per_address slots per source address and total slots
    overall; a new one closes the oldest of its own address, or of the busiest address."""
    from tunnel.edge.connectors import HandshakeSlots
    edge.edge.handshakes = HandshakeSlots(per_address=2, total=3)

    async def silent(source: str):
        return await ws_connect(edge.ws_url, compression=None, local_addr=(source, 0))

    async def closed(ws, wait: float = 2.0) -> bool:
        try:
            await asyncio.wait_for(ws.recv(), wait)
        except websockets.exceptions.ConnectionClosed:
            return True
        except asyncio.TimeoutError:
            return False
        return False

    a1, a2 = await silent("127.0.0.1"), await silent("127.0.0.1")
    a3 = await silent("127.0.0.1")  # over 2 for 127.0.0.1: a1 goes
    assert await closed(a1) and len(edge.edge.handshakes) == 2
    b1 = await silent("127.0.0.2")  # 3 in all
    b2 = await silent("127.0.0.2")  # over 3 in all: the busiest address (127.0.0.1) loses a2
    assert await closed(a2)
    assert not await closed(a3, 0.3) and not await closed(b1, 0.3) and len(edge.edge.handshakes) == 3
    for ws in (a3, b1, b2):
        await ws.close()


async def test_a_connector_cannot_send_more_than_the_response_head_announced(edge):
    """A modified connector that answers `Content-Length: 0` and then sends a body must not be
    able to plant a second response on the client's keep-alive connection."""
    from tunnel.protocol import ResponseHead
    token = edge.create_tunnel("evil", "evil.localhost")
    async with ws_connect(edge.ws_url, compression=None) as ws:
        conn = Connection(Role.CONNECTOR)
        conn.send_hello(token)
        await ws.send(conn.data_to_send())
        assert isinstance(conn.receive(await ws.recv())[0], ev.Welcomed)

        async def serve():
            while True:
                for event in conn.receive(await ws.recv()):
                    if isinstance(event, ev.RequestReceived):
                        conn.send_response(event.stream_id, ResponseHead(200, "OK", [("Content-Length", "0")]))
                        conn.send_data(event.stream_id, b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPWNED!",
                                       end_stream=True)
                if conn.outbound_size:
                    await ws.send(conn.data_to_send())

        server = asyncio.create_task(serve())
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", edge.edge.public_port)
            writer.write(b"GET / HTTP/1.1\r\nHost: evil.localhost\r\n\r\n")
            data = await asyncio.wait_for(reader.read(), 10)
            writer.close()
        finally:
            server.cancel()
    assert data.startswith(b"HTTP/1.1 200 OK") and b"PWNED" not in data
    assert data.count(b"HTTP/1.1") == 1
