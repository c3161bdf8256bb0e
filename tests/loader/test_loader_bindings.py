"""env, bindings, global_outbound, request.cf and streaming pass-through of bodies."""

from __future__ import annotations

import asyncio
import json

import pytest

from tunnel.loader import Loader, Request, Response, WorkerScriptError

from .conftest import CountingFactory, code, run

NOT_PERMITTED = ("Error: This worker is not permitted to access the internet via global functions like fetch(). "
                 "It must use capabilities (such as bindings in 'env') to talk to the outside world.")


class Stream:
    """An async iterable body that records whether anyone iterated it."""

    def __init__(self, chunks: list[bytes]):
        self.chunks = chunks
        self.iterated = False

    def __aiter__(self):
        self.iterated = True
        return self._gen()

    async def _gen(self):
        for c in self.chunks:
            yield c


class Tunnel:
    """A binding like the edge's env.TUNNEL: records calls, answers with a canned Response."""

    def __init__(self, response: Response | None = None):
        self.calls: list[tuple[Request, tuple]] = []
        self.response = response

    async def fetch(self, request: Request, *rest):
        self.calls.append((request, rest))
        if self.response is not None:
            return self.response
        return Response(200, {"x-origin": "yes", "content-type": "text/plain"}, b"origin:" + request.url.encode())

    async def boom(self):
        raise ValueError("binding exploded")

    def plain(self, a, b):
        return {"sum": a + b, "list": [a, b]}

    async def blob(self):
        return bytes([0, 1, 2, 255])


async def test_global_outbound_none_blocks_fetch(loader):
    src = """export default { async fetch() {
      try { await fetch("https://example.com/") } catch (e) { return new Response(e.name + ": " + e.message) }
      return new Response("reached") } }"""
    _, body = await run(loader, "no-outbound", src)
    assert body.decode() == NOT_PERMITTED


async def test_global_outbound_binding_receives_requests(loader):
    outbound = Tunnel()
    src = """export default { async fetch() {
      const r = await fetch("https://api.example.com/data?x=1", {method: "POST", headers: {"X-K": "v"}, body: "payload"});
      return new Response((await r.text()) + "|" + r.headers.get("X-ORIGIN") + "|" + r.status) } }"""
    _, body = await run(loader, "outbound", code(src, global_outbound=outbound))
    assert body == b"origin:https://api.example.com/data?x=1|yes|200"
    (req, rest), = outbound.calls
    assert (req.method, req.url, req.headers["x-k"], req.body, rest) == ("POST", "https://api.example.com/data?x=1", "v",
                                                                         b"payload", ())


async def test_env_round_trip_and_binding_methods(loader):
    tunnel = Tunnel()
    env = {"STR": "s", "NUM": 1.5, "INT": 7, "BOOL": True, "NUL": None, "OBJ": {"a": [1, {"b": "c"}]}, "ARR": [1, "2"],
           "TUNNEL": tunnel}
    src = """export default { async fetch(req, env) {
      const plain = await env.TUNNEL.plain(2, 3);
      let err = null; try { await env.TUNNEL.boom() } catch (e) { err = [e.name, e.message] }
      let missing = null; try { await env.TUNNEL.nope() } catch (e) { missing = e.name }
      const blob = Array.from(new Uint8Array(await env.TUNNEL.blob()));
      return Response.json({types: [typeof env.STR, typeof env.NUM, typeof env.INT, typeof env.BOOL, env.NUL, Array.isArray(env.ARR)],
        values: [env.STR, env.NUM, env.INT, env.BOOL, env.OBJ, env.ARR], keys: Object.keys(env).sort(), plain, err, missing, blob,
        hidden: typeof env.TUNNEL._secret}) } }"""
    _, body = await run(loader, "env", code(src, env=env))
    out = json.loads(body)
    assert out["types"] == ["string", "number", "number", "boolean", None, True]
    assert out["values"] == ["s", 1.5, 7, True, {"a": [1, {"b": "c"}]}, [1, "2"]]
    assert out["keys"] == sorted(env)
    assert out["plain"] == {"sum": 5, "list": [2, 3]}
    assert out["err"] == ["RangeError", "binding exploded"]
    assert out["missing"] == "TypeError"
    assert out["blob"] == [0, 1, 2, 255]
    assert out["hidden"] == "undefined"


async def test_binding_fetch_gets_request_opts_and_cf(loader):
    tunnel = Tunnel()
    src = """export default { async fetch(req, env) {
      const r = await env.TUNNEL.fetch(req, {tag: "t1", n: 2});
      return new Response(req.cf.clientIp + "|" + (await r.text())) } }"""
    req = Request("GET", "http://web.localhost/x", headers={"a": "b"}, cf={"clientIp": "1.2.3.4", "country": "NL"})
    _, body = await run(loader, "cf", code(src, env={"TUNNEL": tunnel}), req)
    assert body == b"1.2.3.4|origin:http://web.localhost/x"
    (py_req, rest), = tunnel.calls
    assert isinstance(py_req, Request) and py_req.headers["A"] == "b" and rest == ({"tag": "t1", "n": 2},)
    assert py_req.cf == {"clientIp": "1.2.3.4", "country": "NL"}


async def test_streaming_request_body_passes_through_untouched(loader):
    tunnel = Tunnel()
    stream = Stream([b"a" * 1000, b"b" * 1000])
    src = "export default { fetch(req, env) { return env.TUNNEL.fetch(req) } }"
    resp, body = await run(loader, "pass-req", code(src, env={"TUNNEL": tunnel}),
                           Request("POST", "http://web.localhost/up", body=stream))
    (py_req, _), = tunnel.calls
    assert py_req.body is stream          # the very same object, never copied through JS
    assert not stream.iterated
    assert body == b"origin:http://web.localhost/up"

    payload = b"\x00raw bytes\xff"
    tunnel.calls.clear()
    await run(loader, "pass-req-bytes", code(src, env={"TUNNEL": tunnel}),
              Request("POST", "http://web.localhost/up", body=payload))
    assert tunnel.calls[0][0].body is payload


async def test_streaming_response_body_passes_through_unchanged_or_rewrapped(loader):
    stream = Stream([b"chunk1", b"chunk2"])
    tunnel = Tunnel(Response(201, {"X-Up": "1", "Content-Type": "video/mp4"}, stream))
    src = """export default { async fetch(req, env) {
      const r = await env.TUNNEL.fetch(req);
      if (new URL(req.url).pathname === "/same") return r;
      const out = new Response(r.body, r);
      out.headers.set("X-Added", "yes"); out.headers.delete("x-up");
      return new Response(out.body, {status: 202, headers: out.headers}) } }"""
    stub = loader.get("pass-res", CountingFactory(code(src, env={"TUNNEL": tunnel})))
    resp = await stub.fetch(Request("GET", "http://web.localhost/same"))
    assert resp.body is stream and resp.status == 201 and resp.headers["x-up"] == "1"
    resp = await stub.fetch(Request("GET", "http://web.localhost/wrapped"))
    assert resp.body is stream and not stream.iterated
    assert (resp.status, resp.headers["x-added"], "x-up" in resp.headers, resp.headers["content-type"]) == (
        202, "yes", False, "video/mp4")
    assert await resp.read() == b"chunk1chunk2"


async def test_streaming_body_read_only_when_js_asks(loader):
    stream = Stream([b'{"a":', b' 1}'])
    src = "export default { async fetch(req) { const j = await req.json(); return Response.json({got: j.a}) } }"
    _, body = await run(loader, "read-stream", src, Request("POST", "http://a/", body=stream))
    assert stream.iterated and json.loads(body) == {"got": 1}


async def test_body_reads_are_bounded():
    async with Loader(shards=1, max_body_bytes=1000) as ld:
        src = """export default { async fetch(req) {
          try { await req.text() } catch (e) { return new Response(e.name + ": " + e.message, {status: 413}) }
          return new Response("read") } }"""
        resp, body = await run(ld, "bounded", src, Request("POST", "http://a/", body=Stream([b"x" * 600, b"y" * 600])))
        assert resp.status == 413 and body.startswith(b"RangeError: body exceeds the limit of 1000 bytes")
        resp, body = await run(ld, "bounded", src, Request("POST", "http://a/", body=b"x" * 999))
        assert body == b"read"
        # An unread oversized body still passes through to a binding.
        tunnel = Tunnel()
        pass_src = "export default { fetch(req, env) { return env.TUNNEL.fetch(req) } }"
        big = Stream([b"z" * 5000])
        await run(ld, "bounded-pass", code(pass_src, env={"TUNNEL": tunnel}), Request("POST", "http://a/", body=big))
        assert tunnel.calls[0][0].body is big


async def test_body_used_twice_is_a_type_error(loader):
    tunnel = Tunnel()
    src = """export default { async fetch(req, env) { await req.text(); return env.TUNNEL.fetch(req) } }"""
    with pytest.raises(WorkerScriptError, match="TypeError: Body has already been used"):
        await run(loader, "used-twice", code(src, env={"TUNNEL": tunnel}), Request("POST", "http://a/", body=b"abc"))
    assert tunnel.calls == []


async def test_body_passes_through_a_rebuilt_request(loader):
    tunnel = Tunnel()
    stream = Stream([b"data"])
    src = """export default { fetch(req, env) {
      const url = new URL(req.url); url.pathname = "/rewritten";
      const headers = new Headers(req.headers); headers.set("X-Edge", "1");
      return env.TUNNEL.fetch(new Request(url, {method: req.method, headers, body: req.body})) } }"""
    await run(loader, "rebuilt", code(src, env={"TUNNEL": tunnel}), Request("PUT", "http://web.localhost/orig", body=stream))
    (py_req, _), = tunnel.calls
    assert (py_req.method, py_req.url, py_req.headers["x-edge"]) == ("PUT", "http://web.localhost/rewritten", "1")
    assert py_req.body is stream and not stream.iterated


async def test_many_requests_in_flight_on_one_isolate_do_not_mix(loader):
    import asyncio
    import random

    class SlowOrigin:
        async def fetch(self, request: Request, *rest):
            await asyncio.sleep(random.random() * 0.02)
            n = request.headers["x-n"]
            return Response(200, {"x-n": n}, Stream([b"body-", n.encode()]))

    src = """export default { async fetch(req, env) {
      const r = await env.TUNNEL.fetch(req);
      const out = new Response(r.body, r);
      out.headers.set("x-seen", req.headers.get("x-n") + "/" + r.headers.get("x-n"));
      return out } }"""
    stub = loader.get("mixing", CountingFactory(code(src, env={"TUNNEL": SlowOrigin()})))
    responses = await asyncio.gather(*(stub.fetch(Request("GET", f"http://a/{i}", headers={"x-n": str(i)}))
                                       for i in range(60)))
    for i, r in enumerate(responses):
        assert r.headers["x-seen"] == f"{i}/{i}"
        assert await r.read() == f"body-{i}".encode()


async def test_dropped_binding_body_is_closed_and_passed_on_body_is_not(loader):
    import asyncio
    closed = []

    class OriginBody:
        """Like the edge's stream body: async iterable, releases its stream on aclose()."""

        def __init__(self, tag):
            self.tag = tag

        async def __aiter__(self):
            yield b"x"

        async def aclose(self):
            closed.append(self.tag)

    class Origin:
        async def fetch(self, request: Request, *rest):
            return Response(200, {}, OriginBody(request.url.rsplit("/", 1)[1]))

    src = """export default { async fetch(req, env) {
      const r = await env.TUNNEL.fetch(req);
      return new URL(req.url).pathname === "/drop" ? new Response("replaced") : r } }"""
    stub = loader.get("drop-body", CountingFactory(code(src, env={"TUNNEL": Origin()})))
    r = await stub.fetch(Request("GET", "http://a/drop"))
    assert await r.read() == b"replaced"
    for _ in range(50):
        if closed:
            break
        await asyncio.sleep(0.01)
    assert closed == ["drop"]
    r = await stub.fetch(Request("GET", "http://a/keep"))
    await asyncio.sleep(0.05)
    assert closed == ["drop"]            # the passed-on body belongs to the caller now
    assert isinstance(r.body, OriginBody) and r.body.tag == "keep"


def test_headers_from_javascript_are_validated_again_in_python():
    from tunnel.loader.bridge import _checked_headers, _checked_text
    assert _checked_headers([["x-a", "1"], ["Set-Cookie", "a=b; Path=/"]]) == [
        ("x-a", "1"), ("Set-Cookie", "a=b; Path=/")]
    assert not _checked_headers([])
    for bad in ([["x", "a\r\nInjected: 1"]], [["bad name", "v"]], [["x", 1]], [["x:", "v"]], [["a\nb", "v"]],
                [["", "v"]], [["x", "v", "w"]], [["x"]], "xy", 5, [["x", "a\x00"]], [["ok", "v"], ["x", None]],
                [["x", "a\x0bb"]], [["x", "a\x7fb"]], [["x\ty", "v"]]):
        with pytest.raises(TypeError):
            _checked_headers(bad)
    with pytest.raises(TypeError):
        _checked_text("http://a/\r\nX: y", "url")


async def test_binding_fetch_with_a_url_string_gets_a_request(loader):
    tunnel = Tunnel()
    src = """export default { async fetch(req, env) {
      const r = await env.TUNNEL.fetch("https://other.example/p", {service: "x"});
      return new Response(await r.text()) } }"""
    _, body = await run(loader, "url-string", code(src, env={"TUNNEL": tunnel}))
    (py_req, rest), = tunnel.calls
    assert isinstance(py_req, Request) and (py_req.method, py_req.url, rest) == ("GET", "https://other.example/p", ({"service": "x"},))
    assert body == b"origin:https://other.example/p"


async def test_headers_round_trip_through_javascript(loader):
    """What a binding and the caller get for headers passed through JavaScript: names lower-cased,
    order, duplicates and values kept; for unchanged, copied and changed headers, headers kept past
    their request, and a binding call made without waiting (its task runs after the request ended)."""
    seen = []

    class Echo:
        async def fetch(self, request):
            seen.append(list(request.headers.items()))
            return Response(201, [("X-Up", "A"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("X-Sp", " v ")], b"x")

        async def note(self, request):
            seen.append(list(request.headers.items()))

    src = """let kept = null;
    export default { async fetch(req, env, ctx) {
      const u = new URL(req.url);
      if (u.pathname === "/plain") return env.B.fetch(req);
      if (u.pathname === "/copy") { const r = await env.B.fetch(new Request(req)); return new Response(r.body, r); }
      if (u.pathname === "/changed") {
        const h = new Headers(req.headers); h.set("x-new", "1");
        const r = await env.B.fetch(new Request(req, {headers: h}));
        const out = new Response(r.body, r); out.headers.delete("x-up"); return out;
      }
      if (u.pathname === "/keep") { kept = await env.B.fetch(req); return new Response("kept"); }
      if (u.pathname === "/later") { env.B.note(new Request("http://a/", {headers: kept.headers})); return new Response("ok", kept); }
      if (u.pathname === "/forget") { env.B.note(req); return new Response("sent"); }
    } }"""
    stub = loader.get("heads-by-id", CountingFactory(code(src, env={"B": Echo()})))
    headers = [("Host", "web.localhost"), ("X-Mixed", "Va lue"), ("x-dup", "1"), ("X-Dup", "2")]
    lowered = [(k.lower(), v) for k, v in headers]
    origin = [("x-up", "A"), ("set-cookie", "a=1"), ("set-cookie", "b=2"), ("x-sp", " v ")]
    for path in ("/plain", "/copy"):
        r = await stub.fetch(Request("GET", f"http://web.localhost{path}", headers=headers))
        assert seen.pop() == lowered
        assert r.status == 201 and list(r.headers.items()) == origin and await r.read() == b"x"
    r = await stub.fetch(Request("GET", "http://web.localhost/changed", headers=headers))
    assert seen.pop() == lowered + [("x-new", "1")]
    assert list(r.headers.items()) == origin[1:]
    r = await stub.fetch(Request("GET", "http://web.localhost/keep", headers=headers))
    assert await r.read() == b"kept"
    seen.clear()
    r = await stub.fetch(Request("GET", "http://web.localhost/later"))   # the /keep request has ended
    assert list(r.headers.items()) == origin + [("content-type", "text/plain;charset=UTF-8")]
    assert await r.read() == b"ok"
    r = await stub.fetch(Request("GET", "http://web.localhost/forget", headers=headers))
    assert await r.read() == b"sent"
    for _ in range(50):
        if len(seen) == 2:
            break
        await asyncio.sleep(0.01)
    assert seen == [origin, lowered]  # the call made without waiting still got the request's headers


async def test_invalid_header_from_python_is_still_refused_when_passed_back(loader):
    tunnel = Tunnel()
    src = """export default { async fetch(req, env) {
      try { await env.TUNNEL.fetch(req); return new Response("passed") } catch (e) { return new Response(e.name) } } }"""
    _, body = await run(loader, "bad-head", code(src, env={"TUNNEL": tunnel}),
                        Request("GET", "http://a/", headers=[("bad name", "v")]))
    assert body == b"TypeError" and not tunnel.calls
