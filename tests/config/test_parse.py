"""The config model: the reference passes; each broken variant fails with its exact path."""

from __future__ import annotations

import copy

import pytest

from tunnel.config import AbSplit, BasicAuth, ConfigError, RateLimit, load_yaml, match_ingress, parse_config

WEB = "tunnels.web"
REQ = f"{WEB}.policy.on_request"


def errors_of(doc) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    return info.value.errors


def test_reference_config_passes(reference_doc):
    config = parse_config(reference_doc)
    web = config.tunnels["web"]
    assert web.hostnames == ("web.localhost", "*.web.localhost")
    assert [r.service for r in web.ingress] == ["http://127.0.0.1:9000", "http://127.0.0.1:9001",
                                                "http://127.0.0.1:3000"]
    assert web.has_policy and not config.tunnels["api"].has_policy
    assert web.needs_worker and not config.tunnels["api"].needs_worker
    assert isinstance(web.policy.on_request[2].actions[0], BasicAuth)
    limit = web.policy.on_request[7].actions[0]
    assert isinstance(limit, RateLimit) and (limit.capacity, limit.per_s, limit.key) == (100, 60.0, "client_ip")
    assert isinstance(web.policy.on_request[6].actions[0], AbSplit)
    assert web.metrics_token.startswith("sha256:48adbbcf")
    assert web.worker.main_module == "index.js" and set(web.worker.modules) == {"index.js", "stamp.js"}
    assert "http://127.0.0.1:3001" in web.ingress_services()
    assert config.document == reference_doc


def test_hostnames_lowercased_and_unique(reference_doc):
    reference_doc["tunnels"]["api"]["hostnames"] = ["API.Localhost"]
    assert parse_config(reference_doc).tunnels["api"].hostnames == ("api.localhost",)
    reference_doc["tunnels"]["api"]["hostnames"] = ["Web.localhost"]
    assert errors_of(reference_doc) == ["tunnels.api.hostnames[0]: web.localhost is already bound to tunnel web"]


def test_bad_tunnel_name(reference_doc):
    reference_doc["tunnels"]["Bad_Name"] = {"hostnames": ["x.localhost"]}
    assert errors_of(reference_doc)[0].startswith('tunnels.Bad_Name: tunnel name must be')


def test_empty_and_minimal_documents():
    assert dict(parse_config({}).tunnels) == {}
    assert parse_config({"tunnels": {"a": None}}).tunnels["a"].hostnames == ()
    assert errors_of([1]) == ["<root>: must be a mapping, not a list"]


def set_path(doc, path, value):
    target = doc
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value


BROKEN = [
    # (path in the document, new value, expected error)
    (("tunnels", "web", "colour"), "blue", f"{WEB}.colour: unknown key"),
    (("extra",), 1, "<root>.extra: unknown key"),
    (("tunnels", "web", "ingress"), [{"path": "/api/*", "service": "http://127.0.0.1:9000"}],
     f"{WEB}.ingress[0]: the last rule must be a catch-all"),
    (("tunnels", "web", "ingress"), [{"service": "http://127.0.0.1:3000"},
                                     {"path": "/api/*", "service": "http://127.0.0.1:9000"}],
     f"{WEB}.ingress[0]: a catch-all rule (no hostname, no path) must be the last rule"),
    (("tunnels", "web", "ingress"), [], f"{WEB}.ingress: must not be empty"),
    (("tunnels", "web", "ingress", 0, "service"), "ftp://x", f"{WEB}.ingress[0].service: must be an http://"),
    (("tunnels", "web", "ingress", 0, "service"), "http://127.0.0.1:9000/base",
     f"{WEB}.ingress[0].service: a service URL cannot have a path"),
    (("tunnels", "web", "ingress", 1, "hostname"), "*.*.bad", f"{WEB}.ingress[1].hostname: must be a hostname"),
    (("tunnels", "web", "ingress", 1, "hostname"), "docs.elsewhere.test",
     f"{WEB}.ingress[1].hostname: docs.elsewhere.test is not served by this tunnel"),
    (("tunnels", "web", "hostnames", 0), "bad host", f"{WEB}.hostnames[0]: not a valid hostname"),
    (("tunnels", "web", "metrics_token"), "web-reader-token", f"{WEB}.metrics_token: must be a credential hash"),
    # match
    (("tunnels", "web", "policy", "on_request", 0, "match", "paht"), "/x", f"{REQ}[0].match.paht: unknown key"),
    (("tunnels", "web", "policy", "on_request", 0, "match", "path"), "no-slash",
     f"{REQ}[0].match.path[0]: must be a path glob"),
    (("tunnels", "web", "policy", "on_request", 4, "match", "method"), ["GET", 3],
     f"{REQ}[4].match.method[1]: must be a string"),
    (("tunnels", "web", "policy", "on_request", 3, "match", "client_ip"), ["10.0.0.1/8"],
     f"{REQ}[3].match.client_ip[0]: must be an IP address or CIDR"),
    (("tunnels", "web", "policy", "on_request", 5, "match", "header"), {"X Debug": "*"},
     f'{REQ}[5].match.header["X Debug"]: must be an HTTP header name'),
    (("tunnels", "web", "policy", "on_request", 0, "match", "status"), [500],
     f"{REQ}[0].match.status: unknown key"),
    (("tunnels", "web", "policy", "on_request", 0, "oops"), 1, f"{REQ}[0].oops: unknown key"),
    (("tunnels", "web", "policy", "on_request", 0, "actions"), [{"teleport": {}}],
     f"{REQ}[0].actions[0].teleport: unknown action"),
    (("tunnels", "web", "policy", "on_request", 0, "actions"), [{"deny": {}, "redirect": {"location": "/"}}],
     f"{REQ}[0].actions[0]: an action is a mapping with exactly one key"),
    (("tunnels", "web", "policy", "on_response", 0, "actions", 0), {"deny": {}},
     f"{WEB}.policy.on_response[0].actions[0].deny: not allowed in on_response"),
    # a bad value in every action
    (("tunnels", "web", "policy", "on_request", 0, "actions", 0, "custom_response", "status"), 99,
     f"{REQ}[0].actions[0].custom_response.status: must be an HTTP status code"),
    (("tunnels", "web", "policy", "on_request", 0, "actions", 0, "custom_response", "body"), 5,
     f"{REQ}[0].actions[0].custom_response.body: must be a string"),
    (("tunnels", "web", "policy", "on_request", 1, "actions", 0, "redirect", "status"), 200,
     f"{REQ}[1].actions[0].redirect.status: must be one of 301"),
    (("tunnels", "web", "policy", "on_request", 1, "actions", 0, "redirect", "location"), "/a\nb",
     f"{REQ}[1].actions[0].redirect.location: must be a URL or path"),
    (("tunnels", "web", "policy", "on_request", 2, "actions", 0, "basic_auth", "credentials"), ["ops:secret"],
     f"{REQ}[2].actions[0].basic_auth.credentials[0]: must be a credential hash"),
    (("tunnels", "web", "policy", "on_request", 2, "actions", 0, "basic_auth", "realm"), 'a"b',
     f"{REQ}[2].actions[0].basic_auth.realm: cannot contain"),
    (("tunnels", "web", "policy", "on_request", 3, "actions", 0, "ip_restriction", "allow"), ["localhost"],
     f"{REQ}[3].actions[0].ip_restriction.allow[0]: must be an IP address or CIDR"),
    (("tunnels", "web", "policy", "on_request", 3, "actions", 0, "ip_restriction"), {},
     f"{REQ}[3].actions[0].ip_restriction: needs `allow`, `deny` or both"),
    (("tunnels", "web", "policy", "on_request", 4, "actions", 0, "bearer_auth", "tokens"), ["sha256:abc"],
     f"{REQ}[4].actions[0].bearer_auth.tokens[0]: must be a credential hash"),
    (("tunnels", "web", "policy", "on_request", 5, "actions", 0, "deny", "status"), 200,
     f"{REQ}[5].actions[0].deny.status: must be an HTTP status code from 400 to 599"),
    (("tunnels", "web", "policy", "on_request", 6, "actions", 0, "ab_split", "variants", 1, "weight"), -1,
     f"{REQ}[6].actions[0].ab_split.variants[1].weight: must be a non-negative integer"),
    (("tunnels", "web", "policy", "on_request", 6, "actions", 0, "ab_split", "variants", 1, "service"), "nope",
     f"{REQ}[6].actions[0].ab_split.variants[1].service: must be an http://"),
    (("tunnels", "web", "policy", "on_request", 6, "actions", 0, "ab_split", "cookie"), "a b",
     f"{REQ}[6].actions[0].ab_split.cookie: must be a cookie name"),
    (("tunnels", "web", "policy", "on_request", 7, "actions", 0, "rate_limit", "capacity"), 0,
     f"{REQ}[7].actions[0].rate_limit.capacity: must be a positive integer"),
    (("tunnels", "web", "policy", "on_request", 7, "actions", 0, "rate_limit", "per"), "soon",
     f"{REQ}[7].actions[0].rate_limit.per: must be a positive duration"),
    (("tunnels", "web", "policy", "on_request", 7, "actions", 0, "rate_limit", "key"), "cookie",
     f"{REQ}[7].actions[0].rate_limit.key: must be client_ip or {{header: <name>}}"),
    (("tunnels", "web", "policy", "on_request", 7, "actions", 1, "feature_flag", "percent"), 101,
     f"{REQ}[7].actions[1].feature_flag.percent: must be a percentage"),
    (("tunnels", "web", "policy", "on_request", 7, "actions", 1, "feature_flag", "sticky_by"), "moon",
     f"{REQ}[7].actions[1].feature_flag.sticky_by: must be client_ip or"),
    (("tunnels", "web", "policy", "on_request", 7, "actions", 2, "set_request_headers"), {"X-Env": "a\r\nb"},
     f"{REQ}[7].actions[2].set_request_headers.X-Env: must be a header value"),
    (("tunnels", "web", "policy", "on_request", 7, "actions", 2, "set_request_headers"), {"Content-Length": "0"},
     f"{REQ}[7].actions[2].set_request_headers.Content-Length: Content-Length is managed by the edge"),
    (("tunnels", "web", "policy", "on_response", 0, "actions", 1, "remove_response_headers"), ["Tunnel-Error"],
     f"{WEB}.policy.on_response[0].actions[1].remove_response_headers[0]: Tunnel-Error is managed by the edge"),
    (("tunnels", "web", "policy", "on_request", 0, "actions", 0, "custom_response", "headers"),
     {"Transfer-Encoding": "chunked"},
     f"{REQ}[0].actions[0].custom_response.headers.Transfer-Encoding: Transfer-Encoding is managed by the edge"),
    (("tunnels", "web", "policy", "on_request", 7, "actions", 3, "remove_request_headers"), ["bad header"],
     f"{REQ}[7].actions[3].remove_request_headers[0]: must be an HTTP header name"),
    (("tunnels", "web", "policy", "on_request", 7, "actions", 4, "url_rewrite", "from"), "(",
     f"{REQ}[7].actions[4].url_rewrite.from: not a valid regular expression"),
    (("tunnels", "web", "policy", "on_request", 7, "actions", 4, "url_rewrite", "to"), "relative",
     f"{REQ}[7].actions[4].url_rewrite.to: must be a path starting with '/'"),
    (("tunnels", "web", "policy", "on_response", 0, "actions", 0, "set_response_headers"), {},
     f"{WEB}.policy.on_response[0].actions[0].set_response_headers: must be a non-empty mapping"),
    (("tunnels", "web", "policy", "on_response", 0, "actions", 1, "remove_response_headers"), [],
     f"{WEB}.policy.on_response[0].actions[1].remove_response_headers: must not be empty"),
    (("tunnels", "web", "policy", "on_response", 0, "actions", 2, "cors", "allow_origins"), ["app.example.test"],
     f"{WEB}.policy.on_response[0].actions[2].cors.allow_origins[0]: must be an origin"),
    (("tunnels", "web", "policy", "on_response", 0, "actions", 2, "cors", "max_age"), -5,
     f"{WEB}.policy.on_response[0].actions[2].cors.max_age: must be a number of seconds"),
    # metrics and worker
    (("tunnels", "web", "metrics", 0, "type"), "gauge", f"{WEB}.metrics[0].type: must be counter or histogram"),
    (("tunnels", "web", "metrics", 0, "name"), "Requests", f"{WEB}.metrics[0].name: must be a metric name"),
    (("tunnels", "web", "metrics", 0, "name"), "hits_total", f"{WEB}.metrics[0].name: cannot end with"),
    (("tunnels", "web", "metrics", 1, "buckets"), [1, 0.5], f"{WEB}.metrics[1].buckets: must be at most 50"),
    (("tunnels", "web", "metrics", 0, "buckets"), [1], f"{WEB}.metrics[0].buckets: only histograms"),
    (("tunnels", "web", "metrics", 0, "labels", "route"), "path", f"{WEB}.metrics[0].labels.route: must be method"),
    (("tunnels", "web", "metrics", 0, "labels", "le"), "method", f"{WEB}.metrics[0].labels.le: must be a label name"),
    (("tunnels", "web", "metrics", 2, "labels", "client", "allow"), ["a\nb"],
     f"{WEB}.metrics[2].labels.client.allow[0]: must be a header value"),
    (("tunnels", "web", "worker", "main_module"), "main.js", f"{WEB}.worker.main_module: main.js is not one of"),
    (("tunnels", "web", "worker", "modules", "../x.js"), "x", f'{WEB}.worker.modules["../x.js"]: a module name'),
    (("tunnels", "web", "worker", "modules", "data.txt"), "x", f"{WEB}.worker.modules[\"data.txt\"]: a plain string"),
]


@pytest.mark.parametrize("path,value,expected", BROKEN, ids=[e[2].split(":")[0] for e in BROKEN])
def test_broken_variant_names_its_path(reference_doc, path, value, expected):
    set_path(reference_doc, path, value)
    errors = errors_of(reference_doc)
    assert any(e.startswith(expected) for e in errors), errors


def test_every_error_is_reported_in_one_pass(reference_doc):
    reference_doc["tunnels"]["web"]["policy"]["on_request"][7]["actions"][0]["rate_limit"]["capacity"] = -1
    reference_doc["tunnels"]["api"]["ingress"] = [{"path": "/x", "service": "http://127.0.0.1:1"}]
    reference_doc["tunnels"]["api"]["bogus"] = True
    errors = errors_of(reference_doc)
    assert errors == [
        "tunnels.web.policy.on_request[7].actions[0].rate_limit.capacity: must be a positive integer",
        "tunnels.api.bogus: unknown key (expected one of: hostnames, ingress, policy, metrics, metrics_token, worker, https_only)",
        "tunnels.api.ingress[0]: the last rule must be a catch-all (no hostname, no path), "
        "like `- service: http://127.0.0.1:3000`",
    ]


def test_shared_metric_names_must_agree(reference_doc):
    reference_doc["tunnels"]["api"]["metrics"] = [{"name": "requests_by_route", "type": "histogram"}]
    assert errors_of(reference_doc) == [
        "tunnels.api.metrics[0].name: requests_by_route is also defined by tunnel web with a different type, "
        "help or buckets (series of one name share one family on /metrics)"]


def test_yaml_errors_have_a_line():
    with pytest.raises(ConfigError) as info:
        load_yaml("tunnels:\n  web: [\n")
    assert info.value.errors[0].startswith("<yaml>: line ")


def test_match_ingress(reference_doc):
    web = parse_config(reference_doc).tunnels["web"]
    assert match_ingress(web.ingress, "web.localhost", "/api/users").index == 0
    assert match_ingress(web.ingress, "DOCS.web.localhost:8080", "/guide").index == 1
    assert match_ingress(web.ingress, "docs.web.localhost", "/api/x").index == 0  # first match wins
    assert match_ingress(web.ingress, "web.localhost", "/api").index == 2
    assert match_ingress((), "web.localhost", "/") is None


def test_document_is_not_aliased(reference_doc):
    config = parse_config(reference_doc)
    doc = config.document
    doc["tunnels"].clear()
    assert config.document == reference_doc and copy.deepcopy(reference_doc) == config.document


def test_yaml_aliases_are_refused_with_their_position():
    from tunnel.config import ConfigError, load_yaml
    bomb = "a: &a [x, x]\nb: &b [*a, *a]\nc: &c [*b, *b]\n"
    with pytest.raises(ConfigError) as info:
        load_yaml(bomb)
    assert info.value.errors == ["<yaml>: line 2, column 8: aliases (*name) are not allowed in a config"]
