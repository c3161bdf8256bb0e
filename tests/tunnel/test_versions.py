"""Versioned config with real processes: pushes under load, invalid pushes, connector NACKs,
rollback, history, diff, optimistic concurrency, restart."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time

import aiohttp
import pytest
import yaml

from tests.tunnel.processes import HOST, Stack, free_port

VERSION_HEADER = "X-Config-Version"


def document(origin_port: int, label: str, **tunnel_extra) -> dict:
    tunnel = {"hostnames": [HOST],
              "policy": {"on_response": [{"actions": [{"set_response_headers": {VERSION_HEADER: label}}]}]},
              **tunnel_extra}
    return {"tunnels": {"web": tunnel}}


def write(path, doc) -> str:
    path.write_text(yaml.safe_dump(doc))
    return str(path)


@pytest.fixture
def stack(tmp_path):
    s = Stack(tmp_path)
    yield s
    s.stop()


def start(stack: Stack, tmp_path, connect_args=()) -> None:
    stack.origin_port = stack.origin_port
    config = write(tmp_path / "v0.yaml", document(stack.origin_port, "v0"))
    stack.start(True, "--config", config)
    token = json.loads(stack.cli("tunnels", "token", "rotate", "web", "--json").stdout)["token"]
    stack.connect(token, 2, None, *connect_args)
    stack.wait_connections(2)


def push(stack: Stack, path: str, *extra: str) -> subprocess.CompletedProcess:
    return stack.cli("config", "push", path, *extra)


async def test_ten_pushes_under_load_drop_nothing_and_never_go_back(stack, tmp_path):
    start(stack, tmp_path)
    results: list[tuple[float, float, int | str, list[str]]] = []
    pushed_at: list[tuple[int, float, float]] = []
    done = asyncio.Event()
    counter = iter(range(5000))

    async def worker(session):
        for _ in counter:
            begin = time.monotonic()
            try:
                async with session.get(f"http://127.0.0.1:{stack.public}/small", headers={"Host": HOST}) as resp:
                    await resp.read()
                    results.append((begin, time.monotonic(), resp.status, resp.headers.getall(VERSION_HEADER, [])))
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                results.append((begin, time.monotonic(), repr(exc), []))

    async def pusher():
        await asyncio.sleep(0.3)
        for i in range(1, 11):
            path = write(tmp_path / f"v{i}.yaml", document(stack.origin_port, f"v{i}"))
            begin = time.monotonic()
            outcome = await asyncio.to_thread(push, stack, path)
            assert outcome.returncode == 0, outcome.stderr
            pushed_at.append((i, begin, time.monotonic()))
            await asyncio.sleep(0.15)
        done.set()

    started = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        await asyncio.gather(pusher(), *(worker(session) for _ in range(16)))
    elapsed = time.monotonic() - started
    failures = [r for r in results if r[2] != 200]
    assert not failures, failures[:5]
    assert all(len(r[3]) == 1 for r in results)  # exactly one version's header on each response
    for i, _, returned in pushed_at:
        later = [r for r in results if r[0] > returned]
        stale = [r for r in later if int(r[3][0][1:]) < i]
        assert not stale, f"after push {i} returned, {len(stale)} requests saw an older version"
    rate = len(results) / elapsed
    push_ms = sorted((end - begin) * 1000 for _, begin, end in pushed_at)
    first_new = []
    for i, _, returned in pushed_at:
        seen = [r[1] for r in results if r[3] == [f"v{i}"]]
        if seen:
            first_new.append(max(0.0, (min(seen) - returned) * 1000))
    print(f"\n{len(results)} requests in {elapsed:.1f} s ({rate:.0f} req/s at c=16), 10 pushes: "
          f"push round trip p50 {push_ms[5]:.0f} ms max {push_ms[-1]:.0f} ms (CLI process included); "
          f"first response on the new version {sorted(first_new)[len(first_new) // 2]:.1f} ms after the push "
          f"returned (median)")
    if rate < 200:  # the load this test is meant to run under; reported, not asserted (timing)
        print(f"note: the load ran at only {rate:.0f} req/s on this machine")
    status = json.loads(stack.cli("config", "status", "--json").stdout)
    assert status["active_version"] == 11


async def test_invalid_pushes_change_nothing(stack, tmp_path):
    start(stack, tmp_path)
    base = f"http://127.0.0.1:{stack.public}/small"
    cases = {
        "bad.yaml": ("tunnels: {web: [unclosed\n", "line"),
        "schema.yaml": (yaml.safe_dump(document(stack.origin_port, "x", bogus=1)), "tunnels.web.bogus"),
        "module.yaml": (yaml.safe_dump(document(stack.origin_port, "x", worker={
            "main_module": "index.js", "modules": {"index.js": "export default { fetch( {"}})),
            "tunnels.web.worker.modules.index.js (line 1"),
        "ingress.yaml": (yaml.safe_dump(document(stack.origin_port, "x", ingress=[
            {"path": "/api/*", "service": f"http://127.0.0.1:{stack.origin_port}"}])), "tunnels.web.ingress[0]"),
    }
    async with aiohttp.ClientSession() as session:
        for name, (text, expected) in cases.items():
            path = tmp_path / name
            path.write_text(text)
            outcome = push(stack, str(path))
            assert outcome.returncode == 1, name
            assert expected in outcome.stderr, (name, outcome.stderr)
            async with session.get(base, headers={"Host": HOST}) as resp:
                assert resp.status == 200 and resp.headers[VERSION_HEADER] == "v0"
    assert json.loads(stack.cli("config", "status", "--json").stdout)["active_version"] == 1
    assert len(json.loads(stack.cli("config", "history", "--json").stdout)) == 1


async def test_a_connector_that_rejects_a_version_keeps_the_previous_one(stack, tmp_path):
    start(stack, tmp_path, ("--allow-service", f"http://127.0.0.1:{stack.origin_port}"))
    elsewhere = free_port()
    doc = document(stack.origin_port, "v1", ingress=[{"service": f"http://127.0.0.1:{elsewhere}"}])
    outcome = push(stack, write(tmp_path / "v1.yaml", doc))
    assert outcome.returncode == 0, outcome.stderr
    deadline = time.monotonic() + 10
    while True:
        status = json.loads(stack.cli("config", "status", "--json").stdout)
        [connector] = status["connectors"]
        if connector["last_error"]:
            break
        assert time.monotonic() < deadline, status
        await asyncio.sleep(0.1)
    assert status["active_version"] == 2 and connector["acked_version"] == 1
    assert "version 2" in connector["last_error"] and "--allow-service" in connector["last_error"]
    # The connector still sends requests where version 1 said (its --url), not to the refused port.
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{stack.public}/whoami", headers={"Host": HOST}) as resp:
            assert resp.status == 200 and await resp.text() == "origin"


async def test_history_diff_rollback_concurrency_and_restart(stack, tmp_path):
    start(stack, tmp_path)
    assert push(stack, write(tmp_path / "v1.yaml", document(stack.origin_port, "v1"))).returncode == 0
    assert push(stack, write(tmp_path / "v2.yaml", document(stack.origin_port, "v2"))).returncode == 0
    same = push(stack, str(tmp_path / "v2.yaml"))
    assert same.returncode == 0 and "nothing to do" in same.stdout
    history = json.loads(stack.cli("config", "history", "--json").stdout)
    assert [h["version"] for h in history] == [1, 2, 3]
    assert all(set(h) >= {"version", "created_at", "author", "hash"} for h in history)
    assert history[1]["author"] == "admin" and history[0]["author"].startswith("--config")
    diff = stack.cli("config", "diff", "2", "3").stdout
    assert "-            X-Config-Version: v1" in diff and "+            X-Config-Version: v2" in diff
    stale = push(stack, write(tmp_path / "v9.yaml", document(stack.origin_port, "v9")), "--base", "2")
    assert stale.returncode == 1 and "tunnel config pull" in stale.stderr
    assert json.loads(stack.cli("config", "status", "--json").stdout)["active_version"] == 3
    rolled = stack.cli("config", "rollback", "--json")
    assert rolled.returncode == 0, rolled.stderr
    assert json.loads(rolled.stdout)["version"] == 4
    pulled = json.loads(stack.cli("config", "pull", "--json").stdout)
    assert pulled["version"] == 4 and pulled["hash"] == history[1]["hash"]
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{stack.public}/small", headers={"Host": HOST}) as resp:
            assert resp.headers[VERSION_HEADER] == "v1"
    stack.edge.send_signal(signal.SIGTERM)
    assert stack.edge.wait(15) == 0
    stack.start_edge()  # no --config this time: the stored active version stays
    status = json.loads(stack.cli("config", "status", "--json").stdout)
    assert status["active_version"] == 4
    assert [h["version"] for h in json.loads(stack.cli("config", "history", "--json").stdout)] == [1, 2, 3, 4]
