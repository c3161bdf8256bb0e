"""Caching semantics: single flight, failure memory, code immutability, eviction, isolation, stats."""

from __future__ import annotations

import asyncio
import json

import pytest

from tunnel.loader import Loader, Request, WorkerLoadError, WorkerUnavailable

from .conftest import CountingFactory, code, get, run

COUNTER = """let n = 0;
globalThis.shared = globalThis.shared || 0;
export default { fetch(req) { n++; globalThis.shared++; return Response.json({n, shared: globalThis.shared, v: VERSION}) } }"""


def counter(version: str = "1"):
    return code(COUNTER.replace("VERSION", json.dumps(version)))


async def test_get_returns_at_once_and_factory_runs_later(loader):
    factory = CountingFactory(counter())
    stub = loader.get("lazy", factory)
    assert factory.calls == 0          # never inside get()
    await asyncio.sleep(0)
    await asyncio.sleep(0.05)
    assert factory.calls == 1          # eagerly, soon after, even without a fetch
    r = await stub.fetch(get())
    assert json.loads(await r.read())["n"] == 1


async def test_single_flight_under_100_concurrent_gets(loader):
    gate = asyncio.Event()
    calls = 0

    async def slow_factory():
        nonlocal calls
        calls += 1
        await gate.wait()
        return counter()

    stubs = [loader.get("flight", slow_factory) for _ in range(100)]
    tasks = [asyncio.ensure_future(s.fetch(get())) for s in stubs]
    await asyncio.sleep(0.05)
    gate.set()
    responses = await asyncio.gather(*tasks)
    assert calls == 1
    ns = sorted([json.loads(await r.read())["n"] for r in responses])
    assert ns == list(range(1, 101))   # one isolate served all of them
    s = loader.stats()
    assert (s["misses"], s["hits"], s["loads"]) == (1, 99, 1)


async def test_failed_load_is_remembered_then_retried():
    async with Loader(shards=1, failure_ttl_s=0.3) as ld:
        calls = 0

        async def flaky():
            nonlocal calls
            calls += 1
            if calls == 1:
                return code("export default { fetch() { return new Response('x') } ")  # syntax error
            return counter()

        errors = []
        for _ in range(5):
            with pytest.raises(WorkerLoadError) as info:
                await ld.get("flaky", flaky).fetch(get())
            errors.append(str(info.value))
        assert calls == 1
        assert len(set(errors)) == 1 and "SyntaxError" in errors[0] and "index.js:1:" in errors[0]
        # concurrent callers of the failed load all see the same error
        results = await asyncio.gather(*(ld.get("flaky", flaky).fetch(get()) for _ in range(10)), return_exceptions=True)
        assert {str(r) for r in results} == {errors[0]}
        await asyncio.sleep(0.35)
        r = await ld.get("flaky", flaky).fetch(get())
        assert json.loads(await r.read())["n"] == 1 and calls == 2
        assert ld.stats()["load_failures"] == 1


async def test_expired_failures_are_forgotten_without_a_request():
    async with Loader(shards=1, failure_ttl_s=0.1, idle_s=0.2) as ld:
        with pytest.raises(WorkerLoadError):
            await ld.get("broken", CountingFactory(ValueError("nope"))).fetch(get())
        assert "broken" in ld._entries
        await asyncio.sleep(0.4)
        assert "broken" not in ld._entries


async def test_code_does_not_change_while_cached_until_evicted(loader):
    v1, v2 = CountingFactory(counter("1")), CountingFactory(counter("2"))
    r = await loader.get("versioned", v1).fetch(get())
    assert json.loads(await r.read())["v"] == "1"
    r = await loader.get("versioned", v2).fetch(get())
    assert json.loads(await r.read()) == {"n": 2, "shared": 2, "v": "1"} and v2.calls == 0
    assert loader.evict("versioned") is True
    assert loader.evict("versioned") is False
    r = await loader.get("versioned", v2).fetch(get())
    assert json.loads(await r.read()) == {"n": 1, "shared": 1, "v": "2"} and v2.calls == 1


async def test_requests_running_on_an_evicted_isolate_finish_on_it(loader):
    class Gate:
        def __init__(self):
            self.event = asyncio.Event()
            self.entered = asyncio.Event()

        async def wait(self):
            self.entered.set()
            await self.event.wait()
            return "released"

    gate = Gate()
    src = "export default { async fetch(req, env) { const v = await env.GATE.wait(); return new Response('old:' + v) } }"
    stub = loader.get("inflight", CountingFactory(code(src, env={"GATE": gate})))
    task = asyncio.ensure_future(stub.fetch(get()))
    await asyncio.wait_for(gate.entered.wait(), 5)
    loader.evict("inflight")
    new = CountingFactory(code("export default { fetch() { return new Response('new') } }"))
    r = await loader.get("inflight", new).fetch(get())
    assert await r.read() == b"new"
    gate.event.set()
    r = await task
    assert await r.read() == b"old:released"


async def test_isolation_between_keys_and_state_within_a_key(loader):
    src = """export default { fetch(req) {
      const p = new URL(req.url).pathname;
      if (p === "/set") { globalThis.secret = "mine"; Array.prototype.evil = 1; Object.prototype.polluted = 1; }
      return Response.json({secret: globalThis.secret ?? null, evil: [].evil ?? null, polluted: ({}).polluted ?? null}) } }"""
    a = loader.get("iso-a", CountingFactory(code(src)))
    b = loader.get("iso-b", CountingFactory(code(src)))
    r = await a.fetch(Request("GET", "http://a/set"))
    assert json.loads(await r.read()) == {"secret": "mine", "evil": 1, "polluted": 1}
    r = await b.fetch(Request("GET", "http://a/get"))
    assert json.loads(await r.read()) == {"secret": None, "evil": None, "polluted": None}
    r = await a.fetch(Request("GET", "http://a/get"))
    assert json.loads(await r.read())["secret"] == "mine"


async def test_timers_are_isolated_per_key(loader):
    src = """let fired = 0; export default { async fetch(req) {
      if (new URL(req.url).pathname === "/arm") { setTimeout(() => { fired++ }, 1); await new Promise(r => setTimeout(r, 30)); }
      return Response.json({fired}) } }"""
    a = loader.get("timer-a", CountingFactory(code(src)))
    b = loader.get("timer-b", CountingFactory(code(src)))
    r = await a.fetch(Request("GET", "http://a/arm"))
    assert json.loads(await r.read()) == {"fired": 1}
    r = await b.fetch(Request("GET", "http://a/read"))
    assert json.loads(await r.read()) == {"fired": 0}


async def test_eviction_by_count_lru():
    async with Loader(shards=1, max_workers=2) as ld:
        fa, fb, fc = (CountingFactory(counter()) for _ in range(3))
        await (await ld.get("a", fa).fetch(get())).read()
        await (await ld.get("b", fb).fetch(get())).read()
        await (await ld.get("a", fa).fetch(get())).read()   # a is now more recent than b
        await (await ld.get("c", fc).fetch(get())).read()   # evicts b
        s = ld.stats()
        assert s["workers"] == 2 and s["evictions"] == 1 and set(s["per_worker"]) == {"a", "c"}
        r = await ld.get("a", fa).fetch(get())
        assert json.loads(await r.read())["n"] == 3 and fa.calls == 1
        r = await ld.get("b", fb).fetch(get())
        assert json.loads(await r.read())["n"] == 1 and fb.calls == 2


async def test_eviction_by_memory_budget():
    # Each isolate holds about 0.3 MiB; a 2 MiB budget keeps only a few of them.
    async with Loader(shards=1, memory_budget_mb=2) as ld:
        big = code("const keep = new Array(20000).fill('x'); export default { fetch() { return new Response(String(keep.length)) } }")
        for i in range(12):
            await (await ld.get(f"m{i}", CountingFactory(big)).fetch(get())).read()
        s = ld.stats()
        assert 1 <= s["workers"] < 12 and s["evictions"] == 12 - s["workers"]
        assert s["memory_bytes"] <= 2 * 1024 * 1024
        assert "m11" in s["per_worker"] and "m0" not in s["per_worker"]


async def test_eviction_after_idle_time():
    async with Loader(shards=1, idle_s=0.2) as ld:
        f = CountingFactory(counter())
        await (await ld.get("idle", f).fetch(get())).read()
        assert ld.stats()["workers"] == 1
        await asyncio.sleep(0.6)
        s = ld.stats()
        assert s["workers"] == 0 and s["evictions"] == 1
        r = await ld.get("idle", f).fetch(get())
        assert json.loads(await r.read())["n"] == 1 and f.calls == 2


async def test_stats_report_counters_and_memory(loader):
    f = CountingFactory(counter())
    await run(loader, "s1", counter())
    stub = loader.get("s2", f)
    for _ in range(3):
        await (await stub.fetch(get())).read()
    s = loader.stats()
    assert (s["misses"], s["hits"], s["loads"], s["load_failures"], s["evictions"], s["workers"]) == (2, 0, 2, 0, 0, 2)
    assert s["per_worker"]["s2"]["requests"] == 3
    assert 0 < s["load_seconds"] < 5 and s["errors"] == {}
    assert 100_000 < s["per_worker"]["s2"]["memory_bytes"] < 2_000_000
    assert s["memory_bytes"] == sum(w["memory_bytes"] for w in s["per_worker"].values())
    # the precompiled-runtime fast path is active on the pinned binding (else isolates build 3x slower)
    started = [sh for sh in s["shards"] if sh["pid"] is not None]
    assert started and all(sh["bytecode"] for sh in started)


async def test_closed_loader_refuses_work():
    ld = Loader(shards=1)
    stub = ld.get("x", CountingFactory(counter()))
    await (await stub.fetch(get())).read()
    await ld.aclose()
    with pytest.raises(WorkerUnavailable):
        await stub.fetch(get())
    with pytest.raises(RuntimeError):
        ld.get("y", CountingFactory(counter()))


async def test_requests_waiting_for_a_load_that_gets_evicted_are_still_served(loader):
    gate = asyncio.Event()

    async def slow():
        await gate.wait()
        return counter()

    stub = loader.get("evicted-loading", slow)
    waiting = [asyncio.ensure_future(stub.fetch(get())) for _ in range(3)]
    await asyncio.sleep(0.05)
    assert loader.evict("evicted-loading")
    gate.set()
    bodies = [json.loads(await (await w).read())["n"] for w in waiting]
    assert sorted(bodies) == [1, 2, 3]
    assert "evicted-loading" not in loader.stats()["per_worker"]


async def test_prepare_install_swaps_code_atomically(loader):
    v1 = CountingFactory(counter("1"))
    stub = loader.get("swap", v1)
    r = await stub.fetch(get())
    assert json.loads(await r.read())["v"] == "1"
    v2 = CountingFactory(counter("2"))
    prepared = await loader.prepare("swap", v2)
    r = await stub.fetch(get())
    assert json.loads(await r.read())["v"] == "1"          # not visible before install
    loader.install(prepared)
    r = await stub.fetch(get())                            # an old stub sees the new code at once
    assert json.loads(await r.read()) == {"n": 1, "shared": 1, "v": "2"}
    assert v1.calls == 1 and v2.calls == 1
    with pytest.raises(ValueError):
        loader.install(prepared)


async def test_prepare_failure_and_discard(loader):
    with pytest.raises(WorkerLoadError, match=r"(?s)SyntaxError: .*index\.js:1:"):
        await loader.prepare("bad-swap", CountingFactory(code("export default {")))
    assert "bad-swap" not in loader._entries                # nothing remembered
    prepared = await loader.prepare("unused-swap", CountingFactory(counter()))
    isolates = sum(s["isolates"] for s in loader.stats()["shards"])
    loader.discard(prepared)
    assert sum(s["isolates"] for s in loader.stats()["shards"]) == isolates - 1
    assert "unused-swap" not in loader.stats()["per_worker"]
