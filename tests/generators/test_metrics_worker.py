"""The metrics worker in the real loader: observe exchanges, render a valid exposition."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from generators import generate_metrics_worker
from tunnel.config import parse_config

METRICS = [
    {"name": "requests_by_route", "type": "counter", "help": 'Requests by "route"\\ and status class.',
     "labels": {"route": {"path_template": ["/users/:id", "/orders/:id/items"]}, "status": "status_class",
                "method": "method"}},
    {"name": "route_duration_seconds", "type": "histogram", "help": "Duration by route.",
     "buckets": [0.005, 0.1, 1], "labels": {"route": {"path_template": ["/users/:id"]}}},
    {"name": "requests_by_client", "type": "counter",
     "labels": {"client": {"header": "X-Client", "allow": ["iOS", 'we"b\\x']}}},
    {"name": "all_requests", "type": "counter", "help": "Every request."},
]


def worker_for(metrics):
    config = parse_config({"tunnels": {"t": {"hostnames": ["t.localhost"], "metrics": metrics}}})
    return generate_metrics_worker(config.tunnels["t"])


async def observe(runner, stub, exchanges):
    from tunnel.loader import Request

    response = await stub.fetch(Request("POST", "http://metrics/observe", body=json.dumps(exchanges).encode()))
    assert response.status == 204


async def exposition(stub) -> str:
    from tunnel.loader import Request

    response = await stub.fetch(Request("GET", "http://metrics/metrics"))
    assert response.status == 200 and response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return (await response.read()).decode()


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def ex(method="GET", path="/", status=200, duration=0.01, headers=None):
    return {"method": method, "path": path, "status": status, "duration_s": duration, "headers": headers or {}}


async def test_counts_split_by_bounded_labels(runner):
    stub = runner.load(worker_for(METRICS))
    await observe(runner, stub, [ex(path="/users/1"), ex(path="/users/2?x=1", status=404), ex(path="/users/3"),
                                 ex("BREW", "/orders/9/items", 503), ex(path="/secret/raw/path", status=700),
                                 ex(headers={"x-client": "ios"}), ex(headers={"x-client": "android"})])
    text = await exposition(stub)
    got = samples(text)
    total = "tunnel_custom_requests_by_route_total"
    assert got[(total, (("method", "GET"), ("route", "/users/:id"), ("status", "2xx"), ("tunnel", "t")))] == 2
    assert got[(total, (("method", "GET"), ("route", "/users/:id"), ("status", "4xx"), ("tunnel", "t")))] == 1
    assert got[(total, (("method", "other"), ("route", "/orders/:id/items"), ("status", "5xx"), ("tunnel", "t")))] == 1
    assert got[(total, (("method", "GET"), ("route", "other"), ("status", "other"), ("tunnel", "t")))] == 1
    client = "tunnel_custom_requests_by_client_total"
    assert got[(client, (("client", "iOS"), ("tunnel", "t")))] == 1
    assert got[(client, (("client", "other"), ("tunnel", "t")))] == 6
    assert got[("tunnel_custom_all_requests_total", (("tunnel", "t"),))] == 7
    assert "/secret/raw/path" not in text and "BREW" not in text and "android" not in text
    assert '# HELP tunnel_custom_requests_by_route_total Requests by "route"\\\\ and status class.' in text
    assert "# TYPE tunnel_custom_requests_by_route_total counter" in text


async def test_histogram_buckets_sum_and_count(runner):
    stub = runner.load(worker_for(METRICS))
    await observe(runner, stub, [ex(path="/users/1", duration=d) for d in (0.001, 0.05, 0.05, 0.5, 3.0)]
                  + [ex(path="/users/1", duration="soon")])
    got = samples(await exposition(stub))
    name, labels = "tunnel_custom_route_duration_seconds", (("route", "/users/:id"), ("tunnel", "t"))
    buckets = [got[(name + "_bucket", tuple(sorted(labels + (("le", le),))))] for le in ("0.005", "0.1", "1.0", "+Inf")]
    assert buckets == [1, 3, 4, 5]
    assert got[(name + "_count", labels)] == 5 and got[(name + "_sum", labels)] == pytest.approx(3.601)


async def test_empty_exposition_and_no_metrics(runner):
    stub = runner.load(worker_for(METRICS))
    text = await exposition(stub)
    assert samples(text) == {("tunnel_custom_all_requests_total", (("tunnel", "t"),)): 0}
    assert (await exposition(runner.load(worker_for([])))) == ""


async def test_state_carries_counts_to_a_new_version(runner):
    from tunnel.loader import Request

    old = runner.load(worker_for(METRICS))
    await observe(runner, old, [ex(path="/users/1"), ex(path="/users/1", duration=0.2)])
    state = await (await old.fetch(Request("GET", "http://metrics/state"))).read()
    changed = [dict(METRICS[0], help="New help."), dict(METRICS[1], buckets=[0.5])] + METRICS[2:]
    new = runner.load(worker_for(changed))
    response = await new.fetch(Request("POST", "http://metrics/state", body=state))
    restored = json.loads(await response.read())["restored"]
    assert restored == 3  # the route counter (help changed only) and two counters; not the rebucketed histogram
    got = samples(await exposition(new))
    assert got[("tunnel_custom_all_requests_total", (("tunnel", "t"),))] == 2
    assert not any(name.startswith("tunnel_custom_route_duration") for name, _ in got)


async def test_bad_requests(runner):
    from tunnel.loader import Request

    stub = runner.load(worker_for(METRICS))
    assert (await stub.fetch(Request("POST", "http://metrics/observe", body=b"{nope"))).status == 400
    assert (await stub.fetch(Request("GET", "http://metrics/elsewhere"))).status == 404


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
async def test_promtool_accepts_the_exposition(runner, reference_config, tmp_path):
    stub = runner.load(worker_for(METRICS))
    await observe(runner, stub, [ex(path="/users/1", headers={"x-client": 'we"b\\x'}), ex("POST", "/x", 500)])
    text = await exposition(stub)
    result = subprocess.run(["promtool", "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
    assert result.returncode == 0, (result.stdout + result.stderr).decode() + text
    stub = runner.load(generate_metrics_worker(reference_config.tunnels["web"]))
    await observe(runner, stub, [ex(path="/users/1"), ex(path="/orders/1/items", headers={"x-client": "web"})])
    result = subprocess.run(["promtool", "check", "metrics"], input=(await exposition(stub)).encode(),
                            capture_output=True, timeout=30)
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
