"""`tunnel demo` as a new user runs it: one command, then curl."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request

from tests.tunnel.processes import ROOT, free_port, wait_port


def fetch(port: int, path: str):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Host": "demo.localhost"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, response.headers, response.read()


def test_demo_serves_its_pages_through_the_worker_pipeline(tmp_path):
    port = free_port()
    log = open(tmp_path / "demo.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "tunnel", "demo", "--public", f"127.0.0.1:{port}",
                             "--duration", "60"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(port)
        deadline = time.monotonic() + 15
        while b"Press Ctrl-C" not in (tmp_path / "demo.log").read_bytes():
            assert time.monotonic() < deadline, (tmp_path / "demo.log").read_text()
            time.sleep(0.1)
        output = (tmp_path / "demo.log").read_text()
        assert f"http://demo.localhost:{port}/" in output and "curl" in output
        status, headers, body = fetch(port, "/")
        assert status == 200 and b"/dynamic" in body and headers["X-Served-By"] == "tunnel-demo"
        first = json.loads(fetch(port, "/dynamic")[2])
        second = json.loads(fetch(port, "/dynamic")[2])
        assert first["key"] != second["key"] and first["key"].startswith("dynamic-")
        assert first["message"] == "hello from a dynamic worker"
        assert first["factory_runs"] == 1 and first["second_call_same_isolate"] is True
        config = json.loads(fetch(port, "/config")[2])
        assert config["version"] == 1 and "demo" in config["config"]["tunnels"]
        origin = json.loads(fetch(port, "/headers")[2])
        assert origin["path"] == "/headers"
        metrics = fetch(port, "/metrics")[2].decode()
        assert 'tunnel_custom_demo_requests_by_page_total{tunnel="demo"' in metrics
        assert 'page="/dynamic"' in metrics and 'tunnel_requests_total{status="200",tunnel="demo"}' in metrics
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0
