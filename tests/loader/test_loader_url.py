"""The URL fast path (js/fast-url.js) agrees with the vendored WHATWG implementation (core-js)."""

from __future__ import annotations

import json
import random

from tunnel.loader import Loader, Request

from .conftest import code, run
from .test_loader_bindings import Tunnel

COMPARE = """export default { async fetch(req) {
  const urls = await req.json();
  const fast = URL.__qjsFast, Core = URL.__qjsCore;
  const keys = ['href', 'origin', 'protocol', 'username', 'password', 'host', 'hostname', 'port', 'pathname', 'search', 'hash'];
  const bad = []; let taken = 0;
  for (const s of urls) {
    const f = fast(s);
    if (f === null) continue;
    taken++;
    let c;
    try { c = new Core(s) } catch (e) { bad.push([s, 'core rejects: ' + e.message]); continue }
    for (const k of keys) if (f[k] !== c[k]) bad.push([s, k, f[k], c[k]]);
    const w = new URL(s);
    if (w.href !== c.href || w.searchParams.toString() !== c.searchParams.toString()) bad.push([s, 'wrapper']);
  }
  return Response.json({bad: bad.slice(0, 20), taken, total: urls.length}) } }"""

TRICKY = [
    "http://web.localhost/x", "https://a.b.c:443/", "http://a:80", "http://a:080/", "http://a:65536/", "http://a:8080/p?q#f",
    "http://A.Example.COM/Path", "HTTP://a/", "http://a/./b", "http://a/b/../c", "http://a/%2e/b", "http://a/.well-known/x",
    "http://a/b c", "http://a/b?c d", "http://a/?'", "http://a/#`", "http://a/?", "http://a/#", "http://a/é", "http://é.com/",
    "http://xn--nxasmq6b.com/", "http://1.2.3.4/", "http://127.1/", "http://0x7f.1/", "http://a.0x/", "http://a.b.09/",
    "http://[::1]/", "http://u:p@a/", "http://@a/", "http://a\\b/", "http://a/b\\c", "http://a/\t", " http://a/", "http://a/ ",
    "http://a/[]|^{}", "http://a/?[]|^{}`", "http://a/#[]|^{}", "http://a/%zz", "http://a/%41", "http://a-b.c-/", "http://-a/",
    "http://a..b/", "http://a./", "http://a/?q=1&q=2", "https://a/b;c=d@e:f", "ws://a/", "ftp://a/", "http:/a/", "http:a",
]
SAFE = "abcxyzAZ09.-_~/="
SPECIAL = "!$&'()*+,;=:@/%?#[]|^{}`\\ \t\"<>é"


def random_urls(n: int, seed: int = 1234) -> list[str]:
    rng = random.Random(seed)

    def chunk(k: int) -> str:
        return "".join(rng.choice(SPECIAL if rng.random() < 0.08 else SAFE) for _ in range(rng.randint(0, k)))

    out = []
    for _ in range(n):
        scheme = rng.choice(["http", "https", "http", "https", "HTTP", "ws", "file"])
        host = rng.choice(["web.localhost", "a.b", "Example.COM", "1.2.3.4", "a.1", "xn--a.b", "é.c", "a-b", "" ]) + chunk(2)
        port = rng.choice(["", "", ":80", ":443", ":8080", ":0", ":65536", ":", ":07"])
        url = f"{scheme}://{host}{port}"
        if rng.random() < 0.8:
            url += "/" + chunk(12)
        if rng.random() < 0.5:
            url += "?" + chunk(10)
        if rng.random() < 0.3:
            url += "#" + chunk(6)
        out.append(url)
    return out


async def test_fast_path_matches_core_js():
    urls = TRICKY + random_urls(4000)
    async with Loader(shards=1, cpu_limit_ms=20_000) as ld:
        _, body = await run(ld, "url-compare", COMPARE, Request("POST", "http://a/", body=json.dumps(urls).encode()))
    out = json.loads(body)
    assert out["bad"] == []
    assert 400 < out["taken"] < out["total"] - 400, out   # both paths are exercised


async def test_url_object_behaviour_on_both_paths(loader):
    src = """export default { fetch() {
      const r = [];
      for (const s of ["http://web.localhost/a?x=1&y=2#h", "http://u:p@web.localhost/a/../b?x=1"]) {
        const u = new URL(s);
        const sp = u.searchParams;
        r.push(u.searchParams === sp, sp.get("x"));
        sp.append("z", "3 4");
        r.push(u.href, u.search);
        u.search = "?k=v";
        r.push(sp.get("k"), sp.has("x"), u.href);
        u.pathname = "/p q"; u.hostname = "Other.Example";
        r.push(u.href, String(u), JSON.stringify({u}), u instanceof URL, Object.prototype.toString.call(u));
      }
      r.push(new URL("/rel?x", "https://base.example/dir/").href, URL.canParse("nope"), new URL(new URL("http://a/b")).href);
      return Response.json(r) } }"""
    _, body = await run(loader, "url-behaviour", src)
    assert json.loads(body) == [
        True, "1", "http://web.localhost/a?x=1&y=2&z=3+4#h", "?x=1&y=2&z=3+4", "v", False, "http://web.localhost/a?k=v#h",
        "http://other.example/p%20q?k=v#h", "http://other.example/p%20q?k=v#h", '{"u":"http://other.example/p%20q?k=v#h"}',
        True, "[object URL]",
        True, "1", "http://u:p@web.localhost/b?x=1&z=3+4", "?x=1&z=3+4", "v", False, "http://u:p@web.localhost/b?k=v",
        "http://u:p@other.example/p%20q?k=v", "http://u:p@other.example/p%20q?k=v", '{"u":"http://u:p@other.example/p%20q?k=v"}',
        True, "[object URL]",
        "https://base.example/rel?x", False, "http://a/b"]


SUBCLASS = """const MENTION = "URL";
class Tagged extends Request {
  get tag() { return "t"; }
  label() { return "tagged:" + this.method; }
}
export default { async fetch(request, env) {
  const t = new Tagged(request.url, {method: "POST", headers: {"x-a": "1"}, body: "b"});
  const r = [t.tag, t.label(), t instanceof Tagged, t instanceof Request, Object.getPrototypeOf(t) === Tagged.prototype,
             Request.prototype.constructor === Request, new Request(request.url).constructor === Request,
             Object.prototype.toString.call(t), t.url, t.headers.get("x-a"), await t.text()];
  const p = new Request(request.url, {method: "POST", body: new URLSearchParams("a=1&b=2")});
  r.push(p.headers.get("content-type"), await p.text());
  await env.B.fetch(new Tagged(request.url, {headers: {"x-from": "tagged"}}));
  await fetch(new Tagged("https://api.example.com/q"), {method: "POST", body: new URLSearchParams({k: "v w"})});
  return Response.json(r) } }"""


async def test_request_subclass_survives_the_url_polyfill(loader):
    # core-js (web/url-search-params) wraps a global Request and fetch it finds: `new Tagged()` then
    # returned a plain Request (the subclass's getters and methods were lost)
    binding, outbound = Tunnel(), Tunnel()
    _, body = await run(loader, "subclass", code(SUBCLASS, env={"B": binding}, global_outbound=outbound))
    assert json.loads(body) == [
        "t", "tagged:POST", True, True, True, True, True, "[object Request]", "http://web.localhost/x", "1", "b",
        "application/x-www-form-urlencoded;charset=UTF-8", "a=1&b=2"]
    (py_req, rest), = binding.calls
    assert isinstance(py_req, Request) and (py_req.method, py_req.url, py_req.headers["x-from"], rest) == (
        "GET", "http://web.localhost/x", "tagged", ())
    (py_req, rest), = outbound.calls
    assert isinstance(py_req, Request) and (py_req.method, py_req.url, py_req.body) == ("POST", "https://api.example.com/q", b"k=v+w")
    assert py_req.headers["content-type"] == "application/x-www-form-urlencoded;charset=UTF-8"
