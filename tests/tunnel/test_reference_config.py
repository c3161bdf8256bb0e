"""../shared/examples/edge-config.yaml, as it is, with its services pointed at local origins:
every policy action, the custom worker's two modules, the ingress rules, the metric definitions
and both metrics tokens, through a real edge, a real connector and real origins."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from tests.tunnel.conftest import start_origin

_SHARED = Path(__file__).resolve().parents[3] / "shared" / "examples" / "edge-config.yaml"
# The shared reference when it is beside the checkout, else the copy taken from it.
REFERENCE = _SHARED if _SHARED.exists() else Path(__file__).resolve().parents[1] / "fixtures" / "edge-config.yaml"
WEB = "web.localhost"


@pytest.fixture
async def reference(make_edge, tmp_path):
    if not REFERENCE.exists():
        pytest.skip(f"{REFERENCE} is not here")
    origins = {port: await start_origin(name) for port, name in
               ((3000, "main"), (3001, "checkout-new"), (9000, "api"), (9001, "docs"))}
    text = REFERENCE.read_text()
    for port, origin in origins.items():
        text = text.replace(f"http://127.0.0.1:{port}", origin.url)
    config = tmp_path / "edge-config.yaml"
    config.write_text(text)
    edge = await make_edge(config_file=str(config))
    await edge.connect(edge.edge.rotate_token("web"), origins[3000].url)
    await edge.connect(edge.edge.rotate_token("api"), origins[9000].url)
    yield edge, origins
    for origin in origins.values():
        await origin.runner.cleanup()


async def call(client, edge, path, method="GET", host=WEB, **kwargs):
    async with client.request(method, edge.public + path, headers={"Host": host, **kwargs.pop("headers", {})},
                              allow_redirects=False, **kwargs) as resp:
        return resp.status, resp.headers.copy(), await resp.read()


def seen_headers(body: bytes) -> dict[str, str]:
    return {k.lower(): v for k, v in json.loads(body)["headers"]}


async def test_every_action_of_the_reference_config(reference, client):
    edge, origins = reference
    # custom_response, with on_response headers added to the policy's own answer
    status, headers, body = await call(client, edge, "/maintenance/x")
    assert (status, body) == (503, b"<h1>Back soon</h1>")
    assert headers["X-Frame-Options"] == "DENY" and headers["X-Served-By"] == "tunnel-edge"
    # redirect: location exactly as written
    status, headers, _ = await call(client, edge, "/old/page")
    assert status == 301 and headers["Location"] == "/new/"
    # basic_auth (ops:correct horse)
    status, headers, _ = await call(client, edge, "/admin/x")
    assert status == 401 and headers["Tunnel-Error"] == "basic-auth" and "admin" in headers["WWW-Authenticate"]
    good = base64.b64encode(b"ops:correct horse").decode()
    assert (await call(client, edge, "/admin/x", headers={"Authorization": f"Basic {good}"}))[0] == 404
    # ip_restriction: 127.0.0.1 is allowed
    assert (await call(client, edge, "/internal/x"))[0] == 404
    # bearer_auth on writes to /api/*, and the ingress sends /api/* to the api origin
    status, headers, _ = await call(client, edge, "/api/echo", method="POST", data=b"x")
    assert status == 401 and headers["Tunnel-Error"] == "bearer-auth"
    status, _, body = await call(client, edge, "/api/echo", method="POST", data=b"x",
                                 headers={"Authorization": "Bearer ci-reader-token"})
    assert status == 200 and json.loads(body) == {"origin": "api", "path": "/api/echo"}
    # url_rewrite: /v1/… becomes /api/v1/… at the edge, and the connector's ingress sends it to api
    status, _, body = await call(client, edge, "/v1/users?x=1")
    assert json.loads(body) == {"origin": "api", "path": "/api/v1/users?x=1"}
    # deny on X-Debug
    status, headers, _ = await call(client, edge, "/small", headers={"X-Debug": "1"})
    assert status == 403 and headers["Tunnel-Error"] == "denied"
    # set/remove request headers, the feature flag's header
    status, _, body = await call(client, edge, "/echo", headers={"X-Internal-Only": "secret"})
    seen = seen_headers(body)
    assert status == 200 and seen["x-env"] == "production" and "x-internal-only" not in seen
    assert seen["x-feature-new-nav"] in ("on", "off")
    # the custom worker's two modules ran; Server was removed; CORS headers for an allowed origin
    status, headers, _ = await call(client, edge, "/small", headers={"Origin": "https://app.example.test"})
    assert headers["X-Custom-Worker"] == "stamp" and "Server" not in headers
    assert headers["Access-Control-Allow-Origin"] == "https://app.example.test"
    status, headers, _ = await call(client, edge, "/small", method="OPTIONS",
                                    headers={"Origin": "https://app.example.test",
                                             "Access-Control-Request-Method": "POST"})
    assert status == 204 and "POST" in headers["Access-Control-Allow-Methods"]
    # ingress by hostname: docs.web.localhost goes to the docs origin
    assert (await call(client, edge, "/whoami", host="docs.web.localhost"))[2] == b"docs"
    # ab_split: 90/10 between two services, sticky by cookie
    sides = []
    for _ in range(30):
        _, headers, body = await call(client, edge, "/checkout/x")
        cookie = headers["Set-Cookie"].split(";", 1)[0]
        again = await call(client, edge, "/checkout/y", headers={"Cookie": cookie})
        assert again[2] == body  # each user stays on their side
        sides.append(body)
    assert set(sides) <= {b"main", b"checkout-new"} and sides.count(b"main") >= 15


async def test_the_rate_limit_and_the_metrics_tokens(reference, client):
    edge, _ = reference
    statuses = [(await call(client, edge, "/small"))[0] for _ in range(101)]
    assert statuses[:100] == [200] * 100
    status, headers, _ = await call(client, edge, "/small")
    assert status == 429 and headers["Tunnel-Error"] == "rate-limited" and int(headers["Retry-After"]) > 0
    admin = f"http://127.0.0.1:{edge.edge.admin_port}"
    async with client.get(admin + "/tunnels/web/metrics", headers={"Authorization": "Bearer web-reader-token"}) as r:
        assert r.status == 200
        text = await r.text()
    assert 'tunnel_requests_total{status="200",tunnel="web"}' in text
    assert 'tunnel_edge_responses_total{reason="rate-limited",status="429",tunnel="web"}' in text
    assert 'tunnel_custom_requests_by_route_total{tunnel="web",route="other",status="2xx"}' in text
    assert "tunnel_custom_route_duration_seconds_bucket" in text
    assert 'tunnel_custom_requests_by_client_total{tunnel="web",client="other"}' in text
    for path, token, expected in (("/tunnels/api/metrics", "ci-reader-token", 200),
                                  ("/tunnels/web/metrics", "ci-reader-token", 401),
                                  ("/tunnels/api/metrics", "web-reader-token", 401)):
        async with client.get(admin + path, headers={"Authorization": f"Bearer {token}"}) as r:
            assert r.status == expected, (path, token)
