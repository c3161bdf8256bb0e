"""The config worker in the real loader, and the routing table it shares with the edge."""

from __future__ import annotations

import json

from generators import build_routing_table, config_answer, generate_config_worker
from tunnel.config import REDACTED, content_hash


async def get(stub, url):
    from tunnel.loader import Request

    response = await stub.fetch(Request("GET", url))
    return response.status, json.loads(await response.read())


async def test_config_introspection_is_redacted(runner, reference_config, doc):
    stub = runner.load(generate_config_worker(reference_config, 4))
    status, answer = await get(stub, "http://config/config")
    assert status == 200 and answer["version"] == 4
    assert answer["hash"] == content_hash(doc) == reference_config.hash
    web = answer["config"]["tunnels"]["web"]
    assert web["metrics_token"] == REDACTED
    assert web["policy"]["on_request"][2]["actions"][0]["basic_auth"]["credentials"] == [REDACTED]
    assert web["policy"]["on_request"][4]["actions"][0]["bearer_auth"]["tokens"] == [REDACTED]
    assert "sha256:11b78eb0" not in json.dumps(answer) and "48adbbcf" not in json.dumps(answer)
    assert answer == config_answer(reference_config, 4)


async def test_route_answers(runner, reference_config):
    stub = runner.load(generate_config_worker(reference_config, 2))
    cases = {
        "web.localhost&path=/api/x": {"tunnel": "web", "hostname": "web.localhost",
                                      "ingress": {"index": 0, "service": "http://127.0.0.1:9000"}},
        "DOCS.web.localhost:8443&path=/guide": {"tunnel": "web", "hostname": "*.web.localhost",
                                                "ingress": {"index": 1, "service": "http://127.0.0.1:9001"}},
        "a.b.web.localhost": {"tunnel": "web", "hostname": "*.web.localhost",
                              "ingress": {"index": 2, "service": "http://127.0.0.1:3000"}},
        "api.localhost&path=/": {"tunnel": "api", "hostname": "api.localhost",
                                 "ingress": {"index": 0, "service": "http://127.0.0.1:9000"}},
    }
    table = build_routing_table(reference_config)
    for query, expected in cases.items():
        status, answer = await get(stub, f"http://config/route?host={query}")
        assert (status, answer) == (200, {"version": 2, **expected}), query
        host, _, path = query.partition("&path=")
        assert table.route(host, path or "/") == expected
    status, answer = await get(stub, "http://config/route?host=nope.localhost")
    assert status == 404 and answer["error"] == "unknown hostname"
    assert table.route("nope.localhost") is None and table.route("localhost") is None
    assert (await get(stub, "http://config/other"))[0] == 404


def test_routing_table_prefers_exact_then_longest_wildcard():
    from tunnel.config import parse_config

    config = parse_config({"tunnels": {
        "a": {"hostnames": ["*.example.test"]},
        "b": {"hostnames": ["*.deep.example.test", "x.deep.example.test"]},
    }})
    table = build_routing_table(config)
    assert table.lookup("x.deep.example.test") == ("b", "x.deep.example.test")
    assert table.lookup("y.deep.example.test") == ("b", "*.deep.example.test")
    assert table.lookup("deep.example.test") == ("a", "*.example.test")
    assert table.lookup("example.test") is None
    assert table.route("y.deep.example.test")["ingress"] is None  # no ingress: the connector's --url
