"""Every generated module compiles in QuickJS, for many shapes of config; hashes key the code."""

from __future__ import annotations

import pytest

from generators import generate_config_worker, generate_metrics_worker, generate_tunnel_worker
from generators.policy_js import HELPERS
from tunnel.config import parse_config


def all_actions_doc():
    every = [
        {"set_request_headers": {"A": "1"}}, {"add_request_headers": {"A": "2"}}, {"remove_request_headers": ["B"]},
        {"set_response_headers": {"C": "1"}}, {"add_response_headers": {"C": "2"}},
        {"remove_response_headers": ["D"]}, {"url_rewrite": {"from": "^/a/(?<rest>.*)$", "to": "/b/$<rest>"}},
        {"ip_restriction": {"deny": ["10.0.0.0/8", "fd00::/8"]}},
        {"rate_limit": {"key": {"header": "X-Key"}, "capacity": 5, "per": "500ms"}},
        {"cors": {"allow_origins": ["*"], "expose_headers": ["X-A"]}},
        {"ab_split": {"cookie": "ab", "variants": [{"name": "a", "weight": 1, "service": "http://127.0.0.1:1"},
                                                   {"name": "b", "weight": 0, "service": "https://b.test"}]}},
        {"feature_flag": {"name": "f", "percent": 12.5, "sticky_by": {"header": "X-User"}, "header": "X-F"}},
        {"basic_auth": {"credentials": ["sha256:" + "0" * 64]}}, {"bearer_auth": {"tokens": ["sha256:" + "1" * 64]}},
        {"redirect": {"location": "https://example.test/x?y=1"}},
    ]
    return {"tunnels": {"t": {
        "hostnames": ["t.localhost"],
        "policy": {
            "on_request": [{"match": {"host": ["t.localhost", "*.t.localhost"], "path": ["/x/*", "*.png"],
                                      "method": "get", "header": {"Accept": "*json*"}, "query": {"a": "1"},
                                      "cookie": {"s": "*"}, "client_ip": ["0.0.0.0/0", "::/0"]},
                            "actions": every},
                           {"actions": [{"custom_response": {"body": "x"}}, {"deny": {}}]}],
            "on_response": [{"match": {"status": [500, "4xx"]}, "actions": [
                {"custom_response": {"status": 502, "body": "sorry"}}, {"cors": {"allow_origins": ["https://a.test"],
                                                                               "allow_credentials": True}}]}],
        },
        "metrics": [{"name": "h", "type": "histogram", "labels": {"m": "method", "s": "status_class"}}],
    }}}


@pytest.mark.parametrize("doc", [
    {"tunnels": {}},
    {"tunnels": {"t": {"hostnames": ["t.localhost"]}}},
    {"tunnels": {"t": {"hostnames": ["t.localhost"], "worker": {"main_module": "a/b.js", "modules": {
        "a/b.js": "import x from '../c.js'; export default { fetch: (r, env) => env.TUNNEL.fetch(r) }",
        "c.js": {"js": "export default 1"}, "d.json": {"json": {"k": [1]}}, "e.cjs": {"cjs": "module.exports = 1"}}}}}},
    all_actions_doc(),
], ids=["empty", "bare", "custom", "every-action"])
def test_every_generated_module_compiles(doc, compile_js):
    config = parse_config(doc)
    workers = [generate_config_worker(config, 1)]
    for tunnel in config.tunnels.values():
        workers += [generate_tunnel_worker(tunnel), generate_metrics_worker(tunnel)]
    for worker in workers:
        for module in worker.modules.values():
            if isinstance(module, str) or "js" in module:
                compile_js(module if isinstance(module, str) else module["js"])


def test_every_action_uses_every_helper():
    worker = generate_tunnel_worker(parse_config(all_actions_doc()).tunnels["t"])
    text = worker.modules["tunnel.js"]
    missing = [name for name in HELPERS if f"function {name}(" not in text]
    assert missing == []


def test_hash_changes_with_the_code_and_only_with_it():
    doc = all_actions_doc()
    a = generate_tunnel_worker(parse_config(doc).tunnels["t"])
    doc["tunnels"]["t"]["metrics"] = []  # not part of the tunnel worker
    assert generate_tunnel_worker(parse_config(doc).tunnels["t"]).hash == a.hash
    doc["tunnels"]["t"]["policy"]["on_request"][1]["actions"][0]["custom_response"]["body"] = "y"
    b = generate_tunnel_worker(parse_config(doc).tunnels["t"])
    assert b.hash != a.hash and b.hash in b.modules["tunnel.js"]
