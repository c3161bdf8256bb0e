"""Scale benchmark (issue 11, "Scale"): one edge, N tunnels with generated policies, one request each.

    cd /work/main && .venv/bin/python -m bench.scale_bench            # 10,000 tunnels (about 4 min here)
    cd /work/main && .venv/bin/python -m bench.scale_bench --quick    # 1,000 tunnels (about 20 s)
    .venv/bin/python -m bench.scale_bench --max-workers 10000 --memory-budget-mb 4096 --connect 0
                                                   # every one of the 10,000 workers kept loaded

Everything runs on 127.0.0.1 and is started by this script, each as its own process:

- a config of N tunnels ``t0`` … ``t<N-1>`` (hostnames ``tI.scale.localhost``), each with a small
  generated policy that differs per tunnel: a path deny rule on ``/private-I/*``, a rate limit of
  capacity ``1000000 + I``, a ``custom_response`` on ``/scale/hit`` whose body is the tunnel's name,
  and an on_response ``set_response_headers`` ``X-Scale-Tunnel: tI``. Every worker's code is
  therefore distinct (its own content hash, its own isolate). ``--policy rules20`` uses the 20 rules
  of ``bench/configs/pipeline.yaml`` instead (plus the same per-tunnel rules), a heavier worker;
- ``tunnel config check FILE`` (timed: YAML parse, validation, generation of every worker);
- ``tunnel edge --config FILE`` (timed from exec to ``/ready``), with an admin token from the
  ``TUNNEL_ADMIN_TOKEN`` environment variable and the loader at its defaults (``max_workers=1000``,
  ``memory_budget_mb=1024``, ``idle_s=300``);
- no connector for the load passes: a policy worker runs *before* the edge looks for a connector
  (``Exchange.start``: ``pipeline.runs_worker`` first, ``registry.pick_for`` only for tunnels
  without a worker), so ``GET /scale/hit`` is answered entirely by the tunnel's ``tunnel-<id>``
  worker in QuickJS with no origin round trip. One connector per tunnel is not practical at
  10,000 (see ``--connect``), and the origin adds nothing to what loading and caching cost;
- ``--connect K`` (default 100; 0: skip): a sample of K tunnels with real connectors, to show the
  full worker → connector → origin path on the same scaled edge. Tokens come from the admin API
  (``POST /api/tunnels/{name}/token``, timed per token); one extra process of this script
  (``--connector-child``) runs a tiny aiohttp origin and K ``tunnel.connector.agent.Connector``
  objects (``connections=1``) in one event loop; each tunnel gets ``GET /scale/origin``, which the
  policy forwards and the origin answers with ``origin <host>``.

``tunnel edge`` has no flags for the loader's cache limits, so ``--max-workers N``,
``--memory-budget-mb M`` and ``--trusted-shards K`` start the edge through a small shim
(``--edge-shim``: this module runs ``tunnel.cli.main`` after wrapping ``tunnel.edge.server.Loader``
with those defaults); the report then says the defaults were overridden. The config step also times,
in a fresh process (``--breakdown``), the edge's own steps: ``load_yaml``, ``parse_config``,
``generate_tunnel_worker`` for every tunnel and a ``json.loads`` of the stored document.

Passes, each request with a timeout, the answer checked (200, body ``tI``, ``X-Scale-Tunnel: tI``):

1. **cold, c=1**: the first ``--sample`` tunnels one at a time: the latency of a request that loads
   its worker (the pure cold-load cost, no queueing);
2. **pass 1, c=``--concurrency``**: the remaining tunnels (every worker loads once);
3. **pass 2**: all N tunnels again, in the same order: warm hits if they are still cached, loads again
   if the loader evicted them (least recently used first, so with N > max_workers a sequential scan
   misses every time: the worst case for the cache, i.e. every reload measured);
4. **hot**: the tunnels whose workers ``/api/workers`` lists as cached after pass 2 (should be hits).

After each pass it reads VmRSS of the edge process and of each of its descendants (the loader's shard
processes), the peak of their sum sampled every 0.25 s during the pass, their CPU time (edge process
= event loop; descendants = shards), and ``GET /api/workers`` (loads, evictions, reloads,
load_seconds, workers cached, memory_bytes = sum of the QuickJS heaps, per-shard isolates; its
hits/misses count only ``Loader.get`` calls, which the edge makes once per key, so they are not used).
Note: the loader forgets an evicted key, so loading it again counts as a miss and a *load*, not a
*reload* (``reloads`` counts isolates rebuilt from cached code: after a limit hit, or after the
loader retired them because their shard was busy with another key); the table shows both, and pass
2's loads are the reloads after eviction. Any request not answered by its own worker makes the run
invalid: the report says so and the exit status is 1 (logs kept).

It prints (progress to stderr, tables to stdout) a timing table for config and start-up, a table per
pass, a memory table, a per-process table and a line against the goal of issue 11 (≤ 3 GiB total RSS
for 10,000 loaded policy workers, or bounded by the configured budget with the reloads measured).
It stops only the processes it started (also on Ctrl-C, SIGTERM or an error), checks that the edge's
shard processes went with it, and removes its temp dir under /tmp unless ``--keep``.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bench.tunnel_bench import (
    CONFIG_TEMPLATE,
    HZ,
    BenchError,
    Procs,
    cpu_ticks,
    f,
    free_port,
    loadavg,
    own_ticks,
    status_kb,
    table,
    tail,
    tree,
    wait_port,
)

HOST_SUFFIX = "scale.localhost"
HIT_PATH = "/scale/hit"          # answered by the policy's custom_response (no origin)
ORIGIN_PATH = "/scale/origin"    # forwarded by the policy to the connector and origin (--connect)
GOAL_BYTES = 3 * 1024 ** 3
DEFAULT_MAX_WORKERS = 1000       # tunnel.loader.Loader defaults, as the edge creates it (tunnel/edge/server.py)
DEFAULT_BUDGET_MB = 1024


def loader_settings(a: argparse.Namespace) -> str:
    if not (a.max_workers or a.memory_budget_mb or a.trusted_shards):
        return (f"loader at the edge's defaults (max_workers={DEFAULT_MAX_WORKERS}, "
                f"memory_budget_mb={DEFAULT_BUDGET_MB}, trusted_shards=1, idle_s=300)")
    return (f"loader defaults OVERRIDDEN by the benchmark's shim (`tunnel edge` has no flags for them): "
            f"max_workers={a.max_workers or DEFAULT_MAX_WORKERS}, memory_budget_mb="
            f"{a.memory_budget_mb or DEFAULT_BUDGET_MB:g}, trusted_shards={a.trusted_shards or 1}, idle_s=300")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- config
def tunnel_name(i: int) -> str:
    return f"t{i}"


def small_policy(i: int) -> dict:
    name = tunnel_name(i)
    return {
        "on_request": [
            {"match": {"path": f"/private-{i}/*"}, "actions": [{"deny": {"status": 403}}]},
            {"actions": [{"rate_limit": {"key": "client_ip", "capacity": 1_000_000 + i, "per": "60s"}}]},
            {"match": {"path": HIT_PATH}, "actions": [{"custom_response": {"status": 200, "body": name}}]},
        ],
        "on_response": [{"actions": [{"set_response_headers": {"X-Scale-Tunnel": name}}]}],
    }


def rules20_policy(i: int, base: dict) -> dict:
    """bench/configs/pipeline.yaml's 20 rules (none answers our GETs), then the per-tunnel ones."""
    name = tunnel_name(i)
    policy = json.loads(json.dumps(base))            # a copy: the config format refuses YAML aliases
    policy["on_request"] = ([{"match": {"path": f"/private-{i}/*"}, "actions": [{"deny": {"status": 403}}]}]
                            + policy["on_request"]
                            + [{"match": {"path": HIT_PATH},
                                "actions": [{"custom_response": {"status": 200, "body": name}}]}])
    policy["on_response"] = [r for r in policy.get("on_response", [])
                             if "X-Bench-Policy" not in json.dumps(r)]
    policy["on_response"].append({"actions": [{"set_response_headers": {"X-Scale-Tunnel": name}}]})
    return policy


def build_config(n: int, kind: str) -> dict:
    base = None
    if kind == "rules20":
        template = yaml.safe_load(CONFIG_TEMPLATE.read_text().replace("@ORIGIN@", "http://127.0.0.1:9"))
        base = template["tunnels"]["rules20"]["policy"]
    tunnels = {}
    for i in range(n):
        name = tunnel_name(i)
        tunnels[name] = {"hostnames": [f"{name}.{HOST_SUFFIX}"],
                         "policy": small_policy(i) if base is None else rules20_policy(i, base)}
    return {"tunnels": tunnels}


def dump_yaml(document: dict) -> str:
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return yaml.dump(document, Dumper=dumper, sort_keys=False, default_flow_style=False)


# ----------------------------------------------------------------------------- /proc
def proc_kb(pid: int, key: str) -> int:
    """VmRSS / VmHWM of one process (no descendants), KiB; 0 if gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


@dataclass
class Snapshot:
    """Memory and CPU of the edge process tree at one moment."""
    edge_kb: int
    shards_kb: dict[int, int]          # descendant pid -> VmRSS KiB
    edge_cpu: float                    # s, the edge process alone (its event loop)
    tree_cpu: float                    # s, edge + descendants (+ reaped children)

    @property
    def shard_total_kb(self) -> int:
        return sum(self.shards_kb.values())

    @property
    def total_kb(self) -> int:
        return self.edge_kb + self.shard_total_kb

    @property
    def shards_cpu(self) -> float:
        return self.tree_cpu - self.edge_cpu


def snapshot(edge_pid: int) -> Snapshot:
    pids = tree(edge_pid)
    return Snapshot(proc_kb(edge_pid, "VmRSS"), {p: proc_kb(p, "VmRSS") for p in pids if p != edge_pid},
                    own_ticks(edge_pid) / HZ, sum(cpu_ticks(p) for p in pids) / HZ)


class RssSampler:
    """Peak of the edge tree's total VmRSS, sampled on the benchmark's loop during a pass."""

    def __init__(self, edge_pid: int, every: float = 0.25):
        self.edge_pid, self.every = edge_pid, every
        self.peak_kb = 0
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        while True:
            self.peak_kb = max(self.peak_kb, status_kb(self.edge_pid, "VmRSS"))
            await asyncio.sleep(self.every)

    def start(self) -> None:
        self.peak_kb = status_kb(self.edge_pid, "VmRSS")
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> int:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self.peak_kb = max(self.peak_kb, status_kb(self.edge_pid, "VmRSS"))
        return self.peak_kb


# ----------------------------------------------------------------------------- HTTP client
def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100.0 * (len(values) - 1)))]


@dataclass
class PassResult:
    label: str
    concurrency: int
    count: int = 0
    ok: int = 0
    wall_s: float = 0.0
    latencies: list[float] = field(default_factory=list)   # seconds, every answered request
    statuses: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)      # first few wrong answers
    stats0: dict = field(default_factory=dict)
    stats1: dict = field(default_factory=dict)
    snap0: Snapshot | None = None
    snap1: Snapshot | None = None
    peak_kb: int = 0

    def delta(self, key: str) -> float:
        return (self.stats1.get(key) or 0) - (self.stats0.get(key) or 0)


async def run_pass(session, base_url: str, indices: list[int], concurrency: int, timeout: float,
                   path: str, expect_body, result: PassResult, progress_every: float = 10.0) -> None:
    """GET path on each tunnel of ``indices`` with ``concurrency`` in flight; fill ``result``."""
    import aiohttp
    queue = iter(indices)
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    started = time.perf_counter()
    last_report = [started]

    async def one(i: int) -> None:
        name = tunnel_name(i)
        host = f"{name}.{HOST_SUFFIX}"
        t0 = time.perf_counter()
        try:
            async with session.get(base_url + path, headers={"Host": host}, timeout=client_timeout,
                                   allow_redirects=False) as resp:
                body = await resp.read()
                elapsed = time.perf_counter() - t0
                result.latencies.append(elapsed)
                key = str(resp.status)
                if resp.status != 200:
                    key += f" {resp.headers.get('Tunnel-Error', '')}".rstrip()
                result.statuses[key] = result.statuses.get(key, 0) + 1
                want = expect_body(name, host).encode()
                if resp.status == 200 and body == want and resp.headers.get("X-Scale-Tunnel") == name:
                    result.ok += 1
                elif len(result.problems) < 5:
                    result.problems.append(f"{host}: {resp.status} {resp.headers.get('Tunnel-Error', '')} "
                                           f"X-Scale-Tunnel={resp.headers.get('X-Scale-Tunnel')!r} "
                                           f"body={body[:120]!r}")
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            kind = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
            result.statuses[kind] = result.statuses.get(kind, 0) + 1
            if len(result.problems) < 5:
                result.problems.append(f"{host}: {kind}: {exc}")
        result.count += 1
        now = time.perf_counter()
        if now - last_report[0] >= progress_every:
            last_report[0] = now
            log(f"  {result.label}: {result.count}/{len(indices)} done, {result.ok} ok, "
                f"{result.count / (now - started):.0f} req/s")

    async def worker() -> None:
        for i in queue:
            await one(i)

    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(indices))))))
    result.wall_s = time.perf_counter() - started


# ----------------------------------------------------------------------------- the benchmark
class ScaleBench:
    def __init__(self, args: argparse.Namespace, tmp: Path, procs: Procs):
        self.args = args
        self.tmp = tmp
        self.procs = procs
        self.admin_token = "adm-scale." + secrets.token_urlsafe(24)
        self.edge = None
        self.public_url = self.admin_url = self.connector_url = ""
        self.timings: list[tuple[str, str, str]] = []   # (what, value, note)
        self.passes: list[PassResult] = []
        self.idle: Snapshot | None = None
        self.idle_stats: dict = {}
        self.shard_pids_seen: set[int] = set()
        self.shard_groups: dict[int, str] = {}
        self.connect: dict = {}
        self.workers_fetch_s: list[float] = []

    # ---- config
    def write_config(self) -> Path:
        n = self.args.tunnels
        t0 = time.perf_counter()
        document = build_config(n, self.args.policy)
        t1 = time.perf_counter()
        text = dump_yaml(document)
        t2 = time.perf_counter()
        path = self.tmp / "scale.yaml"
        path.write_text(text)
        self.timings.append(("config generated (benchmark: dict + YAML dump)", f"{t2 - t0:.2f} s",
                             (f"{n:,} tunnels, {len(text) / 1e6:.1f} MB YAML (build {t1 - t0:.2f} s, "
                              f"dump {t2 - t1:.2f} s with {'libyaml' if hasattr(yaml, 'CSafeDumper') else 'PyYAML'})")))
        log(f"config: {n:,} tunnels ({self.args.policy} policy), {len(text) / 1e6:.1f} MB, in {t2 - t0:.1f} s")
        return path

    def check_config(self, path: Path) -> None:
        argv = [self.args.tunnel, "--log-level", "WARNING", "config", "check", str(path)]
        limit = self.args.startup_timeout
        t0 = time.perf_counter()
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=limit, stdin=subprocess.DEVNULL,
                                 check=False)
        except subprocess.TimeoutExpired:
            raise BenchError(f"`tunnel config check` did not finish within {limit:.0f} s") from None
        secs = time.perf_counter() - t0
        if out.returncode != 0:
            raise BenchError(f"`tunnel config check` failed ({out.returncode}): {out.stdout[-800:]} "
                             f"{out.stderr[-800:]}")
        self.timings.append(("`tunnel config check FILE` (process wall)", f"{secs:.2f} s",
                             "parse YAML, validate, generate every worker"))
        log(f"tunnel config check: OK in {secs:.1f} s")
        here = Path(__file__).resolve().parent.parent
        try:
            out = subprocess.run([sys.executable, "-m", "bench.scale_bench", "--breakdown", str(path)],
                                 capture_output=True, text=True, timeout=limit, stdin=subprocess.DEVNULL,
                                 check=False, env=dict(os.environ, PYTHONPATH=str(here)))
            b = json.loads(out.stdout.strip().splitlines()[-1])
        except (subprocess.TimeoutExpired, ValueError, IndexError):
            log("config breakdown failed; skipped")
            return
        n = self.args.tunnels
        self.timings += [
            ("  of which tunnel.config.load_yaml (in a fresh process)", f"{b['load_yaml']:.2f} s",
             f"PyYAML, {b['load_yaml'] * 1e6 / n:,.0f} µs per tunnel"),
            ("  of which parse_config (validation, model)", f"{b['parse_config']:.2f} s",
             f"{b['parse_config'] * 1e6 / n:,.0f} µs per tunnel"),
            ("  of which generate_tunnel_worker × N", f"{b['generate']:.2f} s",
             (f"{b['generate'] * 1e6 / n:,.0f} µs per tunnel; {b['js_bytes'] / 1e6:.1f} MB of JavaScript "
              f"({b['js_bytes'] / n / 1024:.1f} KiB per worker)")),
            ("  json.loads of the stored document", f"{b['json_loads']:.3f} s",
             (f"{b['json_bytes'] / 1e6:.1f} MB of JSON, in a small process; the store parses it again on every "
              f"Store.active_document() (token rotation, connector HELLO), where the edge's big heap makes "
              f"the cyclic GC run during it")),
        ]
        log(f"breakdown: load_yaml {b['load_yaml']:.1f} s, parse_config {b['parse_config']:.1f} s, "
            f"generate {b['generate']:.1f} s")

    # ---- edge
    def start_edge(self, config: Path) -> None:
        public, conn, admin = free_port(), free_port(), free_port()
        env = dict(os.environ, TUNNEL_ADMIN_TOKEN=self.admin_token)
        a = self.args
        if a.max_workers or a.memory_budget_mb or a.trusted_shards:
            here = Path(__file__).resolve().parent.parent
            exe = [sys.executable, "-m", "bench.scale_bench", "--edge-shim", str(a.max_workers or 0),
                   str(a.memory_budget_mb or 0), str(a.trusted_shards or 0), "--"]
            env["PYTHONPATH"] = str(here)
        else:
            exe = [self.args.tunnel]
        t0 = time.perf_counter()
        self.edge = self.procs.start("edge", [
            *exe, "--log-level", "WARNING", "edge", "--public", f"127.0.0.1:{public}",
            "--connectors", f"127.0.0.1:{conn}", "--admin", f"127.0.0.1:{admin}",
            "--data-dir", str(self.tmp / "edge-data"), "--grace-period", "2", "--config", str(config)],
            self.tmp, env)
        # the edge binds its listeners only after it stored and applied the config (Edge.start)
        wait_port(admin, self.edge, self.args.startup_timeout)
        t_listen = time.perf_counter() - t0
        self.public_url = f"http://127.0.0.1:{public}"
        self.admin_url = f"http://127.0.0.1:{admin}"
        self.connector_url = f"ws://127.0.0.1:{conn}"
        import urllib.request
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(self.admin_url + "/ready", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"the edge did not answer /ready within 30 s of listening:\n{tail(self.edge.log)}")
            if self.edge.popen.poll() is not None:
                raise BenchError(f"the edge exited with {self.edge.popen.returncode}:\n{tail(self.edge.log)}")
            time.sleep(0.1)
        t_ready = time.perf_counter() - t0
        self.timings.append(("edge start-up with --config (exec → /ready 200)", f"{t_ready:.2f} s",
                             (f"listening after {t_listen:.2f} s: load FILE, store it as a version, apply it "
                              f"(parse, generate {self.args.tunnels:,} workers), start the shards")))
        log(f"edge pid {self.edge.popen.pid} ready in {t_ready:.1f} s ({self.public_url})")

    def check_alive(self) -> None:
        if self.edge is not None and self.edge.popen.poll() is not None:
            raise BenchError(f"the edge exited with {self.edge.popen.returncode} during the run:\n{tail(self.edge.log)}")

    async def workers_stats(self, session) -> dict:
        import aiohttp
        t0 = time.perf_counter()
        async with session.get(self.admin_url + "/api/workers", timeout=aiohttp.ClientTimeout(total=60),
                               headers={"Authorization": f"Bearer {self.admin_token}"}) as resp:
            if resp.status != 200:
                raise BenchError(f"GET /api/workers answered {resp.status}: {(await resp.text())[:300]}")
            stats = await resp.json()
        self.workers_fetch_s.append(time.perf_counter() - t0)
        for shard in stats.get("shards", []):
            if shard.get("pid"):
                self.shard_pids_seen.add(shard["pid"])
                self.shard_groups[shard["pid"]] = shard.get("group", "?")
        return stats

    async def measured_pass(self, session, admin_session, label: str, indices: list[int], concurrency: int,
                            path: str = HIT_PATH, expect=lambda name, host: name) -> PassResult:
        result = PassResult(label, concurrency)
        result.stats0 = await self.workers_stats(admin_session)
        result.snap0 = snapshot(self.edge.popen.pid)
        sampler = RssSampler(self.edge.popen.pid)
        sampler.start()
        log(f"{label}: {len(indices):,} requests, c={concurrency}")
        try:
            await run_pass(session, self.public_url, indices, concurrency, self.args.request_timeout, path,
                           expect, result)
        finally:
            result.peak_kb = await sampler.stop()
        result.snap1 = snapshot(self.edge.popen.pid)
        result.stats1 = await self.workers_stats(admin_session)
        self.check_alive()
        lat = result.latencies
        log(f"{label}: {result.ok}/{result.count} ok in {result.wall_s:.1f} s "
            f"({result.count / result.wall_s if result.wall_s else 0:.0f} req/s), p50 "
            f"{(pct(lat, 50) or 0) * 1e3:.1f} ms, p99 {(pct(lat, 99) or 0) * 1e3:.1f} ms; loads "
            f"+{result.delta('loads'):.0f}, evictions +{result.delta('evictions'):.0f}, cached "
            f"{result.stats1.get('workers')}, tree RSS {result.snap1.total_kb / 1024:.0f} MiB "
            f"(peak {result.peak_kb / 1024:.0f})")
        if result.problems:
            log(f"{label}: wrong answers, first ones: " + "; ".join(result.problems))
        self.passes.append(result)
        return result

    async def run(self) -> None:
        import aiohttp
        n = self.args.tunnels
        await asyncio.sleep(1.0)      # let the shards finish starting
        self.idle = snapshot(self.edge.popen.pid)
        limit = max(self.args.concurrency, 1) + 4
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit, force_close=False),
                                         auto_decompress=False) as session, \
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=4)) as admin:
            self.idle_stats = await self.workers_stats(admin)
            sample = min(self.args.sample, n)
            everyone = list(range(n))
            if sample:
                await self.measured_pass(session, admin, "cold, one at a time", everyone[:sample], 1)
            if sample < n:
                await self.measured_pass(session, admin, "pass 1 (first request of each tunnel)",
                                         everyone[sample:], self.args.concurrency)
            await self.measured_pass(session, admin, "pass 2 (every tunnel again, same order)", everyone,
                                     self.args.concurrency)
            cached = sorted(int(k.split("-", 1)[1][1:]) for k in self.passes[-1].stats1.get("per_worker", {})
                            if k.startswith("tunnel-t") and k[8:].isdigit())
            if cached:
                await self.measured_pass(session, admin, "hot (the workers cached after pass 2)", cached,
                                         self.args.concurrency)
            if self.args.connect:
                await self.run_connect(session, admin)

    # ---- --connect K: real connectors for a sample of tunnels
    async def run_connect(self, session, admin) -> None:
        import aiohttp
        k = min(self.args.connect, self.args.tunnels)
        names = [tunnel_name(i) for i in range(k)]
        log(f"connect: rotating {k} connector tokens through POST /api/tunnels/NAME/token")
        tokens, times = {}, []
        for name in names:
            t0 = time.perf_counter()
            async with admin.post(f"{self.admin_url}/api/tunnels/{name}/token",
                                  headers={"Authorization": f"Bearer {self.admin_token}"},
                                  timeout=aiohttp.ClientTimeout(total=60)) as resp:
                body = await resp.json(content_type=None)
                if resp.status != 200 or "token" not in body:
                    raise BenchError(f"POST /api/tunnels/{name}/token answered {resp.status}: {body!r}")
            times.append(time.perf_counter() - t0)
            tokens[name] = body["token"]
        self.connect["token_ms"] = [t * 1e3 for t in times]
        spec = self.tmp / "connectors.json"
        fd = os.open(spec, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        status = self.tmp / "connectors.status"
        with os.fdopen(fd, "w") as fh:
            json.dump({"edge": self.connector_url, "tokens": list(tokens.values()), "status": str(status),
                       "handshakes": 4, "timeout": self.args.connect_timeout}, fh)
        here = Path(__file__).resolve().parent.parent
        t0 = time.perf_counter()
        child = self.procs.start("connectors", [sys.executable, "-m", "bench.scale_bench", "--connector-child",
                                                str(spec)], self.tmp, dict(os.environ, PYTHONPATH=str(here)))
        deadline = time.monotonic() + self.args.connect_timeout + 30
        info = None
        while time.monotonic() < deadline:
            if status.exists():
                try:
                    info = json.loads(status.read_text())
                    break
                except ValueError:
                    pass
            if child.popen.poll() is not None:
                raise BenchError(f"the connector process exited with {child.popen.returncode}:\n{tail(child.log)}")
            self.check_alive()
            await asyncio.sleep(0.2)
        if info is None:
            raise BenchError(f"the connectors did not report within {self.args.connect_timeout + 30:.0f} s:\n"
                             f"{tail(child.log)}")
        self.connect["register_s"] = time.perf_counter() - t0
        self.connect["registered"] = info.get("registered", 0)
        self.connect["k"] = k
        self.connect["child_pid"] = child.popen.pid
        log(f"connect: {info.get('registered')}/{k} connectors registered in {self.connect['register_s']:.1f} s")
        res = await self.measured_pass(session, admin, f"through the origin ({k} tunnels with a connector)",
                                       list(range(k)), min(self.args.concurrency, k), ORIGIN_PATH,
                                       lambda name, host: f"origin {host}")
        self.connect["result"] = res
        self.connect["connector_rss_kb"] = status_kb(child.popen.pid, "VmRSS")

    # ---- report
    def failures(self) -> int:
        return sum(r.count - r.ok for r in self.passes)

    def report(self, started: str, load0: str) -> None:
        a = self.args
        n = a.tunnels
        print()
        print(f"## scale benchmark: {n:,} tunnels with generated policies on one edge")
        print(f"{started}; {os.cpu_count()} CPUs; loadavg at start {load0}, at end {loadavg()}; policy "
              f"{a.policy}; requests GET {HIT_PATH} (answered by each tunnel's worker: custom_response), "
              f"first {min(a.sample, n)} at c=1, then c={a.concurrency}, timeout {a.request_timeout:g} s; "
              f"{loader_settings(a)}")
        print()
        print("### config and start-up")
        print()
        print(table(["step", "time", "what"], [list(t) for t in self.timings]))
        print()
        print("### passes (loader counters are deltas over the pass, from GET /api/workers)")
        print()
        rows = []
        for r in self.passes:
            lat = r.latencies
            loads = r.delta("loads")
            load_ms = r.delta("load_seconds") * 1e3 / loads if loads else None
            cpu_edge = (r.snap1.edge_cpu - r.snap0.edge_cpu) if r.snap0 and r.snap1 else 0
            cpu_sh = (r.snap1.shards_cpu - r.snap0.shards_cpu) if r.snap0 and r.snap1 else 0
            rows.append([
                r.label, f"{r.count:,}", f"{r.ok:,}", str(r.concurrency), f(r.wall_s, 1),
                f(r.count / r.wall_s if r.wall_s else None), f((pct(lat, 50) or 0) * 1e3, 2),
                f((pct(lat, 99) or 0) * 1e3, 2), f((max(lat) if lat else 0) * 1e3, 1),
                f(loads), f(loads / r.wall_s if r.wall_s else None), f(load_ms, 2),
                f(max(0, r.ok - loads)), f(r.delta("evictions")), f(r.delta("reloads")),
                f(r.stats1.get("workers")),
                f"{cpu_edge * 1e3 / r.count:.2f} / {cpu_sh * 1e3 / r.count:.2f}" if r.count else "",
                ", ".join(f"{k} {v}" for k, v in sorted(r.statuses.items())),
            ])
        print(table(["pass", "requests", "ok", "c", "wall s", "req/s", "p50 ms", "p99 ms", "max ms", "loads",
                     "loads/s", "load ms/worker", "warm (no load)", "evictions", "reloads", "cached after",
                     "CPU ms/req edge / shards", "statuses"], rows))
        print()
        print("ok = 200 with the tunnel's own body and X-Scale-Tunnel header (the worker ran). load ms/worker = "
              "the loader's load_seconds / loads (factory → isolate ready, queueing in the shard included). "
              "An evicted key is forgotten, so loading it again is a miss + load (`reloads` counts only isolates "
              "rebuilt from cached code after a limit hit or a busy-shard move). warm = ok − loads. The loader's hits/misses count only `get()` calls, "
              "and the edge calls get() once per key and keeps the stub, so they are not shown.")
        for r in self.passes:
            if r.problems:
                print(f"wrong answers in {r.label!r}, first ones: " + "; ".join(r.problems))
        print()
        self.report_memory()
        if self.connect:
            self.report_connect()
        self.report_goal()

    def report_memory(self) -> None:
        print("### memory of the edge (VmRSS, MiB; shards = the edge's descendant processes)")
        print()
        rows = []

        def row(label: str, snap: Snapshot, stats: dict, peak_kb: int | None) -> list[str]:
            workers = stats.get("workers") or 0
            heap = stats.get("memory_bytes") or 0
            per = ((snap.shard_total_kb - self.idle.shard_total_kb) / workers) if workers and self.idle else None
            return [label, f(snap.edge_kb / 1024, 1), f(snap.shard_total_kb / 1024, 1), str(len(snap.shards_kb)),
                    f(snap.total_kb / 1024, 1), f(peak_kb / 1024, 1) if peak_kb else "",
                    f(workers), f(heap / 1048576, 1), f(heap / workers / 1024) if workers else "", f(per)]
        rows.append(row("idle after start-up", self.idle, self.idle_stats, None))
        for r in self.passes:
            rows.append(row(f"after {r.label}", r.snap1, r.stats1, r.peak_kb))
        print(table(["when", "edge", "shards", "shard procs", "total", "peak total in pass", "cached workers",
                     "QuickJS heap MiB", "heap KiB/worker", "shard RSS KiB/worker (over idle)"], rows))
        print()
        last = self.passes[-1] if self.passes else None
        if last is not None:
            rows = []
            stats = {s.get("pid"): s for s in last.stats1.get("shards", [])}
            for pid, kb in sorted(last.snap1.shards_kb.items()):
                s = stats.get(pid, {})
                rows.append([str(pid), s.get("group", "(not a shard)"), f(s.get("isolates")), f(kb / 1024, 1),
                             f(proc_kb(pid, "VmHWM") / 1024, 1), f(s.get("starts")), f(s.get("kills"))])
            rows.append([f"{self.edge.popen.pid} (edge)", "event loop", "", f(last.snap1.edge_kb / 1024, 1),
                         f(proc_kb(self.edge.popen.pid, "VmHWM") / 1024, 1), "", ""])
            print(table(["pid", "group", "isolates", "VmRSS MiB", "VmHWM MiB", "starts", "kills"], rows))
            print()
        if self.workers_fetch_s:
            print(f"GET /api/workers took {min(self.workers_fetch_s) * 1e3:.0f}-{max(self.workers_fetch_s) * 1e3:.0f} ms "
                  f"({len(self.workers_fetch_s)} calls; its per_worker map lists every cached worker).")
            print()

    def report_connect(self) -> None:
        c = self.connect
        r: PassResult | None = c.get("result")
        tok = c.get("token_ms", [])
        print(f"### full path on the same edge: {c.get('k')} tunnels with a real connector (--connect)")
        print()
        rows = [["token per tunnel (POST /api/tunnels/NAME/token)",
                 f"p50 {f(pct(tok, 50), 1)} ms, max {f(max(tok) if tok else None, 1)} ms",
                 f"{len(tok)} tokens, {f(sum(tok) / 1e3, 1)} s in all"],
                ["connectors registered (process start → all welcomed)",
                 f"{c.get('registered')}/{c.get('k')} in {f(c.get('register_s'), 1)} s",
                 "one process, K Connector objects (connections=1), 4 handshakes at a time"]]
        if r is not None:
            lat = r.latencies
            rows.append([f"GET {ORIGIN_PATH} (policy → env.TUNNEL.fetch → connector → origin)",
                         (f"{r.ok}/{r.count} ok, p50 {f((pct(lat, 50) or 0) * 1e3, 2)} ms, "
                          f"p99 {f((pct(lat, 99) or 0) * 1e3, 2)} ms"),
                         ", ".join(f"{k} {v}" for k, v in sorted(r.statuses.items()))])
        rows.append(["connector process VmRSS", f"{f(c.get('connector_rss_kb', 0) / 1024, 1)} MiB",
                     "origin + K connectors in one event loop"])
        print(table(["step", "result", "note"], rows))
        print()

    def report_goal(self) -> None:
        n = self.args.tunnels
        if not self.passes:
            return
        peak = max(r.peak_kb for r in self.passes) * 1024
        loading = [r for r in self.passes if r.delta("loads") > 0]
        cached = max((r.stats1.get("workers") or 0) for r in self.passes)
        evictions = self.passes[-1].stats1.get("evictions", 0)
        idle_sh = self.idle.shard_total_kb if self.idle else 0
        after1 = next((r for r in self.passes if r.label.startswith("pass 1")), self.passes[0])
        per_kb = (after1.snap1.shard_total_kb - idle_sh) / cached if cached else 0
        projected = (self.idle.total_kb + per_kb * n) * 1024 if self.idle else 0
        print("### against the goal (issue 11: ≤ 3 GiB for 10,000 loaded policy workers, or bounded by the "
              "configured budget with reloads measured)")
        print()
        bad = sum(r.count - r.ok for r in self.passes)
        if bad:
            print(f"- **NOT A VALID RESULT**: {bad:,} of {sum(r.count for r in self.passes):,} requests did not get "
                  f"their worker's answer (see the statuses above and the edge log); the figures below describe "
                  f"a broken run")
        verdict = "MET" if peak <= GOAL_BYTES else "NOT MET"
        hwm = sum(proc_kb(p, "VmHWM") for p in tree(self.edge.popen.pid)) * 1024
        print(f"- peak total RSS of the edge tree during the passes: {peak / 2**30:.2f} GiB ({peak / 2**20:,.0f} MiB) "
              f"for {n:,} tunnels, at most {cached:,} workers cached at once: {verdict} (≤ 3 GiB); sum of every "
              f"process's own peak (VmHWM, start-up included, an upper bound): {hwm / 2**30:.2f} GiB")
        if self.idle:
            print(f"- the edge process alone, idle after start-up: {self.idle.edge_kb / 1024:,.0f} MiB for {n:,} tunnels "
                  f"(it holds the config model and every generated worker's source, whether its worker is loaded "
                  f"or not); VmHWM {proc_kb(self.edge.popen.pid, 'VmHWM') / 1024:,.0f} MiB")
        if cached < n:
            print(f"- bounded by the budget: max_workers={self.args.max_workers or DEFAULT_MAX_WORKERS}, "
                  f"memory_budget_mb={self.args.memory_budget_mb or DEFAULT_BUDGET_MB:g} held the cache at {cached:,} "
                  f"workers ({evictions:,} evictions in all); projected RSS if all {n:,} stayed loaded at the "
                  f"measured {per_kb:,.0f} KiB per worker: {projected / 2**30:.2f} GiB")
        else:
            what = ("measured directly above" if n == 10000 else
                    f"projected for 10,000 loaded: {(self.idle.total_kb + per_kb * 10000) / 2**20:.2f} GiB")
            print(f"- all {n:,} workers stayed cached (no eviction: N ≤ max_workers="
                  f"{self.args.max_workers or DEFAULT_MAX_WORKERS}); "
                  f"{per_kb:,.0f} KiB of shard RSS per worker ({after1.stats1.get('memory_bytes', 0) / cached / 1024:,.0f} "
                  f"KiB of it QuickJS heap); {what}")
        budget_kb = (GOAL_BYTES / 1024 - (self.idle.total_kb if self.idle else 0)) / 10000
        print(f"- to hold 10,000 loaded workers in 3 GiB beside this idle edge tree, a worker may cost "
              f"{budget_kb:,.0f} KiB of RSS; measured {per_kb:,.0f} KiB")
        p2 = next((r for r in self.passes if r.label.startswith("pass 2")), None)
        if p2 is not None:
            loads = p2.delta("loads")
            print(f"- reloads measured (pass 2, every tunnel again): {loads:,.0f} loads of evicted workers, "
                  f"{max(0, p2.ok - loads):,.0f} answered warm; p50 {(pct(p2.latencies, 50) or 0) * 1e3:.2f} ms, "
                  f"p99 {(pct(p2.latencies, 99) or 0) * 1e3:.2f} ms at c={p2.concurrency}; "
                  f"{loads / p2.wall_s if p2.wall_s else 0:,.0f} loads/s")
        if loading:
            per = [r.delta("load_seconds") * 1e3 / r.delta("loads") for r in loading]
            print(f"- load time per worker (loader load_seconds/loads): {', '.join(f'{r.label}: {p:.2f} ms' for r, p in zip(loading, per))}")
        print()


# ----------------------------------------------------------------------------- config breakdown child
def breakdown_child(path: str) -> int:
    """``--breakdown FILE``: time the edge's own config steps on FILE in this (fresh) process and
    print them as JSON: load_yaml, parse_config, generate_tunnel_worker for every tunnel, and the
    JSON round trip the store does (it keeps the document as JSON text in SQLite)."""
    from generators import generate_tunnel_worker
    from tunnel.config import load_yaml, parse_config
    text = Path(path).read_text()
    out = {}
    t0 = time.perf_counter()
    document = load_yaml(text)
    out["load_yaml"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    config = parse_config(document)
    out["parse_config"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    sizes = [sum(len(m) if isinstance(m, str) else len(json.dumps(m)) for m in
                 generate_tunnel_worker(t).modules.values()) for t in config.tunnels.values()]
    out["generate"] = time.perf_counter() - t0
    out["js_bytes"] = sum(sizes)
    stored = json.dumps(document)
    t0 = time.perf_counter()
    json.loads(stored)
    out["json_loads"] = time.perf_counter() - t0
    out["json_bytes"] = len(stored)
    print(json.dumps(out))
    return 0


# ----------------------------------------------------------------------------- edge shim
def edge_shim(argv: list[str]) -> int:
    """``--edge-shim MAX_WORKERS BUDGET_MB TRUSTED_SHARDS -- <tunnel CLI args>``: run the tunnel CLI
    in this process with other defaults for the edge's Loader (``tunnel edge`` has no flags for
    them). 0 keeps a default. Used only when --max-workers / --memory-budget-mb / --trusted-shards
    are given; the report says so."""
    import functools

    from tunnel.cli import main as tunnel_main
    from tunnel.edge import server
    max_workers, budget, trusted = int(argv[0]), float(argv[1]), int(argv[2])
    overrides = {k: v for k, v in (("max_workers", max_workers), ("memory_budget_mb", budget),
                                   ("trusted_shards", trusted)) if v}
    server.Loader = functools.partial(server.Loader, **overrides)
    return tunnel_main(argv[4:] if argv[3:4] == ["--"] else argv[3:])


# ----------------------------------------------------------------------------- connector child
async def connector_child(spec_path: str) -> int:
    """Run an origin and one Connector per token in this process until SIGTERM."""
    import logging

    from aiohttp import web

    from tunnel.connector.agent import Connector, ConnectorOptions

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec = json.loads(Path(spec_path).read_text())
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def answer(request: web.Request) -> web.Response:
        return web.Response(text=f"origin {request.host.split(':')[0]}")

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    origin = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    connectors = [Connector(ConnectorOptions(edge=spec["edge"], token=t, url=origin, connections=1,
                                             grace_period=1.0, backoff_initial=0.2, backoff_max=2.0))
                  for t in spec["tokens"]]
    tasks: list[asyncio.Task] = []
    gate = asyncio.Semaphore(spec.get("handshakes", 4))   # the edge holds 8 pending handshakes per address
    started = time.perf_counter()

    async def bring_up(c: Connector) -> bool:
        async with gate:
            tasks.append(loop.create_task(c.run()))
            try:
                await asyncio.wait_for(c.registered.wait(), spec.get("timeout", 120))
                return True
            except TimeoutError:
                return False

    ups = await asyncio.gather(*(bring_up(c) for c in connectors))
    status = {"registered": sum(ups), "seconds": time.perf_counter() - started, "origin": origin}
    tmp = spec["status"] + ".tmp"
    Path(tmp).write_text(json.dumps(status))
    os.replace(tmp, spec["status"])
    print(json.dumps(status), flush=True)
    await stop.wait()
    for c in connectors:
        c.stop()
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
    await runner.cleanup()
    return 0


# ----------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    here = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(prog="python -m bench.scale_bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--tunnels", type=int, default=None, help="tunnels in the config (default 10000; --quick: 1000)")
    ap.add_argument("--quick", action="store_true", help="1,000 tunnels")
    ap.add_argument("--policy", choices=("small", "rules20"), default="small",
                    help="per-tunnel policy: small (4 rules, default) or rules20 (pipeline.yaml's 20 rules + 4)")
    ap.add_argument("--concurrency", type=int, default=32, help="requests in flight in the passes (default 32)")
    ap.add_argument("--sample", type=int, default=200, help="first tunnels loaded one at a time (default 200)")
    ap.add_argument("--request-timeout", type=float, default=30.0, help="per-request timeout, s (default 30)")
    ap.add_argument("--startup-timeout", type=float, default=600.0,
                    help="bound on `config check` and on the edge's start-up, s (default 600)")
    ap.add_argument("--connect", type=int, default=100,
                    help="tunnels that get a real connector for a full-path check (default 100; 0: none)")
    ap.add_argument("--connect-timeout", type=float, default=180.0, help="bound on the connectors' registration, s")
    ap.add_argument("--max-workers", type=int, default=0,
                    help="override the edge Loader's max_workers (default: the edge's, 1000) through a shim")
    ap.add_argument("--memory-budget-mb", type=float, default=0,
                    help="override the edge Loader's memory_budget_mb (default: the edge's, 1024) through a shim")
    ap.add_argument("--trusted-shards", type=int, default=0,
                    help="override the edge Loader's trusted_shards (default: the edge's, 1) through a shim")
    ap.add_argument("--no-check", action="store_true", help="skip the timed `tunnel config check`")
    ap.add_argument("--tunnel", default=str(here / ".venv" / "bin" / "tunnel"), help="the tunnel CLI to run")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (config, edge data, logs)")
    ap.add_argument("--connector-child", metavar="SPEC", help=argparse.SUPPRESS)
    ap.add_argument("--edge-shim", action="store_true", help=argparse.SUPPRESS)
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--edge-shim"]:
        return argparse.Namespace(edge_shim=argv[1:])
    if argv[:1] == ["--breakdown"]:
        return argparse.Namespace(edge_shim=None, breakdown=argv[1])
    args = ap.parse_args(argv)
    if args.tunnels is None:
        args.tunnels = 1000 if args.quick else 10000
    args.tunnels = max(1, min(args.tunnels, 100_000))
    args.concurrency = max(1, min(args.concurrency, 1024))
    args.sample = max(0, args.sample)
    args.connect = max(0, args.connect)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if getattr(args, "edge_shim", None):
        return edge_shim(args.edge_shim)
    if getattr(args, "breakdown", None):
        return breakdown_child(args.breakdown)
    if args.connector_child:
        try:
            import uvloop
            uvloop.install()
        except ImportError:
            pass
        return asyncio.run(connector_child(args.connector_child))
    if not os.access(args.tunnel, os.X_OK):
        print(f"error: tunnel CLI {args.tunnel} not found (run `make test` or `pip install -e .` first, "
              f"or pass --tunnel)", file=sys.stderr)
        return 2
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        print("error: this benchmark needs aiohttp (it is in the project's venv: use .venv/bin/python)",
              file=sys.stderr)
        return 2

    def on_term(signum, frame):
        raise KeyboardInterrupt
    old_term = signal.signal(signal.SIGTERM, on_term)
    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)

    tmp = Path(tempfile.mkdtemp(prefix="tunnel-scale-", dir="/tmp"))
    procs = Procs()
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    load0 = loadavg()
    rc = 0
    b = ScaleBench(args, tmp, procs)
    t_start = time.monotonic()
    try:
        config = b.write_config()
        if not args.no_check:
            b.check_config(config)
        b.start_edge(config)
        try:
            import uvloop
            runner = uvloop.run
        except ImportError:
            runner = asyncio.run
        runner(b.run())
        b.report(started, load0)
        if b.failures():
            rc = 1
            print(f"error: {b.failures():,} requests were not answered by their worker; edge log:\n"
                  f"{tail(b.edge.log)}", file=sys.stderr)
        print(f"total wall time {time.monotonic() - t_start:.0f} s; command: python -m bench.scale_bench "
              + " ".join(argv if argv is not None else sys.argv[1:]))
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        rc = 1
    except KeyboardInterrupt:
        print("interrupted; stopping the processes this benchmark started", file=sys.stderr)
        rc = 130
    finally:
        shards = set(b.shard_pids_seen)
        if b.edge is not None:
            shards |= set(tree(b.edge.popen.pid)) - {b.edge.popen.pid}
        procs.stop_all()
        leftover = [p for p in shards if "tunnel.loader" in cmdline(p)]
        deadline = time.monotonic() + 5
        while leftover and time.monotonic() < deadline:
            time.sleep(0.1)
            leftover = [p for p in leftover if "tunnel.loader" in cmdline(p)]
        for pid in leftover:   # shards of the edge this script started, still there after it exited
            print(f"warning: shard process {pid} outlived the edge; killing it", file=sys.stderr)
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, old_int)
        if args.keep or rc == 1:
            print(f"logs kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
