"""Per-request cost of generated tunnel workers, next to trivial workers, in the same run.

Run: ``.venv/bin/python -m bench.generators_bench [--requests N]``. Every worker runs in the real
loader (tunnel.loader) with a Python TUNNEL binding that answers at once, so the numbers are the
worker's own cost plus the loader's round trip. Also times the generators themselves and the
routing table against the config worker.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from generators import GeneratedWorker, build_routing_table, generate_config_worker, generate_tunnel_worker
from generators.code import freeze
from tunnel.config import hash_password, parse_config


def twenty_rule_policy() -> dict:
    """A 20-rule policy of the kinds people write: most rules do not match a typical request."""
    on_request = [{"match": {"path": f"/section-{i}/*"}, "actions": [{"deny": {"status": 403}}]} for i in range(8)]
    on_request += [
        {"match": {"path": "/admin/*"}, "actions": [{"basic_auth": {"credentials": [hash_password("ops", "pw")]}}]},
        {"match": {"path": "/internal/*"}, "actions": [{"ip_restriction": {"allow": ["10.0.0.0/8"]}}]},
        {"match": {"header": {"X-Debug": "*"}}, "actions": [{"deny": {}}]},
        {"match": {"method": ["POST", "PUT"], "path": "/api/*"},
         "actions": [{"bearer_auth": {"tokens": [hash_password("ci", "token")]}}]},
        {"match": {"path": "/old/*"}, "actions": [{"redirect": {"location": "/new/"}}]},
        {"match": {"query": {"preview": "1"}}, "actions": [{"set_request_headers": {"X-Preview": "1"}}]},
        {"match": {"path": "/checkout/*"}, "actions": [{"ab_split": {"cookie": "ab", "variants": [
            {"name": "a", "weight": 50, "service": "http://127.0.0.1:3000"},
            {"name": "b", "weight": 50, "service": "http://127.0.0.1:3001"}]}}]},
        {"actions": [{"rate_limit": {"capacity": 10**9, "per": "60s"}},
                     {"set_request_headers": {"X-Env": "production"}},
                     {"remove_request_headers": ["X-Internal-Only"]},
                     {"url_rewrite": {"from": "^/v1/(.*)$", "to": "/api/v1/$1"}}]},
    ]
    on_response = [
        {"actions": [{"set_response_headers": {"X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff"}}]},
        {"actions": [{"remove_response_headers": ["Server"]}]},
        {"actions": [{"cors": {"allow_origins": ["https://app.example.test"]}}]},
        {"match": {"status": ["5xx"]}, "actions": [{"set_response_headers": {"Cache-Control": "no-store"}}]},
    ]
    assert len(on_request) + len(on_response) == 20
    return {"on_request": on_request, "on_response": on_response}


def trivial(key: str, body: str) -> GeneratedWorker:
    return GeneratedWorker(key=key, main_module="index.js", modules=freeze({"index.js": body}), hash="-")


class Origin:
    """The TUNNEL binding: answers at once, like a local origin with no latency."""

    async def fetch(self, request, opts=None):
        from tunnel.loader import Response

        return Response(200, headers={"Content-Type": "text/plain", "Server": "bench"}, body=b"ok")


async def measure(loader, key: str, worker: GeneratedWorker, requests: int, concurrency: int) -> dict:
    from tunnel.loader import Request

    code = worker.to_worker_code(env={"TUNNEL": Origin()})

    async def factory():
        return code

    stub = loader.get(key, factory)  # a key per measured worker: the loader caches code by key

    async def one() -> float:
        start = time.perf_counter()
        response = await stub.fetch(Request("GET", "http://t.localhost/v1/users?x=1",
                                            headers={"Accept": "text/html", "Origin": "https://app.example.test"},
                                            cf={"clientIp": "192.0.2.10"}))
        await response.read()
        assert response.status == 200, response.status
        return time.perf_counter() - start

    for _ in range(200):
        await one()
    latencies = [await one() for _ in range(requests)]
    start = time.perf_counter()
    done = 0

    async def client():
        nonlocal done
        while done < requests:
            done += 1
            await one()

    await asyncio.gather(*[client() for _ in range(concurrency)])
    rate = requests / (time.perf_counter() - start)
    latencies.sort()
    return {"p50": latencies[len(latencies) // 2] * 1e6, "p99": latencies[int(len(latencies) * 0.99)] * 1e6,
            "mean": statistics.fmean(latencies) * 1e6, "rps": rate}


INNER_LOOP = r'''
import worker from "./under-test.js";
const env = { TUNNEL: { fetch: async (request) => new Response("ok", { headers: { "Server": "bench" } }) } };
const now = () => (typeof performance !== "undefined" ? performance.now() : Date.now());
export default {
  async fetch(request) {
    const n = Number(new URL(request.url).searchParams.get("n"));
    const req = new Request("http://t.localhost/v1/users?x=1",
      { headers: { "Accept": "text/html", "Origin": "https://app.example.test" } });
    const start = now();
    for (let i = 0; i < n; i++) {
      const r = await worker.fetch(req, env, {});
      if (r.status !== 200) throw new Error("status " + r.status);
    }
    return new Response(String((now() - start) / n * 1000));
  },
};
'''


async def measure_in_engine(loader, key: str, worker: GeneratedWorker, rounds: int = 15, n: int = 300) -> float:
    """Median µs per request of the worker alone, called in a loop inside its isolate."""
    from tunnel.loader import Request, WorkerCode

    modules = {"bench.js": INNER_LOOP, "under-test.js": worker.modules[worker.main_module]}
    code = WorkerCode(compatibility_date=worker.compatibility_date, main_module="bench.js", modules=modules)

    async def factory():
        return code

    stub = loader.get(key, factory)
    samples = []
    for _ in range(rounds):
        response = await stub.fetch(Request("GET", f"http://bench/?n={n}"))
        samples.append(float(await response.read()))
    return statistics.median(samples[2:])


def time_call(fn, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


async def main(requests: int, concurrency: int) -> None:
    from tunnel.loader import Loader

    empty = parse_config({"tunnels": {"t": {"hostnames": ["t.localhost"]}}}).tunnels["t"]
    full_config = parse_config({"tunnels": {"t": {"hostnames": ["t.localhost"], "policy": twenty_rule_policy()}}})
    full = full_config.tunnels["t"]
    workers = [
        ("trivial: return new Response", trivial("trivial-response",
                                                 'export default { fetch() { return new Response("ok"); } };')),
        ("trivial: env.TUNNEL.fetch", trivial("trivial-forward",
                                              "export default { fetch(r, env) { return env.TUNNEL.fetch(r); } };")),
        ("tunnel worker, empty policy", generate_tunnel_worker(empty)),
        ("tunnel worker, 20-rule policy", generate_tunnel_worker(full)),
    ]
    print(f"generated tunnel worker, per request through the loader ({requests} sequential requests for "
          f"latency; {requests} more at concurrency {concurrency} for throughput)")
    print(f"{'worker':34} {'p50 µs':>9} {'p99 µs':>9} {'mean µs':>9} {'req/s':>9} {'Δp50 vs forward':>16}")
    results = {}
    async with Loader() as loader:
        for i, (label, worker) in enumerate(workers):
            results[label] = r = await measure(loader, f"bench-{i}", worker, requests, concurrency)
            base = results.get("trivial: env.TUNNEL.fetch")
            delta = f"{r['p50'] - base['p50']:+.0f} µs" if base and label.startswith("tunnel") else ""
            print(f"{label:34} {r['p50']:9.0f} {r['p99']:9.0f} {r['mean']:9.0f} {r['rps']:9.0f} {delta:>16}")
    print()
    print("the same workers alone, called in a loop inside one isolate (no loader round trip)")
    async with Loader(cpu_limit_ms=10_000) as loader:
        for i, (label, worker) in enumerate(workers):
            print(f"{label:34} {await measure_in_engine(loader, f'engine-{i}', worker):9.1f} µs per request")

    print()
    print("generators (pure Python, per call)")
    config_doc = {"tunnels": {f"t{i}": {"hostnames": [f"t{i}.example.test", f"*.t{i}.example.test"]}
                              for i in range(100)}}
    many = parse_config(config_doc)
    table = build_routing_table(many)
    print(f"  generate_tunnel_worker, 20 rules        {time_call(lambda: generate_tunnel_worker(full), 200):9.0f} µs")
    print(f"  generate_config_worker, 100 tunnels     {time_call(lambda: generate_config_worker(many, 1), 50):9.0f} µs")
    print(f"  RoutingTable.route (wildcard, 100 tun.) {time_call(lambda: table.route('a.t99.example.test'), 20000):9.2f} µs")
    print(f"  parse_config, reference-sized document  {time_call(lambda: parse_config(full_config.document), 200):9.0f} µs")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.concurrency))
