"""The routing table of one config version: hostname (exact, or ``*.`` wildcard) → tunnel.

The ``config-<version>`` worker embeds this same table and answers ``GET /route`` with what
:meth:`RoutingTable.route` returns, so the edge may use this object on its hot path.
Exact names win over wildcards; among wildcards the longest suffix wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

from tunnel.config.ingress import match_ingress
from tunnel.config.model import Config, IngressRule
from tunnel.config.patterns import normalize_host


@dataclass(frozen=True)
class RoutingTable:
    """Hostname → tunnel lookups, plus each tunnel's ingress rules (the connector side)."""

    exact: Mapping[str, str]
    wildcards: tuple[tuple[str, str], ...]  # (".suffix", tunnel), longest suffix first
    ingress: Mapping[str, tuple[IngressRule, ...]]

    def lookup(self, host: str) -> tuple[str, str] | None:
        """``(tunnel, matched hostname pattern)`` for a Host value (any case, port allowed), or None."""
        host = normalize_host(host)
        tunnel = self.exact.get(host)
        if tunnel is not None:
            return tunnel, host
        index = self._wildcard_index
        dot = host.find(".", 1)
        while dot > 0:  # longest suffix first: one dict lookup per label
            tunnel = index.get(host[dot:])
            if tunnel is not None:
                return tunnel, "*" + host[dot:]
            dot = host.find(".", dot + 1)
        return None

    @property
    def _wildcard_index(self) -> dict[str, str]:
        index = self.__dict__.get("_index")
        if index is None:
            index = dict(self.wildcards)
            object.__setattr__(self, "_index", index)
        return index

    def route(self, host: str, path: str = "/") -> dict[str, Any] | None:
        """The config worker's ``/route`` answer: ``{tunnel, hostname, ingress}``, or None (404).

        ``ingress`` is ``{"index", "service"}`` of the first matching ingress rule, or None when
        the tunnel has no ingress (the connector's ``--url`` serves it).
        """
        found = self.lookup(host)
        if found is None:
            return None
        tunnel, pattern = found
        rule = match_ingress(self.ingress.get(tunnel, ()), host, path)
        return {"tunnel": tunnel, "hostname": pattern,
                "ingress": None if rule is None else {"index": rule.index, "service": rule.service}}

    def as_data(self) -> dict[str, Any]:
        """The table as JSON data (what the config worker embeds)."""
        return {
            "exact": [[h, t] for h, t in self.exact.items()],
            "wildcards": [[s, t] for s, t in self.wildcards],
            "ingress": [[t, [{"index": r.index, "hostname": r.hostname, "path": r.path, "service": r.service}
                             for r in rules]] for t, rules in self.ingress.items()],
        }


def build_routing_table(config: Config) -> RoutingTable:
    """Build the routing table of a validated config (hostnames are unique across tunnels)."""
    exact: dict[str, str] = {}
    wildcards: list[tuple[str, str]] = []
    for name, tunnel in config.tunnels.items():
        for host in tunnel.hostnames:
            if host.startswith("*."):
                wildcards.append((host[1:], name))
            else:
                exact[host] = name
    wildcards.sort(key=lambda item: (-len(item[0]), item[0]))
    ingress = {name: t.ingress for name, t in config.tunnels.items() if t.ingress}
    return RoutingTable(exact=MappingProxyType(exact), wildcards=tuple(wildcards),
                        ingress=MappingProxyType(ingress))
