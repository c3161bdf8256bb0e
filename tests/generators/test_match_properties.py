"""Property tests (issue 17, item 1): the generated policy matches what the origin will see.

Hypothesis generates a clean request (a Host and a path as an origin understands them) and then
spellings of it that every origin reads the same way: Host in any letter case, with trailing
dots, with a port; path characters percent-encoded (upper- or lower-case hex), dot-segments
(also as ``%2e``), repeated slashes, characters outside ASCII as UTF-8 escapes. For each, the
generated ``tunnel-<id>`` policy runs in real QuickJS (the real loader, through the generators
test harness) on the request URL the edge builds for it, and must give the same answer as

- a Python reference built from the project's own rules (``tunnel.config.patterns``:
  ``normalize_host``, ``host_matches``, ``normalize_glob``, ``glob_match``; ``tunnel.http1``:
  ``normalize_target``), and
- the answer for the clean request (what the origin serves), computed with plain globs.

A ``query`` rule matches when ANY value of a repeated parameter matches.
"""

from __future__ import annotations

import asyncio
import re
import urllib.parse

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from generators import generate_tunnel_worker
from tests.generators.conftest import FakeTunnel, Runner, send
from tunnel.config import parse_config, patterns

try:  # the edge's request normalisation (issue 17); before it the edge forwarded the target as sent
    from tunnel.http1 import normalize_target
except ImportError:  # pragma: no cover - only on code from before the fix
    normalize_target = None

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

UNRESERVED = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"

# ------------------------------------------------------------------ the policies under test
# (status, kind, values): rules in order, the first that matches answers with its status
HOST_RULES = [(451, "host", ["secret.t.localhost"]), (452, "host", ["*.w.t.localhost"])]
PATH_RULES = [(453, "path", ["/admin/*"]), (454, "path", ["*/x.json"]), (455, "path", ["/exact"]),
              (456, "path", ["/a-b_c.d~e/*/end", "/other/*"])]
NON_ASCII_RULES = [(461, "path", ["/café/*"]), (462, "path", ["/日本/*"]), (463, "path", ["/ÿ*"])]
# globs written with escapes are put in the normalised form too (docs/config.md)
ESCAPED_GLOB_RULES = [(464, "path", ["/%7Euser/*"]), (465, "path", ["/caf%c3%a9s/*"]), (466, "path", ["/%61pi/*"])]
QUERY_RULES = [(471, "query", {"debug": "1"}), (472, "query", {"mode": "tr*"}),
               (473, "query", {"a b": "x*", "c": "y"})]


def document(rules) -> dict:
    on_request = [{"match": {kind: values}, "actions": [{"deny": {"status": status}}]} for status, kind, values in rules]
    return {"tunnels": {"t": {"hostnames": ["t.localhost", "*.t.localhost"], "policy": {"on_request": on_request}}}}


# ------------------------------------------------------------------ the edge's view and the references
def edge_url(host: str, target: str) -> str | None:
    """The URL the edge gives ``tunnel-<id>`` for a request (``tunnel/edge/workers.py``), or None
    when the edge refuses the target with 400."""
    if normalize_target is None:  # before the fix: the raw Host and target
        return f"http://{host}{target}"
    try:
        target = normalize_target(target)
    except ValueError:
        return None
    return f"http://{patterns.url_authority(host)}{target}"


def reference(rules, host: str, target: str) -> int:
    """The status the policy must give, from the project's Python functions (docs/config.md)."""
    try:
        normalized = normalize_target(target)
    except ValueError:
        return 400
    name = patterns.normalize_host(host)
    path, _, query = normalized.partition("?")
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    for status, kind, values in rules:
        if kind == "host" and any(patterns.host_matches(p, name) for p in values):
            return status
        if kind == "path" and any(patterns.glob_match(patterns.normalize_glob(g), path) for g in values):
            return status
        if kind == "query" and all(any(patterns.glob_match(g, v) for k, v in pairs if k == n) for n, g in values.items()):
            return status
    return 200


def origin_answer(rules, host: str, path: str) -> int:
    """The status for the clean request: its lower-case host and decoded path, matched with the
    globs as written (decoded), with no normalisation at all."""
    for status, kind, values in rules:
        if kind == "host" and any(p == host or (p.startswith("*.") and host.endswith(p[1:])) for p in values):
            return status
        if kind == "path" and any(patterns.glob_match(urllib.parse.unquote(g), path) for g in values):
            return status
    return 200


# ------------------------------------------------------------------ generators
HOSTS = ["t.localhost", "secret.t.localhost", "a.w.t.localhost", "w.t.localhost", "x.secret.t.localhost",
         "secretx.t.localhost", "b.a.w.t.localhost", "www.t.localhost"]


@st.composite
def host_variant(draw, base: str):
    """``base`` as a client may spell it: any letter case, trailing dots, a port."""
    chars = [c.upper() if c.isalpha() and draw(st.booleans()) else c for c in base]
    dots = draw(st.sampled_from(["", "", ".", ".."]))
    port = draw(st.sampled_from(["", "", ":80", ":8080", ":443", ":1"]))
    return "".join(chars) + dots + port


def _escape(draw, char: str) -> str:
    """``char`` as one or more percent-escapes of its UTF-8 bytes, in either hex case."""
    return "".join(("%%%02X" if draw(st.booleans()) else "%%%02x") % b for b in char.encode("utf-8"))


@st.composite
def spell_segment(draw, segment: str) -> str:
    """A path segment with some of its characters percent-encoded (all non-ASCII ones)."""
    out = []
    for c in segment:
        if not c.isascii() or (c in UNRESERVED and draw(st.integers(0, 3)) == 0):
            out.append(_escape(draw, c))
        else:
            out.append(c)
    return "".join(out)


@st.composite
def path_variant(draw, segments: list[str], trailing_slash: bool):
    """The path ``/seg/seg…`` spelled another way that means the same to an origin: encoded
    characters, dot-segments (``.``, ``%2e``, ``junk/..``) and repeated slashes before segments."""
    out = []
    for index, segment in enumerate(segments):
        for _ in range(draw(st.integers(0, 2))):
            kind = draw(st.sampled_from(["dot", "dotdot", "slash"]))
            if kind == "dot":
                out.append(draw(st.sampled_from([".", "%2e", "%2E"])))
            elif kind == "dotdot":
                junk = draw(st.sampled_from(["x", "admin", "%61", "j", ".."] if index == 0 else ["x", "admin", "%61", "j"]))
                if junk == "..":  # before the first segment: above the root, which stays the root
                    out.append(draw(st.sampled_from(["..", "%2e%2e"])))
                else:
                    out.extend([junk, draw(st.sampled_from(["..", "%2e%2e", "%2E%2e", ".%2E"]))])
            else:
                out.append("")  # an empty segment: a repeated slash
        out.append(draw(spell_segment(segment)))
    return "/" + "/".join(out) + ("/" if trailing_slash else "")


ASCII_SEGMENTS = st.one_of(
    st.sampled_from(["admin", "x", "x.json", "exact", "a-b_c.d~e", "end", "other", "Admin", "admins", "~user",
                     "api", "a..b", ".hidden", "v1"]),
    st.text(st.sampled_from(UNRESERVED + "!$&'()+,;=:@"), min_size=1, max_size=6).filter(
        lambda s: s not in (".", "..")),
)
NON_ASCII_SEGMENTS = st.one_of(
    ASCII_SEGMENTS, st.sampled_from(["café", "cafés", "日本", "ÿ", "ÿx", "naïve", "😀", "caf"]),
    st.text(st.characters(min_codepoint=0xA0, max_codepoint=0x10FFFF, exclude_categories=("Cs",)),
            min_size=1, max_size=3))


@st.composite
def clean_path(draw, segments=ASCII_SEGMENTS, firsts=("admin", "exact", "a-b_c.d~e", "other", "admins", "Admin")):
    """Segments of a clean path (no dot-segments, no empty ones), often shaped like a rule's."""
    shape = draw(st.sampled_from(["free", "alone", "first", "first", "json", "end"]))
    parts = draw(st.lists(segments, min_size=1, max_size=4))
    if shape == "alone":
        parts = [draw(st.sampled_from(firsts))]
    elif shape == "first":
        parts = [draw(st.sampled_from(firsts))] + parts[:draw(st.integers(1, 2))]
    elif shape == "json":
        parts = parts[:2] + ["x.json"]
    elif shape == "end":
        parts = ["a-b_c.d~e"] + parts[:2] + ["end"]
    trailing = draw(st.booleans()) and draw(st.booleans())
    return parts, trailing


# ------------------------------------------------------------------ real QuickJS, through the generators harness
class Js:
    """One real Loader on its own event loop (hypothesis runs plain functions), with a stub of
    each generated policy; ``status()`` runs one request."""

    def __init__(self) -> None:
        from tunnel.loader import Loader

        self.loop = asyncio.new_event_loop()
        self.loader = Loader(shards=1, max_workers=20)
        self.loop.run_until_complete(self.loader.__aenter__())
        self.runner = Runner(self.loader)
        self.stubs: dict[str, object] = {}
        self.tunnels: dict[str, FakeTunnel] = {}

    def stub(self, name: str, rules):
        if name not in self.stubs:
            config = parse_config(document(rules))
            self.tunnels[name] = FakeTunnel()
            self.stubs[name] = self.runner.load(generate_tunnel_worker(config.tunnels["t"]), self.tunnels[name])
        return self.stubs[name]

    def status(self, name: str, rules, url: str | None) -> int:
        """The policy's status for ``url`` (None: the edge refused it, 400); 200 = forwarded."""
        if url is None:
            return 400
        _scheme, rest = url.split("://", 1)
        slash = rest.find("/")
        host, target = (rest, "/") if slash < 0 else (rest[:slash], rest[slash:])

        async def one():
            stub = self.stub(name, rules)  # Loader.get needs the running loop
            return await asyncio.wait_for(send(stub, target, host=host), 10)

        forwarded = len(self.tunnels.get(name, FakeTunnel()).seen)
        status, _, _ = self.loop.run_until_complete(one())
        assert (status == 200) == (len(self.tunnels[name].seen) == forwarded + 1)
        if status == 200:  # what the policy forwards is the URL it matched
            assert self.tunnels[name].seen[-1][0].url == url
        return status

    def close(self) -> None:
        self.loop.run_until_complete(self.loader.__aexit__(None, None, None))
        self.loop.close()


@pytest.fixture(scope="module")
def js():
    harness = Js()
    yield harness
    harness.close()


def _require_normalisation():
    assert normalize_target is not None, "tunnel.http1.normalize_target does not exist: the edge does not normalise"


# ------------------------------------------------------------------ properties
@SETTINGS
@given(data=st.data(), base=st.sampled_from(HOSTS), path=st.sampled_from(["/", "/x", "/admin/x"]))
def test_host_variants_match_like_routing(js, data, base, path):
    """Host case, trailing dots and a port never change which host rule matches."""
    host = data.draw(host_variant(base), label="host")
    rules = HOST_RULES + PATH_RULES
    expected = origin_answer(rules, base, path)
    event(f"expected {expected}")
    assert js.status("hosts", rules, edge_url(host, path)) == expected, (host, path)
    # the policy normalises a raw Host itself too (begin(), as routing does), whatever URL it gets
    assert js.status("hosts", rules, f"http://{host}{path}") == expected, (host, path)
    _require_normalisation()
    assert reference(rules, host, path) == expected, (host, path)


@SETTINGS
@given(data=st.data(), clean=clean_path(), host=st.sampled_from(["t.localhost", "www.t.localhost"]))
def test_path_variants_match_what_the_origin_serves(js, data, clean, host):
    """Encodings of unreserved characters, dot-segments and repeated slashes never change which
    path rule matches: the policy, the Python reference and the clean path all agree."""
    segments, trailing = clean
    base = "/" + "/".join(segments) + ("/" if trailing else "")
    variant = data.draw(path_variant(segments, trailing), label="variant")
    expected = origin_answer(PATH_RULES, host, base)
    event(f"expected {expected}")
    assert js.status("paths", PATH_RULES, edge_url(host, variant)) == expected, (variant, base)
    _require_normalisation()
    assert reference(PATH_RULES, host, variant) == expected, (variant, base)


@SETTINGS
@given(data=st.data(), clean=clean_path(NON_ASCII_SEGMENTS, ("café", "日本", "ÿ", "ÿx", "cafés", "admin")))
def test_non_ascii_path_variants_match_non_ascii_globs(js, data, clean):
    """Characters outside ASCII: a request spells them as UTF-8 escapes in either hex case; the
    config's globs hold them as written (``/café/*``). Both are put in one form."""
    segments, trailing = clean
    base = "/" + "/".join(segments) + ("/" if trailing else "")
    variant = data.draw(path_variant(segments, trailing), label="variant")
    rules = NON_ASCII_RULES + PATH_RULES
    expected = origin_answer(rules, "t.localhost", base)
    event(f"expected {expected}")
    assert js.status("non-ascii", rules, edge_url("t.localhost", variant)) == expected, (variant, base)
    _require_normalisation()
    assert reference(rules, "t.localhost", variant) == expected, (variant, base)


@SETTINGS
@given(data=st.data(), clean=clean_path(st.sampled_from(["~user", "cafés", "api", "x", "café", "apiary", "~"]),
                                        ("~user", "cafés", "api", "apiary", "x")))
def test_globs_written_with_escapes_match_like_the_decoded_glob(js, data, clean):
    """A glob in the config spelled with escapes (``/%7Euser/*``) matches as its normalised form."""
    segments, trailing = clean
    base = "/" + "/".join(segments) + ("/" if trailing else "")
    variant = data.draw(path_variant(segments, trailing), label="variant")
    expected = origin_answer(ESCAPED_GLOB_RULES, "t.localhost", base)
    event(f"expected {expected}")
    assert js.status("escaped-globs", ESCAPED_GLOB_RULES, edge_url("t.localhost", variant)) == expected, (variant, base)
    _require_normalisation()
    assert reference(ESCAPED_GLOB_RULES, "t.localhost", variant) == expected, (variant, base)


QUERY_NAMES = st.sampled_from(["debug", "debug", "debug", "mode", "mode", "a b", "a b", "c", "c", "other", "Debug"])
QUERY_VALUES = st.one_of(st.sampled_from(["1", "1", "0", "true", "tr", "x", "xyz", "y", "y", "", "1 ", "é"]),
                         st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=4))


@st.composite
def query_string(draw):
    """A query with repeated parameters, each name and value form-encoded one of several ways."""
    pairs = draw(st.lists(st.tuples(QUERY_NAMES, QUERY_VALUES), min_size=0, max_size=6))

    def spell(text: str) -> str:
        style = draw(st.sampled_from(["plus", "quote", "all"]))
        if style == "plus":
            return urllib.parse.quote_plus(text, safe="")
        if style == "quote":
            return urllib.parse.quote(text, safe="")
        return "".join(_escape(draw, c) if draw(st.booleans()) or not (c.isascii() and c.isalnum()) else c
                       for c in text)

    parts = []
    for name, value in pairs:
        parts.append(spell(name) + ("" if value == "" and draw(st.booleans()) else "=" + spell(value)))
    return pairs, "&".join(parts)


def query_expected(rules, pairs) -> int:
    for status, kind, values in rules:
        if all(any(patterns.glob_match(g, v) for k, v in pairs if k == n) for n, g in values.items()):
            return status
    return 200


@SETTINGS
@given(query=query_string())
def test_a_query_rule_matches_if_any_value_of_a_repeated_parameter_does(js, query):
    pairs, text = query
    target = "/q?" + text if text else "/q"
    expected = query_expected(QUERY_RULES, pairs)
    event(f"expected {expected}")
    if normalize_target is not None:
        assert reference(QUERY_RULES, "t.localhost", target) == expected, (target, pairs)
    assert js.status("query", QUERY_RULES, edge_url("t.localhost", target)) == expected, (target, pairs)


def test_repeated_debug_parameter_examples(js):
    """The issue's own example, and its neighbours."""
    for target, expected in [("/?debug=0&debug=1", 471), ("/?debug=1&debug=0", 471), ("/?debug=0&debug=2", 200),
                             ("/?debug=0&debug=%31", 471), ("/?%64ebug=0&debug=1", 471), ("/?debug", 200),
                             ("/?mode=x&mode=true", 472), ("/?a+b=x1&c=z&c=y", 473), ("/?a%20b=q&a+b=xx&c=y", 473),
                             ("/?a+b=x1&c=z", 200)]:
        assert js.status("query", QUERY_RULES, edge_url("t.localhost", target)) == expected, target


# ------------------------------------------------------------------ the Python side alone (fast, more examples)
@settings(max_examples=400, deadline=None)
@given(data=st.data(), clean=clean_path(NON_ASCII_SEGMENTS))
def test_normalize_target_maps_every_spelling_to_one_form(data, clean):
    _require_normalisation()
    segments, trailing = clean
    base = "/" + "/".join(segments) + ("/" if trailing else "")
    variant = data.draw(path_variant(segments, trailing), label="variant")
    query = data.draw(st.sampled_from(["", "?a=%7E", "?x=/../y&x=//z"]), label="query")
    once = normalize_target(variant + query)
    wire = (base + query).encode("utf-8").decode("latin-1")  # raw UTF-8 bytes, as the edge reads a target
    assert once == normalize_target(wire) and normalize_target(once) == once
    path = once.partition("?")[0]
    assert path.isascii() and "//" not in path and "/./" not in path and "/../" not in path
    assert urllib.parse.unquote(path) == base  # the origin decodes it to the clean path
    assert not re.search(r"%(?:[0-9A-F][a-f]|[a-f][0-9A-Fa-f])", path)  # escapes in upper case
    assert not any(chr(int(h, 16)) in UNRESERVED for h in re.findall(r"%([0-9A-F]{2})", path))
    assert once.partition("?")[2] == query[1:]  # the query is kept as sent


@settings(max_examples=200, deadline=None)
@given(prefix=st.sampled_from(["/admin", "/x/..", "", "/a/b"]),
       bad=st.sampled_from(["%2F", "%2f", "%5C", "%5c", "%00", "\\", "%zz", "%2", "%"]),
       suffix=st.sampled_from(["", "x", "/x", "/admin/x"]))
def test_what_cannot_be_normalised_safely_is_refused(prefix, bad, suffix):
    _require_normalisation()
    with pytest.raises(ValueError):
        normalize_target(prefix + "/" + bad + suffix)
