"""CPU and memory limits; a runaway never stalls other keys or the event loop; watchdog kill."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from tunnel.loader import CpuLimitExceeded, Loader, MemoryLimitExceeded, Request, WorkerQuarantined, WorkerUnavailable

from .conftest import CountingFactory, code, get

RUNAWAY = """let n = 0; export default { fetch(req) {
  n++;
  if (new URL(req.url).pathname === "/spin") { try { while (true) {} } catch (e) { return new Response("caught " + e) } }
  return Response.json({n}) } }"""
OTHER = "export default { fetch() { return new Response('ok') } }"


async def test_cpu_limit_stops_runaway_and_isolate_is_reloaded(loader):
    factory = CountingFactory(code(RUNAWAY))
    stub = loader.get("runaway", factory)
    r = await stub.fetch(Request("GET", "http://a/count"))
    assert json.loads(await r.read()) == {"n": 1}
    t0 = time.monotonic()
    with pytest.raises(CpuLimitExceeded, match="exceeded CPU time limit") as info:
        await stub.fetch(Request("GET", "http://a/spin"))
    elapsed = time.monotonic() - t0
    assert info.value.status == 503
    assert elapsed < 3.0, elapsed
    r = await stub.fetch(Request("GET", "http://a/count"))
    assert json.loads(await r.read()) == {"n": 1}       # fresh isolate (state reset) ...
    assert factory.calls == 1                            # ... from the cached code, no factory re-run
    assert loader.stats()["reloads"] == 1
    assert loader.stats()["errors"] == {"CpuLimitExceeded": 1}


async def test_cpu_limit_counts_all_turns_of_one_request(loader):
    src = """export default { async fetch() {
      for (let i = 0; i < 10; i++) { const end = Date.now() + 20; while (Date.now() < end) {} await new Promise(r => setTimeout(r, 1)); }
      return new Response("finished") } }"""
    with pytest.raises(CpuLimitExceeded):
        await loader.get("multi-turn", CountingFactory(code(src))).fetch(get())


async def test_other_keys_and_the_event_loop_keep_going_during_a_runaway():
    async with Loader(shards=2) as ld:
        spin = ld.get("spinner", CountingFactory(code(RUNAWAY)))
        others = [ld.get(f"other-{i}", CountingFactory(code(OTHER))) for i in range(6)]
        for o in others:  # warm them (some share the spinner's shard, some do not)
            await (await o.fetch(get())).read()
        await (await spin.fetch(Request("GET", "http://a/count"))).read()
        stop = asyncio.Event()
        lags: list[float] = []
        latencies: list[float] = []
        limits_hit = 0

        quarantined = 0

        async def spinner():
            nonlocal limits_hit, quarantined
            while not stop.is_set():
                try:
                    await spin.fetch(Request("GET", "http://a/spin"))
                except CpuLimitExceeded:
                    limits_hit += 1
                except WorkerQuarantined as exc:  # after 3 hits in 10 s: refused without running
                    quarantined += 1
                    assert 0 < exc.retry_after <= 5
                    await asyncio.sleep(0.05)

        async def ticker():
            while not stop.is_set():
                t = time.monotonic()
                await asyncio.sleep(0.005)
                lags.append(time.monotonic() - t - 0.005)

        async def client():
            while not stop.is_set():
                for o in others:
                    t = time.monotonic()
                    r = await o.fetch(get())
                    assert await r.read() == b"ok"
                    latencies.append(time.monotonic() - t)
                await asyncio.sleep(0.01)

        tasks = [asyncio.ensure_future(f()) for f in (spinner, ticker, client)]
        await asyncio.sleep(1.5)
        stop.set()
        await asyncio.gather(*tasks)
        latencies.sort()
        print(f"\nrunaway: {limits_hit} CPU-limit hits in 1.5 s; other keys answered {len(latencies)} requests, "
              f"p50 {latencies[len(latencies) // 2] * 1e3:.2f} ms, max {latencies[-1] * 1e3:.1f} ms; "
              f"event-loop lag max {max(lags) * 1e3:.1f} ms")
        assert limits_hit == 3 and quarantined >= 1
        assert len(latencies) >= 10
        # The contract is "within a second at worst"; typical here is < 0.15 s. The bound is generous
        # because the shared 2-core host can stall any process for a while; the numbers are printed.
        assert latencies[-1] < 3.0
        assert max(lags) < 1.0


async def test_memory_limit():
    async with Loader(shards=1, memory_limit_mb=16, cpu_limit_ms=2000) as ld:
        src = """export default { async fetch(req) {
          if (new URL(req.url).pathname === "/ok") return new Response("fine");
          const a = []; while (true) a.push(new Array(100000).fill(1)); } }"""
        factory = CountingFactory(code(src))
        stub = ld.get("hungry", factory)
        with pytest.raises(MemoryLimitExceeded, match="out of memory|memory limit") as info:
            await stub.fetch(get())
        assert info.value.status == 503
        r = await stub.fetch(Request("GET", "http://a/ok"))
        assert await r.read() == b"fine"
        assert ld.stats()["reloads"] == 1 and factory.calls == 1     # the isolate was discarded and rebuilt


async def test_memory_limit_at_load_time():
    async with Loader(shards=1, memory_limit_mb=8, load_cpu_limit_ms=2000) as ld:
        src = "const big = []; while (true) big.push('x'.repeat(1000) + Math.random()); export default {fetch(){}}"
        with pytest.raises(MemoryLimitExceeded):
            await ld.get("hungry-load", CountingFactory(code(src))).fetch(get())


async def test_watchdog_kills_a_shard_that_stops_answering():
    # A CPU limit far above the watchdog's timeout stands in for a native operation the engine
    # cannot interrupt: only killing the process stops it.
    async with Loader(shards=1, cpu_limit_ms=30_000, hang_timeout_s=0.5, failure_ttl_s=60, quarantine_after=0) as ld:
        await ld.start()  # the spare process is up (as the edge starts its loader)
        spin_factory = CountingFactory(code(RUNAWAY))
        spin = ld.get("stuck", spin_factory)
        bystander = ld.get("bystander", CountingFactory(code(
            "export default { async fetch() { await new Promise(r => setTimeout(r, 300)); return new Response('late') } }")))
        await (await spin.fetch(Request("GET", "http://a/count"))).read()
        await (await bystander.fetch(get())).read()
        waiting = asyncio.ensure_future(bystander.fetch(get()))
        await asyncio.sleep(0.05)
        t0 = time.monotonic()
        spinning = asyncio.ensure_future(spin.fetch(Request("GET", "http://a/spin")))
        await asyncio.sleep(0.1)
        late_factory = CountingFactory(code(OTHER))
        late = ld.get("late-load", late_factory)   # its shard is busy: it loads on the spare instead
        late_first = asyncio.ensure_future(late.fetch(get()))
        assert await (await late_first).read() == b"ok"
        answered_late = time.monotonic() - t0
        with pytest.raises(CpuLimitExceeded):
            await spinning
        killed_after = time.monotonic() - t0
        with pytest.raises(WorkerUnavailable):  # it was waiting (a timer) on the stuck shard: lost with it
            await waiting
        assert answered_late < killed_after and late_factory.calls == 1
        assert 0.4 < killed_after < 3.0, killed_after
        # a quick request sent in the same tick as a stuck one (likely the same batch) is never blamed
        quick = ld.get("quick", CountingFactory(code(OTHER)))
        await (await quick.fetch(get())).read()
        await (await spin.fetch(Request("GET", "http://a/count"))).read()
        results = await asyncio.gather(quick.fetch(get()), spin.fetch(Request("GET", "http://a/spin")),
                                       return_exceptions=True)
        assert isinstance(results[1], CpuLimitExceeded)
        assert not isinstance(results[0], CpuLimitExceeded), results[0]
        r = await spin.fetch(Request("GET", "http://a/count"))
        assert json.loads(await r.read()) == {"n": 1} and spin_factory.calls == 1
        assert sum(s["kills"] for s in ld.stats()["shards"]) == 2


async def test_a_key_that_gets_its_shard_killed_twice_is_quarantined():
    async with Loader(shards=1, cpu_limit_ms=30_000, hang_timeout_s=0.3) as ld:
        spin = ld.get("stuck", CountingFactory(code(RUNAWAY)))
        for _ in range(2):
            with pytest.raises(CpuLimitExceeded):
                await spin.fetch(Request("GET", "http://a/spin"))
        with pytest.raises(WorkerQuarantined) as info:
            await spin.fetch(Request("GET", "http://a/count"))
        assert info.value.status == 503 and info.value.retry_after > 50
        assert "stuck" in ld.stats()["quarantined"]
