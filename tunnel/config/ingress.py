"""Connector-side ingress rules, checked the way cloudflared checks its own.

Rules are tried in order and the first match wins; a rule may constrain the hostname (exact or
one leading ``*.``) and the path (a glob, see :mod:`tunnel.config.patterns`); the last rule must
be a catch-all (no hostname, no path) and only the last may be one.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from tunnel.config import patterns
from tunnel.config import validate as v
from tunnel.config.errors import Problems
from tunnel.config.model import IngressRule

_HTTP_STATUS = re.compile(r"^http_status:([2-5][0-9][0-9])$")


def check_service(p: Problems, path: str, value: Any) -> str | None:
    """Check an origin service: ``http(s)://host[:port]`` (no path, query or fragment) or ``http_status:NNN``."""
    text = v.string(p, path, value)
    if text is None:
        return None
    if _HTTP_STATUS.match(text):
        return text
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        p.add(path, f"not a valid URL: {exc}")
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        p.add(path, f"must be an http:// or https:// URL with a host, or http_status:<code>, not {text!r}")
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        p.add(path, "a service URL cannot have a path, query, fragment or credentials "
                    "(the request's own path is kept)")
        return None
    del port
    return text.rstrip("/")


def check_path_glob(p: Problems, path: str, value: Any) -> str | None:
    """Check a path glob: starts with ``/`` or ``*``, no whitespace or control characters."""
    text = v.string(p, path, value)
    if text is None:
        return None
    if not text.startswith(("/", "*")) or any(c.isspace() or ord(c) < 0x20 for c in text):
        p.add(path, f"must be a path glob starting with '/' (like /api/*), not {text!r}")
        return None
    return patterns.normalize_glob(text)


def parse_ingress(p: Problems, path: str, raw: Any, hostnames: tuple[str, ...]) -> tuple[IngressRule, ...]:
    """Validate a tunnel's ``ingress`` list; ``hostnames`` are the tunnel's own (for reachability)."""
    rules_raw = v.items(p, path, raw, single=False, nonempty=False)
    if rules_raw is None:
        return ()
    if not rules_raw:
        p.add(path, "must not be empty (omit `ingress` to send everything to the connector's --url)")
        return ()
    rules: list[IngressRule] = []
    for i, item in enumerate(rules_raw):
        rpath = v.join(path, i)
        m = v.mapping(p, rpath, item, ("hostname", "path", "service"), required=("service",))
        if m is None:
            continue
        host = None
        if m.get("hostname") not in (None, "*"):
            host = v.string(p, v.join(rpath, "hostname"), m["hostname"])
            if host is not None:
                host = host.lower()
                if not patterns.is_host_pattern(host):
                    p.add(v.join(rpath, "hostname"),
                          f"must be a hostname, optionally with one leading '*.', not {m['hostname']!r}")
                    host = None
                elif hostnames and not any(_overlaps(h, host) for h in hostnames):
                    p.add(v.join(rpath, "hostname"),
                          f"{host} is not served by this tunnel (its hostnames: {', '.join(hostnames)})")
        glob = None
        if m.get("path") not in (None, "*"):
            glob = check_path_glob(p, v.join(rpath, "path"), m["path"])
        service = check_service(p, v.join(rpath, "service"), m.get("service")) if "service" in m else None
        if service is not None:
            rules.append(IngressRule(index=i, service=service, hostname=host, path=glob))
    for rule in rules[:-1]:
        if rule.is_catch_all:
            p.add(v.join(path, rule.index), "a catch-all rule (no hostname, no path) must be the last rule: "
                                            "the rules after it can never match")
    last = len(rules_raw) - 1
    if rules and rules[-1].index == last and not rules[-1].is_catch_all:
        p.add(v.join(path, last), "the last rule must be a catch-all (no hostname, no path), "
                                  "like `- service: http://127.0.0.1:3000`")
    return tuple(rules)


def _overlaps(tunnel_host: str, rule_host: str) -> bool:
    """True when some request host could match both patterns."""
    if patterns.host_matches(tunnel_host, rule_host.removeprefix("*.")) or tunnel_host == rule_host:
        return True
    return patterns.host_matches(rule_host, tunnel_host.removeprefix("*."))


def match_ingress(rules: tuple[IngressRule, ...], host: str, path: str) -> IngressRule | None:
    """The first rule matching ``host`` (any case, port allowed) and ``path``; None when no rule does."""
    host = patterns.normalize_host(host)
    for rule in rules:
        if rule.matches(host, path):
            return rule
    return None
