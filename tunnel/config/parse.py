"""Raw document → validated :class:`Config`, in one pass that reports every error with its path."""

from __future__ import annotations

import re
from types import MappingProxyType
from typing import Any, Mapping

from tunnel.config import credentials, patterns
from tunnel.config import validate as v
from tunnel.config.document import canonical_json, check_depth
from tunnel.config.errors import ConfigError, Problems
from tunnel.config.ingress import parse_ingress
from tunnel.config.metrics import check_shared_names, parse_metrics
from tunnel.config.model import WORKER_LIMIT_RANGES, Config, CustomWorker, Policy, TunnelConfig
from tunnel.config.policy import parse_policy

TUNNEL_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_MODULE_NAME = re.compile(r"^(?:[A-Za-z0-9_][A-Za-z0-9_.-]*/)*[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_MODULE_TYPES = ("js", "cjs", "text", "json")
TUNNEL_KEYS = ("hostnames", "ingress", "policy", "metrics", "metrics_token", "worker", "https_only")


def parse_config(doc: Mapping[str, Any]) -> Config:
    """Validate a raw document (as from :func:`load_yaml` or JSON).

    Returns the frozen :class:`Config`; raises :class:`ConfigError` whose ``errors`` name every bad
    path (``tunnels.web.policy.on_request[1].actions[0].rate_limit.capacity: must be …``).
    """
    check_depth(doc)
    p = Problems()
    root = v.mapping(p, "<root>", doc, ("tunnels",))
    if root is None:
        p.raise_if_any()
    raw_tunnels = root.get("tunnels")
    if raw_tunnels is None:
        raw_tunnels = {}
    if not isinstance(raw_tunnels, dict):
        p.add("tunnels", f"must be a mapping of tunnel names to tunnels, not {v.describe(raw_tunnels)}")
        raw_tunnels = {}
    tunnels: dict[str, TunnelConfig] = {}
    owner: dict[str, str] = {}
    for name, raw in raw_tunnels.items():
        path = v.join("tunnels", name)
        if not isinstance(name, str) or not TUNNEL_NAME.match(name):
            p.add(path, "tunnel name must be lowercase letters, digits and '-' (at most 63, no leading or trailing '-')")
            continue
        tunnel = _tunnel(p, path, name, {} if raw is None else raw, owner)
        if tunnel is not None:
            tunnels[name] = tunnel
    check_shared_names(p, {name: t.metrics for name, t in tunnels.items()})
    p.raise_if_any()
    try:
        text = canonical_json(doc)
    except ValueError as exc:
        raise ConfigError([f"<root>: {exc}"]) from None
    return Config(tunnels=MappingProxyType(tunnels), canonical_json=text)


def _tunnel(p: Problems, path: str, name: str, raw: Any, owner: dict[str, str]) -> TunnelConfig | None:
    m = v.mapping(p, path, raw, TUNNEL_KEYS)
    if m is None:
        return None
    hostnames = _hostnames(p, v.join(path, "hostnames"), m.get("hostnames", []), name, owner)
    ingress = parse_ingress(p, v.join(path, "ingress"), m["ingress"], hostnames) if "ingress" in m else ()
    policy = parse_policy(p, v.join(path, "policy"), m["policy"]) if m.get("policy") is not None else Policy()
    metrics = parse_metrics(p, v.join(path, "metrics"), m["metrics"]) if m.get("metrics") is not None else ()
    token = None
    if m.get("metrics_token") is not None:
        if credentials.is_credential_hash(m["metrics_token"]):
            token = credentials.normalize_hash(m["metrics_token"])
        else:
            p.add(v.join(path, "metrics_token"),
                  "must be a credential hash `sha256:<64 hex digits>` (see `tunnel hash-password`), never the token")
    worker = _worker(p, v.join(path, "worker"), m["worker"]) if m.get("worker") is not None else None
    https_only = bool(v.boolean(p, v.join(path, "https_only"), m["https_only"])) if "https_only" in m else False
    return TunnelConfig(name=name, hostnames=hostnames, ingress=ingress, policy=policy, metrics=metrics,
                        metrics_token=token, worker=worker, https_only=https_only)


def _hostnames(p: Problems, path: str, raw: Any, tunnel: str, owner: dict[str, str]) -> tuple[str, ...]:
    hosts = v.items(p, path, raw, nonempty=False) or []
    out: list[str] = []
    for i, host in enumerate(hosts):
        hpath = v.join(path, i)
        if not isinstance(host, str) or not patterns.is_host_pattern(host.lower()):
            p.add(hpath, f"not a valid hostname: {host!r} (a name, optionally with one leading '*.')")
            continue
        host = host.lower()
        if host in owner:
            where = "this tunnel" if owner[host] == tunnel else f"tunnel {owner[host]}"
            p.add(hpath, f"{host} is already bound to {where}")
            continue
        owner[host] = tunnel
        out.append(host)
    return tuple(out)


def _limits(p: Problems, path: str, raw: Any) -> dict[str, float] | None:
    """``worker.limits``: ``{cpu_ms, memory_mb}`` for the tunnel's custom code (either may be left out)."""
    m = v.mapping(p, path, raw, tuple(WORKER_LIMIT_RANGES))
    if m is None:
        return None
    limits: dict[str, float] = {}
    for name, unit in (("cpu_ms", "milliseconds of CPU per request"), ("memory_mb", "MiB of heap")):
        if name in m:
            low, high = WORKER_LIMIT_RANGES[name]
            checked = v.number(p, v.join(path, name), m[name], low=low, high=high, what=f"{low}–{high} {unit}")
            if checked is not None:
                limits[name] = checked
    return limits


def _worker(p: Problems, path: str, raw: Any) -> CustomWorker | None:
    m = v.mapping(p, path, raw, ("main_module", "modules", "limits"), required=("main_module", "modules"))
    if m is None:
        return None
    limits = _limits(p, v.join(path, "limits"), m["limits"]) if m.get("limits") is not None else None
    modules: dict[str, Any] = {}
    mpath = v.join(path, "modules")
    if not isinstance(m.get("modules"), dict) or not m.get("modules"):
        p.add(mpath, "must be a non-empty mapping of module names to code")
    else:
        for name, value in m["modules"].items():
            npath = v.join(mpath, name)
            if not isinstance(name, str) or not _MODULE_NAME.match(name) or ".." in name.split("/"):
                p.add(npath, "a module name is a relative path like index.js or lib/util.js")
                continue
            if isinstance(value, str):
                if not name.endswith(".js"):
                    p.add(npath, "a plain string module must be named *.js; use {text: …}, {json: …} or {cjs: …}")
                    continue
                modules[name] = value
            elif isinstance(value, dict) and len(value) == 1 and next(iter(value)) in _MODULE_TYPES:
                kind, body = next(iter(value.items()))
                if kind != "json" and not isinstance(body, str):
                    p.add(v.join(npath, kind), f"must be a string, not {v.describe(body)}")
                    continue
                modules[name] = {kind: body}
            else:
                p.add(npath, "must be a string (an ES module) or one of {js: …}, {cjs: …}, {text: …}, {json: …}")
    main = v.string(p, v.join(path, "main_module"), m.get("main_module"))
    if main is not None and modules and main not in modules:
        p.add(v.join(path, "main_module"), f"{main} is not one of the modules ({', '.join(modules)})")
    elif main is not None and main in modules:
        value = modules[main]
        if not (isinstance(value, str) or "js" in value):
            p.add(v.join(path, "main_module"), "the main module must be an ES module")
    if main is None or not modules:
        return None
    return CustomWorker(main_module=main, modules=MappingProxyType(modules),
                        limits=MappingProxyType(limits) if limits else None)
