"""A caller that gives up on a request (``asyncio.wait_for`` around ``stub.fetch``) leaves nothing
behind: no in-flight entry, body handle or op task in the loader, no pending host operation or
timer in the isolate; the worker keeps answering."""

from __future__ import annotations

import asyncio

import pytest

from tunnel.loader import Loader, Request, WorkerScriptError

from .conftest import CountingFactory, code, get

HANGING = """export default { async fetch(req, env) {
  const path = req.url.slice(req.url.lastIndexOf('/'));
  if (path === '/ok') return new Response('ok');
  const big = ['x'.repeat(100000), req.url].join('');   // held by the pending continuation
  if (path === '/binding') await env.SLOW.wait(path);
  if (path === '/timer') await new Promise((r) => setTimeout(r, 3_000_000));
  if (path === '/body') { await env.SLOW.wait(path); return new Response(req.body); }
  return new Response(big.length) } }"""


class Slow:
    def __init__(self) -> None:
        self.started = 0
        self.cancelled = 0

    async def wait(self, what: str) -> str:
        self.started += 1
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return what


async def _heap(ld: Loader, stub, key: str) -> int:
    """The isolate's heap as last reported (the shard reports it every 64 turns)."""
    for _ in range(64):
        assert await (await stub.fetch(get("http://h/ok"))).read() == b"ok"
    return ld.stats()["per_worker"][key]["memory_bytes"]


@pytest.mark.parametrize("path", ["/binding", "/timer", "/body"])
async def test_cancelled_fetches_leave_nothing_behind(path):
    slow = Slow()
    async with Loader(shards=1) as ld:
        factory = CountingFactory(code(HANGING, env={"SLOW": slow}))
        stub = ld.get("hang", factory)
        before = await _heap(ld, stub, "hang")
        inst = ld._entries["hang"].instance
        for i in range(200):
            body = b"request body %d" % i if path == "/body" else None
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(stub.fetch(Request("POST", f"http://h{path}", body=body)), 0.02)
            assert not inst.inflight
        await asyncio.sleep(0.05)   # let cancelled op tasks finish
        assert not inst.inflight and not inst.handles and not inst.tasks and not inst.closable
        after = await _heap(ld, stub, "hang")
        assert ld._entries["hang"].instance is inst and inst.alive      # the same isolate, never discarded
        # 200 leaked continuations would hold 200 × 100 KB; allow GC slack only
        assert after - before < 4 * 1024 * 1024, (before, after)
        if path in ("/binding", "/body"):
            assert slow.started == 200 and slow.cancelled == 200
        assert ld.stats()["shards"][0]["kills"] == 0 and factory.calls == 1
        assert await (await stub.fetch(get("http://h/ok"))).read() == b"ok"


async def test_a_cancelled_request_stops_asking_the_host():
    # a handler that keeps calling a quick binding: a cancel can cross the answer of an op already
    # on its way; the op that answer leads to is refused and forgotten too, so the loop stops
    calls = []

    class Quick:
        async def m(self):
            calls.append(1)
            await asyncio.sleep(0.001)
            return 1

    src = """export default { async fetch(req, env) {
      if (req.url.endsWith('/ok')) return new Response('ok');
      for (;;) await env.Q.m() } }"""
    async with Loader(shards=1) as ld:
        stub = ld.get("loop", CountingFactory(code(src, env={"Q": Quick()})))
        for _ in range(20):
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(stub.fetch(get("http://h/loop")), 0.03)
        await asyncio.sleep(0.1)
        n = len(calls)
        await asyncio.sleep(0.2)
        assert len(calls) == n and n > 20
        inst = ld._entries["loop"].instance
        assert inst.alive and not inst.inflight and not inst.tasks
        assert await (await stub.fetch(get("http://h/ok"))).read() == b"ok"
        assert ld.stats()["shards"][0]["kills"] == 0


async def test_a_promise_nothing_can_settle_is_answered_at_once():
    """No host operation is outstanding, yet the handler has not answered: its promise can never
    settle, so the request fails at once (as workerd says), instead of hanging until a timeout."""
    src = """export default { async fetch(req) {
      if (req.url.endsWith('/never')) await new Promise(() => {});
      return new Response('ok') } }"""
    async with Loader(shards=1) as ld:
        stub = ld.get("stuck", CountingFactory(code(src)))
        for _ in range(3):
            with pytest.raises(WorkerScriptError, match="The script will never generate a response"):
                await asyncio.wait_for(stub.fetch(get("http://h/never")), 5)
        assert await (await stub.fetch(get("http://h/ok"))).read() == b"ok"   # the isolate is fine

