"""Fixtures that run the real parts on 127.0.0.1: origin, edge, connectors."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web

from tests.tunnel.origin_app import EVENTS_KEY, Events, create_app
from tunnel.connector.agent import Connector, ConnectorOptions
from tunnel.edge.server import Edge, EdgeOptions


@dataclass
class RunningOrigin:
    url: str
    port: int
    events: Events
    runner: web.AppRunner


async def start_origin(name: str = "origin") -> RunningOrigin:
    app = create_app(name)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return RunningOrigin(f"http://127.0.0.1:{port}", port, app[EVENTS_KEY], runner)


@pytest.fixture
async def origin() -> AsyncIterator[RunningOrigin]:
    running = await start_origin()
    yield running
    await running.runner.cleanup()


class EdgeHarness:
    """An in-process edge plus helpers to add tunnels with in-process connectors."""

    def __init__(self, edge: Edge):
        self.edge = edge
        self.connectors: list[tuple[Connector, asyncio.Task]] = []

    @property
    def public(self) -> str:
        return f"http://127.0.0.1:{self.edge.public_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.edge.connector_port}"

    def create_tunnel(self, name: str, *hostnames: str) -> str:
        return self.edge.create_tunnel(name, list(hostnames), author="test")

    async def connect(self, token: str, url: str, connections: int = 1, wait: bool = True,
                      **options) -> tuple[Connector, asyncio.Task]:
        connector = Connector(ConnectorOptions(edge=self.ws_url, token=token, url=url,
                                               connections=connections, **options))
        task = asyncio.create_task(connector.run())
        self.connectors.append((connector, task))
        if wait:
            waiter = asyncio.create_task(connector.registered.wait())
            done, _ = await asyncio.wait({waiter, task}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if task in done:
                task.result()  # raises why it ended
            assert connector.registered.is_set(), "connector did not register within 10 s"
        return connector, task

    async def tunnel(self, name: str, hostname: str, url: str, **options) -> Connector:
        token = self.create_tunnel(name, hostname)
        connector, _ = await self.connect(token, url, **options)
        return connector

    async def close(self) -> None:
        for connector, task in self.connectors:
            connector.stop()
        for connector, task in self.connectors:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(task, 5)
        await self.edge.stop()


@pytest.fixture
async def make_edge(tmp_path):
    harnesses: list[EdgeHarness] = []

    async def factory(**options) -> EdgeHarness:
        opts = EdgeOptions(data_dir=str(tmp_path / f"edge{len(harnesses)}"), public=("127.0.0.1", 0),
                           connectors=("127.0.0.1", 0), admin=("127.0.0.1", 0), **options)
        edge = Edge(opts)
        await edge.start()
        harness = EdgeHarness(edge)
        harnesses.append(harness)
        return harness

    yield factory
    for harness in harnesses:
        await harness.close()


@pytest.fixture
async def edge(make_edge) -> EdgeHarness:
    return await make_edge()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False, timeout=aiohttp.ClientTimeout(total=120)) as session:
        yield session
