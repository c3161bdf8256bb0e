"""Benchmark of tunnel.loader on this machine. Prints numbers; asserts nothing.

Run: ``.venv/bin/python -m bench.loader_bench [--quick] [--loading]``

Measures cold load (factory to first response, through ``Loader``) of a trivial worker, a worker
using ``URL`` and the generated 20-rule policy worker (distinct code per key, as for distinct
tunnels, and identical code under distinct keys, which the shard's caches make cheap), each against
issue 11's targets (≤ 1 ms and ≤ 2 ms p50), also without the shards' heap prefaulter; where the shard's
part of a cold load goes (link, isolate, first turn: the engine itself, in this process); whether
the URL polyfill is instantiated for the policy worker (linker verdict, ``typeof URL`` inside, heap
with and without one URL identifier) and the linker's rule on small cases; warm requests
(sequential latency and concurrent throughput on one shard); a cache-hit ``get``; memory per
cached worker (shard RSS and QuickJS heap) with 1/100/1000 trivial workers, what a bare context
and the runtime's core cost (the floor), and 1,000 trivial and 1,000 policy workers against the
targets (256 KiB and 400 KiB RSS per worker); other keys' latency while one key runs
``while(true){}``. ``--loading``: only the loading and memory lines.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import dataclasses
import json
import os
import statistics
import sys
import time
from functools import lru_cache

from tunnel.loader import CpuLimitExceeded, Loader, Request, Response, WorkerCode

TRIVIAL = "export default { fetch(req) { return new Response('ok') } }"
TYPICAL = """export default { async fetch(req, env) {
  const url = new URL(req.url);
  if (url.pathname.startsWith('/api/')) return Response.json({path: url.pathname, q: url.searchParams.get('q')});
  return new Response('hello ' + req.headers.get('user-agent'), {headers: {'x-worker': 'typical'}});
} }"""
FORWARD = "export default { fetch(req, env) { return env.TUNNEL.fetch(req) } }"
SPIN = "export default { fetch(req) { if (req.url.endsWith('/spin')) { while (true) {} } return new Response('ok') } }"


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100.0 * (len(values) - 1))))]


def ms(v: float) -> str:
    return f"{v * 1e3:.3f} ms"


def us(v: float) -> str:
    return f"{v * 1e6:.1f} µs"


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def proc_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def factory_for(src: str, env: dict | None = None):
    async def factory() -> WorkerCode:
        return WorkerCode("2026-11-01", "index.js", {"index.js": src}, env=env)
    return factory


class _Stream:
    """A streaming body that is never read (like the edge's origin stream)."""

    def __aiter__(self):
        return self

    async def __anext__(self):
        raise StopAsyncIteration

    async def aclose(self) -> None:
        pass


class Origin:
    """The TUNNEL binding of the edge, minus the network: answers with a streaming body."""

    HEADERS = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", "1024"), ("Server", "origin"),
               ("Date", "Fri, 27 Nov 2026 08:00:00 GMT"), ("Cache-Control", "no-cache"), ("ETag", '"abc123"')]

    async def fetch(self, request, opts=None):
        return Response(200, list(self.HEADERS), body=_Stream())


# what the edge hands to a tunnel's worker for a 1 KiB GET (headers as a list of pairs, cf, empty body)
EDGE_HEADERS = [("Host", "web.localhost"), ("User-Agent", "wrk/4.2"), ("Accept", "*/*"),
                ("Accept-Encoding", "gzip"), ("X-Forwarded-For", "192.0.2.10"), ("X-Forwarded-Proto", "http"),
                ("X-Request-Id", "0123456789abcdef")]


def edge_request() -> Request:
    return Request("GET", "http://web.localhost/index.html", headers=EDGE_HEADERS, body=b"",
                   cf={"clientIp": "192.0.2.10", "requestId": "0123456789abcdef", "edgeExchange": 17,
                       "tunnel": "web", "scheme": "http"})


# ---------------------------------------------------------------- the generated 20-rule policy worker
TARGET_COLD_TRIVIAL_S, TARGET_COLD_POLICY_S = 0.001, 0.002
TARGET_RSS_TRIVIAL_KIB, TARGET_RSS_POLICY_KIB = 256, 400


@lru_cache(maxsize=1)
def _rules20() -> dict:
    import yaml
    path = os.path.join(os.path.dirname(__file__), "configs", "pipeline.yaml")
    with open(path, encoding="utf-8") as f:
        doc = yaml.safe_load(f.read().replace("@ORIGIN@", "http://127.0.0.1:9"))
    return doc["tunnels"]["rules20"]


def policy_worker(i: int | None = None):
    """The generated worker (``generators.GeneratedWorker``) of the ``rules20`` tunnel.

    ``i`` gives tunnel ``p<i>`` its own name, hostname and a few rule values of its own (a body, a
    header value, a rate-limit capacity), so that its code differs from every other copy in its
    header and in the middle (as two tunnels' policies do); ``None``: the same code every time.
    """
    from generators import generate_tunnel_worker
    from tunnel.config import parse_config
    t = copy.deepcopy(_rules20())
    name = "rules20" if i is None else f"p{i}"
    if i is not None:
        t["hostnames"] = [f"p{i}.bench.localhost"]
        for rule in t["policy"]["on_request"]:
            for action in rule.get("actions", []):
                if "custom_response" in action:
                    action["custom_response"]["body"] = f"<h1>Back soon ({i})</h1>"
                if "set_request_headers" in action and "X-Bench-Rule" in action["set_request_headers"]:
                    action["set_request_headers"]["X-Bench-Rule"] = f"14-{i}"
                if "rate_limit" in action and action["rate_limit"].get("key") == "client_ip":
                    action["rate_limit"]["capacity"] = 999_000_000 + i
    return generate_tunnel_worker(parse_config({"tunnels": {name: t}}).tunnels[name])


def policy_modules(i: int | None = None) -> tuple[str, dict]:
    """``(main module, modules)`` of ``policy_worker(i)``."""
    worker = policy_worker(i)
    return worker.main_module, dict(worker.modules)


def policy_code(i: int | None = None, extra: str = "") -> WorkerCode:
    """The policy worker as the edge loads it (``to_worker_code``: trusted, ``env.TUNNEL``);
    ``extra`` is appended to its main module."""
    code = policy_worker(i).to_worker_code(env={"TUNNEL": Origin()})
    if extra:
        modules = dict(code.modules)
        modules[code.main_module] += extra
        code = dataclasses.replace(code, modules=modules)
    return code


def policy_request(i: int | None = None) -> Request:
    """A GET that the 20 rules let through to ``env.TUNNEL.fetch`` (client 127.0.0.1, /1k.bin)."""
    host = "rules20.bench.localhost" if i is None else f"p{i}.bench.localhost"
    return Request("GET", f"http://{host}/1k.bin", headers=[("Host", host), ("User-Agent", "wrk/4.2"),
                                                            ("Accept", "*/*")], body=b"",
                   cf={"clientIp": "127.0.0.1", "requestId": "0123456789abcdef", "tunnel": "p", "scheme": "http"})


def local_engine():
    """``tunnel.loader.engine`` with its fast path on in this process, for the lines that run the
    engine here."""
    from tunnel.loader import engine
    engine.enable_bytecode()
    return engine


def code_factory(code: WorkerCode):
    async def factory() -> WorkerCode:
        return code
    return factory


def verdict(value: float, target: float, unit: str) -> str:
    return f"target ≤ {target:g} {unit}: {'met' if value <= target else 'NOT met'}"


def shard_pid(ld: Loader, key: str) -> int:
    """The pid of the shard process that holds ``key``'s isolate."""
    s = ld.stats()
    index = s["per_worker"][key]["shard"]
    return next(sh["pid"] for sh in s["shards"] if sh["index"] == index)


def shard_rss_kib(ld: Loader) -> int:
    """Sum of VmRSS of the loader's shard processes (all groups, the spare included)."""
    return sum(rss_kib(s["pid"]) for s in ld.stats()["shards"] if s["pid"])



async def cold(n: int) -> None:
    async with Loader(shards=1, max_workers=100_000) as ld:
        await ld.start()
        for label, src in (("trivial", TRIVIAL), ("typical (URL polyfill)", TYPICAL)):
            times = []
            for i in range(n):
                t = time.perf_counter()
                r = await ld.get(f"cold-{label}-{i}", factory_for(src + f"\n// {i}")).fetch(
                    Request("GET", "http://web.localhost/api/x?q=1"))
                await r.read()
                times.append(time.perf_counter() - t)
            extra = f"  (p50 {verdict(pct(times, 50) * 1e3, TARGET_COLD_TRIVIAL_S * 1e3, 'ms')})" if label == "trivial" else ""
            print(f"cold load, {label:24s} n={n}: p50 {ms(pct(times, 50))}  p99 {ms(pct(times, 99))}{extra}")
        # the generated policy: distinct code per key (as for distinct tunnels; the shard's per-content
        # link cache cannot help), then identical code under distinct keys (link cache hits)
        codes = [policy_code(i) for i in range(n)]
        same = policy_code()
        for label, make in (("policy, distinct code", lambda i: codes[i]), ("policy, identical code", lambda i: same)):
            times = []
            for i in range(n):
                factory = code_factory(make(i))
                t = time.perf_counter()
                r = await ld.get(f"cold-{label}-{i}", factory).fetch(policy_request())
                await r.read()
                times.append(time.perf_counter() - t)
            print(f"cold load, {label:24s} n={n}: p50 {ms(pct(times, 50))}  p99 {ms(pct(times, 99))}  "
                  f"(p50 {verdict(pct(times, 50) * 1e3, TARGET_COLD_POLICY_S * 1e3, 'ms')}; status {r.status})")


def cold_breakdown(n: int) -> None:
    """Where a cold load goes in the shard, measured here on the engine itself (no process hop):
    linking (tree-sitter), the isolate (runtime, module evaluation) and the first request's turn."""
    from tunnel.loader import linker
    engine = local_engine()
    turn = json.dumps({"t": "req", "rid": 1, "req": {
        "method": "GET", "url": "http://rules20.bench.localhost/1k.bin", "hb": 0, "body": None,
        "headers": [["host", "rules20.bench.localhost"], ["user-agent", "wrk/4.2"], ["accept", "*/*"]],
        "cf": {"clientIp": "127.0.0.1"}}})
    policies = [policy_modules(i) for i in range(n)]
    for label, get, bindings in (("trivial", lambda i: ("index.js", {"index.js": TRIVIAL + f"\n// {i}"}), []),
                                 ("policy", lambda i: policies[i], ["TUNNEL"])):
        link, iso_t, first, heap = [], [], [], []
        for i in range(n):
            main, modules = get(i)
            mods = {k: ("js", v) for k, v in modules.items()}
            t0 = time.perf_counter()
            plan = linker.plan(main, mods)
            t1 = time.perf_counter()
            iso = engine.Isolate(plan, main, "{}", bindings, False, 0.05, 64 << 20, 0.4, per_turn=True)
            t2 = time.perf_counter()
            iso.turn(1, turn)
            t3 = time.perf_counter()
            link.append(t1 - t0)
            iso_t.append(t2 - t1)
            first.append(t3 - t2)
            heap.append(iso.memory())
            iso.close()
        print(f"cold load in the shard, {label:7s} (engine in this process, n={n}, p50): link {ms(pct(link, 50))}, "
              f"isolate {ms(pct(iso_t, 50))} (runtime + modules), first turn {ms(pct(first, 50))}, "
              f"sum {ms(pct(link, 50) + pct(iso_t, 50) + pct(first, 50))}; heap {pct(heap, 50) / 1024:.0f} KiB "
              f"(bytecode fast path: {engine.bytecode_available()})")


async def warm(n: int, concurrency: int, only: str | None = None) -> None:
    async with Loader(shards=1) as ld:
        for label, src, make, env in (
            ("trivial", TRIVIAL, lambda: Request("GET", "http://web.localhost/x"), None),
            ("typical", TYPICAL, lambda: Request("GET", "http://web.localhost/api/x?q=1", headers={"user-agent": "b"}),
             None),
            # the edge's hot path: a fresh request as the edge builds it, env.TUNNEL.fetch, a streaming answer
            ("forward", FORWARD, edge_request, {"TUNNEL": Origin()}),
        ):
            if only and label != only:
                continue
            stub = ld.get(label, factory_for(src, env))
            for _ in range(200):
                await stub.fetch(make())
            times = []
            for _ in range(n):
                t = time.perf_counter()
                await stub.fetch(make())
                times.append(time.perf_counter() - t)
            print(f"warm request, {label:8s} sequential n={n}: p50 {us(pct(times, 50))}  p99 {us(pct(times, 99))}  "
                  f"({1 / statistics.mean(times):,.0f} req/s one at a time)")
            per = n // concurrency

            async def client() -> None:
                for _ in range(per):
                    await stub.fetch(make())
            pid = shard_pid(ld, label)
            c0, p0, t = proc_cpu_s(pid), time.process_time(), time.perf_counter()
            await asyncio.gather(*(client() for _ in range(concurrency)))
            dt = time.perf_counter() - t
            total = per * concurrency
            shard_us = (proc_cpu_s(pid) - c0) / total * 1e6
            loop_us = (time.process_time() - p0) / total * 1e6
            print(f"warm request, {label:8s} {concurrency} concurrent, one shard: {total / dt:,.0f} req/s wall; CPU per "
                  f"request: shard {shard_us:.0f} µs + event-loop process {loop_us:.0f} µs "
                  f"(= {1e6 / (shard_us + loop_us):,.0f} req/s per core)")
        if only:
            return
        stub = ld.get("trivial", factory_for(TRIVIAL))
        f = factory_for(TRIVIAL)
        t = time.perf_counter()
        for _ in range(n):
            ld.get("trivial", f)
        print(f"cache-hit get(): {us((time.perf_counter() - t) / n)} per call")


async def memory(counts: list[int]) -> None:
    for count, src, label in [(c, TRIVIAL, "trivial") for c in counts] + [(100, TYPICAL, "typical, with URL")]:
        async with Loader(shards=1, max_workers=100_000, idle_s=3600) as ld:
            await ld.start()
            base = shard_rss_kib(ld)  # all shard processes: the key's group is not known in advance
            for i in range(count):
                await (await ld.get(f"mem-{i}", factory_for(src + f"\n// {i}")).fetch(
                    Request("GET", "http://a/"))).read()
            s = ld.stats()
            grown = shard_rss_kib(ld) - base
            print(f"memory, {count:5d} {label} workers cached: QuickJS heap {s['memory_bytes'] / count / 1024:.0f} KiB/worker, "
                  f"shard RSS +{grown / count:.0f} KiB/worker (RSS of the shard {rss_kib(shard_pid(ld, 'mem-0')) / 1024:.0f} MiB)")


async def memory_targets(count: int) -> None:
    """RSS per cached worker with ``count`` trivial and ``count`` policy workers (issue 11)."""
    policies = [policy_code(i) for i in range(count)]
    same = policy_code()
    for label, make, target in (
        ("trivial", lambda i: factory_for(TRIVIAL + f"\n// {i}"), TARGET_RSS_TRIVIAL_KIB),
        ("policy, distinct code", lambda i: code_factory(policies[i]), TARGET_RSS_POLICY_KIB),
        ("policy, identical code", lambda i: code_factory(same), TARGET_RSS_POLICY_KIB),
    ):
        async with Loader(shards=1, max_workers=100_000, idle_s=3600, memory_budget_mb=8192) as ld:
            await ld.start()
            base = shard_rss_kib(ld)
            req = (lambda: Request("GET", "http://a/")) if label == "trivial" else policy_request
            for i in range(count):
                await (await ld.get(f"mem-{i}", make(i)).fetch(req())).read()
            s = ld.stats()
            per_rss = (shard_rss_kib(ld) - base) / count
            heaps = [w["memory_bytes"] for w in s["per_worker"].values()]
            print(f"memory, {count} {label} workers: shard RSS +{per_rss:.0f} KiB/worker ({verdict(per_rss, target, 'KiB')}); "
                  f"QuickJS heap {statistics.mean(heaps) / 1024:.0f} KiB/worker (p50 {pct(heaps, 50) / 1024:.0f})")


def memory_floor(n: int = 300) -> None:
    """What an isolate costs before any worker code, in this process (RSS, like the shards'): a bare
    QuickJS context as the binding makes it, and one with the runtime's core instantiated. QuickJS
    counts in its heap size neither the unused part of its 4 KiB allocation arenas nor the C
    allocator's overhead, hence RSS above heap."""
    import gc

    import quickjs
    engine = local_engine()
    fast = engine._FAST
    gc.collect()
    keep = []  # both sets stay alive, so that each is measured on fresh memory
    for label, setup in (("bare QuickJS context", None), ("context + runtime core", "runtime.js")):
        heaps = []
        base = rss_kib(os.getpid())
        for _ in range(n):
            ctx = quickjs.Context()
            if setup is not None and fast is not None:
                fast.run(ctx, setup)
            keep.append(ctx)
            heaps.append(ctx.memory()["malloc_size"])
        grown = (rss_kib(os.getpid()) - base) / n
        print(f"memory floor, {label:23s}: RSS +{grown:.0f} KiB each, QuickJS heap {statistics.mean(heaps) / 1024:.0f} KiB "
              f"(n={n}, this process)")
    del keep


async def url_polyfill() -> None:
    """Is the URL polyfill instantiated for the policy worker? (It must not be: the word URL is only
    in its comments.) Three observations: the linker's verdict, ``typeof URL`` inside an isolate
    built from the policy, and the heap of the policy worker with and without one ``URL`` identifier."""
    from tunnel.loader import linker
    engine = local_engine()
    main, modules = policy_modules(0)
    mods = {k: ("js", v) for k, v in modules.items()}
    plan = linker.plan(main, mods)
    iso = engine.Isolate(plan, main, "{}", ["TUNNEL"], False, 0.05, 64 << 20, 0.4, per_turn=True)
    inside = iso.ctx.eval("typeof URL + ',' + typeof URLSearchParams")
    iso.close()
    async with Loader(shards=1, idle_s=3600) as ld:
        heaps = {}
        for label, extra in (("policy", ""), ("policy + `typeof URL`", "\nexport const probe = typeof URL;\n")):
            key = f"url-{len(heaps)}"
            await (await ld.get(key, code_factory(policy_code(0, extra))).fetch(policy_request())).read()
            heaps[label] = ld.stats()["per_worker"][key]["memory_bytes"]
    a, b = heaps.values()
    print(f"URL polyfill for the policy worker: linker uses_url={plan.uses_url}; in its isolate typeof URL,"
          f"URLSearchParams = {inside}; heap {a / 1024:.0f} KiB, the same code plus one URL identifier "
          f"{b / 1024:.0f} KiB (+{(b - a) / 1024:.0f} KiB = the polyfill) => "
          f"{'NOT instantiated (as required)' if not plan.uses_url and inside.startswith('undefined') else 'INSTANTIATED'}")
    # the linker's rule on small cases: (source, expected) — the word in comments/strings/regexes/
    # template text does not count, an identifier or property does; computed names are not seen
    cases = [
        ("comment", "// new URL(x)\n", False), ("string", "const s = 'URL';", False),
        ("template", "const s = `URL ${1}`;", False), ("regex", "const r = /URLSearchParams/;", False),
        ("new URL", "const u = (x) => new URL(x);", True), ("URLSearchParams", "const p = new URLSearchParams('a=1');", True),
        ("globalThis.URL", "const U = globalThis.URL;", True), ("destructured", "const {URL} = globalThis;", True),
        ("shorthand {URL}", "const o = {URL};", True), ("typeof", "const t = typeof URLSearchParams;", True),
        ("computed (not seen)", "const U = globalThis['U' + 'RL'];", False),
    ]
    wrong = []
    for label, src, expected in cases:
        got = linker.plan("a.js", {"a.js": ("js", src + "\nexport default {fetch() { return new Response('') }}")}).uses_url
        if got != expected:
            wrong.append(f"{label}: {got}")
    print(f"URL polyfill detection, {len(cases)} cases (comment, string, template, regex, identifiers, computed): "
          f"{'all as expected' if not wrong else 'UNEXPECTED ' + ', '.join(wrong)}")


async def runaway(seconds: float) -> None:
    # quarantine off: this measures every stop of the runaway, not the refusals that would follow
    async with Loader(shards=2, quarantine_after=0) as ld:
        spin = ld.get("spin", factory_for(SPIN))
        others = [ld.get(f"o{i}", factory_for(TRIVIAL)) for i in range(8)]
        for o in others:
            await (await o.fetch(Request("GET", "http://a/"))).read()
        stop = time.monotonic() + seconds
        hits, spin_times, lat, lags = 0, [], [], []

        async def spinner() -> None:
            nonlocal hits
            while time.monotonic() < stop:
                t = time.perf_counter()
                try:
                    await spin.fetch(Request("GET", "http://a/spin"))
                except CpuLimitExceeded:
                    hits += 1
                    spin_times.append(time.perf_counter() - t)

        async def client() -> None:
            while time.monotonic() < stop:
                for o in others:
                    t = time.perf_counter()
                    await o.fetch(Request("GET", "http://a/"))
                    lat.append(time.perf_counter() - t)

        async def ticker() -> None:
            while time.monotonic() < stop:
                t = time.perf_counter()
                await asyncio.sleep(0.001)
                lags.append(time.perf_counter() - t - 0.001)

        await asyncio.gather(spinner(), client(), ticker())
        print(f"runaway while(true){{}} for {seconds:.0f} s (cpu_limit_ms=50): {hits} stopped, each after "
              f"p50 {ms(pct(spin_times, 50))} max {ms(max(spin_times))} (incl. reload); other keys: {len(lat)} requests, "
              f"p50 {ms(pct(lat, 50))} p99 {ms(pct(lat, 99))} max {ms(max(lat))}; event-loop lag max {ms(max(lags))}")


async def main(quick: bool, only: str | None = None, loading: bool = False) -> None:
    loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, event loop: {loop}")
    if loading:
        await cold(50 if quick else 200)
        cold_breakdown(50 if quick else 200)
        await url_polyfill()
        memory_floor()
        await memory_targets(300 if quick else 1000)
        return
    if only:
        for _ in range(3):
            await warm(2000 if quick else 10000, 32, only)
        return
    await cold(50 if quick else 200)
    cold_breakdown(50 if quick else 200)
    await url_polyfill()
    await warm(2000 if quick else 10000, 32)
    await memory([1, 100] if quick else [1, 100, 1000])
    memory_floor()
    await memory_targets(300 if quick else 1000)
    await runaway(1.0 if quick else 3.0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument("--only", choices=("trivial", "typical", "forward"),
                        help="only the warm-request lines of this worker, three times")
    parser.add_argument("--asyncio", action="store_true", help="use the default asyncio loop instead of uvloop")
    parser.add_argument("--loading", action="store_true",
                        help="only the loading and memory lines (cold load, breakdown, URL polyfill, 1,000-worker memory)")
    args = parser.parse_args()
    if not args.asyncio:
        try:
            import uvloop
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        except ImportError:
            pass
    asyncio.run(main(args.quick, args.only, args.loading))
