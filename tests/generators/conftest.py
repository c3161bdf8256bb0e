"""Shared fixtures: the reference config, generated workers, and a way to run them.

``run`` loads a GeneratedWorker in the real loader (tunnel.loader) with a fake tunnel binding
that records what the worker forwards, and returns the response.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import quickjs

from tunnel.config import load_yaml, parse_config

REFERENCE = Path("/work/shared/examples/edge-config.yaml")
_LOCAL = Path(__file__).resolve().parents[3] / "shared" / "examples" / "edge-config.yaml"
if _LOCAL.exists():
    REFERENCE = _LOCAL


def reference_doc() -> dict[str, Any]:
    return copy.deepcopy(_REFERENCE_DOC)


_REFERENCE_DOC = load_yaml(REFERENCE.read_text())


@pytest.fixture()
def doc() -> dict[str, Any]:
    return reference_doc()


@pytest.fixture(scope="session")
def compile_js():
    """The :func:`compile_module` function (QuickJS syntax check of one ES module)."""
    return compile_module


@pytest.fixture(scope="session")
def reference_config():
    return parse_config(reference_doc())


def compile_module(source: str) -> None:
    """Compile an ES module with QuickJS; a SyntaxError raises. Imports of siblings are fine.

    quickjs-ng reports a missing import as ``ReferenceError: could not load module`` only after
    parsing succeeded, so that error means the syntax is good.
    """
    try:
        quickjs.Context().module(source)
    except quickjs.JSException as exc:
        if "could not load module" not in str(exc):
            raise


@dataclass
class FakeTunnel:
    """The TUNNEL binding: records each forwarded request and answers like an origin."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=lambda: {"Server": "origin", "X-Origin": "yes"})
    body: bytes = b"origin says hi"
    seen: list[tuple[Any, Any]] = field(default_factory=list)

    async def fetch(self, request, opts=None):
        from tunnel.loader import Response

        self.seen.append((request, opts))
        return Response(self.status, headers=dict(self.headers), body=self.body)


def tunnel_doc(on_request=None, on_response=None, **extra) -> dict[str, Any]:
    """A one-tunnel document (tunnel ``t`` at t.localhost) with the given policy."""
    tunnel: dict[str, Any] = {"hostnames": ["t.localhost", "*.t.localhost"], **extra}
    policy = {}
    if on_request:
        policy["on_request"] = on_request
    if on_response:
        policy["on_response"] = on_response
    if policy:
        tunnel["policy"] = policy
    return {"tunnels": {"t": tunnel}}


class CustomHop:
    """env.CUSTOM of a policy worker in these tests: remembers the service the policy chose and
    gives it to the custom worker's env.TUNNEL calls that name none (the edge keeps it per request)."""

    def __init__(self, tunnel):
        self.tunnel = tunnel
        self.service = None
        self.stub = None
        hop = self

        class TunnelSide:
            async def fetch(self, request, opts=None):
                if opts is None and hop.service is not None:
                    opts = {"service": hop.service}
                return await hop.tunnel.fetch(request, opts) if opts is not None else await hop.tunnel.fetch(request)

        self.tunnel_side = TunnelSide()

    async def fetch(self, request, opts=None):
        self.service = opts.get("service") if isinstance(opts, dict) else None
        return await self.stub.fetch(request)


class Runner:
    """Loads generated workers in one real Loader and sends them requests."""

    def __init__(self, loader):
        self.loader = loader
        self.count = 0

    @staticmethod
    def fake(**kwargs) -> FakeTunnel:
        """A new fake TUNNEL binding."""
        return FakeTunnel(**kwargs)

    @staticmethod
    async def send(stub, path="/", method="GET", headers=None, body=None, ip="203.0.113.7", host="t.localhost"):
        """Send one request to a stub; return ``(status, headers, body bytes)``."""
        return await send(stub, path, method, headers, body, ip, host)

    def load(self, worker, tunnel: FakeTunnel | None = None, custom=None):
        """A stub for ``worker`` (a GeneratedWorker) whose env.TUNNEL is ``tunnel``; with ``custom``
        (the tunnel's ``custom-<id>`` GeneratedWorker) its env.CUSTOM reaches that worker, whose
        env.TUNNEL is ``tunnel`` with the service the policy chose (as the edge does)."""
        self.count += 1
        env = {"TUNNEL": tunnel} if tunnel is not None else {}
        if custom is not None:
            hop = CustomHop(tunnel)
            hop.stub = self.load(custom, hop.tunnel_side)
            env["CUSTOM"] = hop
        code = worker.to_worker_code(env=env or None)

        async def factory():
            return code

        return self.loader.get(f"{worker.key}#{self.count}", factory)

    def load_tunnel(self, tunnel_config, tunnel: FakeTunnel):
        """The stub of a tunnel's ``tunnel-<id>`` with its ``custom-<id>`` behind env.CUSTOM, if any."""
        from generators import generate_custom_worker, generate_tunnel_worker

        return self.load(generate_tunnel_worker(tunnel_config), tunnel, generate_custom_worker(tunnel_config))

    async def policy(self, on_request=None, on_response=None, tunnel: FakeTunnel | None = None, **extra):
        """Generate tunnel ``t`` from a policy and return ``(stub, fake tunnel)``."""
        from generators import generate_tunnel_worker

        config = parse_config(tunnel_doc(on_request, on_response, **extra))
        tunnel = tunnel or FakeTunnel()
        return self.load(generate_tunnel_worker(config.tunnels["t"]), tunnel), tunnel


async def send(stub, path="/", method="GET", headers=None, body=None, ip="203.0.113.7", host="t.localhost"):
    """Send one request to a stub; return ``(status, headers, body bytes)``."""
    from tunnel.loader import Request

    response = await stub.fetch(Request(method, f"http://{host}{path}", headers=headers or {}, body=body,
                                        cf={"clientIp": ip}))
    return response.status, response.headers, await response.read()


@pytest.fixture()
async def runner():
    from tunnel.loader import Loader

    async with Loader(max_workers=100) as loader:
        yield Runner(loader)


# --- a tiny QuickJS harness (no loader): runs one single-module worker with a minimal shim ---
# Used by the property tests: it keeps strings exactly as JavaScript holds them (lone surrogates
# included), which a real HTTP body (UTF-8) cannot.

SHIM = r'''
class Headers {
  constructor(init) {
    this.map = new Map();
    if (init instanceof Headers) for (const [k, v] of init.map) this.map.set(k, v.slice());
    else if (Array.isArray(init)) for (const [k, v] of init) this.append(k, v);
    else if (init) for (const k of Object.keys(init)) this.append(k, init[k]);
  }
  get(name) { const v = this.map.get(name.toLowerCase()); return v === undefined ? null : v.join(", "); }
  set(name, value) { this.map.set(name.toLowerCase(), [String(value)]); }
  append(name, value) { const k = name.toLowerCase(); if (!this.map.has(k)) this.map.set(k, []); this.map.get(k).push(String(value)); }
  delete(name) { this.map.delete(name.toLowerCase()); }
  has(name) { return this.map.has(name.toLowerCase()); }
  entries() { return [...this.map].map(([k, v]) => [k, v.join(", ")])[Symbol.iterator](); }
  [Symbol.iterator]() { return this.entries(); }
}
class URLSearchParams {
  constructor(q) { this.pairs = q ? q.split("&").map((p) => p.split("=").map((x) => decodeURIComponent(x.replace(/\+/g, " ")))) : []; }
  get(name) { const p = this.pairs.find(([k]) => k === name); return p === undefined ? null : (p[1] === undefined ? "" : p[1]); }
}
class URL {
  constructor(href) {
    const m = /^([a-z]+:)\/\/([^/?#]*)([^?#]*)(\?[^#]*)?/.exec(href);
    this.protocol = m[1]; this.host = m[2]; this.hostname = m[2].split(":")[0]; this.pathname = m[3] || "/";
    this.search = m[4] || ""; this.searchParams = new URLSearchParams(this.search.slice(1));
  }
  toString() { return this.protocol + "//" + this.host + this.pathname + this.search; }
}
class Request {
  constructor(input, init) {
    const src = input instanceof Request ? input : null;
    init = init || {};
    this.url = src ? src.url : input; this.method = init.method || (src ? src.method : "GET");
    this.headers = new Headers(init.headers || (src ? src.headers : undefined)); this.cf = init.cf || (src ? src.cf : undefined);
    this.body = init.body !== undefined ? init.body : (src ? src.body : null);
  }
  async text() { return this.body === null ? "" : this.body; }
}
class Response {
  constructor(body, init) { init = init || {}; this.body = body === undefined ? null : body; this.status = init.status || 200; this.headers = new Headers(init.headers); }
  async text() { return this.body === null ? "" : this.body; }
}
globalThis.Headers = Headers; globalThis.URL = URL; globalThis.Request = Request; globalThis.Response = Response;
globalThis.__results = [];
globalThis.__run = (method, url, headers, body, clientIp) => {
  const request = new Request(url, { method, headers, body, cf: { clientIp } });
  const env = { TUNNEL: { fetch: async (r, opts) => new Response("origin", { status: 200 }) } };
  Promise.resolve(globalThis.__worker.fetch(request, env, {})).then(
    (r) => { __results.push({ status: r.status, headers: [...r.headers], body: r.body }); },
    (e) => { __results.push({ error: String(e && e.stack || e) }); });
};
'''


class QuickJSHarness:
    """One QuickJS context with the shim and one generated single-module worker loaded."""

    def __init__(self, worker):
        assert len(worker.modules) == 1, "the harness runs single-module workers"
        self.ctx = quickjs.Context()
        self.ctx.eval(SHIM)
        promise = self.ctx.module(worker.modules[worker.main_module])
        self._drain()
        del promise
        self.ctx.module('import w from "<input>"; globalThis.__worker = w;')
        self._drain()
        if self.ctx.eval("typeof globalThis.__worker") != "object":
            raise AssertionError("the module did not load: " + str(self.ctx.eval("String(globalThis.__worker)")))

    def _drain(self) -> None:
        while self.ctx.execute_pending_job():
            pass

    def fetch(self, method: str, url: str, headers: dict | None = None, body: str | None = None,
              client_ip: str = "192.0.2.1") -> dict:
        """Run the worker's fetch; return ``{status, headers: [[k, v]…], body}`` with strings exact."""
        import json

        self.ctx.set("__args", json.dumps([method, url, headers or {}, body, client_ip], ensure_ascii=True))
        self.ctx.eval("__run(...JSON.parse(__args))")
        self._drain()
        result = json.loads(self.ctx.eval("JSON.stringify(__results.pop())"))
        if "error" in result:
            raise AssertionError(result["error"])
        return result


@pytest.fixture(scope="session")
def qjs():
    """Build a :class:`QuickJSHarness` for a GeneratedWorker."""
    return QuickJSHarness
