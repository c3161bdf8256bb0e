"""`tunnel edge`, `tunnel connect`, `tunnel quick`, `tunnel demo` and `tunnel tunnels …`."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import shutil
import signal
import sys
import tempfile

from tunnel.cli.admin_client import AdminError, add_admin_arguments, call
from tunnel.config import ConfigError
from tunnel.errors import HandshakeRefused
from tunnel.runtime import DEFAULT_DATA_DIR, parse_hostport, run

log = logging.getLogger("tunnel")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the edge, connector and tunnel-management commands."""
    p = subparsers.add_parser("edge", help="run an edge", description="Run an edge: public, connector and admin listeners.")
    p.add_argument("--public", default="127.0.0.1:8080", help="public HTTP listener H:P (default %(default)s)")
    p.add_argument("--connectors", default="127.0.0.1:8081", help="connector WebSocket listener H:P (default %(default)s)")
    p.add_argument("--admin", default="127.0.0.1:8082", help="admin API listener H:P (default %(default)s)")
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="state directory (default %(default)s)")
    p.add_argument("--admin-token", default=os.environ.get("TUNNEL_ADMIN_TOKEN"),
                   help="admin token to accept (default: one is created in DATA_DIR/admin.token)")
    p.add_argument("--config", dest="config_file", metavar="FILE",
                   help="edge config (YAML); stored as the next version at start-up if it differs from the active one")
    _add_edge_limits(p)
    p.add_argument("--tls-cert", help="PEM certificate (chain) for the connector listener and --public-tls")
    p.add_argument("--tls-key", help="PEM private key of --tls-cert")
    p.add_argument("--tls-sni-cert", action="append", default=[], metavar="CERT:KEY",
                   help="another certificate, served to clients asking for one of its names (repeatable)")
    p.add_argument("--public-tls", metavar="H:P", help="also serve HTTPS on this address")
    p.add_argument("--plain-connectors", action="store_true",
                   help="keep the connector listener plain ws:// even with --tls-cert (behind a TLS terminator)")
    p.set_defaults(func=cmd_edge)

    p = subparsers.add_parser("connect", help="run a connector next to a local service",
                              description="Connect a local service to an edge with a tunnel's token.")
    p.add_argument("--edge", required=True, help="edge connector URL, e.g. ws://127.0.0.1:8081")
    p.add_argument("--token", default=os.environ.get("TUNNEL_TOKEN"), help="the tunnel's connector token (env TUNNEL_TOKEN)")
    p.add_argument("--url", required=True, help="local service, e.g. http://127.0.0.1:3000")
    p.add_argument("--connections", type=int, default=2, help="connections to the edge (default %(default)s)")
    p.add_argument("--origin-timeout", type=float, default=None, help="seconds to wait for the origin (default: the edge's)")
    p.add_argument("--grace-period", type=float, default=30.0,
                   help="on SIGTERM, seconds in-flight requests get to finish (default %(default)s)")
    p.add_argument("--metrics", metavar="H:P", help="serve /ready and /metrics on this address")
    p.add_argument("--backoff-initial", type=float, default=1.0, help="first reconnect delay cap in s (default %(default)s)")
    p.add_argument("--backoff-max", type=float, default=60.0, help="largest reconnect delay in s (default %(default)s)")
    p.add_argument("--ca", help="PEM CA bundle to verify a wss:// edge (default: the system trust store)")
    p.add_argument("--pin", help="pin the edge's public key: sha256:<base64> (the edge logs its pin)")
    p.add_argument("--insecure", action="store_true",
                   help="allow sending the token over plain ws:// to a host that is not loopback")
    p.add_argument("--allow-service", action="append", default=[], metavar="URL_PREFIX",
                   help="only dial config services starting with this (repeatable), e.g. http://127.0.0.1:")
    p.set_defaults(func=cmd_connect)

    p = subparsers.add_parser("quick", help="expose a local URL through an embedded edge",
                              description="Edge and connector in one process; prints the public URL.")
    p.add_argument("url", help="local service, e.g. http://127.0.0.1:3000")
    p.add_argument("--public", default="127.0.0.1:8080", help="public listener H:P (default %(default)s)")
    p.add_argument("--hostname", help="public hostname (default: a random *.localhost name)")
    _add_edge_limits(p)
    p.set_defaults(func=cmd_quick)

    p = subparsers.add_parser("demo", help="edge + connector + demo origin on 127.0.0.1",
                              description="The main job on an embedded default: an edge, a connector and a demo origin.")
    p.add_argument("--public", default="127.0.0.1:8080", help="public listener H:P (default %(default)s)")
    p.add_argument("--hostname", default="demo.localhost", help="public hostname (default %(default)s)")
    p.add_argument("--duration", type=float, default=0, help="stop after this many seconds (default: run until Ctrl-C)")
    p.set_defaults(func=cmd_demo)

    tunnels = subparsers.add_parser("tunnels", help="manage tunnels on an edge (admin API)")
    tsub = tunnels.add_subparsers(dest="tunnels_command", metavar="COMMAND")
    tsub.required = True
    p = tsub.add_parser("create", help="create a tunnel; prints its connector token once")
    p.add_argument("name")
    p.add_argument("--hostname", action="append", required=True, help="hostname to bind (repeatable)")
    add_admin_arguments(p)
    p.set_defaults(func=cmd_tunnels_create)
    p = tsub.add_parser("list", help="list tunnels with their live connections")
    add_admin_arguments(p)
    p.set_defaults(func=cmd_tunnels_list)
    p = tsub.add_parser("delete", help="delete a tunnel and revoke its token")
    p.add_argument("name")
    add_admin_arguments(p)
    p.set_defaults(func=cmd_tunnels_delete)
    p = tsub.add_parser("token", help="connector tokens")
    ttok = p.add_subparsers(dest="token_command", metavar="COMMAND")
    ttok.required = True
    p = ttok.add_parser("rotate", help="issue a new token; the old one stops working")
    p.add_argument("name")
    add_admin_arguments(p)
    p.set_defaults(func=cmd_tunnels_rotate)


def _add_edge_limits(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-body-size", type=int, default=1 << 30, help="largest request body in bytes (default 1 GiB)")
    p.add_argument("--origin-timeout", type=float, default=100.0,
                   help="seconds an origin may take to answer before 504 (default %(default)s)")
    p.add_argument("--grace-period", type=float, default=30.0, help="seconds in-flight requests get on shutdown")
    p.add_argument("--trusted-proxy", action="append", default=[], metavar="CIDR",
                   help="trust X-Forwarded-For from these peers (repeatable)")
    p.add_argument("--worker-cpu-ms", type=_limit("cpu_ms"), default=50.0, metavar="N",
                   help="CPU per request of a tunnel's worker, in ms; a tunnel's worker.limits.cpu_ms "
                        "overrides it (default %(default)s)")
    p.add_argument("--worker-memory-mb", type=_limit("memory_mb"), default=64.0, metavar="M",
                   help="heap per worker isolate, in MiB; worker.limits.memory_mb overrides it (default %(default)s)")
    p.add_argument("--worker-log-rate", type=int, default=65536, metavar="BYTES",
                   help="console output per tunnel worker and second; beyond it lines are dropped and counted "
                        "(default %(default)s)")


def _limit(name: str):
    """An argparse type for a worker limit, in the range worker.limits allows."""
    from tunnel.config.model import WORKER_LIMIT_RANGES

    low, high = WORKER_LIMIT_RANGES[name]

    def parse(text: str) -> float:
        value = float(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}")
        return value

    return parse


def _edge_options(args, data_dir: str, public: str, connectors: str, admin: str):
    from tunnel.edge.server import EdgeOptions
    from tunnel.tls import CertPair
    public_tls = getattr(args, "public_tls", None)
    return EdgeOptions(
        tls_cert=getattr(args, "tls_cert", None), tls_key=getattr(args, "tls_key", None),
        tls_sni_certs=[CertPair.parse(v) for v in getattr(args, "tls_sni_cert", [])],
        public_tls=parse_hostport(public_tls) if public_tls else None,
        plain_connectors=getattr(args, "plain_connectors", False),
        config_file=getattr(args, "config_file", None),
        data_dir=data_dir, public=parse_hostport(public), connectors=parse_hostport(connectors),
        admin=parse_hostport(admin), admin_token=getattr(args, "admin_token", None),
        max_body_size=getattr(args, "max_body_size", 1 << 30),
        origin_timeout=getattr(args, "origin_timeout", 100.0) or 100.0,
        grace_period=getattr(args, "grace_period", 30.0),
        trusted_proxies=getattr(args, "trusted_proxy", []) or [],
        worker_cpu_ms=getattr(args, "worker_cpu_ms", 50.0), worker_memory_mb=getattr(args, "worker_memory_mb", 64.0),
        worker_log_rate=getattr(args, "worker_log_rate", 65536))


# ---------------------------------------------------------------------- long-running commands
def cmd_edge(args) -> int:
    from tunnel.edge.server import Edge
    from tunnel.tls import TLSConfigError

    async def main(stop: asyncio.Event) -> int:
        try:
            edge = Edge(_edge_options(args, args.data_dir, args.public, args.connectors, args.admin))
            await edge.start()
        except TLSConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except ConfigError as exc:
            print(f"error: {args.config_file} is not a valid config:", file=sys.stderr)
            for line in exc.errors:
                print(f"  {line}", file=sys.stderr)
            return 2
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, edge.reload_tls)
        if edge.admin_token:
            print(f"admin token (saved in {os.path.join(args.data_dir, 'admin.token')}): {edge.admin_token}", flush=True)
        await stop.wait()
        log.info("draining: no new connections; in-flight requests get %.0f s", args.grace_period)
        await edge.drain(args.grace_period)
        return 0

    return run(main)


def cmd_connect(args) -> int:
    from tunnel.connector.agent import Connector, ConnectorOptions
    if not args.token:
        print("error: --token (or TUNNEL_TOKEN) is required", file=sys.stderr)
        return 2
    try:
        options = ConnectorOptions(edge=args.edge, token=args.token, url=args.url,
                                   connections=max(1, args.connections), origin_timeout=args.origin_timeout,
                                   grace_period=args.grace_period, backoff_initial=args.backoff_initial,
                                   backoff_max=args.backoff_max, ca=args.ca, pin=args.pin, insecure=args.insecure,
                                   allow_services=tuple(args.allow_service))
        connector = Connector(options)
        metrics = parse_hostport(args.metrics) if args.metrics else None
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    async def main(stop: asyncio.Event) -> int:
        from tunnel.connector.status import start_status_server
        status = await start_status_server(connector, *metrics) if metrics else None
        task = asyncio.create_task(connector.run())
        waiter = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
            if waiter.done() and not task.done():
                log.info("draining: no new requests; in-flight ones get %.0f s", args.grace_period)
                await connector.drain()
            else:
                connector.stop()
            waiter.cancel()
            try:
                await task
            except HandshakeRefused as exc:
                print(f"error: the edge refused this connector ({exc.code}): {exc.message}", file=sys.stderr)
                return 3
            return 0
        finally:
            if status is not None:
                await status.cleanup()

    return run(main)


async def _embedded(args, url: str, hostname: str, public: str, announce, demo: bool = False) -> int:
    """Edge and connector in one process, joined by a loopback WebSocket connection. With
    ``demo``, the edge serves the demo config (tunnel ``demo``, see tunnel/demo.py)."""
    from tunnel.connector.agent import Connector, ConnectorOptions
    from tunnel.demo import DemoBinding, demo_config
    from tunnel.edge.server import Edge
    data_dir = tempfile.mkdtemp(prefix="tunnel-quick-")
    options = _edge_options(args, data_dir, public, "127.0.0.1:0", "127.0.0.1:0")
    if demo:
        options.config_file = os.path.join(data_dir, "demo.yaml")
        with open(options.config_file, "w", encoding="utf-8") as handle:
            json.dump(demo_config(hostname), handle)  # JSON is YAML
    edge = Edge(options)
    if demo:
        edge.extra_env["demo"] = {"EDGE": DemoBinding(edge)}
    connector = None
    task = None
    try:
        await edge.start()
        if demo:
            token = edge.rotate_token("demo")
        else:
            token = edge.create_tunnel("quick", [hostname], author="quick")
        connector = Connector(ConnectorOptions(edge=f"ws://127.0.0.1:{edge.connector_port}", token=token,
                                               url=url, connections=1))
        task = asyncio.create_task(connector.run())
        await asyncio.wait_for(connector.registered.wait(), 10)
        return await announce(edge)
    finally:
        if connector is not None:
            connector.stop()
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
        await edge.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def _public_url(edge, hostname: str, public: str) -> str:
    port = edge.public_port
    return f"http://{hostname}" + ("" if port == 80 else f":{port}")


def cmd_quick(args) -> int:
    from tunnel.connector.origin import Origin
    try:
        Origin.parse(args.url)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    hostname = (args.hostname or f"{secrets.token_hex(4)}.localhost").lower()

    async def main(stop: asyncio.Event) -> int:
        async def announce(edge) -> int:
            url = _public_url(edge, hostname, args.public)
            host = args.public.rpartition(":")[0] or "127.0.0.1"
            print(f"Your quick tunnel is ready:\n  {url}  ->  {args.url}\n"
                  f"Try:  curl {url}/\n  or:  curl -H 'Host: {hostname}' http://{host}:{edge.public_port}/\n"
                  f"Press Ctrl-C to stop.", flush=True)
            await stop.wait()
            return 0
        return await _embedded(args, args.url, hostname, args.public, announce)

    return run(main)


def cmd_demo(args) -> int:
    from aiohttp import web

    from tunnel.demo_origin import create_demo_origin

    async def main(stop: asyncio.Event) -> int:
        runner = web.AppRunner(create_demo_origin(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        origin_port = site._server.sockets[0].getsockname()[1]
        origin = f"http://127.0.0.1:{origin_port}"

        async def announce(edge) -> int:
            url = _public_url(edge, args.hostname, args.public)
            host = args.public.rpartition(":")[0] or "127.0.0.1"
            print(f"tunnel demo is running\n"
                  f"  edge:   public http://{host}:{edge.public_port}  (routes by Host; admin http://127.0.0.1:"
                  f"{edge.admin_port})\n"
                  f"  origin: {origin}  (the built-in demo origin)\n"
                  f"  public URL: {url}/   (open it in a browser: pages made by the tunnel's worker)\n"
                  f"Try:\n  curl {url}/dynamic      # a new dynamic worker on every call\n"
                  f"  curl {url}/metrics      # this tunnel's metrics, from its metrics worker\n"
                  f"  curl {url}/config       # the active config worker's answer\n"
                  f"  curl -H 'Host: {args.hostname}' http://{host}:{edge.public_port}/headers\n"
                  f"  curl -N {url}/sse\n"
                  f"Press Ctrl-C to stop.", flush=True)
            if args.duration:
                try:
                    await asyncio.wait_for(stop.wait(), args.duration)
                except asyncio.TimeoutError:
                    pass
            else:
                await stop.wait()
            return 0

        try:
            return await _embedded(args, origin, args.hostname, args.public, announce, demo=True)
        finally:
            await runner.cleanup()

    return run(main)


# ---------------------------------------------------------------------- admin commands
def _admin(args, method: str, path: str, body=None):
    try:
        return call(args, method, path, body)
    except AdminError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def cmd_tunnels_create(args) -> int:
    result = _admin(args, "POST", "/api/tunnels", {"name": args.name, "hostnames": args.hostname})
    if result is None:
        return 1
    if args.json:
        print(json.dumps(result))
    else:
        print(f"created tunnel {result['name']} for {', '.join(result['hostnames'])}\n"
              f"connector token (shown once; keep it secret):\n{result['token']}\n"
              f"run next to your service:\n  tunnel connect --edge ws://EDGE:8081 --token {result['token']} "
              f"--url http://127.0.0.1:3000")
    return 0


def cmd_tunnels_list(args) -> int:
    result = _admin(args, "GET", "/api/tunnels")
    if result is None:
        return 1
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{'NAME':<20} {'CONNECTIONS':>11}  HOSTNAMES")
        for t in result:
            print(f"{t['name']:<20} {t['connections']:>11}  {', '.join(t['hostnames'])}")
    return 0


def cmd_tunnels_delete(args) -> int:
    result = _admin(args, "DELETE", f"/api/tunnels/{args.name}")
    if result is None:
        return 1
    print(json.dumps(result) if args.json else f"deleted tunnel {args.name} (config version {result['version']})")
    return 0


def cmd_tunnels_rotate(args) -> int:
    result = _admin(args, "POST", f"/api/tunnels/{args.name}/token")
    if result is None:
        return 1
    if args.json:
        print(json.dumps(result))
    else:
        print(f"new connector token for {args.name} (the old one no longer works):\n{result['token']}")
    return 0
