"""Helpers for the edge around ``metrics-<id>``: what to feed it, and how to merge its output.

- :func:`observed_headers` — the (lowercased) request headers a tunnel's metrics read, so the
  edge sends only those in each exchange.
- :func:`exchange` — one exchange record in the shape ``POST /observe`` takes.
- :func:`merge_expositions` — several tunnels' ``GET /metrics`` texts as one exposition: one
  HELP/TYPE pair per family, samples grouped under it (the config model guarantees that a name
  shared by tunnels has the same type, help and buckets).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from tunnel.config.model import TunnelConfig


def observed_headers(tunnel: TunnelConfig) -> frozenset[str]:
    """Lowercased names of the request headers the tunnel's custom metrics read."""
    return frozenset(label.header for d in tunnel.metrics for label in d.labels
                     if label.source == "header" and label.header)


def exchange(method: str, path: str, status: int, duration_s: float,
             headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
             only: frozenset[str] | None = None) -> dict[str, Any]:
    """One finished exchange for ``POST /observe`` (header names lowercased; the first value wins).

    ``only`` limits the headers to those names (see :func:`observed_headers`).
    """
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    kept: dict[str, str] = {}
    for name, value in pairs:
        key = name.lower()
        if (only is None or key in only) and key not in kept:
            kept[key] = value
    return {"method": method, "path": path, "status": status, "duration_s": duration_s, "headers": kept}


def merge_expositions(texts: Iterable[str]) -> str:
    """Merge Prometheus text expositions (format 0.0.4) whose families may repeat across texts.

    Families keep the order in which they first appear; each gets its first HELP and TYPE lines
    and then every sample of every text, in order.
    """
    order: list[str] = []
    meta: dict[str, list[str]] = {}
    samples: dict[str, list[str]] = {}
    for text in texts:
        family = None
        for line in text.splitlines():
            if not line:
                continue
            if line.startswith("# HELP ") or line.startswith("# TYPE "):
                family = line.split(" ", 3)[2]
                if family not in meta:
                    order.append(family)
                    meta[family], samples[family] = [], []
                if not any(m.startswith(line[:7]) for m in meta[family]):
                    meta[family].append(line)
            elif line.startswith("#"):
                continue
            elif family is not None:
                samples[family].append(line)
    out = [line for family in order for line in meta[family] + samples[family]]
    return "\n".join(out) + "\n" if out else ""
