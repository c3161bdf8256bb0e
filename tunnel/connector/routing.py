"""The connector's own view of its tunnel's config: ingress rules and allowed services.

A connector only ever dials its ``--url`` or a service named in the config version it applied
(ingress rules and A/B variants), and with ``--allow-service`` only services under those
prefixes: the edge cannot make it reach anything else (DESIGN.md, data model).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from tunnel.config.errors import ConfigError, Problems
from tunnel.config.ingress import check_service, parse_ingress
from tunnel.config.model import IngressRule
from tunnel.config.patterns import normalize_host
from tunnel.connector.origin import Origin


@dataclass(frozen=True)
class ConnectorConfig:
    """One applied version: ``ingress`` (possibly empty: everything to ``--url``) and services."""

    version: int = 0
    ingress: tuple[IngressRule, ...] = ()
    services: frozenset[str] = field(default_factory=frozenset)

    def service_for(self, host: str, path: str) -> str | None:
        """The service of the first ingress rule matching ``host``/``path``, or None (``--url``)."""
        if not self.ingress:
            return None
        name = normalize_host(host)
        for rule in self.ingress:
            if rule.matches(name, path):
                return rule.service
        return None


def build_config(version: int, raw: dict[str, Any], allowed_prefixes: tuple[str, ...]) -> ConnectorConfig:
    """Validate the connector part of a config version; raise ConfigError naming each problem.

    ``raw`` is ``{"hostnames", "ingress", "services"}`` as the edge sends it. With
    ``allowed_prefixes`` (``--allow-service``), every service must be admitted by one of them
    (``service_allowed``).
    """
    problems = Problems()
    hostnames = tuple(h for h in raw.get("hostnames") or () if isinstance(h, str))
    ingress: tuple[IngressRule, ...] = ()
    if raw.get("ingress"):
        ingress = parse_ingress(problems, "ingress", raw["ingress"], hostnames)
    services: set[str] = set()
    for i, service in enumerate(raw.get("services") or ()):
        checked = check_service(problems, f"services[{i}]", service)
        if checked is not None:
            services.add(checked)
    for rule in ingress:
        services.add(rule.service)
    if allowed_prefixes:
        for service in sorted(services):
            if not service.startswith("http_status:") and not any(service_allowed(service, p) for p in allowed_prefixes):
                problems.add("services", f"{service} is not allowed by this connector's --allow-service "
                                         f"({', '.join(allowed_prefixes)})")
    problems.raise_if_any()
    return ConnectorConfig(version, ingress, frozenset(services))


def service_allowed(service: str, allowed: str) -> bool:
    """Whether ``--allow-service allowed`` admits ``service``: the same scheme and host, and the same
    port unless ``allowed`` names none (``http://127.0.0.1`` admits every port on that host).
    Compared as parsed URLs, never as text prefixes (``:4100`` must not admit ``:41000``)."""
    try:
        want = urlsplit(allowed.rstrip("/:"))
        have = urlsplit(service)
        want_port, have_port = want.port, have.port or (443 if have.scheme == "https" else 80)
    except ValueError:
        return False
    if want.scheme != have.scheme or not want.hostname or want.hostname != have.hostname:
        return False
    return want_port is None or want_port == have_port


def origin_of(service: str) -> Origin | int:
    """An ``Origin`` to dial, or the status code of an ``http_status:NNN`` service."""
    if service.startswith("http_status:"):
        return int(service.split(":", 1)[1])
    return Origin.parse(service)


__all__ = ["ConnectorConfig", "build_config", "origin_of", "ConfigError"]
