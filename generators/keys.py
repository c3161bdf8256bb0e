"""The loader cache keys of generated workers. This module alone spells their formats."""

from __future__ import annotations

import re

_KEY = re.compile(r"^(tunnel|custom|metrics)-([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)$|^config-([1-9][0-9]*)$")


def tunnel_key(tunnel_id: str) -> str:
    """The key of a tunnel's policy worker: ``tunnel-<id>``."""
    return f"tunnel-{tunnel_id}"


def custom_key(tunnel_id: str) -> str:
    """The key of a tunnel's custom JavaScript when it also has a policy: ``custom-<id>`` (the
    policy worker ``tunnel-<id>`` calls it through ``env.CUSTOM``)."""
    return f"custom-{tunnel_id}"


def metrics_key(tunnel_id: str) -> str:
    """The key of a tunnel's metrics worker: ``metrics-<id>``."""
    return f"metrics-{tunnel_id}"


def config_key(version: int) -> str:
    """The key of a config version's routing worker: ``config-<version>``."""
    return f"config-{int(version)}"


def parse_key(key: str) -> tuple[str, str] | None:
    """``("tunnel"|"custom"|"metrics", id)`` or ``("config", "<version>")`` for a generated key; None for any other."""
    m = _KEY.match(key)
    if m is None:
        return None
    if m.group(3) is not None:
        return "config", m.group(3)
    return m.group(1), m.group(2)
