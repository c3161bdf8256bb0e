"""Typed readers for raw config values: each checks one value and records a problem at its path.

Every reader returns the checked (normalised) value, or None after recording what was wrong,
so that validation goes on and reports every error in one pass.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from tunnel.config.errors import Problems

_SIMPLE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
HEADER_VALUE = re.compile(r"^[\t\x20-\x7e]*$")
COOKIE_NAME = HEADER_NAME
IDENT = re.compile(r"^[a-z0-9](?:[a-z0-9_-]{0,62})$")


def join(path: str, key: object) -> str:
    """The path of ``key`` inside ``path`` (``a.b``; odd keys as ``a["x.y"]``)."""
    if isinstance(key, int) and not isinstance(key, bool):
        return f"{path}[{key}]"
    if isinstance(key, str) and _SIMPLE_KEY.match(key):
        return f"{path}.{key}" if path else key
    import json

    return f"{path}[{json.dumps(key, ensure_ascii=True, default=str)}]"


def describe(value: object) -> str:
    """A short name of a raw value's type for messages."""
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a mapping"}.get(type(value), type(value).__name__)


def mapping(p: Problems, path: str, value: Any, allowed: Iterable[str], required: Iterable[str] = ()
            ) -> dict[str, Any] | None:
    """Check that ``value`` is a mapping with only ``allowed`` keys and every ``required`` key."""
    if not isinstance(value, dict):
        p.add(path, f"must be a mapping, not {describe(value)}")
        return None
    allowed = tuple(allowed)
    for key in value:
        if key not in allowed:
            p.add(join(path, key), f"unknown key (expected one of: {', '.join(allowed)})")
    for key in required:
        if key not in value:
            p.add(join(path, key), "is required")
    return value


def string(p: Problems, path: str, value: Any, *, empty: bool = False, pattern: re.Pattern | None = None,
           what: str = "") -> str | None:
    """Check a string (non-empty unless ``empty``; matching ``pattern`` when given)."""
    if not isinstance(value, str):
        p.add(path, f"must be a string, not {describe(value)}")
        return None
    if not value and not empty:
        p.add(path, "must not be empty")
        return None
    if pattern is not None and not pattern.match(value):
        p.add(path, f"must be {what or 'a valid value'}, not {value!r}")
        return None
    return value


def integer(p: Problems, path: str, value: Any, *, low: int | None = None, high: int | None = None,
            what: str = "an integer") -> int | None:
    """Check an integer within ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low) or (
            high is not None and value > high):
        p.add(path, f"must be {what}")
        return None
    return value


def number(p: Problems, path: str, value: Any, *, low: float, high: float, what: str) -> float | None:
    """Check a finite number within ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (low <= value <= high):
        p.add(path, f"must be {what}")
        return None
    return float(value)


def boolean(p: Problems, path: str, value: Any) -> bool | None:
    """Check a boolean."""
    if not isinstance(value, bool):
        p.add(path, f"must be true or false, not {describe(value)}")
        return None
    return value


def items(p: Problems, path: str, value: Any, *, single: bool = True, nonempty: bool = True) -> list[Any] | None:
    """Check a list (a lone scalar counts as a one-item list when ``single``)."""
    if single and isinstance(value, (str, int)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list):
        p.add(path, f"must be a list, not {describe(value)}")
        return None
    if nonempty and not value:
        p.add(path, "must not be empty")
        return None
    return value


def header_name(p: Problems, path: str, value: Any) -> str | None:
    """Check an HTTP header name (a token); return it as written."""
    return string(p, path, value, pattern=HEADER_NAME, what="an HTTP header name")


def header_value(p: Problems, path: str, value: Any) -> str | None:
    """Check an HTTP header value (printable ASCII, spaces and tabs; no line breaks)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    return string(p, path, value, empty=True, pattern=HEADER_VALUE,
                  what="a header value (printable ASCII, no line breaks)")


def header_map(p: Problems, path: str, value: Any) -> tuple[tuple[str, str], ...] | None:
    """Check a ``{Header-Name: value}`` mapping; return ``(name, value)`` pairs in order."""
    if not isinstance(value, dict) or not value:
        p.add(path, "must be a non-empty mapping of header names to values")
        return None
    out = []
    for name, val in value.items():
        n = header_name(p, join(path, name), name)
        v = header_value(p, join(path, name), val)
        if n is not None and v is not None:
            out.append((n, v))
    return tuple(out)


def http_status(p: Problems, path: str, value: Any, *, low: int = 200, high: int = 599) -> int | None:
    """Check an HTTP status code within ``[low, high]``."""
    return integer(p, path, value, low=low, high=high, what=f"an HTTP status code from {low} to {high}")
