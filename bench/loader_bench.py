"""Benchmark of tunnel.loader on this machine. Prints numbers; asserts nothing.

Run: ``.venv/bin/python -m bench.loader_bench [--quick]``

Measures cold load (factory to first response), warm requests (sequential latency and
concurrent throughput on one shard), a cache-hit ``get``, memory per cached worker with
1/100/1000 workers, and other keys' latency while one key runs ``while(true){}``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time

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
            print(f"cold load, {label:24s} n={n}: p50 {ms(pct(times, 50))}  p99 {ms(pct(times, 99))}")


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
            pid = ld.stats()["shards"][0]["pid"]
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
            pid = ld.stats()["shards"][0]["pid"]
            base = rss_kib(pid)
            for i in range(count):
                await (await ld.get(f"mem-{i}", factory_for(src + f"\n// {i}")).fetch(
                    Request("GET", "http://a/"))).read()
            s = ld.stats()
            grown = rss_kib(pid) - base
            print(f"memory, {count:5d} {label} workers cached: QuickJS heap {s['memory_bytes'] / count / 1024:.0f} KiB/worker, "
                  f"shard RSS +{grown / count:.0f} KiB/worker (RSS {rss_kib(pid) / 1024:.0f} MiB)")


async def runaway(seconds: float) -> None:
    async with Loader(shards=2) as ld:
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


async def main(quick: bool, only: str | None = None) -> None:
    loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, event loop: {loop}")
    if only:
        for _ in range(3):
            await warm(2000 if quick else 10000, 32, only)
        return
    await cold(50 if quick else 200)
    await warm(2000 if quick else 10000, 32)
    await memory([1, 100] if quick else [1, 100, 1000])
    await runaway(1.0 if quick else 3.0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument("--only", choices=("trivial", "typical", "forward"),
                        help="only the warm-request lines of this worker, three times")
    parser.add_argument("--asyncio", action="store_true", help="use the default asyncio loop instead of uvloop")
    args = parser.parse_args()
    if not args.asyncio:
        try:
            import uvloop
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        except ImportError:
            pass
    asyncio.run(main(args.quick, args.only))
