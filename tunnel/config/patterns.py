"""Small pure matchers shared by the config model, the generators and the edge.

- Hostname patterns: an exact name, or ``*.`` followed by a name, which matches any name that
  ends with ``.<name>`` (any depth, as cloudflared's ingress does) but not ``<name>`` itself.
- Path globs: ``*`` matches any run of characters (``/`` included); everything else is literal;
  the whole path must match (``/api/*`` matches ``/api/x/y``, not ``/api``).
- CIDR lists, normalised so that IPv4 and IPv6 share one form (IPv4 maps to ``::ffff:0:0/96``).

The generated JavaScript implements the same rules; tests check that both agree.
"""

from __future__ import annotations

import ipaddress
import re

HOST_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
HOST_PATTERN = re.compile(rf"^(\*\.)?(?:{HOST_LABEL}\.)*{HOST_LABEL}$")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")
_UNITS_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def normalize_host(host: str) -> str:
    """Lowercase (ASCII only) a Host value, drop spaces/tabs around it, its port and trailing dots.

    ``[::1]:8080`` keeps ``[::1]``. The config worker's JavaScript does exactly the same.
    """
    host = host.strip(" \t").translate(_ASCII_LOWER)
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end >= 0 else host
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def url_authority(host: str) -> str:
    """A Host value as the authority of the URL a worker sees: the name as ``normalize_host``
    gives it (what routing and the policy match), with the port kept when there is one."""
    name = normalize_host(host)
    rest = host.strip(" \t")
    if rest.startswith("["):
        rest = rest[rest.find("]") + 1:] if "]" in rest else ""
    port = rest.rsplit(":", 1)[1] if rest.count(":") == 1 else ""
    return f"{name}:{port}" if port.isdigit() else name


def is_host_pattern(value: str) -> bool:
    """True when ``value`` (already lowercased) is a hostname or a ``*.`` wildcard hostname."""
    return len(value) <= 253 and bool(HOST_PATTERN.match(value))


def host_matches(pattern: str, host: str) -> bool:
    """True when normalised ``host`` matches ``pattern`` (exact, or ``*.suffix`` at any depth)."""
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern


_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")


def normalize_glob(glob: str) -> str:
    """A path glob in the form request paths are matched in (``tunnel.http1.normalize_target``):
    escapes of unreserved characters decoded, other escapes in upper case, characters outside
    ASCII percent-encoded as UTF-8. ``/caf%c3%a9/*`` and ``/café/*`` both become ``/caf%C3%A9/*``."""
    def escape(m: re.Match) -> str:
        char = chr(int(m.group(1), 16))
        return char if char in _UNRESERVED else "%" + m.group(1).upper()

    text = _ESCAPE.sub(escape, glob)
    if text.isascii():
        return text
    return "".join(c if c < "\x80" else "".join("%%%02X" % b for b in c.encode("utf-8", "surrogatepass"))
                   for c in text)


def glob_match(glob: str, text: str) -> bool:
    """True when the whole of ``text`` matches ``glob`` (``*`` = any run of characters)."""
    parts = glob.split("*")
    if len(parts) == 1:
        return text == glob
    first, last = parts[0], parts[-1]
    if not text.startswith(first) or len(text) < len(first) + len(last) or not text.endswith(last):
        return False
    pos, end = len(first), len(text) - len(last)
    for middle in parts[1:-1]:
        found = text.find(middle, pos, end)
        if found < 0:
            return False
        pos = found + len(middle)
    return True


def parse_duration(value: object) -> float | None:
    """Seconds in a duration (``60s``, ``500ms``, ``5m``, ``1h`` or a number of seconds), or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if value > 0 else None
    if isinstance(value, str):
        m = _DURATION.match(value.strip())
        if m:
            seconds = float(m.group(1)) * _UNITS_S[m.group(2)]
            return seconds if seconds > 0 else None
    return None


def parse_network(value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """Parse a CIDR (or a bare address); raise ValueError when it is not one (host bits must be 0)."""
    return ipaddress.ip_network(value.strip(), strict=True)


def network_words(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> tuple[list[int], int]:
    """A network as eight 16-bit words and a prefix length over 128 bits (IPv4 mapped into ::ffff:0:0/96)."""
    if net.version == 4:
        mapped = ipaddress.IPv6Address("::ffff:" + str(net.network_address))
        words, prefix = mapped.packed, net.prefixlen + 96
    else:
        words, prefix = net.network_address.packed, net.prefixlen
    return [int.from_bytes(words[i : i + 2], "big") for i in range(0, 16, 2)], prefix


def ip_in_networks(ip: str, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    """True when address ``ip`` lies in one of ``networks``, compared as the worker does.

    IPv4 addresses and networks live in ``::ffff:0:0/96``, so ``::ffff:10.0.0.1`` is in
    ``10.0.0.0/8`` and every IPv4 address is in ``::/0``.
    """
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0].strip("[]"))
    except ValueError:
        return False
    if addr.version == 4:
        addr = ipaddress.IPv6Address("::ffff:" + str(addr))
    value = int(addr)
    for net in networks:
        words, prefix = network_words(net)
        base = int.from_bytes(b"".join(w.to_bytes(2, "big") for w in words), "big")
        if prefix == 0 or (value >> (128 - prefix)) == (base >> (128 - prefix)):
            return True
    return False
