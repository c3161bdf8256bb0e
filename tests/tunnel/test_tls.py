"""TLS on both hops, with a throwaway CA made at test time (trustme)."""

from __future__ import annotations

import asyncio
import datetime
import logging
import signal
import ssl

import aiohttp
import pytest
import trustme
from cryptography import x509

from tunnel.connector.agent import Connector, ConnectorOptions
from tunnel.tls import CertPair, spki_pin_of_der

HOST = "a.localhost"


@pytest.fixture
def pki(tmp_path):
    ca = trustme.CA()
    other_ca = trustme.CA()
    files = {}

    def write(name, leaf):
        leaf.private_key_pem.write_to_path(str(tmp_path / f"{name}.key"))
        leaf.cert_chain_pems[0].write_to_path(str(tmp_path / f"{name}.crt"))
        for extra in leaf.cert_chain_pems[1:]:
            with open(tmp_path / f"{name}.crt", "ab") as handle:
                handle.write(extra.bytes())
        files[name] = CertPair(str(tmp_path / f"{name}.crt"), str(tmp_path / f"{name}.key"))

    write("a", ca.issue_cert("127.0.0.1", "edge.localhost", HOST))
    write("b", ca.issue_cert("b.localhost", "*.wild.localhost"))
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=2)
    write("expired", ca.issue_cert("127.0.0.1", not_before=past - datetime.timedelta(days=30), not_after=past))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    other_ca.cert_pem.write_to_path(str(tmp_path / "other-ca.pem"))
    files["ca"] = str(tmp_path / "ca.pem")
    files["other_ca"] = str(tmp_path / "other-ca.pem")
    files["issue"] = lambda name, *ids: write(name, ca.issue_cert(*ids))
    return files


@pytest.fixture
async def tls_edge(make_edge, pki):
    return await make_edge(tls_cert=pki["a"].cert, tls_key=pki["a"].key, tls_sni_certs=[pki["b"]],
                           public_tls=("127.0.0.1", 0))


def wss(edge) -> str:
    return f"wss://127.0.0.1:{edge.edge.connector_port}"


async def start_connector(edge, token, url, **options):
    connector = Connector(ConnectorOptions(edge=wss(edge), token=token, url=url, connections=1,
                                           backoff_initial=0.2, backoff_max=0.5, **options))
    task = asyncio.create_task(connector.run())
    edge.connectors.append((connector, task))
    return connector, task


async def test_connector_with_the_ca_serves_over_wss(tls_edge, origin, pki):
    token = tls_edge.create_tunnel("web", HOST)
    connector, task = await start_connector(tls_edge, token, origin.url, ca=pki["ca"])
    await asyncio.wait_for(connector.registered.wait(), 10)
    async with aiohttp.ClientSession() as client:
        async with client.get(tls_edge.public + "/small", headers={"Host": HOST}) as resp:
            assert resp.status == 200


@pytest.mark.parametrize("case", ["wrong-ca", "wrong-pin", "expired"])
async def test_bad_edge_identity_is_refused_and_retried(make_edge, origin, pki, caplog, case):
    cert = pki["expired"] if case == "expired" else pki["a"]
    edge = await make_edge(tls_cert=cert.cert, tls_key=cert.key)
    token = edge.create_tunnel("web", HOST)
    options = {"wrong-ca": {"ca": pki["other_ca"]},
               "wrong-pin": {"pin": "sha256:" + "A" * 43 + "="},
               "expired": {"ca": pki["ca"]}}[case]
    caplog.set_level(logging.INFO, logger="tunnel.connector.agent")
    connector, task = await start_connector(edge, token, origin.url, **options)
    await asyncio.sleep(2.0)
    assert not task.done(), "the connector must keep retrying, not exit"
    assert not connector.registered.is_set()
    text = caplog.text
    assert text.count("reconnecting in") >= 2
    if case == "wrong-pin":
        assert f"the edge's public key is {edge.edge.certs.pin}, not the pinned" in text
    elif case == "expired":
        assert "certificate has expired" in text
    else:
        assert "certificate verify failed" in text


async def test_pinned_key_works_without_a_ca(tls_edge, origin):
    token = tls_edge.create_tunnel("web", HOST)
    connector, _ = await start_connector(tls_edge, token, origin.url, pin=tls_edge.edge.certs.pin)
    await asyncio.wait_for(connector.registered.wait(), 10)


async def peer_names(port: int, server_name: str, ca: str) -> list[str]:
    ctx = ssl.create_default_context(cafile=ca)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=server_name)
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    cert = x509.load_der_x509_certificate(der)
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)


async def test_https_serves_each_hostname_its_own_certificate(tls_edge, origin, pki):
    port = tls_edge.edge.public_tls_port
    assert HOST in await peer_names(port, HOST, pki["ca"])
    assert "b.localhost" in await peer_names(port, "b.localhost", pki["ca"])
    assert "*.wild.localhost" in await peer_names(port, "x.wild.localhost", pki["ca"])
    # And the requests go through, with the scheme the client used.
    connector, _ = await start_connector(tls_edge, tls_edge.create_tunnel("web", HOST), origin.url, ca=pki["ca"])
    await asyncio.wait_for(connector.registered.wait(), 10)
    ctx = ssl.create_default_context(cafile=pki["ca"])
    async with aiohttp.ClientSession() as client:
        async with client.get(f"https://127.0.0.1:{port}/echo", ssl=ctx, server_hostname=HOST,
                              headers={"Host": HOST}) as resp:
            assert resp.status == 200
            seen = {k.lower(): v for k, v in (await resp.json())["headers"]}
            assert seen["x-forwarded-proto"] == "https"
        async with client.get(tls_edge.public + "/echo", headers={"Host": HOST}) as resp:
            seen = {k.lower(): v for k, v in (await resp.json())["headers"]}
            assert seen["x-forwarded-proto"] == "http"


async def test_certificate_reload_keeps_open_websockets(tls_edge, origin, pki):
    connector, _ = await start_connector(tls_edge, tls_edge.create_tunnel("web", HOST), origin.url, ca=pki["ca"])
    await asyncio.wait_for(connector.registered.wait(), 10)
    port = tls_edge.edge.public_tls_port
    ctx = ssl.create_default_context(cafile=pki["ca"])
    before = await peer_der(port, HOST, ctx)
    async with aiohttp.ClientSession() as client:
        async with client.ws_connect(f"https://127.0.0.1:{port}/ws", ssl=ctx, server_hostname=HOST,
                                     headers={"Host": HOST}) as ws:
            await ws.send_str("before")
            assert (await ws.receive(timeout=5)).data == "before"
            pki["issue"]("a", "127.0.0.1", "edge.localhost", HOST)  # overwrite the files in place
            assert tls_edge.edge.reload_tls()
            after = await peer_der(port, HOST, ctx)
            assert after != before and spki_pin_of_der(after) == tls_edge.edge.certs.pin
            await ws.send_str("after")
            assert (await ws.receive(timeout=5)).data == "after"


async def peer_der(port: int, name: str, ctx: ssl.SSLContext) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=name)
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    return der


def test_plain_token_to_a_remote_host_is_refused_unless_insecure():
    with pytest.raises(ValueError, match="clear text.*--insecure"):
        Connector(ConnectorOptions(edge="ws://edge.example.com:8081", token="t.x", url="http://127.0.0.1:1"))
    Connector(ConnectorOptions(edge="ws://edge.example.com:8081", token="t.x", url="http://127.0.0.1:1",
                               insecure=True))
    Connector(ConnectorOptions(edge="ws://127.0.0.1:8081", token="t.x", url="http://127.0.0.1:1"))
    Connector(ConnectorOptions(edge="wss://edge.example.com:8443", token="t.x", url="http://127.0.0.1:1"))


async def test_plain_connector_listener_off_loopback_warns(make_edge, caplog, monkeypatch):
    from tunnel.edge import server
    monkeypatch.setattr(server, "is_loopback", lambda host: False)  # as if bound to a public address
    with caplog.at_level(logging.WARNING, logger="tunnel.edge.server"):
        await make_edge()
    assert "PLAIN ws://" in caplog.text and "clear text" in caplog.text


async def test_sighup_reloads_certificates_of_a_running_edge(tmp_path, pki):
    from tests.tunnel.processes import Stack, wait_port
    stack = Stack(tmp_path)
    tls_port = __import__("tests.tunnel.processes", fromlist=["free_port"]).free_port()
    try:
        stack.start(edge=False)
        stack.edge = stack.spawn("-m", "tunnel", "edge", "--public", f"127.0.0.1:{stack.public}",
                                 "--connectors", f"127.0.0.1:{stack.conn_port}", "--admin", f"127.0.0.1:{stack.admin}",
                                 "--data-dir", str(stack.data_dir), "--tls-cert", pki["a"].cert,
                                 "--tls-key", pki["a"].key, "--public-tls", f"127.0.0.1:{tls_port}", name="edge")
        wait_port(tls_port)
        ctx = ssl.create_default_context(cafile=pki["ca"])
        before = await peer_der(tls_port, HOST, ctx)
        pki["issue"]("a", "127.0.0.1", "edge.localhost", HOST)
        stack.edge.send_signal(signal.SIGHUP)
        for _ in range(50):
            await asyncio.sleep(0.1)
            if await peer_der(tls_port, HOST, ctx) != before:
                break
        else:
            pytest.fail("the edge kept serving the old certificate after SIGHUP")
        assert stack.edge.poll() is None
    finally:
        stack.stop()


async def test_https_only_tunnel_redirects_plain_http_with_308(make_edge, origin, pki, tmp_path):
    import yaml
    config = tmp_path / "edge.yaml"
    config.write_text(yaml.safe_dump({"tunnels": {"web": {"hostnames": [HOST], "https_only": True},
                                                  "open": {"hostnames": ["open.localhost"]}}}))
    edge = await make_edge(tls_cert=pki["a"].cert, tls_key=pki["a"].key, public_tls=("127.0.0.1", 0),
                           config_file=str(config))
    port = edge.edge.public_tls_port
    for name in ("web", "open"):
        connector, _ = await start_connector(edge, edge.edge.rotate_token(name), origin.url, ca=pki["ca"])
        await asyncio.wait_for(connector.registered.wait(), 10)
    async with aiohttp.ClientSession() as client:
        async with client.get(edge.public + "/small?x=1", headers={"Host": f"{HOST}:8080"},
                              allow_redirects=False) as resp:
            assert resp.status == 308
            assert resp.headers["Location"] == f"https://{HOST}:{port}/small?x=1"
            assert "Tunnel-Error" not in resp.headers
        async with client.get(edge.public + "/small", headers={"Host": "open.localhost"}) as resp:
            assert resp.status == 200  # other tunnels still answer plain HTTP
        ctx = ssl.create_default_context(cafile=pki["ca"])
        async with client.get(f"https://127.0.0.1:{port}/small", ssl=ctx, server_hostname=HOST,
                              headers={"Host": HOST}) as resp:
            assert resp.status == 200
