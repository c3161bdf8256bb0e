"""The Python side of a worker invocation: ``Request``, ``Response`` and ``WorkerCode``.

Bodies are either ``bytes`` (or ``None``/``b""`` for no body) or an *async iterable of
bytes* (a streaming body). A body the worker never reads is handed on untouched: the
``Request`` a binding receives, or the ``Response`` the loader returns, carries the very
same body object that came in (see docs/loader.md, "Streaming pass-through").
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Union

from multidict import CIMultiDict

from tunnel.config.model import WORKER_LIMIT_RANGES

Body = Union[bytes, bytearray, memoryview, AsyncIterable[bytes], None]
HeadersInit = Union[Mapping[str, str], Iterable[tuple[str, str]], CIMultiDict, None]

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
_STR = {str}


class BodyTooLarge(ValueError):
    """A body being read into memory is larger than the allowed maximum."""


def make_headers(init: HeadersInit) -> CIMultiDict:
    """Return a case-insensitive multi-valued header mapping built from ``init``.

    Args:
        init: a mapping, an iterable of ``(name, value)`` pairs, a ``CIMultiDict`` or ``None``.
    Returns:
        A new ``multidict.CIMultiDict[str]``.
    Raises:
        TypeError: when ``init`` is none of these.
    """
    if init is None:
        return CIMultiDict()
    # fast path (C): a mapping (CIMultiDict, dict) or a list of pairs whose values are all str already
    if isinstance(init, (list, tuple, Mapping)):
        try:
            headers = CIMultiDict(init)
        except (TypeError, ValueError):
            pass
        else:
            if set(map(type, headers.values())) <= _STR:
                return headers
    if isinstance(init, Mapping):
        return CIMultiDict((str(k), str(v)) for k, v in init.items())
    return CIMultiDict((str(k), str(v)) for k, v in init)


def is_stream(body: Any) -> bool:
    """True when ``body`` is a streaming (async iterable) body rather than bytes."""
    return body is not None and not isinstance(body, (bytes, bytearray, memoryview)) and hasattr(body, "__aiter__")


def body_is_empty(body: Body) -> bool:
    """True when ``body`` is ``None`` or an empty bytes-like object."""
    return body is None or (isinstance(body, (bytes, bytearray, memoryview)) and len(body) == 0)


async def read_body(body: Body, max_bytes: int | None = None) -> bytes:
    """Read a whole body into memory.

    Args:
        body: bytes-like, an async iterable of bytes, or ``None``.
        max_bytes: refuse bodies larger than this many bytes (``None``: no bound).
    Returns:
        The body as ``bytes``.
    Raises:
        BodyTooLarge: when the body is larger than ``max_bytes``.
        TypeError: when a stream yields something that is not bytes-like.
    """
    if body is None:
        return b""
    if isinstance(body, (bytes, bytearray, memoryview)):
        data = bytes(body)
        if max_bytes is not None and len(data) > max_bytes:
            raise BodyTooLarge(f"body of {len(data)} bytes exceeds the limit of {max_bytes} bytes")
        return data
    chunks: list[bytes] = []
    size = 0
    async for chunk in body:
        if not isinstance(chunk, (bytes, bytearray, memoryview)):
            raise TypeError(f"a streaming body yielded {type(chunk).__name__}, expected bytes")
        size += len(chunk)
        if max_bytes is not None and size > max_bytes:
            raise BodyTooLarge(f"body exceeds the limit of {max_bytes} bytes")
        chunks.append(bytes(chunk))
    return b"".join(chunks)


class _Message:
    """What Request and Response share: headers kept as pairs until someone asks for the mapping
    (the loader hands pairs from and to JavaScript without building a CIMultiDict for them)."""

    __slots__ = ("_headers", "_pairs")

    @property
    def headers(self) -> CIMultiDict:
        """The headers, a case-insensitive ``CIMultiDict`` (made on first use)."""
        headers = self._headers
        if headers is None:
            headers = self._headers = CIMultiDict(self._pairs)
            self._pairs = None
        return headers

    @headers.setter
    def headers(self, value: HeadersInit) -> None:
        self._headers, self._pairs = make_headers(value), None

    def header_pairs(self) -> list[tuple[str, str]]:
        """The headers as ``(name, value)`` pairs, in order (names lower-case when they came from a
        worker). The list may be the message's own: do not change it."""
        if self._headers is not None:
            return list(self._headers.items())
        return self._pairs


class Request(_Message):
    """An HTTP request handed to (or made by) a worker.

    Args:
        method: HTTP method; upper-cased.
        url: absolute URL.
        headers: header mapping or pairs; ``headers`` is then a case-insensitive ``CIMultiDict``.
        body: ``bytes``, an async iterable of bytes (streaming), or ``None``.
        cf: optional JSON-like dict visible to the worker as ``request.cf`` (e.g. ``{"clientIp": ...}``).
    """

    __slots__ = ("method", "url", "body", "cf")

    def __init__(self, method: str, url: str, headers: HeadersInit = None, body: Body = None,
                 cf: dict[str, Any] | None = None):
        self.method = method.upper()
        self.url = url
        self._headers, self._pairs = make_headers(headers), None
        self.body = body
        self.cf = cf

    @classmethod
    def _checked(cls, method: str, url: str, pairs: list[tuple[str, str]], body: Body,
                 cf: dict[str, Any] | None) -> "Request":
        """A Request from parts the bridge has validated (``pairs``: a list it owns; no copy)."""
        self = cls.__new__(cls)
        self.method, self.url, self._headers, self._pairs, self.body, self.cf = method.upper(), url, None, pairs, body, cf
        return self

    async def read(self, max_bytes: int | None = None) -> bytes:
        """Read the whole body (see ``read_body`` for arguments and errors)."""
        return await read_body(self.body, max_bytes)

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.url}>"


class Response(_Message):
    """An HTTP response returned by a worker (or by a binding to a worker).

    Args:
        status: HTTP status code.
        headers: header mapping or pairs; ``headers`` is then a case-insensitive ``CIMultiDict``.
        body: ``bytes``, an async iterable of bytes (streaming), or ``None``.
        status_text: reason phrase (may be empty).
    """

    __slots__ = ("status", "body", "status_text")

    def __init__(self, status: int = 200, headers: HeadersInit = None, body: Body = None, status_text: str = ""):
        self.status = int(status)
        self._headers, self._pairs = make_headers(headers), None
        self.body = body
        self.status_text = status_text

    @classmethod
    def _checked(cls, status: int, pairs: list[tuple[str, str]], body: Body, status_text: str) -> "Response":
        """A Response from parts the bridge has validated (``pairs``: a list it owns; no copy)."""
        self = cls.__new__(cls)
        self.status, self._headers, self._pairs, self.body, self.status_text = status, None, pairs, body, status_text
        return self

    async def read(self, max_bytes: int | None = None) -> bytes:
        """Read the whole body (see ``read_body`` for arguments and errors)."""
        return await read_body(self.body, max_bytes)

    async def text(self, max_bytes: int | None = None) -> str:
        """Read the body and decode it as UTF-8 (invalid sequences replaced)."""
        return (await self.read(max_bytes)).decode("utf-8", "replace")

    def __repr__(self) -> str:
        return f"<Response {self.status}>"


_MODULE_KINDS = ("js", "cjs", "text", "json", "data")


@dataclass(frozen=True)
class WorkerCode:
    """The code and environment of one worker, as returned by a loader factory.

    Args:
        compatibility_date: ``"YYYY-MM-DD"``; required (kept for parity with Cloudflare; not interpreted).
        main_module: name of the ES module whose default export has ``fetch``.
        modules: name → source string (ES module when the name ends in ``.js``) or one of
            ``{"js": str}``, ``{"cjs": str}``, ``{"text": str}``, ``{"json": value}``, ``{"data": bytes}``.
        env: name → JSON-like value, or a Python object exposed as a binding (its public async
            methods can be awaited from JS, e.g. ``env.TUNNEL.fetch(request)``).
        global_outbound: ``None`` (global ``fetch()`` throws "not permitted") or an object with
            ``async fetch(request) -> Response``.
        limits: this worker's own limits, overriding the loader's defaults:
            ``{"cpu_ms": N, "memory_mb": M}`` (either key may be left out).
        trusted: code the host itself wrote (generated, never a user's). It runs in the loader's
            trusted shards, which never run a user's JavaScript, so no tenant's code can stall or
            kill the process that holds it, nor the state it keeps (``pool``).
    Errors:
        ``validate()`` raises ``TypeError`` for malformed code; the loader reports it as a load error.
    """

    compatibility_date: str
    main_module: str
    modules: Mapping[str, Any]
    env: Mapping[str, Any] | None = None
    global_outbound: Any = None
    limits: Mapping[str, float] | None = None
    trusted: bool = False

    def validate(self) -> None:
        """Check the structure of the code; raise ``TypeError`` with a workerd-like message."""
        import re

        if not isinstance(self.compatibility_date, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", self.compatibility_date):
            raise TypeError(f"Invalid compatibility date: {self.compatibility_date!r}")
        if not isinstance(self.modules, Mapping) or not self.modules:
            raise TypeError("Dynamic Worker code must contain at least one module.")
        for name, value in self.modules.items():
            if not isinstance(name, str) or not name:
                raise TypeError(f"Module names must be non-empty strings, got {name!r}")
            if isinstance(value, str):
                if not name.endswith((".js", ".mjs")):
                    raise TypeError(f"Module '{name}' is a string but its name does not end in '.js'; "
                                    "use {\"js\": ...}, {\"cjs\": ...} or {\"text\": ...}.")
            elif isinstance(value, Mapping):
                if len(value) != 1 or next(iter(value)) not in _MODULE_KINDS:
                    raise TypeError(f"Each module must contain exactly one of 'js', 'cjs', 'text', 'data', or 'json'. "
                                    f"Module '{name}' contained {len(value)} properties.")
                kind, body = next(iter(value.items()))
                if kind in ("js", "cjs", "text") and not isinstance(body, str):
                    raise TypeError(f"Module '{name}': '{kind}' must be a string")
                if kind == "data" and not isinstance(body, (bytes, bytearray, memoryview)):
                    raise TypeError(f"Module '{name}': 'data' must be bytes")
            else:
                raise TypeError(f"Module '{name}' must be a string or a dict, got {type(value).__name__}")
        if self.main_module not in self.modules:
            raise TypeError(f"No such module: {self.main_module}")
        main = self.modules[self.main_module]
        if not (isinstance(main, str) or (isinstance(main, Mapping) and "js" in main)):
            raise TypeError("Main module must be an ES module.")
        if self.env is not None and not isinstance(self.env, Mapping):
            raise TypeError("env must be a mapping")
        if self.global_outbound is not None and not callable(getattr(self.global_outbound, "fetch", None)):
            raise TypeError("global_outbound must be None or an object with an async fetch(request) method")
        if self.limits is not None:
            if not isinstance(self.limits, Mapping) or not set(self.limits) <= set(WORKER_LIMIT_RANGES):
                raise TypeError(f"limits must be a mapping with keys among {sorted(WORKER_LIMIT_RANGES)}")
            for name, value in self.limits.items():
                low, high = WORKER_LIMIT_RANGES[name]
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                    raise TypeError(f"limits.{name} must be a number from {low} to {high}, not {value!r}")

    def split_env(self) -> tuple[str, list[str]]:
        """Split ``env`` into JSON-like values and bindings.

        Returns:
            ``(env_json, binding_names)``: the JSON text of the plain values, and the names of
            the entries that are Python objects exposed as bindings.
        Raises:
            TypeError: when a value nests a non-JSON object (only top-level entries can be bindings).
        """
        plain: dict[str, Any] = {}
        bindings: list[str] = []
        for name, value in (self.env or {}).items():
            if _is_json_like(value):
                plain[name] = value
            elif isinstance(value, (dict, list, tuple)):
                raise TypeError(f"env[{name!r}] contains a value that is neither JSON-like nor a binding")
            else:
                bindings.append(name)
        return json.dumps(plain, allow_nan=False), bindings


def _is_json_like(value: Any, depth: int = 0) -> bool:
    if depth > 64:
        return False
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_json_like(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_json_like(v, depth + 1) for k, v in value.items())
    return False
