"""Property tests: no string from config can change the generated program.

Arbitrary Unicode (quotes, backslashes, U+2028/U+2029, ``</script>``, ``${``, ``*/``, NUL, lone
surrogates) goes into every free-text place of a config; every generated module must compile
and every value must come back out of the running worker exactly.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from generators import (
    build_routing_table,
    config_answer,
    generate_config_worker,
    generate_custom_worker,
    generate_metrics_worker,
    generate_tunnel_worker,
)
from tunnel.config import parse_config

NASTY = ["\ud800\udfff", "</script>", "${x}", "*/", "/*", "\u2028", "\u2029", "\x00", "\ud800", "\udfff", "`", "'", '"', "\\",
         "\\u0041", "<!--", "-->", "\n", "\r", "__proto__", "\ufeff", "😀"]
ANY_CHAR = st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=())
TEXT = st.lists(st.one_of(st.sampled_from(NASTY), st.text(ANY_CHAR, max_size=8)), max_size=6).map("".join)
HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20)
TOKEN = st.one_of(st.sampled_from(["__proto__", "constructor", "toString", "X-A"]),
                  st.text(st.sampled_from("abcXYZ019-_!#$%&'*+.^`|~"), min_size=1, max_size=12))
def js_same(a, b) -> bool:
    """Equal as JavaScript sees them: the same UTF-16 code units (a Python str may spell a surrogate
    pair as two code points, which JavaScript reads as one astral character)."""
    return json.dumps(a, ensure_ascii=True, sort_keys=True) == json.dumps(b, ensure_ascii=True, sort_keys=True)


SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def build(body, help_text, template, glob, header_name, header_value):
    path_glob = "/" + "".join(c for c in template if not (c.isspace() or ord(c) < 0x20))
    doc = {"tunnels": {"t": {
        "hostnames": ["t.localhost"],
        "policy": {
            "on_request": [
                {"match": {"query": {"q": glob}, "cookie": {"c": glob}, "path": path_glob},
                 "actions": [{"deny": {"status": 418, "body": body}}]},
                {"actions": [{"custom_response": {"status": 200, "body": body,
                                                  "headers": {header_name: header_value}}}]},
            ],
            "on_response": [{"actions": [{"set_response_headers": {header_name: header_value}}]}],
        },
        "metrics": [{"name": "m", "type": "counter", "help": help_text or "h",
                     "labels": {"route": {"path_template": ["/" + template]}}}],
        "worker": {"main_module": "index.js", "modules": {"index.js": "export default {}", "data.txt": {"text": body}}},
    }}}
    return doc, parse_config(doc)


@SETTINGS
@given(body=TEXT, help_text=TEXT, template=TEXT, glob=TEXT, header_name=TOKEN, header_value=HEADER_TEXT)
def test_values_come_back_out_exactly(qjs, compile_js, body, help_text, template, glob, header_name, header_value):
    doc, config = build(body, help_text, template, glob, header_name, header_value)
    tunnel = config.tunnels["t"]
    policy = generate_tunnel_worker(tunnel)
    for source in policy.modules.values():
        if isinstance(source, str):
            compile_js(source)
    assert generate_custom_worker(tunnel).modules["data.txt"] == {"text": body}  # custom-<id>, beside the policy

    # Without the custom module, the same policy runs in the bare harness.
    bare = parse_config({"tunnels": {"t": {k: v for k, v in doc["tunnels"]["t"].items() if k != "worker"}}})
    result = qjs(generate_tunnel_worker(bare.tunnels["t"])).fetch("GET", "http://t.localhost/")
    assert result["status"] == 200 and js_same(result["body"], body)
    assert [header_name.lower(), header_value] in result["headers"]

    metrics = generate_metrics_worker(tunnel)
    compile_js(metrics.modules[metrics.main_module])
    exposition = qjs(metrics).fetch("GET", "http://m/metrics")["body"]
    help_line = (help_text or "h").replace("\\", "\\\\").replace("\n", "\\n")
    assert js_same(exposition.split("\n")[0], "# HELP tunnel_custom_m_total " + help_line)

    worker = generate_config_worker(config, 7)
    compile_js(worker.modules[worker.main_module])
    answer = json.loads(qjs(worker).fetch("GET", "http://c/config")["body"])
    assert js_same(answer, config_answer(config, 7))
    assert js_same(answer["config"]["tunnels"]["t"]["policy"], doc["tunnels"]["t"]["policy"])


LABELS = st.sampled_from(["a", "b", "web", "x-1", "localhost", "test"])
HOSTNAME = st.lists(LABELS, min_size=1, max_size=3).map(".".join)
PATTERN = st.tuples(st.booleans(), HOSTNAME).map(lambda t: ("*." if t[0] else "") + t[1])


@st.composite
def routing_case(draw):
    patterns = draw(st.lists(PATTERN, min_size=1, max_size=6, unique=True))
    tunnels: dict = {}
    for i, p in enumerate(patterns):
        tunnels.setdefault(f"t{i % 3}", {"hostnames": []})["hostnames"].append(p)
    name = sorted(tunnels)[0]
    tunnels[name]["ingress"] = [{"path": "/api/*", "service": "http://127.0.0.1:1"},
                                {"service": "http://127.0.0.1:2"}]
    hosts = draw(st.lists(st.one_of(
        HOSTNAME, PATTERN.map(lambda p: p.replace("*", draw(LABELS))),
        st.tuples(HOSTNAME, st.sampled_from(["", ":8080", ".", " ", "\t"]), st.booleans()).map(
            lambda t: (t[0].upper() if t[2] else t[0]) + t[1]),
        st.sampled_from(["", "[::1]:80", "A.B", "web.\u212a", "x:y:z"])), min_size=1, max_size=8))
    paths = draw(st.lists(st.sampled_from(["/", "/api/x", "/api", "/x/api/y"]), min_size=len(hosts),
                          max_size=len(hosts)))
    return {"tunnels": tunnels}, list(zip(hosts, paths))


@settings(max_examples=60, deadline=None)
@given(routing_case())
def test_routing_table_answers_like_the_config_worker(qjs, case):
    from urllib.parse import quote

    doc, requests = case
    config = parse_config(doc)
    table = build_routing_table(config)
    worker = qjs(generate_config_worker(config, 3))
    for host, path in requests:
        result = worker.fetch("GET", f"http://c/route?host={quote(host, safe='')}&path={quote(path, safe='')}")
        expected = table.route(host, path)
        if expected is None:
            assert result["status"] == 404, (host, result)
        else:
            assert result["status"] == 200 and json.loads(result["body"]) == {"version": 3, **expected}, host


@st.composite
def ip_case(draw):
    import ipaddress

    def network():
        ip = draw(st.ip_addresses())
        prefix = draw(st.integers(0, 32 if ip.version == 4 else 128))
        return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))

    nets = [network() for _ in range(draw(st.integers(1, 3)))]
    clients = []
    for _ in range(6):
        # Addresses near the networks, mapped forms, brackets, and garbage.
        base = ipaddress.ip_network(draw(st.sampled_from(nets)))
        offset = draw(st.integers(-2, 2))
        try:
            addr = ipaddress.ip_address(int(base.network_address) + offset * max(1, base.num_addresses // 2))
        except ValueError:
            addr = base.network_address
        if addr.version != base.version:
            addr = base.network_address
        text = str(addr)
        form = draw(st.sampled_from(["plain", "mapped", "bracket", "garbage"]))
        if form == "mapped" and addr.version == 4:
            text = "::ffff:" + text
        elif form == "bracket" and addr.version == 6:
            text = f"[{text}]"
        elif form == "garbage":
            text = draw(st.sampled_from(["", "1.2.3", "::g", "1.2.3.4.5", "256.1.1.1", ":::", "1::2::3",
                                               "010.0.0.1", "::ffff:1.2.3", "1:2:3:4:5:6:7:8:9", "fe80::1%eth0"]))
        clients.append(text)
    clients.append(str(draw(st.ip_addresses())))
    return nets, clients


@settings(max_examples=60, deadline=None)
@given(ip_case())
def test_worker_ip_matching_agrees_with_python(qjs, case):
    import ipaddress

    from tunnel.config.patterns import ip_in_networks

    nets, clients = case
    config = parse_config({"tunnels": {"t": {"hostnames": ["t.localhost"], "policy": {"on_request": [
        {"match": {"client_ip": nets}, "actions": [{"deny": {"status": 451}}]}]}}}})
    worker = qjs(generate_tunnel_worker(config.tunnels["t"]))
    parsed = tuple(ipaddress.ip_network(n) for n in nets)
    for client in clients:
        status = worker.fetch("GET", "http://t.localhost/", client_ip=client)["status"]
        assert (status == 451) == ip_in_networks(client, parsed), (client, nets)


@settings(max_examples=300, deadline=None)
@given(glob=st.text(st.sampled_from("ab/*"), max_size=8), text=st.text(st.sampled_from("ab/"), max_size=10))
def test_glob_matching_agrees_with_python(glob, text):
    import quickjs

    from generators.policy_js import HELPERS
    from tunnel.config.patterns import glob_match

    ctx = _glob_context(quickjs, HELPERS["glob"][1])
    ctx.set("g", glob)
    ctx.set("t", text)
    assert ctx.eval("glob(g)(t)") == glob_match(glob, text)


_GLOB_CTX = {}


def _glob_context(quickjs, source):
    if "ctx" not in _GLOB_CTX:
        _GLOB_CTX["ctx"] = quickjs.Context()
        _GLOB_CTX["ctx"].eval(source)
    return _GLOB_CTX["ctx"]
