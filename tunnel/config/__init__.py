"""Edge config: raw document (YAML/JSON) → validated, frozen objects.

INTERIM STUB used by the tunnel core until the full config model lands. The public names here
(`ConfigError`, `parse_config`, `load_yaml`, `Config`, `TunnelConfig`) are the contract the edge
uses; the full model keeps them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

import yaml

_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_HOST = re.compile(r"^(\*\.)?(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


class ConfigError(ValueError):
    """A config document is invalid; ``errors`` lists every problem as ``path: message``."""

    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = list(errors)


@dataclass(frozen=True)
class TunnelConfig:
    name: str
    hostnames: tuple[str, ...]


@dataclass(frozen=True)
class Config:
    tunnels: Mapping[str, TunnelConfig] = field(default_factory=lambda: MappingProxyType({}))


def load_yaml(text: str) -> dict[str, Any]:
    """Parse YAML text into a raw document; a YAML error becomes a ConfigError."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"<yaml>: {exc}"]) from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(["<root>: must be a mapping"])
    return doc


def parse_config(doc: Mapping[str, Any]) -> Config:
    """Validate a raw document; raise ConfigError naming every bad path."""
    errors: list[str] = []
    tunnels_raw = doc.get("tunnels") or {}
    tunnels: dict[str, TunnelConfig] = {}
    owner: dict[str, str] = {}
    for name, raw in tunnels_raw.items():
        path = f"tunnels.{name}"
        if not isinstance(name, str) or not _NAME.match(name):
            errors.append(f"{path}: tunnel name must be lowercase letters, digits and '-'")
            continue
        hosts = (raw or {}).get("hostnames") or []
        for i, host in enumerate(hosts):
            if not isinstance(host, str) or not _HOST.match(host.lower()):
                errors.append(f"{path}.hostnames[{i}]: not a valid hostname: {host!r}")
            elif host.lower() in owner:
                errors.append(f"{path}.hostnames[{i}]: {host} is already bound to tunnel {owner[host.lower()]}")
            else:
                owner[host.lower()] = name
        tunnels[name] = TunnelConfig(name=name, hostnames=tuple(h.lower() for h in hosts if isinstance(h, str)))
    if errors:
        raise ConfigError(errors)
    return Config(tunnels=MappingProxyType(tunnels))
