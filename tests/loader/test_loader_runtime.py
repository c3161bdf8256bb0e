"""The Workers-style runtime inside an isolate: Request/Response/Headers/URL/encoding/crypto/…"""

from __future__ import annotations

import json
import logging
import re

from tunnel.loader import Request

from .conftest import code, run


async def test_sync_and_async_handlers(loader):
    _, body = await run(loader, "sync", 'export default { fetch(req) { return new Response("sync:" + req.method) } }')
    assert body == b"sync:GET"
    src = 'export default { async fetch(req) { await null; await new Promise(r => setTimeout(r, 5)); return new Response("async") } }'
    _, body = await run(loader, "async", src)
    assert body == b"async"


async def test_request_fields_reach_the_handler(loader):
    src = """export default { async fetch(req, env, ctx) {
      return Response.json({method: req.method, url: req.url, a: req.headers.get("A"), body: await req.text(), cf: req.cf,
                            hasWaitUntil: typeof ctx.waitUntil}) } }"""
    req = Request("post", "http://web.localhost/p?q=1", headers={"a": "b"}, body=b"hello", cf={"clientIp": "1.2.3.4"})
    resp, body = await run(loader, "fields", src, req)
    assert resp.status == 200
    assert json.loads(body) == {"method": "POST", "url": "http://web.localhost/p?q=1", "a": "b", "body": "hello",
                                "cf": {"clientIp": "1.2.3.4"}, "hasWaitUntil": "function"}


async def test_url_parsing_whatwg(loader):
    src = """export default { fetch(req) {
      const u = new URL("http://User:pw@Web.LocalHost:80/a/../b/./c?x=1&y=%20z&x=2#frag");
      const rel = new URL("../d?e", "https://h.example/a/b/c");
      let bad = null; try { new URL("not a url") } catch (e) { bad = e.name }
      const sp = new URLSearchParams("a=1&b=2&a=3"); sp.append("c", "x y"); sp.sort();
      return Response.json({href: u.href, host: u.host, port: u.port, pathname: u.pathname, all: u.searchParams.getAll("x"),
        y: u.searchParams.get("y"), hash: u.hash, rel: rel.href, bad, sp: sp.toString(), idn: new URL("http://bücher.example/").hostname,
        path: new URL(req.url).pathname}) } }"""
    _, body = await run(loader, "url", src)
    assert json.loads(body) == {
        "href": "http://User:pw@web.localhost/b/c?x=1&y=%20z&x=2#frag", "host": "web.localhost", "port": "",
        "pathname": "/b/c", "all": ["1", "2"], "y": " z", "hash": "#frag", "rel": "https://h.example/a/d?e",
        "bad": "TypeError", "sp": "a=1&a=3&b=2&c=x+y", "idn": "xn--bcher-kva.example", "path": "/x"}


async def test_headers_case_insensitive_and_multiple_values(loader):
    src = """export default { fetch(req) {
      const h = new Headers({"Content-Type": "text/plain"});
      h.append("X-Multi", "a"); h.append("x-multi", "b"); h.append("Set-Cookie", "a=1"); h.append("set-cookie", "b=2");
      let bad = null; try { h.set("bad name", "x") } catch (e) { bad = e.name }
      const out = {ct: h.get("CONTENT-TYPE"), multi: h.get("X-MULTI"), has: h.has("x-Multi"), cookies: h.getSetCookie(),
                   keys: [...h.keys()], bad, incoming: req.headers.get("x-IN")};
      h.delete("X-MULTI"); out.after = h.get("x-multi");
      const r = new Response("ok", {headers: h}); r.headers.append("X-Out", "1"); r.headers.append("X-Out", "2");
      r.headers.set("X-Body", JSON.stringify(out));
      return r } }"""
    resp, _ = await run(loader, "headers", src, Request("GET", "http://a/", headers=[("X-In", "1"), ("x-in", "2")]))
    out = json.loads(resp.headers["x-body"])
    assert out == {"ct": "text/plain", "multi": "a, b", "has": True, "cookies": ["a=1", "b=2"],
                   "keys": ["content-type", "set-cookie", "set-cookie", "x-multi"], "bad": "TypeError",
                   "incoming": "1, 2", "after": None}
    assert resp.headers.getall("X-OUT") == ["1", "2"]
    assert resp.headers.getall("set-cookie") == ["a=1", "b=2"]
    assert resp.headers["Content-Type"] == "text/plain"


async def test_response_json_redirect_and_status(loader):
    src = """export default { fetch(req) {
      const p = new URL(req.url).pathname;
      if (p === "/json") return Response.json({a: [1, "x"]}, {status: 201, headers: {"X-A": "1"}});
      if (p === "/redirect") return Response.redirect("https://example.com/there", 301);
      if (p === "/empty") return new Response(null, {status: 204, statusText: "Nope"});
      let e1 = null; try { new Response("x", {status: 204}) } catch (e) { e1 = e.name }
      let e2 = null; try { Response.redirect("https://e.com", 200) } catch (e) { e2 = e.name }
      return new Response(JSON.stringify([e1, e2]), {status: 418}) } }"""
    from .conftest import CountingFactory
    stub = loader.get("resp", CountingFactory(code(src)))
    r = await stub.fetch(Request("GET", "http://a/json"))
    assert (r.status, r.headers["content-type"], r.headers["x-a"], await r.read()) == (201, "application/json", "1", b'{"a":[1,"x"]}')
    r = await stub.fetch(Request("GET", "http://a/redirect"))
    assert (r.status, r.headers["location"]) == (301, "https://example.com/there")
    r = await stub.fetch(Request("GET", "http://a/empty"))
    assert (r.status, r.status_text, await r.read()) == (204, "Nope", b"")
    r = await stub.fetch(Request("GET", "http://a/errors"))
    assert (r.status, json.loads(await r.read())) == (418, ["TypeError", "RangeError"])


async def test_bodies_text_json_arraybuffer(loader):
    src = """export default { async fetch(req) {
      const p = new URL(req.url).pathname;
      if (p === "/json") { const j = await req.json(); return Response.json({got: j}) }
      if (p === "/bytes") { const b = new Uint8Array(await req.arrayBuffer()); return new Response(b.reverse()) }
      const t = await req.text(); let again = null; try { await req.text() } catch (e) { again = e.name }
      return Response.json({t, used: req.bodyUsed, again}) } }"""
    from .conftest import CountingFactory
    stub = loader.get("bodies", CountingFactory(code(src)))
    r = await stub.fetch(Request("POST", "http://a/json", body=b'{"x": [1, 2]}'))
    assert json.loads(await r.read()) == {"got": {"x": [1, 2]}}
    r = await stub.fetch(Request("POST", "http://a/bytes", body=bytes([0, 1, 2, 255, 0])))
    assert await r.read() == bytes([0, 255, 2, 1, 0])
    r = await stub.fetch(Request("POST", "http://a/text", body="héllo €".encode()))
    assert json.loads(await r.read()) == {"t": "héllo €", "used": True, "again": "TypeError"}


async def test_text_encoding_base64_crypto_structured_clone(loader):
    src = """export default { fetch() {
      const bytes = Array.from(new TextEncoder().encode("hé€😀"));
      const back = new TextDecoder().decode(new Uint8Array(bytes));
      const rv = crypto.getRandomValues(new Uint8Array(32));
      const uuids = [crypto.randomUUID(), crypto.randomUUID()];
      const src = {d: new Date(0), m: new Map([[1, {x: 2}]]), s: new Set([1]), a: new Uint8Array([1, 2]), n: {deep: [1]}};
      const c = structuredClone(src);
      let fnErr = null; try { structuredClone({f() {}}) } catch (e) { fnErr = e.name }
      let quota = null; try { crypto.getRandomValues(new Uint8Array(65537)) } catch (e) { quota = e.name }
      return Response.json({bytes, back, b64: btoa("hi\\u00ff"), unb64: atob("aGk="), nonzero: rv.some(x => x !== 0),
        uuids, uuidDistinct: uuids[0] !== uuids[1], clone: [c.d instanceof Date, c.d.getTime(), c.m.get(1).x, c.s.has(1),
        c.a instanceof Uint8Array, c.a[1], c.n !== src.n, c.n.deep[0]], fnErr, quota,
        names: [typeof queueMicrotask, typeof setTimeout, typeof clearTimeout, typeof navigator]}) } }"""
    _, body = await run(loader, "misc", src)
    out = json.loads(body)
    assert out["bytes"] == list("hé€😀".encode()) and out["back"] == "hé€😀"
    assert out["b64"] == "aGn/" and out["unb64"] == "hi" and out["nonzero"] and out["uuidDistinct"]
    assert all(re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", u) for u in out["uuids"])
    assert out["clone"] == [True, 0, 2, True, True, 2, True, 1]
    assert out["fnErr"] == "DataCloneError" and out["quota"] == "QuotaExceededError"
    assert out["names"] == ["function", "function", "function", "object"]


async def test_console_goes_to_logging_tagged_with_key(loader, caplog):
    src = 'export default { fetch() { console.log("hello", {a: 1}); console.error("bad", 2); return new Response("x") } }'
    with caplog.at_level(logging.DEBUG, logger="tunnel.loader.worker"):
        await run(loader, "logger-key", src)
    records = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "tunnel.loader.worker"]
    assert (logging.INFO, '[logger-key] hello {"a":1}') in records
    assert (logging.ERROR, "[logger-key] bad 2") in records


async def test_wait_until_runs_after_the_response(loader):
    class Sink:
        def __init__(self):
            self.seen = []

        async def record(self, value):
            self.seen.append(value)
            return len(self.seen)

    sink = Sink()
    src = """export default { fetch(req, env, ctx) {
      ctx.waitUntil((async () => { await new Promise(r => setTimeout(r, 20)); await env.SINK.record("later") })());
      return new Response("now") } }"""
    from .conftest import CountingFactory
    stub = loader.get("wait", CountingFactory(code(src, env={"SINK": sink})))
    r = await stub.fetch(Request("GET", "http://a/"))
    assert await r.read() == b"now"
    assert sink.seen == []
    import asyncio
    for _ in range(100):
        if sink.seen:
            break
        await asyncio.sleep(0.01)
    assert sink.seen == ["later"]


async def test_handler_errors_carry_js_name_and_message(loader):
    from tunnel.loader import WorkerScriptError
    import pytest
    with pytest.raises(WorkerScriptError, match=r"RangeError: handler boom") as info:
        await run(loader, "throws", 'export default { async fetch() { throw new RangeError("handler boom") } }')
    assert info.value.js_name == "RangeError" and info.value.js_message == "handler boom"
    assert info.value.status == 500
    with pytest.raises(WorkerScriptError, match=r"TypeError: .*Response"):
        await run(loader, "wrong-type", 'export default { fetch() { return "a string" } }')


async def test_timers_and_pending_operations_are_bounded(loader):
    src = """export default { async fetch() {
      let timers = null; try { for (let i = 0; i < 2000; i++) setTimeout(() => {}, 60000) } catch (e) { timers = e.name + ": " + e.message }
      return new Response(timers) } }"""
    _, body = await run(loader, "timers-bounded", src)
    assert body == b"RangeError: too many active timers (1000)"


async def test_crypto_subtle_digest(loader):
    import hashlib
    src = """export default { async fetch() {
      const hex = (b) => Array.from(new Uint8Array(b), (x) => x.toString(16).padStart(2, "0")).join("");
      const data = new TextEncoder().encode("hello");
      let bad = null; try { await crypto.subtle.digest("SHA-3", data) } catch (e) { bad = e.name }
      return Response.json({sha256: hex(await crypto.subtle.digest("SHA-256", data)),
        sha1: hex(await crypto.subtle.digest({name: "sha-1"}, data.buffer)), bad,
        eq: [crypto.subtle.timingSafeEqual(data, new TextEncoder().encode("hello")), crypto.subtle.timingSafeEqual(data, new TextEncoder().encode("hellp"))]}) } }"""
    _, body = await run(loader, "digest", src)
    assert json.loads(body) == {"sha256": hashlib.sha256(b"hello").hexdigest(), "sha1": hashlib.sha1(b"hello").hexdigest(),
                                "bad": "NotSupportedError", "eq": [True, False]}


async def test_header_internals_are_not_reachable_from_worker_code(loader):
    src = """export default { fetch() {
      const probes = [typeof Headers.__fromPairs, typeof Headers.__pairs, typeof ReadableStream.__state,
                      typeof globalThis.__qjs_host, typeof globalThis.__qjs_flush];
      let injected = null; try { new Headers({"x": "a\\r\\nInjected: 1"}) } catch (e) { injected = e.name }
      return Response.json({probes, injected}) } }"""
    _, body = await run(loader, "internals", src)
    assert json.loads(body) == {"probes": ["undefined"] * 5, "injected": "TypeError"}


async def test_crypto_subtle_hmac(loader):
    import hashlib
    import hmac
    src = """export default { async fetch() {
      const enc = new TextEncoder();
      const key = await crypto.subtle.importKey("raw", enc.encode("secret"), {name: "HMAC", hash: "SHA-256"}, false, ["sign", "verify"]);
      const sig = await crypto.subtle.sign("HMAC", key, enc.encode("message"));
      const hex = Array.from(new Uint8Array(sig), (x) => x.toString(16).padStart(2, "0")).join("");
      const ok = await crypto.subtle.verify("HMAC", key, sig, enc.encode("message"));
      const bad = await crypto.subtle.verify("HMAC", key, sig, enc.encode("other"));
      let unsupported = null; try { await crypto.subtle.importKey("jwk", {}, {name: "RSA"}, false, []) } catch (e) { unsupported = e.name }
      return Response.json({hex, ok, bad, unsupported, type: key.type, alg: key.algorithm}) } }"""
    _, body = await run(loader, "hmac", src)
    assert json.loads(body) == {"hex": hmac.new(b"secret", b"message", hashlib.sha256).hexdigest(), "ok": True, "bad": False,
                                "unsupported": "NotSupportedError", "type": "secret",
                                "alg": {"name": "HMAC", "hash": {"name": "SHA-256"}, "length": 48}}
