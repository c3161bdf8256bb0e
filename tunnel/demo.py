"""`tunnel demo`: the seed's own example on an embedded edge.

The demo tunnel (``demo.localhost``) has a policy, custom metrics and a custom worker. The worker
answers four pages itself at the edge and forwards everything else to the built-in demo origin:

- ``/``         what this is, with links;
- ``/dynamic``  creates a new dynamic worker under a random key on every call (Worker Loader
                semantics: ``get(key, factory)``, the factory runs on the miss) and shows it answering;
- ``/metrics``  this tunnel's series, custom ones from its ``metrics-demo`` worker included;
- ``/config``   the active ``config-<version>`` worker's answer (credential hashes redacted).
"""

from __future__ import annotations

import json
import secrets
from typing import TYPE_CHECKING

from tunnel.loader import Request, Response, WorkerCode

if TYPE_CHECKING:  # pragma: no cover
    from tunnel.edge.server import Edge

DEMO_WORKER = r"""
const PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>tunnel demo</title>
<style>body{font:16px system-ui,sans-serif;margin:3em auto;max-width:46em;color:#222}
code{background:#f3f3f3;padding:.1em .3em}li{margin:.4em 0}</style></head><body>
<h1>tunnel demo</h1>
<p>This page was made at the edge by the <code>demo</code> tunnel's custom worker, running in a
QuickJS isolate cached as <code>tunnel-demo</code>. Its policy (generated from YAML) ran first;
its metrics are recorded by <code>metrics-demo</code>.</p>
<ul>
<li><a href="/dynamic">/dynamic</a>: a brand-new dynamic worker, created under a random key on every
call through the loader (<code>get(key, factory)</code>: the factory runs only on a miss).</li>
<li><a href="/metrics">/metrics</a>: this tunnel's Prometheus series, custom ones included.</li>
<li><a href="/config">/config</a>: the active <code>config-&lt;version&gt;</code> worker's answer.</li>
<li><a href="/headers">/headers</a>, <a href="/sse">/sse</a>, <a href="/download?mib=16">/download</a>:
pages of the demo origin on 127.0.0.1, reached through the tunnel.</li>
</ul></body></html>`;

export default {
  async fetch(request, env) {
    const path = new URL(request.url).pathname;
    if (path === "/") return new Response(PAGE, { headers: { "content-type": "text/html; charset=utf-8" } });
    if (path === "/dynamic") return env.EDGE.dynamic(request);
    if (path === "/metrics") {
      return new Response(await env.EDGE.metrics(), { headers: { "content-type": "text/plain; charset=utf-8" } });
    }
    if (path === "/config") {
      return new Response(await env.EDGE.config(), { headers: { "content-type": "application/json" } });
    }
    return env.TUNNEL.fetch(request);
  },
};
"""


def demo_config(hostname: str) -> dict:
    """The demo edge's config document."""
    return {"tunnels": {"demo": {
        "hostnames": [hostname],
        "policy": {
            "on_request": [{"actions": [{"rate_limit": {"key": "client_ip", "capacity": 600, "per": "60s"}}]}],
            "on_response": [{"actions": [{"set_response_headers": {"X-Served-By": "tunnel-demo"}}]}],
        },
        "metrics": [{"name": "demo_requests_by_page", "type": "counter", "help": "Demo requests by page.",
                     "labels": {"page": {"path_template": ["/", "/dynamic", "/metrics", "/config", "/headers",
                                                           "/sse", "/download"]},
                                "class": "status_class"}}],
        "worker": {"main_module": "index.js", "modules": {"index.js": DEMO_WORKER}},
    }}}


class DemoBinding:
    """``env.EDGE`` of the demo tunnel's worker."""

    def __init__(self, edge: "Edge", tunnel: str = "demo"):
        self._edge = edge
        self._tunnel = tunnel

    async def dynamic(self, request: Request) -> Response:
        """Create a worker under a fresh random key and let it answer ``request``."""
        key = f"dynamic-{secrets.token_hex(6)}"
        loader = self._edge.loader
        calls = {"factory": 0}

        async def factory() -> WorkerCode:
            calls["factory"] += 1
            source = ("export default { fetch(request) {\n"
                      f"  const body = {{ key: {json.dumps(key)}, message: 'hello from a dynamic worker',\n"
                      "    url: request.url, isolate_started: globalThis.started ??= new Date().toISOString() };\n"
                      "  return Response.json(body); } };\n")
            return WorkerCode("2026-11-01", "worker.js", {"worker.js": source}, global_outbound=None)

        worker = loader.get(key, factory)
        first = await worker.fetch(Request("GET", request.url))
        data = json.loads(await first.read())
        again = await loader.get(key, factory).fetch(Request("GET", request.url))
        data["second_call_same_isolate"] = json.loads(await again.read())["isolate_started"] == data["isolate_started"]
        data["factory_runs"] = calls["factory"]
        data["loader"] = {k: v for k, v in loader.stats().items() if k in ("hits", "misses", "loads", "workers")}
        loader.evict(key)
        return Response(200, {"content-type": "application/json"}, body=json.dumps(data, indent=2).encode())

    async def metrics(self) -> str:
        """This tunnel's Prometheus series (standard and custom)."""
        return (await self._edge.metrics_exposition(self._tunnel)).decode()

    async def config(self) -> str:
        """The active config worker's ``GET /config`` answer."""
        pipeline = self._edge.pipeline
        response = await pipeline.config_stub().fetch(Request("GET", "http://config/config"))
        return (await response.read()).decode()
