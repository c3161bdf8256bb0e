"""The edge process: public, connector and admin listeners around one state store."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from generators.keys import parse_key
from generators.routing import build_routing_table
from tunnel.config import ConfigError, load_yaml, parse_config
from tunnel.config.document import content_hash
from tunnel.config.model import Config
from tunnel.edge.admin import create_admin_app
from tunnel.edge.connectors import HELLO_TIMEOUT, EdgeSession, HandshakeSlots, create_connector_app
from tunnel.edge.metrics import EdgeMetrics, TunnelCollector, exposition
from tunnel.edge.public import PublicProtocol, PublicSettings
from tunnel.edge.registry import TunnelRegistry
from tunnel.edge.versions import VersionManager, read_metrics_state, restore_metrics_state
from tunnel.edge.workers import WorkerPipeline
from tunnel.loader import Loader
from tunnel.protocol.frames import ErrorCode
from tunnel.store import Store
from tunnel.tls import CertPair, CertStore, TLSConfigError, is_loopback

log = logging.getLogger(__name__)


@dataclass
class EdgeOptions:
    """Settings of one edge (the flags of `tunnel edge`)."""

    data_dir: str
    public: tuple[str, int] = ("127.0.0.1", 8080)
    connectors: tuple[str, int] = ("127.0.0.1", 8081)
    admin: tuple[str, int] = ("127.0.0.1", 8082)
    admin_token: str | None = None
    max_body_size: int = 1 << 30
    origin_timeout: float = 100.0
    grace_period: float = 30.0
    trusted_proxies: list[str] = field(default_factory=list)
    tls_cert: str | None = None  # default certificate (PEM chain) ...
    tls_key: str | None = None  # ... and its key
    tls_sni_certs: list[CertPair] = field(default_factory=list)  # more, chosen by SNI
    public_tls: tuple[str, int] | None = None  # HTTPS public listener
    plain_connectors: bool = False  # keep the connector listener plain even with a certificate
    config_file: str | None = None  # becomes the next config version at start-up if it differs
    worker_cpu_ms: float = 50.0  # CPU per request of a tunnel's worker (503 beyond)
    worker_memory_mb: float = 64.0  # heap per worker isolate (503 beyond)
    worker_log_rate: int = 65536  # console bytes per tunnel worker and second (dropped and counted beyond)


class Edge:
    """A running edge. ``start()`` binds the three listeners; ``stop()`` closes them.

    After ``start()``, ``public_port``, ``connector_port`` and ``admin_port`` hold the bound
    ports (useful with port 0), and ``admin_token`` holds a token created on first start.
    """

    def __init__(self, options: EdgeOptions):
        self.options = options
        self.store = Store(options.data_dir)
        self.registry = TunnelRegistry()
        self.sessions: set[EdgeSession] = set()
        self.handshakes = HandshakeSlots()
        self.loader = Loader(cpu_limit_ms=options.worker_cpu_ms, memory_limit_mb=options.worker_memory_mb,
                             log_bytes_per_s=options.worker_log_rate)
        self.metrics = EdgeMetrics()
        self.config: Config = parse_config({})
        self.version = 0
        self.pipeline: WorkerPipeline | None = None
        self.worker_hashes: dict[str, str] = {}  # generated worker key -> code hash in force
        self._exchanges: dict[int, Any] = {}  # public exchanges a worker may forward (all versions)
        self.versions = VersionManager(self)
        self.extra_env: dict[str, dict[str, Any]] = {}  # more bindings for a tunnel's worker (the demo)
        self.public_settings = PublicSettings(
            routing=build_routing_table(self.config), registry=self.registry, metrics=self.metrics,
            max_body_size=options.max_body_size,
            trusted_proxies=[ipaddress.ip_network(c, strict=False) for c in options.trusted_proxies])
        self.ready = False
        self.draining = False
        self.admin_token: str | None = None
        self.public_port = self.connector_port = self.admin_port = self.public_tls_port = 0
        self.certs: CertStore | None = None
        if options.tls_cert or options.tls_key:
            if not (options.tls_cert and options.tls_key):
                raise TLSConfigError("--tls-cert and --tls-key go together")
            self.certs = CertStore(CertPair(options.tls_cert, options.tls_key), options.tls_sni_certs)
        elif options.public_tls or options.tls_sni_certs:
            raise TLSConfigError("HTTPS and SNI certificates need a default --tls-cert and --tls-key")
        self._public_servers: list[asyncio.AbstractServer] = []
        self._runners: list[web.AppRunner] = []
        self._hostnames: dict[str, list[str]] = {}

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Load state, bind the listeners, and begin serving."""
        self.admin_token = self.store.ensure_admin_token(self.options.admin_token)
        if self.options.config_file:
            self._adopt_config_file(self.options.config_file)
        active = self.store.active()
        if active is not None:
            self._apply(active.document, active.version)
        if self.pipeline is not None:
            await self.loader.start()  # shard processes now, not on the first request
        loop = asyncio.get_running_loop()
        settings = self.public_settings
        host, port = self.options.public
        server = await loop.create_server(lambda: PublicProtocol(settings), host, port, backlog=1024,
                                          reuse_address=True)
        self._public_servers.append(server)
        self.public_port = server.sockets[0].getsockname()[1]
        if self.options.public_tls:
            tls_host, tls_port = self.options.public_tls
            server = await loop.create_server(lambda: PublicProtocol(settings, scheme="https"), tls_host,
                                              tls_port, backlog=1024, reuse_address=True,
                                              ssl=self.certs.context, ssl_handshake_timeout=10)
            self._public_servers.append(server)
            self.public_tls_port = server.sockets[0].getsockname()[1]
            settings.https_port = self.public_tls_port
        connector_tls = self.certs is not None and not self.options.plain_connectors
        # a connection that sends no upgrade request is closed as fast as one that sends no HELLO
        self.connector_port = await self._serve(create_connector_app(self), self.options.connectors,
                                                self.certs.context if connector_tls else None,
                                                keepalive_timeout=HELLO_TIMEOUT)
        if not connector_tls and not is_loopback(self.options.connectors[0]):
            log.warning("!!! the connector listener on %s:%d is PLAIN ws://: connector tokens cross the "
                        "network in clear text. Give --tls-cert/--tls-key, or terminate TLS in front of it.",
                        *self.options.connectors)
        self.admin_port = await self._serve(create_admin_app(self), self.options.admin)
        self.ready = True
        scheme = "wss" if connector_tls else "ws"
        log.info("edge ready: public http://%s:%d%s, connectors %s://%s:%d, admin http://%s:%d",
                 host, self.public_port,
                 f" and https://{self.options.public_tls[0]}:{self.public_tls_port}" if self.public_tls_port else "",
                 scheme, self.options.connectors[0], self.connector_port, self.options.admin[0], self.admin_port)
        if self.certs is not None:
            log.info("connectors can pin this edge's key with --pin %s", self.certs.pin)

    def _adopt_config_file(self, path: str) -> None:
        """``--config FILE``: store FILE as the next version unless it equals the active one.
        Raises ConfigError (with every problem) when FILE is invalid."""
        try:
            text = open(path, encoding="utf-8").read()
        except OSError as exc:
            raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
        document = load_yaml(text)
        active = self.store.active()
        if active is not None and active.hash == content_hash(document):
            log.info("config file %s equals the active version %d", path, active.version)
            return
        version = self.store.commit_config(document, author=f"--config {os.path.basename(path)}")
        log.info("config file %s stored as version %d", path, version.version)

    def reload_tls(self) -> bool:
        """Re-read certificate files (SIGHUP). New handshakes use them; open connections carry
        on. On error the current certificates stay and the error is logged."""
        if self.certs is None:
            return False
        try:
            self.certs.reload()
        except TLSConfigError as exc:
            log.error("certificate reload failed, keeping the current ones: %s", exc)
            return False
        log.info("certificates reloaded; new handshakes use them (pin %s)", self.certs.pin)
        return True

    async def _serve(self, app: web.Application, where: tuple[str, int], ssl_context=None,
                     keepalive_timeout: float = 75.0) -> int:
        runner = web.AppRunner(app, access_log=None, handle_signals=False, keepalive_timeout=keepalive_timeout)
        await runner.setup()
        site = web.TCPSite(runner, where[0], where[1], reuse_address=True, ssl_context=ssl_context)
        await site.start()
        self._runners.append(runner)
        return site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def drain(self, grace_period: float | None = None) -> bool:
        """Graceful stop: refuse new public connections, let in-flight requests finish within
        the grace period, then tell connectors to reconnect and stop. Return True when no
        request was cut off."""
        grace = self.options.grace_period if grace_period is None else grace_period
        self.ready = False
        self.draining = True
        settings = self.public_settings
        settings.draining = True
        for server in self._public_servers:
            server.close()
        for proto in list(settings.connections):
            proto.close_if_idle()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while any(p.busy for p in settings.connections) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        busy = sum(1 for p in settings.connections if p.busy)
        if busy:
            log.warning("grace period of %.0f s over; cutting %d connection(s) off", grace, busy)
        await self.stop()
        return busy == 0

    async def stop(self) -> None:
        """Close every listener and connection."""
        self.ready = False
        self.draining = True
        for server in self._public_servers:
            server.close()
        for session in list(self.sessions):
            session.conn.goaway(ErrorCode.SHUTDOWN, "edge shutting down; reconnect")
            session.flush_soon()
            session.close("edge shutting down")
        for proto in list(self.public_settings.connections):
            proto.abort()
        for runner in self._runners:
            await runner.cleanup()
        await self.loader.aclose()
        for server in self._public_servers:
            try:
                await asyncio.wait_for(server.wait_closed(), 1.0)
            except asyncio.TimeoutError:
                pass
        self.store.close()

    # ------------------------------------------------------------------ config and tunnels
    def build_pipeline(self, config: Config, version: int) -> WorkerPipeline | None:
        """The workers of a config version (None when no tunnel needs one); nothing is loaded."""
        if not any(t.needs_worker or t.metrics for t in config.tunnels.values()):
            return None
        pipeline = WorkerPipeline(self.loader, self.registry, config, version, self.extra_env, self._exchanges)
        pipeline.response_timeout = self.options.origin_timeout + 10.0
        return pipeline

    def _apply(self, document: dict[str, Any], version: int) -> None:
        """Make ``document`` the config in force at once (start-up, tunnels create/delete): workers
        whose code changed are evicted and load again on their next request."""
        config = parse_config(document)
        pipeline = self.build_pipeline(config, version)
        self._swap(config, version, pipeline, {})
        if pipeline is not None:
            pipeline.ready.set()

    async def activate(self, config: Config, version: int, pipeline: WorkerPipeline | None,
                       prepared: dict[str, Any]) -> None:
        """Swap in a pushed version whose changed workers are already loaded (``prepared``): new
        requests run the new code at once; requests in flight finish on the old isolates; custom
        metric counts move to the new metrics workers."""
        old = self.pipeline
        moves = []
        if old is not None and pipeline is not None:
            await old.flush()
            for key in prepared:
                kind, tunnel = parse_key(key) or ("", "")
                if kind == "metrics" and old.metrics_worker(tunnel) is not None:
                    moves.append((tunnel, await read_metrics_state(old.metrics_worker(tunnel))))
        self._swap(config, version, pipeline, prepared)
        if old is not None and pipeline is not None:
            pipeline.adopt_pending(old)
        for tunnel, state in moves:
            await restore_metrics_state(pipeline.metrics_worker(tunnel), state)
        if pipeline is not None:
            pipeline.ready.set()

    def _swap(self, config: Config, version: int, pipeline: WorkerPipeline | None,
              prepared: dict[str, Any]) -> None:
        """The synchronous, atomic part of activating a version."""
        hashes = {key: worker.hash for key, worker in (pipeline.generated() if pipeline else {}).items()}
        for key, item in prepared.items():
            self.loader.install(item)
        for key, old_hash in self.worker_hashes.items():
            if key not in prepared and hashes.get(key) != old_hash:
                self.loader.evict(key)  # requests running on the old code finish on it
        self.worker_hashes = hashes
        self.config, self.version, self.pipeline = config, version, pipeline
        self._hostnames = {name: list(t.hostnames) for name, t in config.tunnels.items()}
        settings = self.public_settings
        settings.routing = build_routing_table(config)
        settings.pipeline = pipeline
        settings.https_only = frozenset(name for name, t in config.tunnels.items() if t.https_only)
        settings.normalize_paths = frozenset(name for name, t in config.tunnels.items() if t.normalizes_paths)
        self.metrics.active_version = version
        self.metrics.forget(config.tunnels)
        for tunnel in list(self._connected_tunnels()):
            if tunnel not in self._hostnames:
                self.disconnect_tunnel(tunnel, "tunnel deleted")
        for session in list(self.registry.sessions()):
            session.send_config()

    def connector_config(self, tunnel: str) -> dict[str, Any]:
        """The connector part of the active version for ``tunnel`` (PROTOCOL.md §7a)."""
        config = self.config.tunnels.get(tunnel)
        if config is None:
            return {"hostnames": [], "ingress": [], "services": []}
        return {"hostnames": list(config.hostnames),
                "ingress": [{k: v for k, v in (("hostname", r.hostname), ("path", r.path), ("service", r.service))
                             if v is not None} for r in config.ingress],
                "services": list(config.ingress_services())}

    def _connected_tunnels(self) -> set[str]:
        return {s.tunnel for s in self.sessions if s.tunnel is not None}

    async def metrics_exposition(self, tunnel: str | None = None) -> bytes:
        """Prometheus text for the whole edge, or only for ``tunnel`` (custom series included)."""
        collector = TunnelCollector(self.metrics, lambda: list(self.config.tunnels), self.registry.connections,
                                    self.loader.stats, only=tunnel,
                                    acked_versions=lambda: [s.acked_version for s in self.registry.sessions()])
        custom = ""
        if self.pipeline is not None:
            names = [tunnel] if tunnel is not None else list(self.config.tunnels)
            custom = await self.pipeline.custom_exposition(names)
        return exposition(collector, custom)

    def hostnames_of(self, tunnel: str) -> list[str]:
        return list(self._hostnames.get(tunnel, []))

    def list_tunnels(self) -> list[dict[str, Any]]:
        return [{"name": name, "hostnames": hosts, "connections": self.registry.connections(name)}
                for name, hosts in sorted(self._hostnames.items())]

    def create_tunnel(self, name: str, hostnames: list[str], author: str) -> str:
        """Add a tunnel (new config version) and return its connector token."""
        version, token = self.store.create_tunnel(name, hostnames, author)
        self._apply(version.document, version.version)
        return token

    def delete_tunnel(self, name: str, author: str) -> int:
        """Remove a tunnel (new config version), closing its connections; return the version."""
        version = self.store.delete_tunnel(name, author)
        self._apply(version.document, version.version)
        return version.version

    def rotate_token(self, name: str) -> str:
        """Issue a new token for ``name`` and close connections that used the old one."""
        token = self.store.rotate_token(name)
        self.disconnect_tunnel(name, "token rotated")
        return token

    def disconnect_tunnel(self, tunnel: str, reason: str) -> None:
        for session in list(self.registry.sessions(tunnel)):
            self.registry.remove(tunnel, session)
            session.conn.goaway(ErrorCode.PROTOCOL_ERROR if reason == "token rotated" else ErrorCode.NO_ERROR,
                                f"revoked: {reason}")
            session.flush_soon()
            session.close(reason)
