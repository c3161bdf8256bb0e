"""Issue 17, item 1: a tunnel's policy sees the request the way its origin will.

Through a real edge, a real connector and a real origin (in-process, 127.0.0.1 only): every
spelling of a Host or a path that the origin reads as a protected one gets the policy's answer
and never reaches the origin; what is forwarded is the normalised form docs/config.md ("How
requests are matched") documents. Odd targets go over a raw socket (aiohttp would normalise
them on the client side). The origin here records every request it gets, whatever the path.

The admin API items of the issue (deeply nested config documents, a huge version number) are at
the end: they answer 400 with a JSON error, never 500.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import yaml
from aiohttp import web

from tunnel.config.credentials import hash_secret

POL = "pol.localhost"
SECRET = "secret.pol.localhost"
ING = "ing.localhost"
PLAIN = "plain.localhost"
CREDENTIALS = "ops:s3cret"
TIMEOUT = 10.0


# ------------------------------------------------------------------ a recording origin
@dataclass
class Recorder:
    """An origin that answers every path and remembers what it was sent, exactly."""

    name: str
    seen: list[dict] = field(default_factory=list)
    runner: web.AppRunner | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        record = {"raw_path": request.raw_path, "path": request.path, "host": request.headers.get("Host"),
                  "origin": self.name}
        self.seen.append(record)
        return web.json_response(record, headers={"X-Seen-By": self.name})

    async def start(self) -> Recorder:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self


@pytest.fixture
async def recorders() -> AsyncIterator[tuple[Recorder, Recorder]]:
    main, special = await Recorder("main").start(), await Recorder("special").start()
    yield main, special
    for r in (main, special):
        await r.runner.cleanup()


def policy_config(main: Recorder, special: Recorder) -> dict:
    return {"tunnels": {
        "pol": {
            "hostnames": [POL, SECRET],
            "policy": {"on_request": [
                {"match": {"host": [SECRET]}, "actions": [{"deny": {"status": 403, "body": "secret host\n"}}]},
                {"match": {"path": "/admin/*"},
                 "actions": [{"basic_auth": {"realm": "admin", "credentials": [hash_secret(CREDENTIALS)]}}]},
                {"match": {"path": "/private/*"}, "actions": [{"deny": {"status": 403, "body": "private\n"}}]},
                {"match": {"path": "/café/*"}, "actions": [{"deny": {"status": 403, "body": "cafe\n"}}]},
                {"match": {"path": "/internal/*"}, "actions": [{"ip_restriction": {"deny": ["127.0.0.0/8"]}}]},
                {"match": {"query": {"debug": "1"}}, "actions": [{"deny": {"status": 400, "body": "no debug\n"}}]},
            ]},
        },
        # no policy, no worker: only an ingress rule looks at the path
        "ing": {"hostnames": [ING], "ingress": [{"path": "/special/*", "service": special.url},
                                               {"service": main.url}]},
        "plain": {"hostnames": [PLAIN]},
    }}


@pytest.fixture
async def stack(make_edge, recorders, tmp_path):
    main, special = recorders
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump(policy_config(main, special)))
    edge = await make_edge(config_file=str(path))
    for name in ("pol", "ing", "plain"):
        await edge.connect(edge.edge.rotate_token(name), main.url)
    return edge, main, special


# ------------------------------------------------------------------ a raw HTTP/1.1 client
@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def from_origin(self) -> str | None:
        return self.headers.get("x-seen-by")

    def __repr__(self) -> str:
        return f"<{self.status} tunnel-error={self.headers.get('tunnel-error')} origin={self.from_origin} {self.body[:120]!r}>"


async def raw(port: int, target: str, host: str | None, extra: str = "") -> Answer:
    """Send one request exactly as written (``Connection: close``) and read the whole answer."""
    async def go() -> Answer:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            head = f"GET {target} HTTP/1.1\r\n" + (f"Host: {host}\r\n" if host is not None else "")
            writer.write((head + extra + "Connection: close\r\n\r\n").encode("latin-1"))
            await writer.drain()
            data = await reader.read()
        finally:
            writer.close()
        head_bytes, _, body = data.partition(b"\r\n\r\n")
        lines = head_bytes.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            out, rest = b"", body
            while rest:
                size_line, _, rest = rest.partition(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    break
                out, rest = out + rest[:size], rest[size + 2:]
            body = out
        return Answer(status, headers, body)
    return await asyncio.wait_for(go(), TIMEOUT)


# ------------------------------------------------------------------ the bypass variants
def port_of(edge) -> int:
    return edge.edge.public_port


# (id, target, Host header ("{port}" is the edge's public port), expected status, expected Tunnel-Error,
#  a fragment of the policy's body or None)
HOST_VARIANTS = [
    ("host-trailing-dot", "/x", SECRET + ".", 403, "denied", b"secret host"),
    ("host-trailing-dot-and-port", "/x", SECRET + ".:{port}", 403, "denied", b"secret host"),
    ("host-port", "/x", SECRET + ":{port}", 403, "denied", b"secret host"),
    ("host-upper-case", "/x", "SECRET.pol.localhost", 403, "denied", b"secret host"),
    ("host-upper-case-dot-port", "/x", "Secret.POL.localhost.:{port}", 403, "denied", b"secret host"),
    ("host-two-trailing-dots", "/x", SECRET + "..", 403, "denied", b"secret host"),
    # absolute-form: the URI's authority is the host, whatever the Host header says
    ("absolute-form-trailing-dot", "http://secret.pol.localhost./x", POL, 403, "denied", b"secret host"),
    ("absolute-form-dot-and-port", "http://SECRET.pol.localhost.:{port}/x", POL, 403, "denied", b"secret host"),
    ("absolute-form-plain", "http://secret.pol.localhost/x", POL, 403, "denied", b"secret host"),
]
PATH_VARIANTS = [
    ("encoded-unreserved-a", "/%61dmin/x", POL, 401, "basic-auth", None),
    ("encoded-unreserved-upper-hex", "/ad%6Din/x", POL, 401, "basic-auth", None),
    ("encoded-unreserved-lower-hex", "/ad%6din/x", POL, 401, "basic-auth", None),
    ("encoded-whole-segment", "/%61%64%6D%69%6E/x", POL, 401, "basic-auth", None),
    ("encoded-unreserved-i-ip-restriction", "/%69nternal/x", POL, 403, "ip-restricted", None),
    ("encoded-unreserved-private", "/priv%61te/x", POL, 403, "denied", b"private"),
    ("encoded-dot-dot", "/x/%2e%2e/admin/x", POL, 401, "basic-auth", None),
    ("encoded-dot-dot-upper", "/x/%2E%2E/admin/x", POL, 401, "basic-auth", None),
    ("dot-dot", "/x/../admin/x", POL, 401, "basic-auth", None),
    ("dot-dot-above-root", "/../admin/x", POL, 401, "basic-auth", None),
    ("double-slash", "//admin/x", POL, 401, "basic-auth", None),
    ("many-slashes-internal", "///internal//x", POL, 403, "ip-restricted", None),
    ("leading-dot-segment", "/./admin/x", POL, 401, "basic-auth", None),
    ("inner-dot-segment", "/admin/./x", POL, 401, "basic-auth", None),
    ("encoded-dot-segment", "/%2e/admin/x", POL, 401, "basic-auth", None),
    ("mixed", "/a/.//%2E%2e/./%61dmin//x", POL, 401, "basic-auth", None),
    ("non-ascii-lower-hex", "/caf%c3%a9/x", POL, 403, "denied", b"cafe"),
    ("non-ascii-upper-hex", "/caf%C3%A9/x", POL, 403, "denied", b"cafe"),
    ("non-ascii-encoded-unreserved", "/%63af%c3%a9/./x", POL, 403, "denied", b"cafe"),
    ("exact-prefix-dir-dot-dot", "/admin/../admin/x", POL, 401, "basic-auth", None),
]
# an encoded slash (or what else origins read in different ways): 400 at the edge, or the policy's answer
REFUSED_VARIANTS = [
    ("encoded-slash-lower", "/admin%2fx", POL),
    ("encoded-slash-upper", "/admin%2Fx", POL),
    ("encoded-slash-after-dot-dot", "/x/..%2fadmin/x", POL),
    ("encoded-slash-private", "/private%2Fx", POL),
    ("encoded-backslash", "/x/..%5cadmin/x", POL),
    ("raw-backslash", "/x/..\\admin/x", POL),
    ("encoded-nul", "/admin/x%00", POL),
    ("malformed-escape", "/%6dmin%zz/x", POL),
]
QUERY_VARIANTS = [
    ("repeated-param-last", "/q?debug=0&debug=1", POL),
    ("repeated-param-middle", "/q?debug=0&debug=1&debug=2", POL),
    ("repeated-param-first", "/q?debug=1&debug=0", POL),
    ("encoded-value", "/q?debug=%31", POL),
    ("encoded-name-repeated", "/q?debug=0&%64ebug=1", POL),
]


def _assert_policy_answer(answer: Answer, status: int, reason: str, fragment: bytes | None, seen: list, what: str):
    assert seen == [], f"{what}: the origin got {seen} (answer {answer})"
    assert answer.from_origin is None, f"{what}: answered by the origin: {answer}"
    assert (answer.status, answer.headers.get("tunnel-error")) == (status, reason), f"{what}: {answer}"
    if fragment is not None:
        assert fragment in answer.body, f"{what}: {answer}"


@pytest.mark.parametrize("name, target, host, status, reason, fragment", HOST_VARIANTS + PATH_VARIANTS,
                         ids=[v[0] for v in HOST_VARIANTS + PATH_VARIANTS])
async def test_bypass_variant_gets_the_policy_answer(stack, name, target, host, status, reason, fragment):
    edge, main, special = stack
    port = port_of(edge)
    answer = await raw(port, target.format(port=port), host.format(port=port))
    _assert_policy_answer(answer, status, reason, fragment, main.seen + special.seen, f"{name} {target!r} Host {host!r}")


@pytest.mark.parametrize("name, target, host", REFUSED_VARIANTS, ids=[v[0] for v in REFUSED_VARIANTS])
async def test_unsafe_encodings_are_refused_or_get_the_policy_answer(stack, name, target, host):
    edge, main, special = stack
    answer = await raw(port_of(edge), target, host)
    seen = main.seen + special.seen
    assert seen == [] and answer.from_origin is None, f"{name} {target!r}: reached the origin as {seen} ({answer})"
    assert (answer.status, answer.headers.get("tunnel-error")) in {
        (400, "bad-request"), (401, "basic-auth"), (403, "denied")}, f"{name} {target!r}: {answer}"
    # with the credentials the admin path is still refused (400), never served as /admin/x
    authorized = await raw(port_of(edge), target, host,
                           f"Authorization: Basic {base64.b64encode(CREDENTIALS.encode()).decode()}\r\n")
    seen = main.seen + special.seen
    assert authorized.status == 400 and authorized.headers.get("tunnel-error") == "bad-request", \
        f"{name} {target!r} with credentials: {authorized} (origin saw {seen})"
    assert seen == []


@pytest.mark.parametrize("name, target, host", QUERY_VARIANTS, ids=[v[0] for v in QUERY_VARIANTS])
async def test_query_rule_sees_every_value_of_a_repeated_parameter(stack, name, target, host):
    edge, main, special = stack
    answer = await raw(port_of(edge), target, host)
    _assert_policy_answer(answer, 400, "denied", b"no debug", main.seen + special.seen, f"{name} {target!r}")


async def test_what_the_policy_lets_through_reaches_the_origin_normalised(stack):
    """The positive side: the policy tunnel forwards the form it matched (docs/config.md)."""
    edge, main, special = stack
    port = port_of(edge)
    auth = f"Authorization: Basic {base64.b64encode(CREDENTIALS.encode()).decode()}\r\n"
    cases = [  # (target, extra headers, the path the origin gets)
        ("/%7Euser//a/./b", "", "/~user/a/b"),
        ("/%7euser//a/./b?x=%7E&y=a//b", "", "/~user/a/b?x=%7E&y=a//b"),  # the query is kept as sent
        ("/d%c3%a9j%c3%a0/x", "", "/d%C3%A9j%C3%A0/x"),
        ("/sp%20ace/%3Fq/%2a", "", "/sp%20ace/%3Fq/%2A"),  # reserved escapes kept, hex upper-cased
        ("/a/b/../c/./d/", "", "/a/c/d/"),
        ("/a/b/..", "", "/a/"),
        ("/%41DMIN/x", "", "/ADMIN/x"),  # paths are case-sensitive (documented): not the admin rule
        ("/admin;x/y", "", "/admin;x/y"),  # path parameters are not interpreted (documented)
        ("/%61dmin//x/../y", auth, "/admin/y"),  # authorised: the origin serves what the policy matched
        ("/q?debug=0&debug=2", "", "/q?debug=0&debug=2"),
    ]
    for target, extra, expected in cases:
        main.seen.clear()
        answer = await raw(port, target, POL, extra)
        assert answer.status == 200 and answer.from_origin == "main", f"{target!r}: {answer}"
        assert [r["raw_path"] for r in main.seen] == [expected], f"{target!r}: origin saw {main.seen}"
    assert special.seen == []
    # raw bytes outside ASCII: the HTTP parser refuses them (400); were they accepted, they would
    # have to be forwarded percent-encoded, as the docs say
    main.seen.clear()
    answer = await raw(port, "/d\xc3\xa9j\xc3\xa0/x", POL)
    assert (answer.status == 400 and answer.headers.get("tunnel-error") == "bad-request" and not main.seen) or \
        (answer.status == 200 and [r["raw_path"] for r in main.seen] == ["/d%C3%A9j%C3%A0/x"]), (answer, main.seen)


async def test_an_ingress_path_rule_matches_and_forwards_the_normalised_path(stack):
    """A tunnel with only an ingress rule on a path (no policy, no worker): the connector's rule
    sees the normalised path, so the encoded spelling goes to the same service, as that path."""
    edge, main, special = stack
    port = port_of(edge)
    for target, expected in [("/special/x", "/special/x"), ("/%73pecial/x", "/special/x"),
                             ("//special//x", "/special/x"), ("/x/%2E%2E/special/./x", "/special/x"),
                             ("/%7Euser//a/./b", None)]:
        main.seen.clear()
        special.seen.clear()
        answer = await raw(port, target, ING)
        assert answer.status == 200, f"{target!r}: {answer}"
        if expected is not None:
            assert answer.from_origin == "special" and main.seen == [], f"{target!r}: {answer}, main saw {main.seen}"
            assert [r["raw_path"] for r in special.seen] == [expected], special.seen
        else:
            assert answer.from_origin == "main" and [r["raw_path"] for r in main.seen] == ["/~user/a/b"], main.seen
    main.seen.clear()
    special.seen.clear()
    answer = await raw(port, "/special%2Fx", ING)  # an encoded slash: refused, as on a policy tunnel
    assert answer.status == 400 and answer.headers.get("tunnel-error") == "bad-request", answer
    assert main.seen == [] and special.seen == []


async def test_a_plain_tunnel_forwards_the_target_byte_for_byte(stack):
    """Documented: a tunnel with no policy, custom code or path rule is not normalised."""
    edge, main, _ = stack
    for target in ["/%7Euser//a/./b", "/x/%2e%2e/y?debug=0&debug=1", "/a%2Fb"]:
        main.seen.clear()
        answer = await raw(port_of(edge), target, PLAIN)
        assert answer.status == 200 and [r["raw_path"] for r in main.seen] == [target], (target, answer, main.seen)


async def test_bypass_attempts_leave_the_connection_and_tunnel_usable(stack, client):
    """Refusals are per request: the tunnel keeps serving the plain paths afterwards."""
    edge, main, _ = stack
    for target in ["/%61dmin/x", "//admin/x", "/admin%2fx"]:
        await raw(port_of(edge), target, POL)
    async with client.get(edge.public + "/fine", headers={"Host": POL}) as resp:
        assert resp.status == 200 and resp.headers["X-Seen-By"] == "main"
    assert [r["raw_path"] for r in main.seen] == ["/fine"]


# ------------------------------------------------------------------ admin API: hostile documents
def _admin(edge) -> tuple[str, dict[str, str]]:
    return f"http://127.0.0.1:{edge.edge.admin_port}", {"Authorization": f"Bearer {edge.edge.admin_token}"}


async def _json_answer(resp) -> dict:
    assert resp.headers.get("Content-Type", "").startswith("application/json"), resp.headers
    body = json.loads(await resp.read())
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], body
    return body


@pytest.mark.parametrize("shape", ["body-array", "document-array", "document-mapping"])
async def test_admin_deeply_nested_json_is_400(make_edge, client, shape):
    edge = await make_edge()
    base, auth = _admin(edge)
    before = edge.edge.version
    depth = 200_000
    if shape == "body-array":
        body = "[" * depth + "]" * depth
    elif shape == "document-array":
        body = '{"document": {"tunnels": ' + "[" * depth + "]" * depth + "}}"
    else:  # a mapping nested as deep as fits the admin body limit
        body = '{"document": ' + '{"a":' * 150_000 + "1" + "}" * 150_000 + "}"
    t0 = time.monotonic()
    async with client.post(base + "/api/config", data=body.encode(),
                           headers={**auth, "Content-Type": "application/json"}) as resp:
        assert resp.status == 400, (resp.status, (await resp.read())[:300])
        error = (await _json_answer(resp))["error"]
    print(f"\n{shape} ({len(body)} bytes): 400 in {time.monotonic() - t0:.3f} s: {error}")
    assert edge.edge.version == before  # nothing changed
    async with client.get(base + "/api/config", headers=auth) as resp:  # the admin API still answers
        assert resp.status == 200


@pytest.mark.parametrize("shape", ["flow-sequence", "flow-mapping", "block-sequence"])
async def test_admin_deeply_nested_yaml_is_400(make_edge, client, shape):
    edge = await make_edge()
    base, auth = _admin(edge)
    before = edge.edge.version
    depth = 50_000
    if shape == "flow-sequence":
        text = "tunnels: " + "[" * depth + "]" * depth + "\n"
    elif shape == "flow-mapping":
        text = "tunnels: " + "{a: " * depth + "1" + "}" * depth + "\n"
    else:
        text = "tunnels:\n  " + "- " * depth + "1\n"  # compact nested block sequences
    t0 = time.monotonic()
    async with client.post(base + "/api/config", json={"yaml": text}, headers=auth) as resp:
        assert resp.status == 400, (resp.status, (await resp.read())[:300])
        answer = await _json_answer(resp)
    print(f"\n{shape} ({len(text)} bytes): 400 in {time.monotonic() - t0:.3f} s: {answer}")
    assert edge.edge.version == before


async def test_admin_nested_just_deep_enough_still_gets_a_config_error(make_edge, client):
    """A document of ordinary size nested past the limit is a config error (400 with errors)."""
    edge = await make_edge()
    base, auth = _admin(edge)
    doc: dict = {"x": 1}
    for _ in range(100):
        doc = {"a": doc}
    async with client.post(base + "/api/config", json={"document": {"tunnels": {"t": doc}}}, headers=auth) as resp:
        assert resp.status == 400
        body = await _json_answer(resp)
        assert body.get("errors"), body


@pytest.mark.parametrize("version", ["100000000000000000000000", str(2**63), "9" * 400, "-1", "1e3", "0x10", " 1"],
                         ids=["10**23", "2**63", "400-digits", "-1", "1e3", "0x10", "space-1"])
async def test_admin_pull_with_an_absurd_version_is_400(make_edge, client, version):
    edge = await make_edge()
    base, auth = _admin(edge)
    async with client.get(base + "/api/config", params={"version": version}, headers=auth) as resp:
        assert resp.status == 400, (version, resp.status, (await resp.read())[:300])
        await _json_answer(resp)


@pytest.mark.parametrize("field_name, value", [("version", 10**23), ("base", 10**23), ("version", -1),
                                               ("version", 2**63)])
async def test_admin_rollback_with_an_absurd_version_is_400(make_edge, client, field_name, value):
    edge = await make_edge()
    base, auth = _admin(edge)
    before = edge.edge.version
    async with client.post(base + "/api/config/rollback", json={field_name: value}, headers=auth) as resp:
        assert resp.status == 400, (field_name, value, resp.status, (await resp.read())[:300])
        await _json_answer(resp)
    assert edge.edge.version == before
