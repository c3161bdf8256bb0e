"""Fixtures for the loader tests: a real Loader (real QuickJS in real shard processes)."""

from __future__ import annotations

from typing import Any

import pytest

from tunnel.loader import Loader, Request, WorkerCode

DATE = "2026-11-01"


def code(main_src: str | None = None, *, modules: dict[str, Any] | None = None, main: str = "index.js",
         **kwargs: Any) -> WorkerCode:
    """WorkerCode with one main module (or the given modules)."""
    mods = dict(modules or {})
    if main_src is not None:
        mods[main] = main_src
    return WorkerCode(DATE, main, mods, **kwargs)


class CountingFactory:
    """An async factory that counts its calls and returns ``value`` (or raises it)."""

    def __init__(self, value: Any):
        self.value = value
        self.calls = 0

    async def __call__(self) -> WorkerCode:
        self.calls += 1
        if isinstance(self.value, BaseException):
            raise self.value
        return self.value


def get(url: str = "http://web.localhost/x", **kwargs: Any) -> Request:
    return Request("GET", url, **kwargs)


async def run(loader: Loader, key: str, worker: WorkerCode | str, request: Request | None = None):
    """Load ``worker`` under ``key`` and return ``(response, body bytes)`` for one request."""
    if isinstance(worker, str):
        worker = code(worker)
    stub = loader.get(key, CountingFactory(worker))
    response = await stub.fetch(request or get())
    return response, await response.read()


@pytest.fixture
async def loader():
    async with Loader(shards=2) as ld:
        yield ld
