"""Benchmark: a 1 KiB GET and a large download, direct to an nginx origin vs through the tunnel.

    cd /work/main && .venv/bin/python -m bench.tunnel_bench            # 3 repeats, 10 s runs, 1 GiB
    cd /work/main && .venv/bin/python -m bench.tunnel_bench --quick    # 1 repeat, 3 s runs, 256 MiB

Everything runs on 127.0.0.1 and is started by this script: an nginx origin (config and files in
a temp dir under /tmp, port from a free-port probe), a real edge (`tunnel edge`), a tunnel created
through the admin API (`tunnel tunnels create --json`) and a real connector (`tunnel connect`),
each its own process -- the realistic two-process setup. It measures, in the same run and
interleaved (direct, then tunnel, for every level of every repeat):

- 1 KiB GET with wrk at concurrency 1, 16 and 64: requests/s, p50/p99 latency (from a wrk Lua
  ``done()`` hook) and the tunnel's CPU time per request (edge + connector utime+stime from
  /proc/PID/stat over the run, process trees included, divided by the requests wrk completed);
- a large download with curl to /dev/null: MB/s and the tunnel's CPU seconds per GB;
- the peak resident memory (VmHWM) of edge and connector, beside their idle and final VmRSS.

In the same run (interleaved with the above, same repeats) it also measures, at c=16 and c=64:

- the worker pipeline (issue 6): a second edge started with ``--config`` (the template
  ``bench/configs/pipeline.yaml`` with the origin filled in) serving four tunnels, each with its own
  connector: ``bare`` (made with ``tunnel tunnels create``, no policy), ``empty`` (``policy: {}``;
  the edge skips the tunnel worker when a tunnel has no policy and no custom worker), ``rules20``
  (20 on_request rules that do not answer, 2 on_response rules) and ``custom`` (a custom worker
  calling ``env.TUNNEL.fetch`` and adding a header). Config tunnels get their connector token from
  ``tunnel tunnels token rotate NAME --json``;
- TLS on both hops (issue 8): a third edge with ``--tls-cert/--tls-key`` (so its connector
  listener is wss://) and ``--public-tls``, a connector with ``--edge wss://… --ca CA.pem``, and
  wrk/curl over https:// -- requests/s and the large download's MB/s. The CA and certificate (for
  127.0.0.1 and bench.localhost) are made at run time with ``trustme``.

It prints medians over the repeats and the tunnel/direct ratio (median of the per-repeat ratios,
each from the same repeat). It installs nothing: if wrk, nginx or curl (or, unless --no-tls, the
trustme package) is missing it says what to install and exits 2. It stops only the processes it started (also on Ctrl-C, SIGTERM or an
exception) and removes its temp dir. Every wait is bounded in count and time.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

HZ = os.sysconf("SC_CLK_TCK")
HOSTNAME = "bench.localhost"
CONNS = (1, 16, 64)
PIPE_CONNS = (1, 16, 64)        # levels of the pipeline table
TLS_CONNS = (16, 64)            # levels of the TLS table
WRK_THREADS = 2
CONFIG_TEMPLATE = Path(__file__).resolve().parent / "configs" / "pipeline.yaml"
# (key, tunnel name, hostname, label, response header that proves the tunnel worker ran)
PIPELINE = (
    ("bare", "bare", "bare.bench.localhost", "bare tunnel (tunnels create)", None),
    ("empty", "empty", "empty.bench.localhost", "empty policy (worker skipped)", None),
    ("rules20", "rules20", "rules20.bench.localhost", "20-rule policy", ("X-Bench-Policy", "rules20")),
    ("custom", "custom", "custom.bench.localhost", "custom JavaScript", ("X-Bench-Custom", "1")),
    ("whole", "whole", "whole.bench.localhost", "whole pipeline (20 rules + 2 metrics + custom)",
     ("X-Bench-Custom", "1")),
)
#: The two custom metrics of the `whole` tunnel (its policy and worker are rules20's and custom's).
WHOLE_METRICS = [
    {"name": "requests_by_route", "type": "counter", "help": "Requests by route template and status class.",
     "labels": {"route": {"path_template": ["/1k.bin", "/big.bin"]}, "status": "status_class"}},
    {"name": "route_duration_seconds", "type": "histogram", "help": "Edge-observed duration by route template.",
     "buckets": [0.001, 0.005, 0.025, 0.1], "labels": {"route": {"path_template": ["/1k.bin"]}}},
]

REPORT_LUA = r"""
-- wrk done() hook: one machine-readable line per run (latencies in ms).
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT rps=%.2f p50_ms=%.3f p99_ms=%.3f max_ms=%.3f reqs=%d secs=%.3f err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000,
    summary.requests, summary.duration / 1e6,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""

NGINX_CONF = """{user}
worker_processes 1;
daemon off;
pid {run}/nginx.pid;
error_log {run}/nginx_error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  sendfile on; tcp_nopush on; tcp_nodelay on;
  keepalive_timeout 65; keepalive_requests 1000000;
  client_body_temp_path {run}/ngx_body; proxy_temp_path {run}/ngx_proxy;
  fastcgi_temp_path {run}/ngx_fcgi; uwsgi_temp_path {run}/ngx_uwsgi; scgi_temp_path {run}/ngx_scgi;
  default_type application/octet-stream;
  server {{ listen 127.0.0.1:{port} default_server; server_name _; root {www}; }}
}}
"""


class BenchError(Exception):
    """A setup or measurement failure worth a clear one-line message."""


# ----------------------------------------------------------------------------- processes
@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path


@dataclass
class Procs:
    """Only the processes this script started; stopped by PID, never by name."""
    items: list[Proc] = field(default_factory=list)

    def start(self, name: str, argv: list[str], log_dir: Path, env: dict | None = None) -> Proc:
        log = log_dir / f"{name}.log"
        with open(log, "wb") as fh:
            popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True)
        proc = Proc(name, popen, log)
        self.items.append(proc)
        return proc

    def stop_all(self) -> None:
        for p in reversed(self.items):
            if p.popen.poll() is None:
                try:
                    p.popen.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10
        for p in reversed(self.items):
            try:
                p.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.popen.kill()
                try:
                    p.popen.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    print(f"warning: {p.name} (pid {p.popen.pid}) did not exit after SIGKILL", file=sys.stderr)
        self.items.clear()


def tail(path: Path, n: int = 15) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in lines[-n:]) or "    (empty log)"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: Proc, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise BenchError(f"{proc.name} exited with {proc.popen.returncode} before listening on {port}:\n"
                             f"{tail(proc.log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise BenchError(f"{proc.name} did not listen on 127.0.0.1:{port} within {seconds:.0f} s:\n{tail(proc.log)}")


def http_get(url: str, host: str | None, timeout: float = 3.0,
             context: ssl.SSLContext | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def wait_http_ok(url: str, host: str | None, expect: bytes, procs: list[Proc], seconds: float,
                 header: tuple[str, str] | None = None, context: ssl.SSLContext | None = None) -> None:
    """Wait until url answers 200 with body ``expect`` (and response header ``header``, if given)."""
    deadline = time.monotonic() + seconds
    last = "no answer"
    while time.monotonic() < deadline:
        for p in procs:
            if p.popen.poll() is not None:
                raise BenchError(f"{p.name} exited with {p.popen.returncode}:\n{tail(p.log)}")
        try:
            status, headers, body = http_get(url, host, context=context)
            if status == 200 and body == expect:
                if header is None or headers.get(header[0].lower()) == header[1]:
                    return
                last = f"status 200 and the body, but no {header[0]}: {header[1]} (headers {headers})"
            else:
                last = f"status {status}, {len(body)} bytes, headers {headers}"
        except (OSError, urllib.error.URLError) as exc:
            last = str(exc)
        time.sleep(0.2)
    raise BenchError(f"{url} (Host: {host}) did not return the 1 KiB file"
                     f"{' with ' + header[0] if header else ''} within {seconds:.0f} s (last: {last})")


def run_cli(argv: list[str], what: str, timeout: float = 30) -> dict:
    """Run a `tunnel ... --json` command; its parsed stdout."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                             check=False)
    except subprocess.TimeoutExpired:
        raise BenchError(f"`{what}` did not finish within {timeout:.0f} s") from None
    if out.returncode != 0:
        raise BenchError(f"`{what}` failed ({out.returncode}): {out.stderr.strip()}")
    try:
        return json.loads(out.stdout)
    except ValueError as exc:
        raise BenchError(f"`{what}` printed no JSON ({exc}): {out.stdout!r}") from None


# ----------------------------------------------------------------------------- /proc readings
def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/children") as fh:
                    out.extend(int(x) for x in fh.read().split())
            except OSError:
                pass
    except OSError:
        pass
    return out


def tree(pid: int) -> list[int]:
    """pid and its live descendants (bounded walk)."""
    seen, todo = [], [pid]
    while todo and len(seen) < 1000:
        p = todo.pop()
        if p in seen:
            continue
        seen.append(p)
        todo.extend(_children(p))
    return seen


def cpu_ticks(pid: int) -> int:
    """utime+stime+cutime+cstime of one process (reaped children included), in clock ticks."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0
    # after "comm)": state is fields[0]; utime, stime, cutime, cstime are stat fields 14..17
    return sum(int(x) for x in fields[11:15])


def tunnel_cpu_s(pids: list[int]) -> float:
    return sum(cpu_ticks(p) for root in pids for p in tree(root)) / HZ


def own_ticks(pid: int) -> int:
    """utime+stime of one process alone (no children), in clock ticks."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0
    return int(fields[11]) + int(fields[12])


def cpu_split_s(edge: int, connector: int) -> dict[str, float]:
    """CPU seconds so far by role: the edge's own process (its event loop), its loader shards
    (descendants, and shards already reaped), the connector's process tree."""
    edge_loop = own_ticks(edge)
    return {"edge loop": edge_loop / HZ,
            "shards": (sum(cpu_ticks(p) for p in tree(edge)) - edge_loop) / HZ,
            "connector": sum(cpu_ticks(p) for p in tree(connector)) / HZ}


def status_kb(pid: int, key: str) -> int:
    """VmRSS / VmHWM of pid plus its descendants, in KiB."""
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/status") as fh:
                for line in fh:
                    if line.startswith(key + ":"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


# ----------------------------------------------------------------------------- measurements
@dataclass
class Target:
    """Something wrk and curl can load: direct, or a tunnel through one edge + one connector."""
    key: str
    label: str
    url: str                      # scheme://127.0.0.1:port
    host: str | None              # Host header (None: direct)
    procs: list[Proc] = field(default_factory=list)   # whose CPU counts (edge, connector)
    curl_args: list[str] = field(default_factory=list)
    curl_url: str = ""            # base URL for curl when it differs (https with --resolve)


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    reqs: int
    errors: dict[str, int]
    cpu_us_per_req: float | None
    cpu_split: dict[str, float] | None = None  # µs per request by role (cpu_split_s)


@dataclass
class DlResult:
    mbps: float
    secs: float
    size: int
    status: int
    cpu_s_per_gb: float | None


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path, procs: Procs) -> None:
        self.args = args
        self.tmp = tmp
        self.procs = procs
        self.www = tmp / "www"
        self.run_dir = tmp / "run"
        self.lua = tmp / "report.lua"
        self.big_bytes = args.download_mib * 1024 * 1024
        self.edge: Proc | None = None
        self.connector: Proc | None = None
        self.direct_url = ""
        self.tunnel_url = ""
        self.one_k = b""
        self.rss_idle: dict[str, int] = {}
        self.targets: dict[str, Target] = {}
        self.tunnel_procs: list[Proc] = []     # every edge and connector, for check_alive and memory

    # ---- setup
    def prepare_files(self) -> None:
        self.www.mkdir(parents=True)
        self.run_dir.mkdir(parents=True)
        self.lua.write_text(REPORT_LUA)
        self.one_k = os.urandom(1024)
        (self.www / "1k.bin").write_bytes(self.one_k)
        block = os.urandom(4 * 1024 * 1024)   # incompressible within any deflate window
        with open(self.www / "big.bin", "wb") as fh:
            left = self.big_bytes
            while left > 0:
                n = min(left, len(block))
                fh.write(block[:n])
                left -= n
        os.chmod(self.tmp, 0o755)
        for p in (self.www, self.www / "1k.bin", self.www / "big.bin"):
            os.chmod(p, 0o755 if p.is_dir() else 0o644)

    def start_origin(self) -> None:
        port = free_port()
        user = "user root;" if os.geteuid() == 0 else ""
        conf = self.run_dir / "nginx.conf"
        conf.write_text(NGINX_CONF.format(user=user, run=self.run_dir, port=port, www=self.www))
        origin = self.procs.start("nginx", ["nginx", "-p", str(self.run_dir), "-c", str(conf)], self.tmp)
        wait_port(port, origin, 10)
        self.direct_url = f"http://127.0.0.1:{port}"
        wait_http_ok(f"{self.direct_url}/1k.bin", None, self.one_k, [origin], 10)

    def start_tunnel(self) -> None:
        exe = self.args.tunnel
        public, conn, admin = free_port(), free_port(), free_port()
        data = self.tmp / "edge-data"
        env = dict(os.environ)
        self.edge = self.procs.start("edge", [
            exe, "--log-level", "WARNING", "edge", "--public", f"127.0.0.1:{public}",
            "--connectors", f"127.0.0.1:{conn}", "--admin", f"127.0.0.1:{admin}",
            "--data-dir", str(data), "--grace-period", "2"], self.tmp, env)
        for port in (public, conn, admin):
            wait_port(port, self.edge, 20)
        token = self.create_tunnel("bench", HOSTNAME, admin, data)
        env_c = dict(os.environ, TUNNEL_TOKEN=token)   # token via env: not visible in ps
        self.connector = self.procs.start("connector", [
            exe, "--log-level", "WARNING", "connect", "--edge", f"ws://127.0.0.1:{conn}",
            "--url", self.direct_url], self.tmp, env_c)
        self.tunnel_url = f"http://127.0.0.1:{public}"
        wait_http_ok(f"{self.tunnel_url}/1k.bin", HOSTNAME, self.one_k, [self.edge, self.connector], 30)
        self.targets["direct"] = Target("direct", "direct (nginx)", self.direct_url, None)
        self.targets["tunnel"] = Target("tunnel", "tunnel (edge without config)", self.tunnel_url, HOSTNAME,
                                        [self.edge, self.connector])
        self.tunnel_procs += [self.edge, self.connector]

    def create_tunnel(self, name: str, hostname: str, admin: int, data: Path) -> str:
        exe = self.args.tunnel
        out = run_cli([exe, "--log-level", "WARNING", "tunnels", "create", name, "--hostname", hostname,
                       "--admin", f"http://127.0.0.1:{admin}", "--data-dir", str(data), "--json"],
                      "tunnel tunnels create --json")
        if "token" not in out:
            raise BenchError(f"`tunnel tunnels create --json` printed no token: {out!r}")
        return out["token"]

    def start_pipeline(self) -> None:
        """Edge 2 with --config (empty, rules20, custom) plus a `tunnels create` tunnel; a connector each."""
        exe = self.args.tunnel
        public, conn, admin = free_port(), free_port(), free_port()
        data = self.tmp / "edge-config-data"
        config = self.tmp / "pipeline.yaml"
        document = yaml.safe_load(CONFIG_TEMPLATE.read_text().replace("@ORIGIN@", self.direct_url))
        tunnels = document["tunnels"]
        tunnels["whole"] = json.loads(json.dumps({  # copies: the config format refuses YAML aliases
            "hostnames": ["whole.bench.localhost"], "ingress": tunnels["rules20"]["ingress"],
            "policy": tunnels["rules20"]["policy"], "worker": tunnels["custom"]["worker"], "metrics": WHOLE_METRICS}))
        config.write_text(yaml.safe_dump(document, sort_keys=False))
        edge = self.procs.start("edge-config", [
            exe, "--log-level", "WARNING", "edge", "--public", f"127.0.0.1:{public}",
            "--connectors", f"127.0.0.1:{conn}", "--admin", f"127.0.0.1:{admin}",
            "--data-dir", str(data), "--grace-period", "2", "--config", str(config)], self.tmp)
        for port in (public, conn, admin):
            wait_port(port, edge, 20)
        self.tunnel_procs.append(edge)
        url = f"http://127.0.0.1:{public}"
        for key, name, hostname, label, header in PIPELINE:
            if key == "bare":
                token = self.create_tunnel(name, hostname, admin, data)
            else:
                out = run_cli([exe, "--log-level", "WARNING", "tunnels", "token", "rotate", name, "--json",
                               "--admin", f"http://127.0.0.1:{admin}", "--data-dir", str(data)],
                              f"tunnel tunnels token rotate {name} --json")
                if out.get("token") is None or hostname not in out.get("hostnames", []):
                    raise BenchError(f"`tunnel tunnels token rotate {name} --json` printed {out!r}")
                token = out["token"]
            connector = self.procs.start(f"connector-{key}", [
                exe, "--log-level", "WARNING", "connect", "--edge", f"ws://127.0.0.1:{conn}",
                "--url", self.direct_url], self.tmp, dict(os.environ, TUNNEL_TOKEN=token))
            self.tunnel_procs.append(connector)
            wait_http_ok(f"{url}/1k.bin", hostname, self.one_k, [edge, connector], 30, header=header)
            self.targets[key] = Target(key, label, url, hostname, [edge, connector])

    def start_tls(self) -> None:
        """Edge 3 with --tls-cert/--tls-key (wss:// connector listener) and --public-tls; its connector
        verifies the edge with --ca. CA and certificate from trustme, made now."""
        import trustme   # checked in main()
        exe = self.args.tunnel
        tls_dir = self.tmp / "tls"
        tls_dir.mkdir()
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", HOSTNAME)
        ca_pem, cert_pem, key_pem = tls_dir / "ca.pem", tls_dir / "cert.pem", tls_dir / "key.pem"
        ca.cert_pem.write_to_path(str(ca_pem))
        cert.private_key_pem.write_to_path(str(key_pem))
        with open(cert_pem, "wb") as fh:
            for blob in cert.cert_chain_pems:
                fh.write(blob.bytes())
        public, public_tls, conn, admin = free_port(), free_port(), free_port(), free_port()
        data = self.tmp / "edge-tls-data"
        edge = self.procs.start("edge-tls", [
            exe, "--log-level", "WARNING", "edge", "--public", f"127.0.0.1:{public}",
            "--public-tls", f"127.0.0.1:{public_tls}", "--tls-cert", str(cert_pem), "--tls-key", str(key_pem),
            "--connectors", f"127.0.0.1:{conn}", "--admin", f"127.0.0.1:{admin}",
            "--data-dir", str(data), "--grace-period", "2"], self.tmp)
        for port in (public, public_tls, conn, admin):
            wait_port(port, edge, 20)
        self.tunnel_procs.append(edge)
        token = self.create_tunnel("bench", HOSTNAME, admin, data)
        connector = self.procs.start("connector-tls", [
            exe, "--log-level", "WARNING", "connect", "--edge", f"wss://127.0.0.1:{conn}", "--ca", str(ca_pem),
            "--url", self.direct_url], self.tmp, dict(os.environ, TUNNEL_TOKEN=token))
        self.tunnel_procs.append(connector)
        url = f"https://127.0.0.1:{public_tls}"
        context = ssl.create_default_context(cafile=str(ca_pem))   # verifies the IP SAN 127.0.0.1
        wait_http_ok(f"{url}/1k.bin", HOSTNAME, self.one_k, [edge, connector], 30, context=context)
        self.targets["tls"] = Target(
            "tls", "tunnel, TLS both hops", url, HOSTNAME, [edge, connector],
            curl_args=["--cacert", str(ca_pem), "--resolve", f"{HOSTNAME}:{public_tls}:127.0.0.1"],
            curl_url=f"https://{HOSTNAME}:{public_tls}")

    def check_alive(self) -> None:
        for p in self.tunnel_procs:
            if p.popen.poll() is not None:
                raise BenchError(f"the {p.name} crashed (exit {p.popen.returncode}) during the run:\n{tail(p.log)}")

    # ---- measurements
    def wrk(self, path: str, conns: int, seconds: int) -> WrkResult:
        t = self.targets[path]
        url, host, pids = t.url, t.host, [p.popen.pid for p in t.procs]
        argv = ["wrk", f"-t{min(conns, WRK_THREADS)}", f"-c{conns}", f"-d{int(seconds)}s", "--timeout", "5s",
                "-s", str(self.lua)]
        if host:
            argv += ["-H", f"Host: {host}"]
        argv.append(f"{url}/1k.bin")
        cpu0 = tunnel_cpu_s(pids)
        split0 = cpu_split_s(*pids) if len(pids) == 2 else None
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30,
                                 stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired:
            raise BenchError(f"wrk did not finish within {seconds + 30:.0f} s ({path}, c={conns})") from None
        cpu1 = tunnel_cpu_s(pids)
        split1 = cpu_split_s(*pids) if split0 is not None else None
        with open(self.tmp / "wrk.log", "a") as fh:
            fh.write(f"### {path} c={conns}\n{out.stdout}{out.stderr}\n")
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            raise BenchError(f"wrk printed no RESULT line ({path}, c={conns}): {out.stdout[-500:]} {out.stderr[-500:]}")
        kv = dict(item.split("=", 1) for item in line.split()[1:])
        reqs = int(kv["reqs"])
        errors = {k[4:]: int(v) for k, v in kv.items() if k.startswith("err_") and int(v)}
        cpu = (cpu1 - cpu0) * 1e6 / reqs if pids and reqs else None
        split = ({role: (split1[role] - split0[role]) * 1e6 / reqs for role in split0}
                 if split0 is not None and reqs else None)
        return WrkResult(float(kv["rps"]), float(kv["p50_ms"]), float(kv["p99_ms"]), float(kv["max_ms"]),
                         reqs, errors, cpu, split)

    def download(self, path: str) -> DlResult:
        t = self.targets[path]
        url, host, pids = t.curl_url or t.url, t.host, [p.popen.pid for p in t.procs]
        limit = self.args.download_timeout
        argv = ["curl", "-s", "-o", "/dev/null", "--max-time", str(limit),
                "-w", "%{size_download} %{time_total} %{http_code}", *t.curl_args]
        if host and not t.curl_url:
            argv += ["-H", f"Host: {host}"]
        argv.append(f"{url}/big.bin")
        cpu0 = tunnel_cpu_s(pids)
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=limit + 15,
                                 stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired:
            raise BenchError(f"curl did not finish within {limit + 15} s ({path} download)") from None
        cpu1 = tunnel_cpu_s(pids)
        try:
            size_s, secs_s, code_s = out.stdout.split()
            size, secs, code = int(float(size_s)), float(secs_s), int(code_s)
        except ValueError:
            size, secs, code = 0, 0.0, 0
        mbps = size / secs / 1e6 if secs > 0 else 0.0
        cpu = (cpu1 - cpu0) / (size / 1e9) if pids and size else None
        return DlResult(mbps, secs, size, code, cpu)


# ----------------------------------------------------------------------------- report
def med(vals: list[float]) -> float | None:
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def f(v: float | None, nd: int = 0) -> str:
    return "-" if v is None else f"{v:,.{nd}f}"


def span(vals: list[float], nd: int = 0) -> str:
    vals = [v for v in vals if v is not None]
    if len(vals) < 2:
        return ""
    return f" [{min(vals):,.{nd}f}-{max(vals):,.{nd}f}]"


def table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.rjust(w) if i else c.ljust(w)
                                           for i, (c, w) in enumerate(zip(cells, widths))) + " |"
    sep = "|" + "|".join("-" * (w + 1) + ":" if i else "-" * (w + 2) for i, w in enumerate(widths)) + "|"
    return "\n".join([line(head), sep, *(line(r) for r in rows)])


def report(b: Bench, wrk: dict, dl: dict, args, started: str, load0: str) -> None:
    reps = args.repeats
    print()
    print("## tunnel benchmark: direct (nginx) vs through the tunnel (edge + connector processes)")
    print(f"{started}; {os.cpu_count()} CPUs; loadavg at start {load0}, at end {loadavg()}; "
          f"{reps} repeat(s), wrk {args.duration:g} s runs, -t{WRK_THREADS} --timeout 5s; "
          f"download {args.download_mib} MiB")
    print("Values are medians over the repeats ([min-max] when repeated); ratio = tunnel/direct within "
          "each repeat, median. CPU = edge + connector utime+stime (/proc/PID/stat) over the run.")
    print()
    print("### 1 KiB GET (wrk)")
    print()
    rows = []
    for c in CONNS:
        for path in ("direct", "tunnel"):
            rs: list[WrkResult] = wrk[(path, c)]
            rps = [r.rps for r in rs]
            errs: dict[str, int] = {}
            for r in rs:
                for k, v in r.errors.items():
                    errs[k] = errs.get(k, 0) + v
            err_s = ", ".join(f"{k} {v}" for k, v in sorted(errs.items())) or "0"
            if path == "tunnel":
                d = wrk[("direct", c)]
                ratio = med([t.rps / x.rps for t, x in zip(rs, d) if x.rps])
                p99r = med([t.p99_ms / x.p99_ms for t, x in zip(rs, d) if x.p99_ms])
                ratio_s, p99r_s = f(ratio, 3), f(p99r, 1)
                cpu_s = f(med([r.cpu_us_per_req for r in rs])) + span([r.cpu_us_per_req for r in rs])
            else:
                ratio_s = p99r_s = cpu_s = ""
            rows.append([f"c={c} {path}", f(med(rps)) + span(rps), ratio_s,
                         f(med([r.p50_ms for r in rs]), 2), f(med([r.p99_ms for r in rs]), 2), p99r_s,
                         cpu_s, f(sum(r.reqs for r in rs)), err_s])
    print(table(["path", "req/s", "ratio", "p50 ms", "p99 ms", "p99 ratio", "tunnel CPU µs/req",
                 "requests", "errors (non-2xx = status)"], rows))
    print()
    print(f"### {args.download_mib} MiB download (curl -o /dev/null)")
    print()
    rows = []
    for path in ("direct", "tunnel"):
        rs: list[DlResult] = dl[path]
        ok = sum(1 for r in rs if r.status == 200 and r.size == b.big_bytes)
        mb = [r.mbps for r in rs]
        if path == "tunnel":
            ratio_s = f(med([t.mbps / x.mbps for t, x in zip(rs, dl["direct"]) if x.mbps]), 3)
            cpu_s = f(med([r.cpu_s_per_gb for r in rs]), 2) + span([r.cpu_s_per_gb for r in rs], 2)
        else:
            ratio_s = cpu_s = ""
        rows.append([path, f(med(mb)) + span(mb), ratio_s, f(med([r.secs for r in rs]), 2), cpu_s,
                     f"{ok}/{len(rs)}"])
    print(table(["path", "MB/s", "ratio", "seconds", "tunnel CPU s/GB", "complete + 200"], rows))
    print()
    if "bare" in b.targets:
        report_pipeline(b, wrk, args)
    if "tls" in b.targets:
        report_tls(b, wrk, dl, args)
    print("### tunnel memory (KiB: VmRSS idle after start-up, VmRSS at end, VmHWM peak; process trees)")
    print()
    rows = []
    for p in b.tunnel_procs:
        rows.append([p.name, f(b.rss_idle.get(p.name)), f(status_kb(p.popen.pid, "VmRSS")),
                     f(status_kb(p.popen.pid, "VmHWM")), f(status_kb(p.popen.pid, "VmHWM") / 1024, 1)])
    print(table(["process", "RSS idle KiB", "RSS end KiB", "peak (VmHWM) KiB", "peak MiB"], rows))
    print()
    print("edge / connector: the old tables' tunnel; edge-config + connector-{bare,empty,rules20,custom}: the "
          "pipeline table (the edge's figures include its worker isolates); edge-tls + connector-tls: the "
          "TLS table. Each tunnel's CPU counts its edge and its own connector only.")
    print()


def ratios(rs: list, base: list, attr: str) -> float | None:
    """Median over repeats of rs[i].attr / base[i].attr (same repeat)."""
    return med([getattr(x, attr) / getattr(y, attr) for x, y in zip(rs, base) if getattr(y, attr)])


def wrk_row(label: str, rs: list[WrkResult], bases: list[list[WrkResult] | None]) -> list[str]:
    """label, req/s, one ratio column per base (blank when None or itself), p50, p99, p99 ratio to the
    first base, CPU, requests, errors."""
    errs: dict[str, int] = {}
    for r in rs:
        for k, v in r.errors.items():
            errs[k] = errs.get(k, 0) + v
    rps = [r.rps for r in rs]
    cols = [label, f(med(rps)) + span(rps)]
    for base in bases:
        cols.append("" if base is None or base is rs else f(ratios(rs, base, "rps"), 3))
    first = bases[0]
    cols += [f(med([r.p50_ms for r in rs]), 2), f(med([r.p99_ms for r in rs]), 2),
             "" if first is None or first is rs else f(ratios(rs, first, "p99_ms"), 1)]
    cpu = [r.cpu_us_per_req for r in rs]
    cols += [f(med(cpu)) + span(cpu) if any(c is not None for c in cpu) else "",
             f(sum(r.reqs for r in rs)),
             ", ".join(f"{k} {v}" for k, v in sorted(errs.items())) or "0"]
    return cols


def report_pipeline(b: Bench, wrk: dict, args) -> None:
    print("### worker pipeline (issues 6, 11): 1 KiB GET, one edge with --config, a connector per tunnel")
    print()
    rows = []
    for c in PIPE_CONNS:
        d, bare = wrk[("direct", c)], wrk[("bare", c)]
        rows.append(wrk_row(f"c={c} direct (nginx)", d, [None, None]) + ["", ""])
        for key, _name, _host, label, _hdr in PIPELINE:
            rs = wrk[(key, c)]
            added = med([r.p50_ms - x.p50_ms for r, x in zip(rs, bare)]) if rs is not bare else None
            rows.append(wrk_row(f"c={c} {label}", rs, [d, bare]) + [f(added, 2) if added is not None else "",
                                                                    split_cell(rs)])
    print(table(["path", "req/s", "vs direct", "vs bare", "p50 ms", "p99 ms", "p99 vs direct",
                 "tunnel CPU µs/req", "requests", "errors (non-2xx = status)", "p50 − bare ms",
                 "CPU µs/req: edge loop / shards / connector"], rows))
    print()
    print("bare: `tunnel tunnels create` on the config edge, no policy. empty: `policy: {}` and no worker; "
          "the edge then skips the tunnel worker (TunnelConfig.needs_worker is false), so bare and empty "
          "take the same path. 20-rule: 20 on_request rules that do not answer (header/query/cookie/IP/"
          "host matches, header rewrites, ip_restriction, two rate_limits of capacity 1e9, a feature flag) "
          "+ 2 on_response rules; custom: a worker that awaits env.TUNNEL.fetch(request) and sets a "
          "response header; whole: the 20-rule policy, two custom metrics and the custom worker behind it "
          "(env.CUSTOM). Before measuring, each answered 200 with the 1 KiB body and the header its worker "
          "sets (X-Bench-Policy / X-Bench-Custom). Config template: bench/configs/pipeline.yaml. CPU split: "
          "the edge's own process (event loop), its loader shard processes, the tunnel's connector.")
    print()


def split_cell(rs: list[WrkResult]) -> str:
    """Median µs/request of each role over the repeats, "edge / shards / connector"."""
    splits = [r.cpu_split for r in rs if r.cpu_split]
    if not splits:
        return ""
    return " / ".join(f(med([sp[role] for sp in splits])) for role in ("edge loop", "shards", "connector"))


def report_tls(b: Bench, wrk: dict, dl: dict, args) -> None:
    print("### TLS on both hops (issue 8): wss:// connector link + HTTPS public listener")
    print()
    rows = []
    for c in TLS_CONNS:
        d, plain = wrk[("direct", c)], wrk[("tunnel", c)]
        rows.append(wrk_row(f"c={c} direct (nginx, http)", d, [None, None]))
        rows.append(wrk_row(f"c={c} tunnel, plain ws + http", plain, [d, None]))
        rows.append(wrk_row(f"c={c} tunnel, wss + https", wrk[("tls", c)], [d, plain]))
    print(table(["1 KiB GET", "req/s", "vs direct", "vs plain tunnel", "p50 ms", "p99 ms", "p99 vs direct",
                 "tunnel CPU µs/req", "requests", "errors (non-2xx = status)"], rows))
    print()
    rows = []
    for key, label in (("direct", "direct (nginx, http)"), ("tunnel", "tunnel, plain ws + http"),
                       ("tls", "tunnel, wss + https")):
        rs: list[DlResult] = dl[key]
        ok = sum(1 for r in rs if r.status == 200 and r.size == b.big_bytes)
        mb = [r.mbps for r in rs]
        vs_d = "" if key == "direct" else f(ratios(rs, dl["direct"], "mbps"), 3)
        vs_p = f(ratios(rs, dl["tunnel"], "mbps"), 3) if key == "tls" else ""
        cpu = [r.cpu_s_per_gb for r in rs]
        rows.append([label, f(med(mb)) + span(mb), vs_d, vs_p, f(med([r.secs for r in rs]), 2),
                     f(med(cpu), 2) + span(cpu, 2) if key != "direct" else "", f"{ok}/{len(rs)}"])
    print(table([f"{args.download_mib} MiB download", "MB/s", "vs direct", "vs plain tunnel", "seconds",
                 "tunnel CPU s/GB", "complete + 200"], rows))
    print()
    print(f"TLS edge: --tls-cert/--tls-key (trustme CA, certificate for 127.0.0.1 and {HOSTNAME}) and "
          f"--public-tls; connector --edge wss://127.0.0.1:PORT --ca CA.pem. wrk: https://127.0.0.1:PORT "
          f"with Host: {HOSTNAME} (wrk does not verify); curl: --cacert CA.pem --resolve (verified). "
          f"{tls_versions()}")
    print()


def tls_versions() -> str:
    try:
        out = subprocess.run(["wrk", "--version"], capture_output=True, text=True, timeout=5, check=False)
        wrk_v = (out.stdout + out.stderr).splitlines()[0].strip()
    except (OSError, subprocess.TimeoutExpired, IndexError):
        wrk_v = "wrk ?"
    return f"Python {sys.version.split()[0]} with {ssl.OPENSSL_VERSION}; {wrk_v}."


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


# ----------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    here = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(prog="python -m bench.tunnel_bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 repeat, 3 s runs, 256 MiB download")
    ap.add_argument("--repeats", type=int, default=None, help="repetitions (default 3; --quick: 1)")
    ap.add_argument("--duration", type=int, default=None, help="seconds per wrk run (default 10; --quick: 3)")
    ap.add_argument("--download-mib", type=int, default=None, help="download size (default 1024; --quick: 256)")
    ap.add_argument("--download-timeout", type=int, default=300, help="curl --max-time per download (s)")
    ap.add_argument("--tunnel", default=str(here / ".venv" / "bin" / "tunnel"), help="the tunnel CLI to run")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, wrk output)")
    ap.add_argument("--no-pipeline", action="store_true", help="skip the worker pipeline table (issue 6)")
    ap.add_argument("--no-tls", action="store_true", help="skip the TLS table (issue 8)")
    args = ap.parse_args(argv)
    q = args.quick
    args.repeats = max(1, min(args.repeats if args.repeats is not None else (1 if q else 3), 20))
    args.duration = max(1, min(args.duration if args.duration is not None else (3 if q else 10), 120))
    args.download_mib = max(1, args.download_mib if args.download_mib is not None else (256 if q else 1024))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = [t for t in ("wrk", "nginx", "curl") if shutil.which(t) is None]
    if missing:
        print(f"error: {', '.join(missing)} not found on PATH; this benchmark installs nothing itself.\n"
              f"Install them first, e.g.: apt-get install -y wrk nginx-light curl", file=sys.stderr)
        return 2
    if not args.no_tls:
        try:
            import trustme  # noqa: F401
        except ImportError:
            print("error: the TLS table needs the trustme package (`.venv/bin/pip install trustme`), "
                  "or pass --no-tls", file=sys.stderr)
            return 2
    if not os.access(args.tunnel, os.X_OK):
        print(f"error: tunnel CLI {args.tunnel} not found (run `make test` or `pip install -e .` first, "
              f"or pass --tunnel)", file=sys.stderr)
        return 2

    def on_term(signum, frame):
        raise KeyboardInterrupt
    old_term = signal.signal(signal.SIGTERM, on_term)
    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)   # even if started with SIGINT ignored

    tmp = Path(tempfile.mkdtemp(prefix="tunnel-bench-", dir="/tmp"))
    procs = Procs()
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    load0 = loadavg()
    rc = 0
    try:
        b = Bench(args, tmp, procs)
        log = lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
        log(f"preparing {args.download_mib} MiB origin file in {tmp}")
        b.prepare_files()
        b.start_origin()
        b.start_tunnel()
        log(f"origin {b.direct_url}, tunnel {b.tunnel_url} (Host: {HOSTNAME}); edge pid {b.edge.popen.pid}, "
            f"connector pid {b.connector.popen.pid}")
        extra_keys: list[str] = []          # measured at the levels LEVELS gives them
        if not args.no_pipeline:
            b.start_pipeline()
            extra_keys += [key for key, *_ in PIPELINE]
            log(f"config edge {b.targets['bare'].url}: tunnels " +
                ", ".join(f"{k} ({b.targets[k].host})" for k in extra_keys) + " answer (worker headers seen)")
        if not args.no_tls:
            b.start_tls()
            extra_keys.append("tls")
            log(f"TLS edge {b.targets['tls'].url} (wss connector link) answers over verified HTTPS")
        time.sleep(0.5)
        b.rss_idle = {p.name: status_kb(p.popen.pid, "VmRSS") for p in b.tunnel_procs}
        for path in ("direct", "tunnel", *extra_keys):   # warm-up, not recorded
            b.wrk(path, 16, 2)
        b.check_alive()
        wrk: dict = {(p, c): [] for p in ("direct", "tunnel") for c in CONNS}
        levels = {key: TLS_CONNS if key == "tls" else PIPE_CONNS for key in extra_keys}
        wrk.update({(p, c): [] for p in extra_keys for c in levels[p]})
        dl_keys = ["direct", "tunnel"] + (["tls"] if "tls" in extra_keys else [])
        dl: dict = {k: [] for k in dl_keys}
        for rep in range(1, args.repeats + 1):
            for c in CONNS:
                for path in ("direct", "tunnel", *(k for k in extra_keys if c in levels[k])):
                    r = b.wrk(path, c, args.duration)
                    wrk[(path, c)].append(r)
                    b.check_alive()
                    extra = f" cpu={r.cpu_us_per_req:.0f}us/req" if r.cpu_us_per_req is not None else ""
                    log(f"rep{rep} {path:7} c={c:<2} {r.rps:9.0f} req/s p50={r.p50_ms:.2f}ms "
                        f"p99={r.p99_ms:.2f}ms errors={r.errors or 0}{extra}")
            for path in dl_keys:
                r = b.download(path)
                dl[path].append(r)
                b.check_alive()
                extra = f" cpu={r.cpu_s_per_gb:.2f}s/GB" if r.cpu_s_per_gb is not None else ""
                log(f"rep{rep} {path:7} download {r.mbps:8.1f} MB/s ({r.size} bytes, {r.secs:.2f} s, "
                    f"HTTP {r.status}){extra}")
        report(b, wrk, dl, args, started, load0)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        rc = 1
    except KeyboardInterrupt:
        print("interrupted; stopping the processes this benchmark started", file=sys.stderr)
        rc = 130
    finally:
        procs.stop_all()
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, old_int)
        if args.keep or rc == 1:
            big = tmp / "www" / "big.bin"
            big.unlink(missing_ok=True)
            print(f"logs kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
