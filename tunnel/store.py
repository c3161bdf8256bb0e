"""The edge's durable state in SQLite under ``--data-dir`` (DESIGN.md, "Data model").

* ``config_versions``: every accepted config document, immutable, numbered from 1, with time,
  author and content hash; ``state.active_version`` names the one in force.
* ``connector_tokens``: one hashed connector token per tunnel (the token itself is shown once).
* ``admin_tokens``: hashed admin tokens by name (the name becomes a config version's author).

Every change is one transaction (WAL journal, synchronous=FULL), so a crash leaves either the
old state or the new one. Tokens are 256-bit random secrets, so a plain SHA-256 is a sound
verifier; lookups go by hash and the match is confirmed with a constant-time compare.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunnel.config import ConfigError, parse_config
from tunnel.config.document import content_hash
from tunnel.errors import Conflict, NotFound, StoreError

SCHEMA = """
CREATE TABLE IF NOT EXISTS config_versions (
    version    INTEGER PRIMARY KEY,
    created_at REAL    NOT NULL,
    author     TEXT    NOT NULL,
    hash       TEXT    NOT NULL,
    document   TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS connector_tokens (
    tunnel     TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS admin_tokens (
    name       TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL
);
"""

ADMIN_TOKEN_FILE = "admin.token"


def hash_token(token: str) -> str:
    """The stored verifier of a token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ConfigVersion:
    version: int
    created_at: float
    author: str
    hash: str
    document: dict[str, Any]


class Store:
    """SQLite-backed state of one edge. Methods are synchronous and fast (local file)."""

    def __init__(self, data_dir: str | os.PathLike[str]):
        self.data_dir = Path(data_dir)
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            path = self.data_dir / "edge.db"
            if not path.exists():
                path.touch(mode=0o600)  # it holds token and credential hashes: owner only
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the state in {self.data_dir}: {exc}") from exc
        self._names: tuple[int, frozenset[str]] = (-1, frozenset())  # (active version, its tunnels)

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------------ config versions
    def active(self) -> ConfigVersion | None:
        """The active config version, or None on an empty data dir."""
        row = self.db.execute("SELECT value FROM state WHERE key='active_version'").fetchone()
        return self.version(int(row[0])) if row else None

    def version(self, number: int) -> ConfigVersion:
        row = self.db.execute(
            "SELECT version, created_at, author, hash, document FROM config_versions WHERE version=?",
            (number,)).fetchone()
        if row is None:
            raise NotFound(f"config version {number} does not exist")
        return ConfigVersion(row[0], row[1], row[2], row[3], json.loads(row[4]))

    def next_version(self) -> int:
        """The number the next stored version will get."""
        return self.db.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM config_versions").fetchone()[0]

    def history(self) -> list[ConfigVersion]:
        rows = self.db.execute(
            "SELECT version, created_at, author, hash, document FROM config_versions ORDER BY version").fetchall()
        return [ConfigVersion(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in rows]

    def active_document(self) -> dict[str, Any]:
        active = self.active()
        return active.document if active else {"tunnels": {}}

    def active_tunnels(self) -> frozenset[str]:
        """The tunnel names of the active version, parsed once per version (a connector's HELLO
        and a token rotation ask; with 10,000 tunnels parsing the document each time took 0.3 s)."""
        row = self.db.execute("SELECT value FROM state WHERE key='active_version'").fetchone()
        number = int(row[0]) if row else 0
        if self._names[0] != number:
            names = frozenset(self.version(number).document.get("tunnels", {})) if row else frozenset()
            self._names = (number, names)
        return self._names[1]

    def commit_config(self, document: dict[str, Any], author: str) -> ConfigVersion:
        """Validate ``document`` and store it as the next active version.

        Raises ConfigError when it is invalid (nothing changes).
        """
        parse_config(document)
        with self._transaction():
            return self._commit(document, author)

    def _commit(self, document: dict[str, Any], author: str) -> ConfigVersion:
        row = self.db.execute("SELECT COALESCE(MAX(version), 0) FROM config_versions").fetchone()
        number = row[0] + 1
        now = time.time()
        digest = content_hash(document)
        self.db.execute("INSERT INTO config_versions VALUES (?, ?, ?, ?, ?)",
                        (number, now, author, digest, json.dumps(document, sort_keys=True)))
        self.db.execute("INSERT OR REPLACE INTO state VALUES ('active_version', ?)", (str(number),))
        return ConfigVersion(number, now, author, digest, document)

    # ------------------------------------------------------------------ tunnels
    def create_tunnel(self, name: str, hostnames: list[str], author: str) -> tuple[ConfigVersion, str]:
        """Add a tunnel to the config (a new version) and issue its connector token."""
        document = json.loads(json.dumps(self.active_document()))
        tunnels = document.setdefault("tunnels", {})
        if name in tunnels:
            raise Conflict(f"tunnel {name!r} already exists")
        tunnels[name] = {"hostnames": list(hostnames)}
        try:
            parse_config(document)
        except ConfigError as exc:
            raise Conflict("; ".join(exc.errors)) from None
        token = self._new_token(name)
        with self._transaction():
            version = self._commit(document, author)
            self._store_token(name, token)
        return version, token

    def delete_tunnel(self, name: str, author: str) -> ConfigVersion:
        """Remove a tunnel from the config (a new version) and revoke its token."""
        document = json.loads(json.dumps(self.active_document()))
        if name not in document.get("tunnels", {}):
            raise NotFound(f"tunnel {name!r} does not exist")
        del document["tunnels"][name]
        with self._transaction():
            version = self._commit(document, author)
            self.db.execute("DELETE FROM connector_tokens WHERE tunnel=?", (name,))
        return version

    def rotate_token(self, name: str) -> str:
        """Issue a new connector token for a tunnel; the old one stops working at once."""
        if name not in self.active_tunnels():
            raise NotFound(f"tunnel {name!r} does not exist")
        token = self._new_token(name)
        with self._transaction():
            self._store_token(name, token)
        return token

    def tunnel_for_token(self, token: str) -> str | None:
        """The tunnel a connector token belongs to, or None."""
        digest = hash_token(token)
        row = self.db.execute("SELECT tunnel, token_hash FROM connector_tokens WHERE token_hash=?",
                              (digest,)).fetchone()
        if row is None or not hmac.compare_digest(row[1], digest):
            return None
        if row[0] not in self.active_tunnels():
            return None
        return row[0]

    @staticmethod
    def _new_token(name: str) -> str:
        return f"{name}.{secrets.token_urlsafe(32)}"

    def _store_token(self, name: str, token: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO connector_tokens VALUES (?, ?, ?)",
                        (name, hash_token(token), time.time()))

    # ------------------------------------------------------------------ admin tokens
    def ensure_admin_token(self, given: str | None = None, name: str = "admin") -> str | None:
        """Make sure an admin token exists.

        With ``given``, store its hash under ``name``. Otherwise, if no admin token exists yet,
        create one, write it to ``<data-dir>/admin.token`` (mode 0600) and return it; return None
        when one already exists.
        """
        if given:
            with self._transaction():
                self.db.execute("DELETE FROM admin_tokens WHERE name=?", (name,))
                self.db.execute("INSERT OR REPLACE INTO admin_tokens VALUES (?, ?, ?)",
                                (name, hash_token(given), time.time()))
            return given
        if self.db.execute("SELECT 1 FROM admin_tokens LIMIT 1").fetchone():
            return None
        token = "adm." + secrets.token_urlsafe(32)
        path = self.data_dir / ADMIN_TOKEN_FILE
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(token + "\n")
        with self._transaction():
            self.db.execute("INSERT INTO admin_tokens VALUES (?, ?, ?)", (name, hash_token(token), time.time()))
        return token

    def admin_name(self, token: str) -> str | None:
        """The name of the admin token ``token``, or None when it is not one."""
        digest = hash_token(token)
        row = self.db.execute("SELECT name, token_hash FROM admin_tokens WHERE token_hash=?", (digest,)).fetchone()
        if row is None or not hmac.compare_digest(row[1], digest):
            return None
        return row[0]

    # ------------------------------------------------------------------ helpers
    def _transaction(self):
        return _Transaction(self.db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.db.execute("COMMIT")
        else:
            self.db.execute("ROLLBACK")
