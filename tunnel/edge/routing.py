"""Hostname → tunnel routing table, built from one config version (hot path: a dict lookup)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


class RoutingTable:
    """Maps a request's Host to a tunnel name.

    Exact hostnames win; otherwise the longest ``*.suffix`` wildcard whose suffix the host ends
    with (any depth below it). Lookups ignore case, a trailing dot and a port.
    """

    def __init__(self, hostnames: Mapping[str, Sequence[str]] | None = None):
        self.exact: dict[str, str] = {}
        self.wildcards: list[tuple[str, str]] = []  # (".suffix", tunnel), longest first
        for tunnel, hosts in (hostnames or {}).items():
            for host in hosts:
                host = host.lower().rstrip(".")
                if host.startswith("*."):
                    self.wildcards.append((host[1:], tunnel))
                else:
                    self.exact[host] = tunnel
        self.wildcards.sort(key=lambda item: -len(item[0]))
        self._cache: dict[str, str | None] = {}

    def lookup(self, host: str) -> str | None:
        """Return the tunnel serving ``host`` (a Host header value), or None."""
        cached = self._cache.get(host)
        if cached is not None or host in self._cache:
            return cached
        name = _normalize(host)
        tunnel = self.exact.get(name)
        if tunnel is None:
            for suffix, candidate in self.wildcards:
                if name.endswith(suffix) and len(name) > len(suffix):
                    tunnel = candidate
                    break
        if len(self._cache) < 10_000:
            self._cache[host] = tunnel
        return tunnel


def _normalize(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):  # IPv6 literal
        end = host.find("]")
        return host[: end + 1] if end > 0 else host
    name, _, port = host.rpartition(":")
    if name and port.isdigit():
        host = name
    return host.rstrip(".")
