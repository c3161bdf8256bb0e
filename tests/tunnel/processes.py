"""Run the tunnel as users do: origin, `tunnel edge` and `tunnel connect` as processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HOST = "web.localhost"
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def wait_port(port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


class Stack:
    """Origin, edge and connector processes; stops exactly the PIDs it started."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.procs: list[subprocess.Popen] = []
        self.origin_port, self.public, self.conn_port, self.admin = (free_port() for _ in range(4))
        self.env = {**os.environ, "TUNNEL_ADMIN_TOKEN": "test-admin-token", "PYTHONPATH": str(ROOT)}
        self.data_dir = tmp / "data"

    def spawn(self, *args: str, name: str) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "ab")
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "tunnel", *args, "--admin", f"http://127.0.0.1:{self.admin}",
                               "--data-dir", str(self.data_dir)], cwd=ROOT, env=self.env, capture_output=True,
                              text=True, timeout=30)

    def start(self, edge: bool = True, *edge_args: str) -> None:
        self.origin = self.spawn("-m", "tests.tunnel.origin_app", str(self.origin_port), name="origin")
        wait_port(self.origin_port)
        if edge:
            self.start_edge(*edge_args)

    def connect(self, token: str, connections: int = 2, edge_port: int | None = None,
                *extra: str, name: str = "connector") -> subprocess.Popen:
        self.connector = self.spawn("-m", "tunnel", "connect", "--edge", f"ws://127.0.0.1:{edge_port or self.conn_port}",
                                    "--token", token, "--url", f"http://127.0.0.1:{self.origin_port}",
                                    "--connections", str(connections), *extra, name=name)
        return self.connector

    def start_edge(self, *extra: str) -> subprocess.Popen:
        self.edge = self.spawn("-m", "tunnel", "edge", "--public", f"127.0.0.1:{self.public}",
                               "--connectors", f"127.0.0.1:{self.conn_port}", "--admin", f"127.0.0.1:{self.admin}",
                               "--data-dir", str(self.data_dir), "--grace-period", "5", *extra, name="edge")
        wait_port(self.admin)
        return self.edge

    def create(self, name: str = "web", host: str = HOST) -> str:
        created = self.cli("tunnels", "create", name, "--hostname", host, "--json")
        assert created.returncode == 0, created.stderr
        return json.loads(created.stdout)["token"]

    def connections(self, name: str = "web") -> int:
        result = self.cli("tunnels", "list", "--json")
        assert result.returncode == 0, result.stderr
        return {t["name"]: t["connections"] for t in json.loads(result.stdout)}.get(name, -1)

    def wait_connections(self, count: int, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while self.connections() != count:
            assert time.monotonic() < deadline, f"expected {count} connections"
            time.sleep(0.1)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


class TcpProxy:
    """A loopback TCP relay whose individual connections a test can kill (both sockets reset)."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.pairs: list[tuple] = []
        self.server = None
        self.port = 0

    async def start(self) -> None:
        import asyncio
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader, writer) -> None:
        import asyncio
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self.pairs.append((writer, up_writer))

        async def pipe(src, dst) -> None:
            try:
                while data := await src.read(1 << 16):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def kill(self, index: int = 0) -> None:
        """Reset one relayed connection on both sides, as a dying network would."""
        client, upstream = self.pairs[index]
        client.transport.abort()
        upstream.transport.abort()

    async def close(self) -> None:
        for client, upstream in self.pairs:
            client.transport.abort()
            upstream.transport.abort()
        self.server.close()
