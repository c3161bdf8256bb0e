"""Worker code that would run while the runtime serialises values for the host (``toJSON``,
getters, monkey-patched built-ins) runs inside the request's CPU-limited turn: the request gets
``CpuLimitExceeded`` and its isolate is discarded, the shard (and every other isolate on it) keeps
answering, the watchdog never fires."""

from __future__ import annotations

import asyncio
import time

import pytest

from tunnel.loader import CpuLimitExceeded, Loader, Request

from .conftest import CountingFactory, code, get

SPIN = "{ toJSON() { for (;;) {} } }"
HOSTILE = {
    # a binding argument with a hostile toJSON / getter
    "arg-tojson": f"return env.B.m({SPIN})",
    "arg-getter": "return env.B.m({ get x() { for (;;) {} } })",
    "arg-nested": f"return env.B.m([1, {{a: {SPIN}}}])",
    # request.cf of a Request passed on to a binding / global fetch
    "cf-binding": f"return env.B.fetch(new Request(req, {{cf: {SPIN}}}))",
    "cf-outbound": f"return fetch(new Request(req, {{cf: {SPIN}}}))",
    # a Response whose fields are not what they claim to be
    "res-status-text": f"class R extends Response {{ get statusText() {{ return {SPIN} }} }} return new R('x')",
    "res-status": f"class R extends Response {{ get status() {{ return {SPIN} }} }} return new R('x')",
    "req-url": f"class Q extends Request {{ get url() {{ return {SPIN} }} }} return env.B.fetch(new Q(req))",
}
# built-ins the runtime uses after the turn, patched by the worker: the runtime keeps its own copies
PATCHED = {
    "json-stringify": "JSON.stringify = () => { for (;;) {} };",
    "json-parse": "JSON.parse = () => { for (;;) {} };",
    "array-join": "Array.prototype.join = function () { for (;;) {} };",
    "string-slice": "String.prototype.slice = function () { for (;;) {} }; crypto.getRandomValues(new Uint8Array(9000));",
    "map-delete": "Map.prototype.delete = function () { for (;;) {} };",
}


class Binding:
    async def m(self, *args):
        return "m"

    async def fetch(self, request):
        from tunnel.loader import Response
        return Response(200, {}, b"binding")


class Outbound:
    async def fetch(self, request):
        from tunnel.loader import Response
        return Response(200, {}, b"outbound")


def hostile_worker() -> str:
    cases = "\n".join(f"    if (p === '/{name}') {{ {body} }}" for name, body in HOSTILE.items())
    # routed without the URL polyfill (core-js wraps the global Request, which hides subclasses)
    return ("export default { async fetch(req, env) {\n  const p = req.url.slice(req.url.lastIndexOf('/'));\n"
            f"{cases}\n  return new Response('fine') }} }}")


async def _bystander(stub, stop: asyncio.Event, answered: list, failed: list) -> None:
    while not stop.is_set():
        try:
            r = await stub.fetch(get())
            assert await r.read() == b"ok"
            answered.append(time.monotonic())
        except Exception as exc:  # noqa: BLE001 - recorded and asserted on below
            failed.append(exc)
        await asyncio.sleep(0.005)


async def test_hostile_serialisation_hits_the_cpu_limit_not_the_watchdog():
    # hang_timeout_s far above the CPU limit: only the CPU limit may stop these in the time allowed
    async with Loader(shards=1, hang_timeout_s=10.0, quarantine_after=0) as ld:
        hostile_factory = CountingFactory(code(hostile_worker(), env={"B": Binding()}, global_outbound=Outbound()))
        hostile = ld.get("hostile", hostile_factory)
        bystander = ld.get("bystander", CountingFactory(code(
            "export default { fetch() { return new Response('ok') } }")))
        assert await (await bystander.fetch(get())).read() == b"ok"
        assert await (await hostile.fetch(get())).read() == b"fine"
        stop = asyncio.Event()
        answered: list = []
        failed: list = []
        client = asyncio.ensure_future(_bystander(bystander, stop, answered, failed))
        took = {}
        for name in HOSTILE:
            before = len(answered)
            t0 = time.monotonic()
            with pytest.raises(CpuLimitExceeded):
                await hostile.fetch(Request("GET", f"http://h/{name}"))
            took[name] = time.monotonic() - t0
            # the isolate was discarded and comes back from the cached code
            assert await (await hostile.fetch(get())).read() == b"fine"
            await asyncio.sleep(0.05)
            assert len(answered) > before, f"the bystander did not answer around {name}"
        stop.set()
        await client
        print("\nstopped after (s):", {k: round(v, 3) for k, v in took.items()})
        assert not failed, failed
        assert max(took.values()) < 3.0, took          # the watchdog (10 s) never had to act
        assert sum(s["kills"] for s in ld.stats()["shards"]) == 0
        assert hostile_factory.calls == 1


@pytest.mark.parametrize("name", sorted(PATCHED))
async def test_patched_builtins_do_not_stall_the_runtime(name):
    src = ("export default { async fetch(req, env) {\n"
           f"  if (req.url.endsWith('/patch')) {{ {PATCHED[name]} }}\n"
           "  return new Response('fine') } }")
    async with Loader(shards=1, hang_timeout_s=10.0) as ld:
        stub = ld.get("patched", CountingFactory(code(src)))
        bystander = ld.get("bystander", CountingFactory(code(
            "export default { fetch() { return new Response('ok') } }")))
        t0 = time.monotonic()
        try:
            r = await stub.fetch(Request("GET", "http://h/patch"))
            await r.read()
        except CpuLimitExceeded:
            pass        # a runtime step bounded by the CPU limit: the isolate is discarded
        took = time.monotonic() - t0
        assert took < 3.0, took
        assert await (await bystander.fetch(get())).read() == b"ok"
        assert await (await stub.fetch(get())).read() == b"fine"
        assert sum(s["kills"] for s in ld.stats()["shards"]) == 0


async def test_a_value_that_does_not_serialise_rejects_in_the_worker(loader):
    # serialised when the binding is called: the worker can catch it, the isolate stays
    src = """export default { async fetch(req, env) {
      const a = {}; a.a = a;
      const out = [];
      for (const v of [a, 1n]) { try { await env.B.m(v); out.push('sent') } catch (e) { out.push(e.name) } }
      return new Response(out.join(',')) } }"""
    stub = loader.get("unserialisable", CountingFactory(code(src, env={"B": Binding()})))
    for _ in range(2):
        assert await (await stub.fetch(get())).read() == b"TypeError,TypeError"
    assert loader.stats()["reloads"] == 0
