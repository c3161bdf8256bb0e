"""Feeding the metrics worker and merging several tunnels' expositions into one."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from generators import exchange, generate_metrics_worker, merge_expositions, observed_headers
from tunnel.config import parse_config

SHARED = {"name": "requests_by_route", "type": "counter", "help": "Requests by route.",
          "labels": {"route": {"path_template": ["/users/:id"]}}}
DOC = {"tunnels": {
    "a": {"hostnames": ["a.test"], "metrics": [SHARED, {"name": "by_client", "type": "counter",
                                                        "labels": {"c": {"header": "X-Client", "allow": ["ios"]}}}]},
    "b": {"hostnames": ["b.test"], "metrics": [{"name": "latency_seconds", "type": "histogram"}, SHARED]},
}}


def test_exchange_and_observed_headers():
    config = parse_config(DOC)
    only = observed_headers(config.tunnels["a"])
    assert only == {"x-client"} and observed_headers(config.tunnels["b"]) == frozenset()
    record = exchange("GET", "/users/1", 200, 0.5, [("X-Client", "ios"), ("x-client", "web"), ("Cookie", "s")], only)
    assert record == {"method": "GET", "path": "/users/1", "status": 200, "duration_s": 0.5,
                      "headers": {"x-client": "ios"}}


def expositions(qjs):
    config = parse_config(DOC)
    texts = []
    for name in ("a", "b"):
        worker = qjs(generate_metrics_worker(config.tunnels[name]))
        body = json.dumps([exchange("GET", "/users/1", 200, 0.01, {"X-Client": "ios"}),
                           exchange("POST", "/other", 500, 3.0)])
        assert worker.fetch("POST", "http://m/observe", body=body)["status"] == 204
        texts.append(worker.fetch("GET", "http://m/metrics")["body"])
    return texts


def test_merge_keeps_one_help_and_type_per_family(qjs):
    merged = merge_expositions(expositions(qjs))
    assert merged.count("# HELP tunnel_custom_requests_by_route_total") == 1
    assert merged.count("# TYPE tunnel_custom_requests_by_route_total counter") == 1
    families = {f.name: f for f in text_string_to_metric_families(merged)}
    route = families["tunnel_custom_requests_by_route"]
    assert sorted((s.labels["tunnel"], s.labels["route"], s.value) for s in route.samples) == [
        ("a", "/users/:id", 1), ("a", "other", 1), ("b", "/users/:id", 1), ("b", "other", 1)]
    assert merge_expositions([]) == "" and merge_expositions(["", ""]) == ""


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_the_merged_exposition(qjs):
    merged = merge_expositions(expositions(qjs))
    result = subprocess.run(["promtool", "check", "metrics"], input=merged.encode(), capture_output=True,
                            timeout=30, check=False)
    assert result.returncode == 0, (result.stdout + result.stderr).decode() + merged
