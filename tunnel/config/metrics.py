"""Validation of a tunnel's custom ``metrics`` definitions (compiled into ``metrics-<id>``).

Exposed names are ``tunnel_custom_<name>`` (``_total`` added to counters); label values are
bounded by construction: each label's source has a fixed set of values plus ``other``.
"""

from __future__ import annotations

import math
import re
from typing import Any

from tunnel.config import validate as v
from tunnel.config.errors import Problems
from tunnel.config.model import MetricDefinition, MetricLabel

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,99}$")
_LABEL = re.compile(r"^[a-z][a-z0-9_]{0,49}$")
_RESERVED_SUFFIXES = ("_total", "_bucket", "_sum", "_count", "_created", "_info")
_RESERVED_LABELS = ("tunnel", "le", "quantile")
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def parse_metrics(p: Problems, path: str, raw: Any) -> tuple[MetricDefinition, ...]:
    """Validate a tunnel's ``metrics`` list of counter and histogram definitions."""
    out: list[MetricDefinition] = []
    names: set[str] = set()
    for i, item in enumerate(v.items(p, path, raw, single=False, nonempty=False) or []):
        mpath = v.join(path, i)
        m = v.mapping(p, mpath, item, ("name", "type", "help", "labels", "buckets"), required=("name", "type"))
        if m is None:
            continue
        before = len(p)
        name = v.string(p, v.join(mpath, "name"), m.get("name"), pattern=_NAME,
                        what="a metric name (lowercase letters, digits and '_', starting with a letter)")
        if name is not None and name.endswith(_RESERVED_SUFFIXES):
            p.add(v.join(mpath, "name"), f"cannot end with {', '.join(_RESERVED_SUFFIXES)} (suffixes are added for you)")
        if name is not None and name in names:
            p.add(v.join(mpath, "name"), f"{name} is defined twice in this tunnel")
        names.add(name or "")
        kind = m.get("type")
        if kind not in ("counter", "histogram"):
            p.add(v.join(mpath, "type"), "must be counter or histogram")
        help_text = v.string(p, v.join(mpath, "help"), m.get("help", f"Custom {kind} {name}."))
        buckets: tuple[float, ...] = ()
        if "buckets" in m and kind != "histogram":
            p.add(v.join(mpath, "buckets"), "only histograms have buckets")
        elif kind == "histogram":
            buckets = _buckets(p, v.join(mpath, "buckets"), m.get("buckets", list(DEFAULT_BUCKETS)))
        labels = _labels(p, v.join(mpath, "labels"), m.get("labels", {}))
        if len(p) == before:
            out.append(MetricDefinition(name=name, type=kind, help=help_text, labels=labels, buckets=buckets))
    return tuple(out)


def _buckets(p: Problems, path: str, raw: Any) -> tuple[float, ...]:
    values = v.items(p, path, raw, single=False) or []
    out = []
    for i, b in enumerate(values):
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b):
            p.add(v.join(path, i), "must be a finite number")
        else:
            out.append(float(b))
    if any(b >= a for a, b in zip(out[1:], out)) or len(out) > 50:
        p.add(path, "must be at most 50 strictly increasing numbers (+Inf is added for you)")
    return tuple(out)


def _labels(p: Problems, path: str, raw: Any) -> tuple[MetricLabel, ...]:
    if not isinstance(raw, dict):
        p.add(path, "must be a mapping of label names to sources")
        return ()
    if len(raw) > 8:
        p.add(path, "at most 8 labels")
    out = []
    for name, source in raw.items():
        lpath = v.join(path, name)
        if not isinstance(name, str) or not _LABEL.match(name) or name in _RESERVED_LABELS:
            p.add(lpath, f"must be a label name (lowercase letters, digits, '_'; not {', '.join(_RESERVED_LABELS)})")
            continue
        if source in ("method", "status_class"):
            out.append(MetricLabel(name=name, source=source))
            continue
        if isinstance(source, dict) and "path_template" in source:
            m = v.mapping(p, lpath, source, ("path_template",))
            templates = v.items(p, v.join(lpath, "path_template"), m and m.get("path_template")) or []
            checked = []
            for i, t in enumerate(templates):
                text = v.string(p, v.join(v.join(lpath, "path_template"), i), t)
                if text is not None and not text.startswith("/"):
                    p.add(v.join(v.join(lpath, "path_template"), i), f"must start with '/', not {text!r}")
                elif text is not None:
                    checked.append(text)
            if len(templates) > 200:
                p.add(v.join(lpath, "path_template"), "at most 200 templates")
            out.append(MetricLabel(name=name, source="path_template", values=tuple(checked)))
            continue
        if isinstance(source, dict) and "header" in source:
            m = v.mapping(p, lpath, source, ("header", "allow"), required=("allow",))
            header = v.header_name(p, v.join(lpath, "header"), m and m.get("header"))
            allow = [x for i, x in enumerate(v.items(p, v.join(lpath, "allow"), m and m.get("allow")) or [])
                     if v.header_value(p, v.join(v.join(lpath, "allow"), i), x) is not None and x]
            if len(allow) > 200:
                p.add(v.join(lpath, "allow"), "at most 200 values")
            if header is not None:
                out.append(MetricLabel(name=name, source="header", values=tuple(str(x) for x in allow),
                                       header=header.lower()))
            continue
        p.add(lpath, "must be method, status_class, {path_template: [...]} or {header: <name>, allow: [...]}")
    return tuple(out)


def check_shared_names(p: Problems, defs: dict[str, tuple[MetricDefinition, ...]]) -> None:
    """A metric name used by several tunnels must mean the same family (type, help, buckets).

    ``defs`` maps tunnel name → its definitions. Their series share one exposition family on the
    edge's /metrics, so conflicting definitions would make an invalid exposition.
    """
    first: dict[str, tuple[str, MetricDefinition]] = {}
    for tunnel, metric_defs in defs.items():
        for i, d in enumerate(metric_defs):
            seen = first.setdefault(d.name, (tunnel, d))
            other_tunnel, other = seen
            if other_tunnel != tunnel and (other.type, other.help, other.buckets) != (d.type, d.help, d.buckets):
                p.add(f"tunnels.{tunnel}.metrics[{i}].name",
                      f"{d.name} is also defined by tunnel {other_tunnel} with a different type, help or buckets "
                      "(series of one name share one family on /metrics)")
