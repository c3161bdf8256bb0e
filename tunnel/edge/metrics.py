"""Per-tunnel Prometheus metrics, read from live state at scrape time.

The hot path only bumps plain integers in a ``TunnelStats`` (no locks, no label lookups); the
collector turns them into families when ``/metrics`` is scraped, so a deleted tunnel leaves no
stale series (its stats are dropped with it). Names carry the ``tunnel_`` prefix and base units.
Origin responses and edge-generated answers are counted apart, as cloudflared does.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from generators.keys import parse_key

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class TunnelStats:
    """Counters of one tunnel, bumped on the request path."""

    __slots__ = ("origin_responses", "edge_responses", "worker_errors", "buckets", "duration_sum",
                 "bytes_in", "bytes_out", "in_flight")

    def __init__(self) -> None:
        self.origin_responses: dict[int, int] = {}
        self.edge_responses: dict[tuple[int, str], int] = {}
        self.worker_errors: dict[str, int] = {}
        self.buckets = [0] * (len(DURATION_BUCKETS) + 1)
        self.duration_sum = 0.0
        self.bytes_in = 0
        self.bytes_out = 0
        self.in_flight = 0

    def count_worker_error(self, kind: str) -> None:
        """One worker failure of ``kind`` (a WorkerError class name, Timeout, Quarantined, …)."""
        self.worker_errors[kind] = self.worker_errors.get(kind, 0) + 1

    def finished(self, status: int, reason: str | None, duration: float, bytes_in: int, bytes_out: int) -> None:
        """Record one finished exchange; ``reason`` is the Tunnel-Error of an edge-made answer."""
        if reason is None:
            self.origin_responses[status] = self.origin_responses.get(status, 0) + 1
        else:
            key = (status, reason)
            self.edge_responses[key] = self.edge_responses.get(key, 0) + 1
        self.buckets[bisect_left(DURATION_BUCKETS, duration)] += 1
        self.duration_sum += duration
        self.bytes_in += bytes_in
        self.bytes_out += bytes_out


class EdgeMetrics:
    """All metric state of one edge. ``stats(tunnel)`` is the hot-path entry point."""

    def __init__(self) -> None:
        self.tunnels: dict[str, TunnelStats] = {}
        self.unknown_host = 0
        self.pushes: dict[str, int] = {}
        self.active_version = 0

    def stats(self, tunnel: str) -> TunnelStats:
        stats = self.tunnels.get(tunnel)
        if stats is None:
            stats = self.tunnels[tunnel] = TunnelStats()
        return stats

    def forget(self, keep: Iterable[str]) -> None:
        """Drop the stats of every tunnel not in ``keep`` (deleted tunnels leave no series)."""
        keep = set(keep)
        for name in [n for n in self.tunnels if n not in keep]:
            del self.tunnels[name]


class TunnelCollector:
    """A prometheus-client collector over live edge state (one tunnel, or all of them).

    ``connections(tunnel)`` gives live connector connections; ``tunnels()`` the configured
    tunnel names; ``loader_stats()`` the loader's ``stats()`` (or None).
    """

    def __init__(self, metrics: EdgeMetrics, tunnels: Callable[[], Iterable[str]],
                 connections: Callable[[str], int], loader_stats: Callable[[], dict[str, Any] | None],
                 only: str | None = None, acked_versions: Callable[[], Iterable[int]] = tuple):
        self.metrics = metrics
        self.acked_versions = acked_versions
        self.tunnels = tunnels
        self.connections = connections
        self.loader_stats = loader_stats
        self.only = only

    def collect(self) -> Iterable[Metric]:
        names = [self.only] if self.only is not None else sorted(self.tunnels())
        origin = CounterMetricFamily("tunnel_requests", "Requests answered by the origin, by status code.",
                                     labels=["tunnel", "status"])
        edge = CounterMetricFamily("tunnel_edge_responses", "Requests the edge answered itself (errors and "
                                   "policy refusals), by status and Tunnel-Error reason.",
                                   labels=["tunnel", "status", "reason"])
        duration = HistogramMetricFamily("tunnel_request_duration_seconds",
                                         "Time from the request head to the end of the response.", labels=["tunnel"])
        bytes_in = CounterMetricFamily("tunnel_request_body_bytes", "Request body bytes received from clients.",
                                       labels=["tunnel"])
        bytes_out = CounterMetricFamily("tunnel_response_body_bytes", "Response body bytes sent to clients.",
                                        labels=["tunnel"])
        in_flight = GaugeMetricFamily("tunnel_requests_in_flight", "Requests being answered now.", labels=["tunnel"])
        conns = GaugeMetricFamily("tunnel_connector_connections", "Live connector connections.", labels=["tunnel"])
        worker = CounterMetricFamily("tunnel_worker_errors", "Worker failures by kind.", labels=["tunnel", "kind"])
        log_dropped = CounterMetricFamily("tunnel_worker_log_dropped_lines",
                                          "Console lines of the tunnel's workers dropped beyond --worker-log-rate.",
                                          labels=["tunnel"])
        dropped = self._log_dropped()
        for name in names:
            stats = self.metrics.tunnels.get(name) or TunnelStats()
            for status, count in sorted(stats.origin_responses.items()):
                origin.add_metric([name, str(status)], count)
            for (status, reason), count in sorted(stats.edge_responses.items()):
                edge.add_metric([name, str(status), reason], count)
            cumulative = 0
            buckets = []
            for bound, count in zip((*DURATION_BUCKETS, float("inf")), stats.buckets):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            duration.add_metric([name], buckets, stats.duration_sum)
            bytes_in.add_metric([name], stats.bytes_in)
            bytes_out.add_metric([name], stats.bytes_out)
            in_flight.add_metric([name], stats.in_flight)
            conns.add_metric([name], self.connections(name))
            for kind, count in sorted(stats.worker_errors.items()):
                worker.add_metric([name, kind], count)
            log_dropped.add_metric([name], dropped.get(name, 0))
        yield from (origin, edge, duration, bytes_in, bytes_out, in_flight, conns, worker, log_dropped)
        if self.only is None:
            yield from self._edge_wide()

    def _log_dropped(self) -> dict[str, int]:
        """Dropped console lines per tunnel, summed over its workers' keys."""
        by_tunnel: dict[str, int] = {}
        for key, count in ((self.loader_stats() or {}).get("log_dropped") or {}).items():
            parsed = parse_key(key)
            if parsed is not None and parsed[0] != "config":
                by_tunnel[parsed[1]] = by_tunnel.get(parsed[1], 0) + count
        return by_tunnel

    def _edge_wide(self) -> Iterable[Metric]:
        unknown = CounterMetricFamily("tunnel_unknown_host_requests", "Requests for a hostname no tunnel serves.")
        unknown.add_metric([], self.metrics.unknown_host)
        yield unknown
        version = GaugeMetricFamily("tunnel_config_active_version", "The active config version.")
        version.add_metric([], self.metrics.active_version)
        yield version
        pushes = CounterMetricFamily("tunnel_config_pushes", "Config pushes by result.", labels=["result"])
        for result, count in sorted(self.metrics.pushes.items()):
            pushes.add_metric([result], count)
        yield pushes
        acked = GaugeMetricFamily("tunnel_connector_connections_by_config_version",
                                  "Connector connections by the config version they acknowledged (0: none yet).",
                                  labels=["version"])
        counts: dict[int, int] = {}
        for version in self.acked_versions():
            counts[version] = counts.get(version, 0) + 1
        for version, count in sorted(counts.items()):
            acked.add_metric([str(version)], count)
        yield acked
        stats = self.loader_stats()
        if not stats:
            return
        for key, help_text in (("hits", "Worker cache hits."), ("misses", "Worker cache misses."),
                               ("loads", "Worker loads."), ("load_failures", "Failed worker loads."),
                               ("evictions", "Workers evicted.")):
            family = CounterMetricFamily(f"tunnel_loader_{key}", help_text)
            family.add_metric([], stats.get(key, 0))
            yield family
        load_seconds = CounterMetricFamily("tunnel_loader_load_seconds", "Time spent loading workers.")
        load_seconds.add_metric([], float(stats.get("load_seconds", 0.0)))
        yield load_seconds
        cached = GaugeMetricFamily("tunnel_loader_workers", "Workers cached now.")
        cached.add_metric([], stats.get("workers", 0))
        yield cached
        memory = GaugeMetricFamily("tunnel_loader_worker_memory_bytes", "QuickJS heap of the cached workers.")
        memory.add_metric([], stats.get("memory_bytes", 0))
        yield memory


def exposition(collector: TunnelCollector, extra: str = "") -> bytes:
    """Render one collector (plus already-rendered custom series) in the text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    text = generate_latest(registry)
    return text + extra.encode() if extra else text
