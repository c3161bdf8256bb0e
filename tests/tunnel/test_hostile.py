"""Hostile connectors, origins and clients against a real edge (issue 17).

The floods (1, 2) run origin, `tunnel edge` and `tunnel connect` as processes (``Stack``) and the
flooding client as one more process (this module run with ``python -m``), so that the victim
feels the edge's work and nothing else. The other tests drive the in-process edge of the
conftest with real parts around it: an aiohttp origin, in-process ``Connector`` objects, and
where an attack needs it a hand-written connector that speaks the tunnel protocol over its own
WebSocket (``websockets``), or a raw TCP origin or client.

Timing: floods measure a victim tunnel's p50 with a bounded loop of sequential requests, before
and during, and print both (``pytest -s``); only a lenient bound is asserted. Every wait has a
timeout and every loop a bound in count and time; everything listens on 127.0.0.x.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
import pytest
import websockets
from websockets.asyncio.client import connect as ws_connect

from tests.tunnel.processes import ROOT, Stack
from tunnel.errors import ProtocolError
from tunnel.protocol import Connection, ResponseHead, Role
from tunnel.protocol import events as ev
from tunnel.protocol import frames as F

VICTIM = "victim.localhost"
HOSTILE = "hostile.localhost"

#: One PING frame as the issue spells it: type 07, flags 00, stream 0, length 8, 8 bytes.
PING = bytes.fromhex("07 00 00000000 00000008") + b"\x01" * 8
#: ~3 MiB of PINGs in one message, just under what the edge's WebSocket accepts (3 MiB).
FLOOD = PING * ((3 * 1024 * 1024 - 4096) // len(PING))
#: The largest message the edge's connector WebSocket takes (aiohttp max_msg_size).
MAX_WS_MESSAGE = 3 * 1024 * 1024


def log(*parts) -> None:
    print("[hostile]", *parts, flush=True)


# ----------------------------------------------------------------------------- raw HTTP client


@dataclass
class Response:
    status: int
    reason: bytes
    headers: list[tuple[str, str]]
    raw_head: bytes
    body: bytes
    interim: list[int] = field(default_factory=list)  # 1xx heads a client skips

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


async def read_response(reader: asyncio.StreamReader, timeout: float = 5.0, method: str = "GET") -> Response:
    """Read one response as an HTTP/1.1 client does: interim (1xx but 101) heads are skipped,
    the body is framed by Content-Length or chunked coding. Raises TimeoutError after ``timeout``."""
    return await asyncio.wait_for(_read_response(reader, method), timeout)


async def _read_response(reader: asyncio.StreamReader, method: str) -> Response:
    interim: list[int] = []
    for _ in range(16):
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head[:-4].split(b"\r\n")
        parts = status_line.split(b" ", 2)
        status = int(parts[1])
        reason = parts[2] if len(parts) > 2 else b""
        headers = []
        for line in lines:
            name, _, value = line.partition(b":")
            headers.append((name.decode("latin-1"), value.strip().decode("latin-1")))
        if 100 <= status < 200 and status != 101:
            interim.append(status)
            continue
        break
    else:
        raise AssertionError(f"16 interim responses in a row: {interim}")
    response = Response(status, reason, headers, head, b"", interim)
    if method == "HEAD" or status in (204, 304) or status < 200:
        return response
    length = response.header("content-length")
    if (response.header("transfer-encoding") or "").lower() == "chunked":
        body = bytearray()
        for _ in range(1 << 20):
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        response.body = bytes(body)
    elif length is not None:
        response.body = await reader.readexactly(int(length))
    else:
        response.body = await reader.read()
    return response


async def open_public(edge, limit: int = 1 << 21):
    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", edge.edge.public_port, limit=limit), 5)


def get(path: str, host: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()


def close_writer(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.transport.abort()


# ----------------------------------------------------------------------------- hand-written connector


class HandConnector:
    """A connector written by hand: HELLO over its own WebSocket, then every request goes to
    ``answer(conn, event)`` (which queues frames on ``conn``; None: never answer)."""

    def __init__(self, url: str, token: str, answer: Callable | None = None):
        self.url, self.token, self.answer = url, token, answer
        self.requests = 0
        self.conn = Connection(Role.CONNECTOR)
        self.ws = None
        self.task: asyncio.Task | None = None

    async def start(self) -> HandConnector:
        self.ws = await ws_connect(self.url, compression=None, max_size=None, ping_interval=None,
                                   open_timeout=5, close_timeout=1)
        self.conn.send_hello(self.token, {"connector_id": "hand"})
        await self.ws.send(self.conn.data_to_send())
        events = self.conn.receive(await asyncio.wait_for(self.ws.recv(), 5))
        assert events and isinstance(events[0], ev.Welcomed), events
        self._handle(events[1:])
        await self._flush()
        self.task = asyncio.create_task(self._serve())
        return self

    def _handle(self, events) -> None:
        for event in events:
            if isinstance(event, ev.RequestReceived):
                self.requests += 1
                if self.answer is not None:
                    self.answer(self.conn, event)
            elif isinstance(event, ev.ConfigReceived):
                self.conn.send_config_ack(event.version, True)

    async def _flush(self) -> None:
        if self.conn.outbound_size:
            await self.ws.send(self.conn.data_to_send())

    async def _serve(self) -> None:
        with contextlib.suppress(websockets.exceptions.ConnectionClosed):
            async for message in self.ws:
                self._handle(self.conn.receive(message))
                await self._flush()

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 2)


def respond(conn: Connection, stream_id: int, status: int, reason: str, headers: list, body: bytes = b"",
            end_with_head: bool = False) -> None:
    """Queue a response head (unchecked: ``encode`` validates nothing) and its body."""
    conn.send_response(stream_id, ResponseHead(status, reason, headers), end_stream=end_with_head)
    if not end_with_head:
        conn.send_data(stream_id, body, end_stream=True)


# ----------------------------------------------------------------------------- victim latency


async def victim_latencies(client: aiohttp.ClientSession, public: str, count: int, budget: float,
                           failures: list, gap: float = 0.05) -> list[float]:
    """Up to ``count`` sequential GETs on the victim tunnel, ``gap`` apart, stopping after
    ``budget`` seconds. The gap makes the requests start at any moment of a flood that stalls
    the edge in bursts, instead of right after each burst."""
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    deadline = loop.time() + budget
    for _ in range(count):
        if latencies and loop.time() > deadline:
            break
        await asyncio.sleep(gap)
        started = loop.time()
        try:
            async with client.get(public + "/small", headers={"Host": VICTIM},
                                  timeout=aiohttp.ClientTimeout(total=15)) as resp:
                body = await resp.read()
                if resp.status != 200 or len(body) != 1024:
                    failures.append(f"status {resp.status}, {len(body)} bytes")
        except (TimeoutError, aiohttp.ClientError) as exc:
            failures.append(repr(exc))
        latencies.append(loop.time() - started)
    return latencies


def describe(latencies: list[float]) -> str:
    return (f"p50 {statistics.median(latencies) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms, "
            f"n={len(latencies)}")


@dataclass
class FloodStats:
    connections: int = 0
    messages: int = 0
    closed: int = 0
    protocol_errors: int = 0  # GOAWAY PROTOCOL_ERROR or REFUSE protocol-error received
    reasons: list = field(default_factory=list)


def _frames(message: bytes) -> list:
    try:
        return F.decode(message, F.ABSOLUTE_MAX_FRAME)
    except ProtocolError:
        return []


async def _watch_for_close(ws, stats: FloodStats) -> None:
    """Read what the edge sends until it closes; note a GOAWAY or REFUSE that says why."""
    with contextlib.suppress(websockets.exceptions.ConnectionClosed):
        async for message in ws:
            # (a batch of PING answers, as an edge that answers every PING sends, is skipped)
            for frame in _frames(message) if len(message) <= 65536 else ():
                if frame.type == F.FrameType.GOAWAY:
                    _, code, text = F.parse_goaway(frame)
                    if code == F.ErrorCode.PROTOCOL_ERROR:
                        stats.protocol_errors += 1
                        stats.reasons.append(text)
                elif frame.type == F.FrameType.REFUSE:
                    doc = json.loads(frame.payload)
                    if doc.get("code") == "protocol-error":
                        stats.protocol_errors += 1
                        stats.reasons.append(doc.get("message", ""))
    stats.closed += 1


async def flood_connection(url: str, token: str | None, stats: FloodStats, stop: asyncio.Event,
                           per_connection: int) -> None:
    """Connect (and say HELLO if ``token``), then send up to ``per_connection`` FLOOD messages
    until the edge closes the connection or ``stop``; reconnect while not ``stop``. Bounded by
    ``stop`` and 2000 connections."""
    for _ in range(2000):
        if stop.is_set():
            return
        try:
            async with ws_connect(url, compression=None, max_size=None, ping_interval=None,
                                  open_timeout=5, close_timeout=0.5, write_limit=1 << 22) as ws:
                if token is not None:
                    conn = Connection(Role.CONNECTOR)
                    conn.send_hello(token, {"connector_id": "flood"})
                    await ws.send(conn.data_to_send())
                    events = conn.receive(await asyncio.wait_for(ws.recv(), 5))
                    if not (events and isinstance(events[0], ev.Welcomed)):
                        raise RuntimeError(f"HELLO not accepted: {events}")
                stats.connections += 1
                watcher = asyncio.create_task(_watch_for_close(ws, stats))
                try:
                    for _ in range(per_connection):
                        if stop.is_set() or watcher.done():
                            break
                        sending = asyncio.create_task(ws.send(FLOOD))
                        done, _ = await asyncio.wait({sending, watcher}, timeout=10,
                                                     return_when=asyncio.FIRST_COMPLETED)
                        if sending not in done:
                            sending.cancel()
                            with contextlib.suppress(BaseException):
                                await sending
                            break
                        if sending.exception() is not None:
                            break
                        stats.messages += 1
                    if not stop.is_set():  # the edge's answer to what we sent (its close) comes soon
                        await asyncio.wait({watcher}, timeout=5)
                finally:
                    watcher.cancel()
                    with contextlib.suppress(BaseException):
                        await watcher
        except (TimeoutError, OSError, websockets.exceptions.WebSocketException):
            await asyncio.sleep(0.05)


async def _flood_process(url: str, token: str | None, connections: int, per_connection: int) -> None:
    """The flooding client as its own process (``python -m tests.tunnel.test_hostile``), so the
    edge's CPU, not the attacker's, is what the victim feels. Commands on stdin: ``stats`` prints
    the counts as JSON; ``stop`` or EOF (or 60 s) ends the flood and prints them a last time."""
    stats, stop = FloodStats(), asyncio.Event()
    loop = asyncio.get_running_loop()
    commands = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
    floods = [asyncio.create_task(flood_connection(url, token, stats, stop, per_connection))
              for _ in range(connections)]
    for _ in range(1000):  # announce once the first message has left (at most 10 s)
        if stats.messages:
            break
        await asyncio.sleep(0.01)
    print("flooding", flush=True)
    deadline = loop.time() + 60
    while loop.time() < deadline:
        try:
            line = await asyncio.wait_for(commands.readline(), max(0.1, deadline - loop.time()))
        except TimeoutError:
            break
        if line.strip() != b"stats":
            break
        print(json.dumps(asdict(stats)), flush=True)
    stop.set()
    await asyncio.wait(floods, timeout=2)
    for task in floods:
        task.cancel()
    await asyncio.gather(*floods, return_exceptions=True)
    print(json.dumps(asdict(stats)), flush=True)


class Flooder:
    """Runs ``_flood_process`` and talks to it; stops exactly the process it started."""

    def __init__(self, url: str, token: str | None, connections: int, per_connection: int):
        self.args = [url, token or "-", str(connections), str(per_connection)]
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.tunnel.test_hostile", *self.args, cwd=ROOT, env=env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        line = await asyncio.wait_for(self.proc.stdout.readline(), 20)
        assert line.strip() == b"flooding", line

    async def stats(self) -> FloodStats:
        self.proc.stdin.write(b"stats\n")
        await self.proc.stdin.drain()
        return FloodStats(**json.loads(await asyncio.wait_for(self.proc.stdout.readline(), 10)))

    async def stop(self) -> FloodStats | None:
        if self.proc is None or self.proc.returncode is not None:
            return None
        try:
            with contextlib.suppress(ConnectionError):
                self.proc.stdin.write(b"stop\n")
                await self.proc.stdin.drain()
                self.proc.stdin.close()
            out = await asyncio.wait_for(self.proc.stdout.read(), 15)
            return FloodStats(**json.loads(out.splitlines()[-1]))
        finally:
            if self.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
            await asyncio.wait_for(self.proc.wait(), 10)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure_under(client, stack: Stack, flooder: Flooder):
    """Victim latencies before and during the flood; the flood is stopped before this returns.
    Returns (before, during, failures, messages sent during the measurement, final stats) and
    prints the edge process's CPU time per flood message (for information)."""
    public = f"http://127.0.0.1:{stack.public}"
    failures: list = []
    await victim_latencies(client, public, 5, 5, failures, gap=0)  # warm the connection pool
    before = await victim_latencies(client, public, 30, 5, failures)
    try:
        await flooder.start()
        await asyncio.sleep(0.2)
        sent_before = (await flooder.stats()).messages
        cpu_before = cpu_seconds(stack.edge.pid)
        during = await victim_latencies(client, public, 40, 4, failures)
        cpu = cpu_seconds(stack.edge.pid) - cpu_before
        sent_during = (await flooder.stats()).messages - sent_before
    finally:
        final = await flooder.stop()
    assert final is not None, "the flooding process ended on its own"
    log(f"edge CPU during the measurement: {cpu:.2f} s for {sent_during} flood messages "
        f"({cpu / max(1, sent_during) * 1000:.1f} ms each)")
    return before, during, failures, sent_during, final


# ----------------------------------------------------------------------------- 1, 2: floods


@pytest.fixture
def flood_stack(tmp_path):
    """Origin, `tunnel edge` and `tunnel connect` (for the victim) as processes, so that what the
    victim feels is the edge's own work; the flood comes from one more process (``Flooder``).
    Yields (stack, token of a second tunnel, "hostile")."""
    stack = Stack(tmp_path)
    try:
        stack.start()
        victim = stack.create("victim", VICTIM)
        hostile = stack.create("hostile", HOSTILE)
        stack.connect(victim, 2)
        deadline = time.monotonic() + 20
        for _ in range(400):  # until the victim answers through its connector
            with contextlib.suppress(OSError):
                request = urllib.request.Request(f"http://127.0.0.1:{stack.public}/small", headers={"Host": VICTIM})
                with urllib.request.urlopen(request, timeout=5) as answer:
                    if answer.status == 200:
                        break
            assert time.monotonic() < deadline, "the victim tunnel never answered"
            time.sleep(0.1)
        yield stack, hostile
    finally:
        stack.stop()


async def test_ping_flood_after_hello_closes_that_connection_and_the_edge_keeps_answering(flood_stack, client):
    assert PING == F.encode(F.FrameType.PING, 0, 0, b"\x01" * 8) and len(FLOOD) < MAX_WS_MESSAGE
    stack, token = flood_stack
    # Two connections with a valid token, each sending FLOOD after FLOOD (and re-connecting).
    before, during, failures, sent_during, stats = await measure_under(
        client, stack, Flooder(f"ws://127.0.0.1:{stack.conn_port}", token, connections=2, per_connection=1000))
    log(f"PING flood after HELLO: victim before {describe(before)}; during {describe(during)}; "
        f"flood: {stats.connections} connections, {stats.messages} messages of {len(FLOOD)} bytes "
        f"({sent_during} during the measurement), {stats.closed} closed by the edge, "
        f"{stats.protocol_errors} with a protocol error {stats.reasons[:1]}")
    assert not failures, failures
    assert sent_during >= 1, "the flood did not run during the measurement"
    assert stats.protocol_errors >= 1 and stats.closed >= 1, "the edge never closed a flooding connection"
    assert stats.protocol_errors >= stats.connections - 2, "flooding connections were left open"
    assert all("PING" in reason for reason in stats.reasons), stats.reasons[:3]
    p50_before, p50_during = statistics.median(before), statistics.median(during)
    assert p50_during <= max(3 * p50_before, 0.050), (p50_before, p50_during)


async def test_flood_before_hello_is_refused_undecoded_and_the_edge_keeps_answering(flood_stack, client):
    FLOODERS = 4
    stack, _ = flood_stack
    # No token (anyone on the network can do this): FLOODERS connections at a time, each sending
    # one FLOOD message before any HELLO, then a new connection.
    before, during, failures, sent_during, stats = await measure_under(
        client, stack, Flooder(f"ws://127.0.0.1:{stack.conn_port}", None, connections=FLOODERS, per_connection=1))
    log(f"flood before HELLO: victim before {describe(before)}; during {describe(during)}; "
        f"flood: {stats.connections} connections, {stats.messages} messages of {len(FLOOD)} bytes "
        f"({sent_during} during the measurement), {stats.closed} closed by the edge, "
        f"refused: {stats.reasons[:1]}")
    assert not failures, failures
    assert sent_during >= 1, "the flood did not run during the measurement"
    # every connection is closed by the edge, but those still in flight when the flood stopped
    assert stats.protocol_errors >= 1 and stats.closed >= stats.connections - FLOODERS, "flooding connections stayed open"
    p50_before, p50_during = statistics.median(before), statistics.median(during)
    assert p50_during <= max(3 * p50_before, 0.050), (p50_before, p50_during)


# ----------------------------------------------------------------------------- 3: silent handshakes


async def test_a_connector_registers_within_a_second_while_64_silent_websockets_are_open(edge, origin, client):
    token = edge.create_tunnel("victim", VICTIM)
    addresses = [f"127.0.0.{i}" for i in range(2, 11)]  # 9 addresses x 8 = 72 silent WebSockets
    stop = asyncio.Event()
    live: set = set()
    counts = {"opened": 0, "closed": 0, "refused": 0}

    async def slot(address: str) -> None:
        for _ in range(1000):  # re-open whatever closes, until stop
            if stop.is_set():
                return
            try:
                ws = await ws_connect(edge.ws_url, compression=None, local_addr=(address, 0),
                                      ping_interval=None, open_timeout=5, close_timeout=0.2)
            except (TimeoutError, OSError, websockets.exceptions.WebSocketException):
                counts["refused"] += 1
                await asyncio.sleep(0.1)
                continue
            counts["opened"] += 1
            live.add(ws)
            stopping = asyncio.create_task(stop.wait())
            ended = asyncio.create_task(ws.wait_closed())
            try:
                await asyncio.wait({stopping, ended}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
                ended.cancel()
                live.discard(ws)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(), 1)
            counts["closed"] += 1
            await asyncio.sleep(0.05)

    slots = [asyncio.create_task(slot(address)) for address in addresses for _ in range(8)]
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while len(live) < 64 and loop.time() < deadline:
            await asyncio.sleep(0.05)
        assert len(live) >= 64, f"only {len(live)} silent WebSockets could be opened"
        await asyncio.sleep(0.3)
        pending = len(getattr(edge.edge, "handshakes", ())) or sum(1 for s in edge.edge.sessions if s.tunnel is None)
        started = loop.time()
        connector, task = await edge.connect(token, origin.url, wait=False)
        waiter = asyncio.create_task(connector.registered.wait())
        await asyncio.wait({waiter, task}, timeout=5, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        elapsed = loop.time() - started if connector.registered.is_set() else None
        open_now = len(live)
        log(f"silent WebSockets: {open_now} open at registration, {pending} pending handshakes at the edge, "
            f"{counts}; connector registered after "
            f"{f'{elapsed:.3f} s' if elapsed is not None else 'NOT within 5 s'}")
        assert elapsed is not None and elapsed < 1.0, f"the connector did not register within 1 s ({elapsed})"
        assert open_now >= 56, f"the silent WebSockets were not kept open ({open_now})"
        async with client.get(edge.public + "/small", headers={"Host": VICTIM},
                              timeout=aiohttp.ClientTimeout(total=10)) as resp:
            assert resp.status == 200  # and it serves
    finally:
        stop.set()
        await asyncio.wait(slots, timeout=10)
        for task in slots:
            task.cancel()
        await asyncio.gather(*slots, return_exceptions=True)


# ----------------------------------------------------------------------------- 4: 1xx as final


async def test_a_1xx_final_response_from_a_connector_is_502_and_the_client_stays_in_sync(edge):
    def answer(conn, event):
        path = event.head.target
        if path.startswith("/hundred"):
            respond(conn, event.stream_id, 100, "Continue", [], end_with_head=True)
        elif path.startswith("/early"):
            respond(conn, event.stream_id, 103, "Early Hints", [("Link", "</a.css>; rel=preload")],
                    end_with_head=True)
        else:
            body = f"ok:{path}".encode()
            respond(conn, event.stream_id, 200, "OK", [("Content-Length", str(len(body)))], body)

    token = edge.create_tunnel("evil", "evil.localhost")
    hand = await HandConnector(edge.ws_url, token, answer).start()
    seen = {}
    try:
        for path in ("/hundred", "/early"):
            # Two pipelined requests on one socket: the second answer must be read as the second.
            reader, writer = await open_public(edge)
            try:
                writer.write(get(path, "evil.localhost") + get("/next", "evil.localhost"))
                first = second = None
                with contextlib.suppress(asyncio.TimeoutError, asyncio.IncompleteReadError):
                    first = await read_response(reader, 5)
                    second = await read_response(reader, 5)
            finally:
                close_writer(writer)
            # A lone request is answered, not left hanging.
            reader, writer = await open_public(edge)
            try:
                writer.write(get(path, "evil.localhost"))
                lone = None
                with contextlib.suppress(asyncio.TimeoutError, asyncio.IncompleteReadError):
                    lone = await read_response(reader, 5)
            finally:
                close_writer(writer)
            seen[path] = (first, second, lone)
            log(f"1xx {path}: pipelined first={first and (first.interim, first.status, first.body[:20])} "
                f"second={second and (second.status, second.body[:20])}; "
                f"lone={lone and (lone.interim, lone.status) or 'no answer in 5 s'}")
    finally:
        await hand.close()
    for path, (first, second, lone) in seen.items():
        assert first is not None and first.status == 502, (path, first)
        assert first.header("Tunnel-Error") == "origin-unreachable" and not first.interim, (path, first)
        assert second is not None and second.status == 200 and second.body == b"ok:/next", (path, second)
        assert lone is not None and lone.status == 502 and not lone.interim, (path, lone)


# ----------------------------------------------------------------------------- 5: malformed origin


async def test_a_malformed_origin_response_is_a_prompt_502(edge, client):
    answers = {
        "/vt": b"HTTP/1.1 200 OK\r\nTransfer-Encoding\x0b: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "/two-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        "/fine": b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfine",
    }
    held: list[asyncio.StreamWriter] = []

    async def handle(reader, writer):
        held.append(writer)  # kept open: the connector must not wait for the origin to go away
        with contextlib.suppress(Exception):
            for _ in range(100):
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                path = head.split(b" ", 2)[1].decode()
                writer.write(answers.get(path, answers["/fine"]))
                await writer.drain()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    results = {}
    try:
        await edge.tunnel("bad", "bad.localhost", f"http://127.0.0.1:{port}")  # origin timeout: the default
        loop = asyncio.get_running_loop()
        for path in ("/vt", "/two-lengths"):
            started = loop.time()
            try:
                async with client.get(edge.public + path, headers={"Host": "bad.localhost"},
                                      timeout=aiohttp.ClientTimeout(total=10)) as resp:
                    await resp.read()
                    results[path] = (resp.status, resp.headers.get("Tunnel-Error"), loop.time() - started)
            except TimeoutError:
                results[path] = (None, None, loop.time() - started)
            log(f"malformed origin {path}: status {results[path][0]} "
                f"({results[path][1]}) after {results[path][2]:.3f} s")
        async with client.get(edge.public + "/fine", headers={"Host": "bad.localhost"},
                              timeout=aiohttp.ClientTimeout(total=10)) as resp:
            fine = (resp.status, await resp.read())
    finally:
        for writer in held:
            close_writer(writer)
        server.close()
    for path, (status, reason, elapsed) in results.items():
        assert status == 502 and reason == "origin-unreachable", (path, status, reason, elapsed)
        assert elapsed < 5, (path, elapsed)
    assert fine == (200, b"fine")


# ----------------------------------------------------------------------------- 6: pipelined GETs


async def test_1600_pipelined_gets_in_one_write_are_all_answered(edge, origin):
    await edge.tunnel("web", "web.localhost", origin.url)
    request = get("/whoami", "web.localhost")
    burst = request * 1600
    reader, writer = await open_public(edge)
    statuses: dict[int, int] = {}
    answered = 0
    try:
        writer.write(burst)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        with contextlib.suppress(asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            for _ in range(1600):
                response = await read_response(reader, max(0.1, min(10, deadline - loop.time())))
                statuses[response.status] = statuses.get(response.status, 0) + 1
                if response.status == 200 and response.body == b"origin":
                    answered += 1
    finally:
        close_writer(writer)
    log(f"1600 pipelined GETs in one {len(burst)}-byte write: statuses {statuses}, {answered} correct answers")
    assert 431 not in statuses, statuses
    assert answered == 1600 and statuses == {200: 1600}, statuses


# ----------------------------------------------------------------------------- 7: at capacity


async def test_a_tunnel_with_2048_streams_in_flight_answers_503_at_capacity(edge):
    token = edge.create_tunnel("full", "full.localhost")
    hands = [await HandConnector(edge.ws_url, token).start() for _ in range(2)]  # never answer
    capacity = sum(hand.conn.local.max_streams for hand in hands)  # 2 x 1024 streams
    writers: list[asyncio.StreamWriter] = []
    gate = asyncio.Semaphore(64)  # a bounded number of connects at once (the listen backlog)
    loop = asyncio.get_running_loop()

    async def hold(i: int) -> None:
        async with gate:
            _, writer = await open_public(edge, limit=1 << 16)
            writers.append(writer)
            writer.write(get(f"/hold/{i}", "full.localhost"))

    try:
        started = loop.time()
        await asyncio.wait_for(asyncio.gather(*(hold(i) for i in range(capacity))), 60)
        deadline = loop.time() + 30
        while sum(hand.requests for hand in hands) < capacity and loop.time() < deadline:
            await asyncio.sleep(0.05)
        in_flight = sum(hand.requests for hand in hands)
        assert in_flight == capacity, f"only {in_flight} of {capacity} streams opened"
        log(f"{in_flight} streams in flight after {loop.time() - started:.2f} s")
        answers = []
        for _ in range(3):
            reader, writer = await open_public(edge)
            try:
                writer.write(get("/one-more", "full.localhost"))
                response = await read_response(reader, 5)
            finally:
                close_writer(writer)
            answers.append((response.status, response.header("Tunnel-Error"), response.header("Retry-After")))
        log(f"requests beyond capacity: {answers}")
        assert all(status == 503 and reason == "at-capacity" for status, reason, _ in answers), answers
        assert sum(hand.requests for hand in hands) == capacity  # none of them reached a connector
    finally:
        for writer in writers:
            close_writer(writer)
        for hand in hands:
            await hand.close()


# ----------------------------------------------------------------------------- 8: response heads


BAD_HEADS = {
    "/tab-name": (200, "OK", [("x\ty", "v")], b"x\ty"),
    "/del-name": (200, "OK", [("x\x7fy", "v")], b"x\x7fy"),
    "/vt-name": (200, "OK", [("x\x0by", "v")], b"x\x0by"),
    "/ctl-value": (200, "OK", [("x-ctl", "a\x01b")], b"a\x01b"),
    "/vt-value": (200, "OK", [("x-vt", "a\x0bb")], b"a\x0bb"),
    "/del-value": (200, "OK", [("x-del", "a\x7fb")], b"a\x7fb"),
    "/esc-reason": (200, "O\x1bK", [], b"O\x1bK"),
}
BIG_HEADS = {
    "/long-reason": (200, "x" * 200_000, [], None),
    "/big-head": (200, "OK", [(f"x-fill-{i}", "v" * 1000) for i in range(100)], None),  # ~100 KiB
}


def head_answer(table: dict):
    def answer(conn, event):
        path = event.head.target
        if path in table:
            status, reason, headers, _ = table[path]
            respond(conn, event.stream_id, status, reason, [*headers, ("Content-Length", "2")], b"ok")
        else:
            respond(conn, event.stream_id, 200, "OK", [("Content-Length", "5")], b"fine!")
    return answer


async def ask_on_one_connection(edge, host: str, paths) -> dict:
    """GET each path, then /fine, on one keep-alive connection; what the client read for each."""
    results = {}
    reader, writer = await open_public(edge)
    try:
        for path in paths:
            entry = results[path] = {}
            try:
                writer.write(get(path, host))
                entry["bad"] = await read_response(reader, 5)
                writer.write(get("/fine", host))
                entry["fine"] = await read_response(reader, 5)
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError) as exc:
                entry["error"] = repr(exc)
                close_writer(writer)
                reader, writer = await open_public(edge)
    finally:
        close_writer(writer)
    return results


async def test_connector_header_names_and_values_with_control_characters_never_reach_the_client(edge):
    token = edge.create_tunnel("evil", "evil.localhost")
    hand = await HandConnector(edge.ws_url, token, head_answer(BAD_HEADS)).start()
    try:
        results = await ask_on_one_connection(edge, "evil.localhost", BAD_HEADS)
    finally:
        await hand.close()
    for path, entry in results.items():
        bad, fine = entry.get("bad"), entry.get("fine")
        log(f"connector head {path}: {bad and bad.status} {bad and bad.header('Tunnel-Error')}, "
            f"then /fine: {fine and fine.status} {entry.get('error', '')}")
    for path, entry in results.items():
        needle = BAD_HEADS[path][3]
        bad, fine = entry.get("bad"), entry.get("fine")
        assert bad is not None and bad.status == 502, (path, entry)
        assert bad.header("Tunnel-Error") == "origin-unreachable", (path, bad.headers)
        assert needle not in bad.raw_head and needle not in bad.body, path
        assert fine is not None and (fine.status, fine.body) == (200, b"fine!"), (path, entry)


async def test_an_oversized_response_head_from_a_connector_is_502(edge):
    token = edge.create_tunnel("evil", "evil.localhost")
    hand = await HandConnector(edge.ws_url, token, head_answer(BIG_HEADS)).start()
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        results = await ask_on_one_connection(edge, "evil.localhost", BIG_HEADS)
    finally:
        await hand.close()
    elapsed = loop.time() - started
    for path, entry in results.items():
        bad, fine = entry.get("bad"), entry.get("fine")
        log(f"connector head {path}: {bad and bad.status} (head of {bad and len(bad.raw_head)} bytes), "
            f"then /fine: {fine and fine.status} {entry.get('error', '')}")
    log(f"oversized heads answered in {elapsed:.3f} s")
    for path, entry in results.items():
        bad, fine = entry.get("bad"), entry.get("fine")
        assert bad is not None and bad.status == 502, (path, entry)
        assert bad.header("Tunnel-Error") == "origin-unreachable" and len(bad.raw_head) < 4096, path
        assert fine is not None and (fine.status, fine.body) == (200, b"fine!"), (path, entry)
    assert elapsed < 10


if __name__ == "__main__":  # the flooding client of tests 1 and 2, as its own process
    _url, _token, _connections, _per_connection = sys.argv[1:5]
    asyncio.run(_flood_process(_url, None if _token == "-" else _token, int(_connections), int(_per_connection)))
