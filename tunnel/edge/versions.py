"""Versioned config at the edge, applied the way cloudflared's orchestrator applies its own
(DESIGN.md; STYLE.md example 4): validate, generate and load every changed worker *before*
anything changes; store the version; swap it in atomically; keep the old one on any failure.

A push carries the version it was based on (optimistic concurrency): a push whose base is no
longer the active version is refused, so a stale or concurrent push never wins over a newer one.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import TYPE_CHECKING, Any

from generators.keys import parse_key
from tunnel.config import ConfigError, load_yaml, parse_config
from tunnel.config.document import content_hash, redact_document
from tunnel.edge.workers import WorkerPipeline
from tunnel.errors import TunnelError
from tunnel.loader import Request, WorkerError

if TYPE_CHECKING:  # pragma: no cover
    from tunnel.edge.server import Edge

log = logging.getLogger(__name__)


class StaleBase(TunnelError):
    """The push was based on a version that is no longer active."""


class VersionManager:
    """Push, rollback, status and history of one edge's config."""

    def __init__(self, edge: "Edge"):
        self.edge = edge
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------------ changing the config
    async def push(self, raw: dict[str, Any] | str, author: str, base: int | None) -> dict[str, Any]:
        """Validate and activate a new version; return ``{"version", "changed", "hash", "message"}``.

        ``raw`` is a document or YAML text. Raises ConfigError (every problem, with its path) or
        StaleBase; in both cases nothing changed.
        """
        async with self._lock:
            try:
                result = await self._push(raw, author, base)
            except ConfigError:
                self._count("invalid")
                raise
            except StaleBase:
                self._count("conflict")
                raise
            self._count("applied" if result["changed"] else "unchanged")
            return result

    async def rollback(self, version: int | None, author: str, base: int | None) -> dict[str, Any]:
        """Activate an earlier version's content as a new version (default: the one before)."""
        store = self.edge.store
        active = self.edge.version
        if version is None:
            version = active - 1
        if version < 1 or version > active:
            raise ConfigError([f"version: no version {version} to roll back to (active is {active})"])
        document = store.version(version).document
        result = await self.push(document, f"{author} (rollback to {version})", base)
        result["rolled_back_to"] = version
        return result

    async def _push(self, raw: dict[str, Any] | str, author: str, base: int | None) -> dict[str, Any]:
        edge = self.edge
        active = edge.version
        if base is not None and base != active:
            raise StaleBase(f"this push was based on version {base}, but version {active} is active now; "
                            f"run `tunnel config pull`, apply your change to it, and push again")
        document = load_yaml(raw) if isinstance(raw, str) else raw
        config = parse_config(document)
        digest = content_hash(document)
        current = edge.store.active()
        if current is not None and current.hash == digest:
            return {"version": active, "changed": False, "hash": digest,
                    "message": f"identical to the active version {active}; nothing to do"}
        pipeline = edge.build_pipeline(config, edge.store.next_version())
        prepared = await self._prepare(pipeline) if pipeline is not None else {}
        started = time.monotonic()
        try:
            if edge.version != active:  # a tunnel was created or deleted while we loaded workers
                raise StaleBase(f"version {edge.version} became active while this push was prepared; "
                                f"run `tunnel config pull` and push again")
            stored = edge.store.commit_config(document, author)
        except BaseException:
            for item in prepared.values():
                edge.loader.discard(item)
            raise
        if pipeline is not None:
            pipeline.version = stored.version
        await edge.activate(config, stored.version, pipeline, prepared)
        log.info("config version %d active (%s, by %s) in %.1f ms", stored.version, digest[:19], author,
                 (time.monotonic() - started) * 1000)
        return {"version": stored.version, "changed": True, "hash": digest,
                "message": f"version {stored.version} is active"}

    async def _prepare(self, pipeline: WorkerPipeline) -> dict[str, Any]:
        """Load every new or changed worker into a fresh isolate; a failure rejects the push with
        the path of what failed (the cached workers are untouched)."""
        edge = self.edge
        changed = [key for key, worker in pipeline.generated().items()
                   if edge.worker_hashes.get(key) != worker.hash]
        results = await asyncio.gather(*(edge.loader.prepare(key, pipeline.factory(key)) for key in changed),
                                       return_exceptions=True)
        prepared: dict[str, Any] = {}
        errors: list[str] = []
        for key, result in zip(changed, results):
            if isinstance(result, WorkerError):
                errors.append(_describe_failure(key, result))
            elif isinstance(result, BaseException):
                errors.append(f"{key}: {type(result).__name__}: {result}")
            else:
                prepared[key] = result
        if errors:
            for item in prepared.values():
                edge.loader.discard(item)
            raise ConfigError(errors)
        return prepared

    def _count(self, result: str) -> None:
        pushes = self.edge.metrics.pushes
        pushes[result] = pushes.get(result, 0) + 1

    # ------------------------------------------------------------------ reading
    def pull(self, version: int | None) -> dict[str, Any]:
        """A version (default: the active one) with every credential hash redacted."""
        store = self.edge.store
        record = store.version(version) if version is not None else store.active()
        if record is None:
            return {"version": 0, "hash": content_hash({"tunnels": {}}), "created_at": None, "author": None,
                    "config": {"tunnels": {}}}
        return {"version": record.version, "hash": record.hash, "created_at": _iso(record.created_at),
                "author": record.author, "config": redact_document(record.document)}

    def history(self) -> list[dict[str, Any]]:
        """Every version, oldest first."""
        return [{"version": r.version, "created_at": _iso(r.created_at), "author": r.author, "hash": r.hash}
                for r in self.edge.store.history()]

    def status(self) -> dict[str, Any]:
        """The active version and, per connector, the version it acknowledged and its last error."""
        edge = self.edge
        connectors: dict[str, dict[str, Any]] = {}
        for session in edge.registry.sessions():
            key = session.connector_id or session.connection_id
            entry = connectors.setdefault(key, {"id": key, "tunnel": session.tunnel, "acked_version": None,
                                                "last_error": None, "connections": 0})
            entry["connections"] += 1
            acked = session.acked_version or None
            if acked is not None and (entry["acked_version"] is None or acked < entry["acked_version"]):
                entry["acked_version"] = acked
            if session.last_error:
                entry["last_error"] = session.last_error
        return {"active_version": edge.version, "connectors": sorted(connectors.values(), key=lambda c: c["id"])}


#: Where a load error points into a custom module: under ``custom/`` in ``tunnel-<id>``, at the
#: top in ``custom-<id>``.
_CUSTOM_AT = {"tunnel": re.compile(r"custom/(?P<module>[^\s():]+):(?P<line>\d+):(?P<column>\d+)"),
              "custom": re.compile(r"(?P<module>[^\s():/][^\s():]*):(?P<line>\d+):(?P<column>\d+)")}


def _describe_failure(key: str, error: WorkerError) -> str:
    """``path: Name: message`` for a worker that failed to load: the tunnel's custom module (with
    line and column) when the failure is in one, else the worker as a whole."""
    parsed = parse_key(key)
    message = (error.js_message or str(error)).strip()
    if parsed is None or parsed[0] == "config":
        return f"{key}: {error.js_name}: {message}"
    kind, tunnel = parsed
    path = f"tunnels.{tunnel}.metrics" if kind == "metrics" else f"tunnels.{tunnel}.worker"
    at = _CUSTOM_AT.get(kind)
    found = at and (at.search(message) or at.search(str(error)))
    if found:
        path = f"{path}.modules.{found['module']} (line {found['line']}, column {found['column']})"
        message = message.split("\n", 1)[0]
    return f"{path}: {error.js_name}: {message}"


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


async def read_metrics_state(stub) -> bytes | None:
    """A metrics worker's counts (``GET /state``), to carry them to its replacement."""
    try:
        response = await stub.fetch(Request("GET", "http://metrics/state"))
        return await response.read()
    except WorkerError as exc:
        log.warning("metrics counts could not be read for the new version: %s", exc)
        return None


async def restore_metrics_state(stub, state: bytes | None) -> None:
    """Give a new metrics worker the counts of the one it replaced (``POST /state``)."""
    if stub is None or state is None:
        return
    try:
        await stub.fetch(Request("POST", "http://metrics/state", body=state,
                                 headers={"content-type": "application/json"}))
    except WorkerError as exc:
        log.warning("metrics counts could not move to the new version: %s", exc)
