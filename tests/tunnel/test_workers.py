"""The worker pipeline end to end: policy, custom JavaScript, limits, and per-tunnel metrics,
through a real edge, real connectors, real origins and real QuickJS."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import shutil
import subprocess
import time

import aiohttp
import pytest
import yaml

from tests.tunnel.origin_app import pattern
from tunnel.config.credentials import hash_secret

WEB = "web.localhost"


def sha(secret: str) -> str:
    return hash_secret(secret)


def config(origin_url: str, **extra_tunnels) -> dict:
    return {"tunnels": {
        "web": {
            "hostnames": [WEB],
            "policy": {
                "on_request": [
                    {"match": {"path": "/admin/*"},
                     "actions": [{"basic_auth": {"realm": "admin", "credentials": [sha("ops:s3cret")]}}]},
                    {"match": {"path": "/limited/*"},
                     "actions": [{"rate_limit": {"key": "client_ip", "capacity": 5, "per": "60s"}}]},
                    {"match": {"path": "/moved"}, "actions": [{"redirect": {"location": "/small", "status": 302}}]},
                    {"actions": [{"set_request_headers": {"X-Env": "production"}}]},
                ],
                "on_response": [{"actions": [{"set_response_headers": {"X-Frame-Options": "DENY"}}]}],
            },
            "metrics": [{"name": "requests_by_route", "type": "counter", "help": "By route.",
                         "labels": {"route": {"path_template": ["/small", "/echo"]}, "class": "status_class"}}],
            "metrics_token": sha("web-reader"),
            "worker": {"main_module": "index.js", "modules": {
                "index.js": "import { stamp } from './stamp.js';\n"
                            "export default { async fetch(request, env) {\n"
                            "  if (new URL(request.url).pathname === '/throw') throw new TypeError('boom');\n"
                            "  return stamp(await env.TUNNEL.fetch(request));\n} };\n",
                "stamp.js": "export function stamp(r) { const c = new Response(r.body, r);"
                            " c.headers.set('X-Custom', 'stamp'); return c; }\n"}},
        },
        **extra_tunnels,
    }}


@pytest.fixture
async def worker_edge(make_edge, origin, tmp_path):
    async def build(**extra_tunnels):
        path = tmp_path / "edge.yaml"
        path.write_text(yaml.safe_dump(config(origin.url, **extra_tunnels)))
        edge = await make_edge(config_file=str(path))
        for name in ["web", *extra_tunnels]:
            await edge.connect(edge.edge.rotate_token(name), origin.url)
        return edge
    return build


async def get(client, edge, path, host=WEB, **kwargs):
    headers = {"Host": host, **kwargs.pop("headers", {})}
    async with client.request(kwargs.pop("method", "GET"), edge.public + path, headers=headers,
                              allow_redirects=False, **kwargs) as resp:
        return resp.status, resp.headers.copy(), await resp.read()


async def test_policy_and_custom_javascript_end_to_end(worker_edge, client):
    edge = await worker_edge()
    status, headers, body = await get(client, edge, "/admin/panel")
    assert status == 401 and headers["Tunnel-Error"] == "basic-auth"
    assert headers["WWW-Authenticate"].startswith('Basic realm="admin"')
    assert headers["X-Frame-Options"] == "DENY"  # on_response runs on the policy's own answers too
    credentials = base64.b64encode(b"ops:s3cret").decode()
    status, headers, body = await get(client, edge, "/echo", headers={"Authorization": f"Basic {credentials}"})
    assert status == 200
    status, headers, body = await get(client, edge, "/echo")
    seen = {k.lower(): v for k, v in __import__("json").loads(body)["headers"]}
    assert seen["x-env"] == "production" and seen["x-forwarded-for"] == "127.0.0.1"
    assert headers["X-Custom"] == "stamp" and headers["X-Frame-Options"] == "DENY"
    assert "Tunnel-Error" not in headers
    status, headers, _ = await get(client, edge, "/moved")
    assert status == 302 and headers["Location"] == "/small"
    statuses = [(await get(client, edge, f"/limited/{i}"))[:2] for i in range(6)]
    assert [s for s, _ in statuses[:5]] == [404] * 5  # the origin has no /limited: it answers 404
    status, headers = statuses[5]
    assert status == 429 and headers["Tunnel-Error"] == "rate-limited" and int(headers["Retry-After"]) > 0


async def test_bodies_stream_through_the_worker_untouched(worker_edge, origin, client):
    edge = await worker_edge()
    size = 24 << 20
    digest = hashlib.sha256()
    async with client.get(edge.public + f"/download?size={size}", headers={"Host": WEB}) as resp:
        assert resp.status == 200 and resp.headers["Content-Length"] == str(size)
        assert resp.headers["X-Custom"] == "stamp"
        async for chunk in resp.content.iter_chunked(1 << 20):
            digest.update(chunk)
    direct = hashlib.sha256()
    async with client.get(origin.url + f"/download?size={size}") as resp:
        direct.update(await resp.read())
    assert digest.hexdigest() == direct.hexdigest()
    block = b"0123456789abcdef" * 65536

    async def body():
        for _ in range(16):
            yield block
    status, headers, answer = await get(client, edge, "/upload", method="POST", data=body())
    assert status == 200
    assert __import__("json").loads(answer)["sha256"] == hashlib.sha256(block * 16).hexdigest()


async def test_a_throwing_worker_is_500_with_tunnel_error(worker_edge, client):
    edge = await worker_edge()
    status, headers, body = await get(client, edge, "/throw")
    assert status == 500 and headers["Tunnel-Error"] == "worker-error"
    assert b"boom" in body
    assert (await get(client, edge, "/small"))[0] == 200  # the next request is fine
    text = (await edge.edge.metrics_exposition()).decode()
    assert 'tunnel_worker_errors_total{kind="WorkerScriptError",tunnel="web"} 1.0' in text


async def test_a_runaway_worker_gets_503_while_another_tunnel_answers(worker_edge, client):
    loop_tunnel = {"hostnames": ["loop.localhost"], "worker": {"main_module": "index.js", "modules": {
        "index.js": "export default { fetch(request) { while (true) {} } };"}}}
    edge = await worker_edge(loop=loop_tunnel)
    latencies: list[float] = []
    stop = asyncio.Event()

    async def steady():
        while not stop.is_set():
            start = time.monotonic()
            status, _, body = await get(client, edge, "/small")
            latencies.append(time.monotonic() - start)
            assert status == 200 and body == pattern(1024)

    async def runaway():
        results = []
        deadline = time.monotonic() + 3.0  # two clients hammer the runaway for 3 s

        async def hammer(session):
            while time.monotonic() < deadline:
                async with session.get(edge.public + "/", headers={"Host": "loop.localhost"}) as resp:
                    results.append((resp.status, resp.headers.get("Tunnel-Error")))

        async with aiohttp.ClientSession() as other:
            await asyncio.gather(hammer(other), hammer(other))
        stop.set()
        return results

    steady_task = asyncio.create_task(steady())
    results = await asyncio.wait_for(runaway(), 60)
    await steady_task
    assert results and set(results) == {(503, "worker-limit")}
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1] if len(latencies) >= 100 else latencies[-1]
    print(f"\nrunaway worker: {len(results)} runaway requests got 503; the other tunnel answered {len(latencies)} requests meanwhile, "
          f"p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
          f"max {latencies[-1] * 1000:.1f} ms")
    assert len(latencies) >= 20


async def test_counters_are_exact_and_custom_metrics_labelled(worker_edge, client, tmp_path):
    edge = await worker_edge()
    for _ in range(7):
        assert (await get(client, edge, "/small"))[0] == 200
    for _ in range(3):
        assert (await get(client, edge, "/nowhere"))[0] == 404
    for _ in range(2):
        assert (await get(client, edge, "/admin/x"))[0] == 401
    admin = {"Authorization": f"Bearer {edge.edge.admin_token}"}
    base = f"http://127.0.0.1:{edge.edge.admin_port}"
    async with client.get(base + "/metrics", headers=admin) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        everything = await resp.text()
    async with client.get(base + "/tunnels/web/metrics", headers={"Authorization": "Bearer web-reader"}) as resp:
        assert resp.status == 200
        mine = await resp.text()
    for text in (everything, mine):
        assert 'tunnel_requests_total{status="200",tunnel="web"} 7.0' in text
        assert 'tunnel_requests_total{status="404",tunnel="web"} 3.0' in text
        assert 'tunnel_edge_responses_total{reason="basic-auth",status="401",tunnel="web"} 2.0' in text
        assert 'tunnel_request_duration_seconds_count{tunnel="web"} 12.0' in text
        assert 'tunnel_custom_requests_by_route_total{tunnel="web",class="2xx",route="/small"} 7' in text
        assert 'tunnel_custom_requests_by_route_total{tunnel="web",class="4xx",route="other"} 5' in text
        assert 'tunnel_connector_connections{tunnel="web"} 1.0' in text
    assert "tunnel_loader_workers" in everything and "tunnel_loader_" not in mine
    assert "tunnel_connector_connections_by_config_version{version=\"1\"} 1.0" in everything
    for path, token in (("/metrics", "web-reader"), ("/tunnels/web/metrics", "wrong"),
                        ("/tunnels/other/metrics", "web-reader")):
        async with client.get(base + path, headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 401, path
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    for text in (everything, mine):
        checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr


async def test_a_deleted_tunnel_leaves_no_series(worker_edge, client):
    other = {"hostnames": ["other.localhost"]}
    edge = await worker_edge(other=other)
    assert (await get(client, edge, "/small", host="other.localhost"))[0] == 200
    assert 'tunnel="other"' in (await edge.edge.metrics_exposition()).decode()
    edge.edge.delete_tunnel("other", author="test")
    text = (await edge.edge.metrics_exposition()).decode()
    assert 'tunnel="other"' not in text and 'tunnel="web"' in text


async def test_a_tunnel_without_policy_skips_the_loader(make_edge, origin, client):
    edge = await make_edge()
    await edge.tunnel("plain", "plain.localhost", origin.url)
    assert (await get(client, edge, "/small", host="plain.localhost"))[0] == 200
    assert edge.edge.loader.stats()["loads"] == 0


async def test_head_204_304_sse_and_websockets_through_a_policy_tunnel(make_edge, origin, client, tmp_path):
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump({"tunnels": {"w": {"hostnames": ["w.localhost"], "policy": {
        "on_response": [{"actions": [{"set_response_headers": {"X-P": "1"}}]}]}}}}))
    edge = await make_edge(config_file=str(path))
    await edge.connect(edge.edge.rotate_token("w"), origin.url)
    expected = {("HEAD", "/small"): (200, "1024", 0), ("GET", "/status/204"): (204, None, 0),
                ("GET", "/status/304"): (304, None, 0), ("GET", "/small"): (200, "1024", 1024)}
    for (method, target), (status, length, size) in expected.items():
        got_status, headers, body = await get(client, edge, target, host="w.localhost", method=method)
        assert (got_status, headers.get("Content-Length"), len(body)) == (status, length, size), target
        assert headers["X-P"] == "1"
    async with client.get(edge.public + "/sse?n=3&interval=0.2", headers={"Host": "w.localhost"}) as resp:
        arrivals = []
        async for line in resp.content:
            if line.startswith(b"data:"):
                arrivals.append(time.monotonic())
    assert len(arrivals) == 3 and arrivals[-1] - arrivals[0] > 0.3  # streamed, not buffered
    async with client.ws_connect(edge.public + "/ws", headers={"Host": "w.localhost"}) as ws:
        await ws.send_bytes(b"\x00\x01binary")
        msg = await ws.receive(timeout=5)
        assert msg.data == b"\x00\x01binary"


async def test_a_worker_that_never_answers_is_cut_off(make_edge, origin, client, tmp_path):
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump({"tunnels": {"idle": {"hostnames": ["idle.localhost"], "worker": {
        "main_module": "index.js",
        "modules": {"index.js": "export default { async fetch(req) {\n"
                                "  if (req.url.endsWith('/stuck')) return new Promise(() => {});\n"
                                "  await new Promise((r) => setTimeout(r, 1e9)); } };"}}}}}))
    edge = await make_edge(config_file=str(path), origin_timeout=0.5)
    edge.edge.pipeline.response_timeout = 1.0
    status, headers, _ = await get(client, edge, "/", host="idle.localhost")  # waits on a timer: cut off
    assert status == 503 and headers["Tunnel-Error"] == "worker-limit"
    status, headers, body = await get(client, edge, "/stuck", host="idle.localhost")  # nothing can settle it
    assert status == 500 and headers["Tunnel-Error"] == "worker-error"
    assert b"The script will never generate a response" in body


async def test_counts_carry_on_across_config_versions(worker_edge, client, origin):
    edge = await worker_edge()
    for _ in range(5):
        assert (await get(client, edge, "/small"))[0] == 200
    doc = yaml.safe_load(yaml.safe_dump(config(origin.url)))  # the same key order as the first version
    doc["tunnels"]["web"]["metrics"][0]["help"] = "By route, new words."  # metrics-web is replaced
    doc["tunnels"]["web"]["policy"]["on_response"][0]["actions"][0]["set_response_headers"]["X-Frame-Options"] = \
        "SAMEORIGIN"
    before = edge.edge.worker_hashes
    result = await edge.edge.versions.push(doc, "test", base=edge.edge.version)
    assert result["changed"] and result["version"] == 2
    assert edge.edge.worker_hashes["metrics-web"] != before["metrics-web"]
    assert edge.edge.worker_hashes["tunnel-web"] != before["tunnel-web"]
    for _ in range(3):
        status, headers, _ = await get(client, edge, "/small")
        assert status == 200 and headers["X-Frame-Options"] == "SAMEORIGIN"
    text = (await edge.edge.metrics_exposition("web")).decode()
    assert 'tunnel_custom_requests_by_route_total{tunnel="web",class="2xx",route="/small"} 8' in text
    assert "# HELP tunnel_custom_requests_by_route_total By route, new words." in text
    assert 'tunnel_requests_total{status="200",tunnel="web"} 8.0' in text


async def test_pushes_to_and_from_configs_without_any_worker(make_edge, origin, client, tmp_path):
    path = tmp_path / "edge.yaml"
    plain = {"tunnels": {"web": {"hostnames": [WEB]}}}
    path.write_text(yaml.safe_dump(plain))
    edge = await make_edge(config_file=str(path))
    await edge.connect(edge.edge.rotate_token("web"), origin.url)
    versions = edge.edge.versions
    with_policy = {"tunnels": {"web": {"hostnames": [WEB], "policy": {"on_response": [
        {"actions": [{"set_response_headers": {"X-P": "1"}}]}]}}}}
    assert (await versions.push(with_policy, "t", base=1))["version"] == 2
    assert (await get(client, edge, "/small"))[1]["X-P"] == "1"
    assert (await versions.push(plain, "t", base=2))["version"] == 3
    assert "X-P" not in (await get(client, edge, "/small"))[1]
    assert (await versions.rollback(2, "t", base=3))["version"] == 4
    assert (await get(client, edge, "/small"))[1]["X-P"] == "1"


async def test_a_worker_made_request_with_a_bad_method_fails_alone(make_edge, origin, client, tmp_path):
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump({"tunnels": {"web": {"hostnames": [WEB], "worker": {
        "main_module": "index.js", "modules": {"index.js":
            "export default { fetch(request, env) { const m = request.headers.get('x-m');\n"
            "  return env.TUNNEL.fetch(m ? new Request(request.url, {method: m}) : request); } };"}}}}}))
    edge = await make_edge(config_file=str(path))
    await edge.connect(edge.edge.rotate_token("web"), origin.url)
    status, headers, _ = await get(client, edge, "/small", headers={"X-M": "GET /x HTTP/1.1"})
    assert status in (400, 500)  # refused at the edge (or by the runtime), for this request only
    assert edge.edge.registry.connections("web") == 1
    assert (await get(client, edge, "/small"))[0] == 200


async def test_policy_tunnel_requests_survive_a_lost_connection(make_edge, origin, client, tmp_path):
    from tests.tunnel.processes import TcpProxy
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump({"tunnels": {"web": {"hostnames": [WEB], "policy": {"on_response": [
        {"actions": [{"set_response_headers": {"X-P": "1"}}]}]}}}}))
    edge = await make_edge(config_file=str(path))
    proxy = TcpProxy(edge.edge.connector_port)
    await proxy.start()
    from tunnel.connector.agent import Connector, ConnectorOptions
    connector = Connector(ConnectorOptions(edge=f"ws://127.0.0.1:{proxy.port}", token=edge.edge.rotate_token("web"),
                                           url=origin.url, connections=2))
    task = asyncio.create_task(connector.run())
    edge.connectors.append((connector, task))
    while edge.edge.registry.connections("web") < 2:
        await asyncio.sleep(0.05)
    statuses = []

    async def load():
        for _ in range(60):
            statuses.append((await get(client, edge, "/slow?delay=0.05"))[0])

    async def kill():
        await asyncio.sleep(0.3)
        proxy.kill(0)

    await asyncio.gather(*(load() for _ in range(8)), kill())
    await proxy.close()
    assert statuses.count(200) == len(statuses) == 480, [s for s in statuses if s != 200]
