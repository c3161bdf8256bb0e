"""Credential hashes as they appear in config: ``sha256:<64 lowercase hex digits>``.

Basic-auth credentials hash ``user:password``; bearer tokens and ``metrics_token`` hash the token
itself. Both are UTF-8 encoded before hashing, which is what the tunnel worker does too.
"""

from __future__ import annotations

import hashlib
import hmac
import re

PREFIX = "sha256:"
_HASH = re.compile(r"^sha256:[0-9a-fA-F]{64}$")


def hash_secret(secret: str) -> str:
    """Return the config form (``sha256:<hex>``) of a secret (a token, or ``user:password``)."""
    return PREFIX + hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def hash_password(user: str, password: str) -> str:
    """Return the config form of a basic-auth credential (the hash of ``user:password``)."""
    if ":" in user:
        raise ValueError("a basic-auth user name cannot contain ':'")
    return hash_secret(f"{user}:{password}")


def is_credential_hash(value: object) -> bool:
    """True when ``value`` is a well-formed ``sha256:<hex>`` string."""
    return isinstance(value, str) and bool(_HASH.match(value))


def normalize_hash(value: str) -> str:
    """Return a well-formed credential hash with its hex digits lowercased."""
    return PREFIX + value[len(PREFIX):].lower()


def verify_secret(secret: str, expected_hash: str) -> bool:
    """Constant-time check of ``secret`` against one ``sha256:<hex>`` hash (for the edge's use)."""
    return hmac.compare_digest(hash_secret(secret), normalize_hash(expected_hash))
