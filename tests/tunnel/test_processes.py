"""The tunnel as users run it: separate `tunnel edge`, `tunnel connect` and origin processes,
driven through the CLI. Also the large transfers and the memory bound."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import urllib.request

import aiohttp
import pytest

from tests.tunnel.origin_app import pattern_sha256
from tests.tunnel.processes import ROOT, Stack, rss_kib

HOST = "web.localhost"


@pytest.fixture
def stack(tmp_path):
    s = Stack(tmp_path)
    s.start()
    yield s
    s.stop()


@pytest.fixture
def web_stack(stack):
    created = stack.cli("tunnels", "create", "web", "--hostname", HOST, "--json")
    assert created.returncode == 0, created.stderr
    stack.connect(json.loads(created.stdout)["token"])
    stack.wait_connections(2)
    return stack


def test_cli_manages_tunnels(stack):
    created = stack.cli("tunnels", "create", "web", "--hostname", HOST, "--hostname", "*.web.localhost", "--json")
    assert created.returncode == 0, created.stderr
    doc = json.loads(created.stdout)
    assert doc["name"] == "web" and doc["hostnames"] == [HOST, "*.web.localhost"]
    assert doc["token"].startswith("web.") and len(doc["token"]) > 40
    listed = json.loads(stack.cli("tunnels", "list", "--json").stdout)
    assert listed == [{"name": "web", "hostnames": [HOST, "*.web.localhost"], "connections": 0}]
    clash = stack.cli("tunnels", "create", "other", "--hostname", HOST)
    assert clash.returncode != 0 and "already bound" in clash.stderr
    stack.connect(doc["token"])
    stack.wait_connections(2)
    request = urllib.request.Request(f"http://127.0.0.1:{stack.public}/whoami", headers={"Host": "api.web.localhost"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.read() == b"origin"  # a name under the wildcard
    deleted = stack.cli("tunnels", "delete", "web", "--json")
    assert deleted.returncode == 0 and json.loads(deleted.stdout)["deleted"] is True
    assert json.loads(stack.cli("tunnels", "list", "--json").stdout) == []
    # Its token is revoked with it: the connector is told so and exits with a clear message.
    assert stack.connector.wait(15) == 3
    log = (stack.tmp / "connector.log").read_text()
    assert "refused this connector (unauthorized)" in log
    wrong = subprocess.run([sys.executable, "-m", "tunnel", "tunnels", "list", "--admin", f"http://127.0.0.1:{stack.admin}",
                            "--admin-token", "nope"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert wrong.returncode == 1 and "401" in wrong.stderr


def test_python_dash_m_tunnel_matches_the_console_script():
    out = subprocess.run([sys.executable, "-m", "tunnel", "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "tunnels" in out.stdout


async def test_one_gib_download_is_identical_with_bounded_memory(web_stack):
    size = 1 << 30
    url = f"http://127.0.0.1:{web_stack.public}/download?size={size}"
    baseline = {"edge": rss_kib(web_stack.edge.pid), "connector": rss_kib(web_stack.connector.pid)}
    peak = dict(baseline)
    digest = hashlib.sha256()
    received = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as client:
        async with client.get(url, headers={"Host": HOST}) as resp:
            assert resp.status == 200
            async for chunk in resp.content.iter_chunked(1 << 20):
                digest.update(chunk)
                received += len(chunk)
                if received % (32 << 20) < len(chunk):
                    peak["edge"] = max(peak["edge"], rss_kib(web_stack.edge.pid))
                    peak["connector"] = max(peak["connector"], rss_kib(web_stack.connector.pid))
    assert received == size
    assert digest.hexdigest() == pattern_sha256(size)  # what the origin sends directly
    growth_mib = {name: (peak[name] - baseline[name]) / 1024 for name in peak}
    print(f"RSS growth while 1 GiB streamed: {growth_mib}")
    assert growth_mib["edge"] < 64 and growth_mib["connector"] < 64, growth_mib


async def test_256_mib_upload_is_identical(web_stack):
    size = 256 << 20
    block = hashlib.sha256(b"upload").digest() * 32768

    async def body():
        for _ in range(size // len(block)):
            yield block

    expected = hashlib.sha256()
    for _ in range(size // len(block)):
        expected.update(block)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as client:
        for base, headers in ((f"http://127.0.0.1:{web_stack.origin_port}", {}),
                              (f"http://127.0.0.1:{web_stack.public}", {"Host": HOST})):
            async with client.post(base + "/upload", data=body(), headers=headers) as resp:
                assert resp.status == 200
                result = await resp.json()
            assert result["bytes"] == size
            assert result["sha256"] == expected.hexdigest()
