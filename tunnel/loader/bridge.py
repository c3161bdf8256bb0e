"""The loader side of the JavaScript ↔ Python bridge: isolate records, body handles, wire
conversions and the host operations ("ops") a worker asks for.

Body handles: a body the worker has not read stays a Python object here; JavaScript only holds
an integer handle. Passing the request (or a binding's response) on hands the original object
over; ``text()``/``json()``/``arrayBuffer()`` read it through a ``read`` op, bounded by
``max_body_bytes``. Handles belong to the request whose turn created them and are released when
that request ends. Everything coming from JavaScript is validated again here (header names and
values, method, URL, status): the isolate runs hostile code.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import inspect
import itertools
import logging
import operator
import re
import time
from typing import TYPE_CHECKING, Any, Callable

from multidict import CIMultiDict

from .http_types import BodyTooLarge, Request, Response, WorkerCode, body_is_empty, read_body

if TYPE_CHECKING:  # pragma: no cover
    from .host import IsolateHost

log = logging.getLogger("tunnel.loader")
_MAX_TIMER_S = 3600.0
_handle_ids = itertools.count(1)


class Limits:
    """Per-isolate limits sent to the shard (seconds and bytes)."""

    __slots__ = ("cpu_s", "memory", "load_cpu_s", "max_body_bytes")

    def __init__(self, cpu_s: float, memory: int, load_cpu_s: float, max_body_bytes: int):
        self.cpu_s, self.memory, self.load_cpu_s, self.max_body_bytes = cpu_s, memory, load_cpu_s, max_body_bytes

    def override(self, wanted: Any) -> "Limits":
        """These limits with a worker's own ``{"cpu_ms", "memory_mb"}`` (``WorkerCode.limits``) applied."""
        if not wanted:
            return self
        return Limits(wanted.get("cpu_ms", self.cpu_s * 1000.0) / 1000.0,
                      int(wanted.get("memory_mb", self.memory / 1048576) * 1048576), self.load_cpu_s,
                      self.max_body_bytes)

    def as_dict(self) -> dict[str, float]:
        """``{"cpu_ms", "memory_mb"}``, as ``WorkerCode.limits`` spells them."""
        return {"cpu_ms": round(self.cpu_s * 1000.0, 3), "memory_mb": round(self.memory / 1048576, 3)}


class Req:
    __slots__ = ("rid", "future", "handles", "started")

    def __init__(self, rid: int, future: asyncio.Future):
        self.rid, self.future, self.handles, self.started = rid, future, [], time.monotonic()


class Instance:
    """The loader's view of one isolate living in a shard.

    Attributes:
        key: the worker key. memory: last reported QuickJS heap bytes. alive: False once discarded.
        inflight: requests started and not yet ended (their ``waitUntil`` included).
    """

    def __init__(self, shard: "IsolateHost", wid: int, key: str, code: WorkerCode, limits: Limits | None = None):
        self.shard, self.wid, self.key, self.code = shard, wid, key, code
        self.limits = limits if limits is not None else shard.limits.override(code.limits)
        names = set(shard_binding_names(code))
        self.bindings = {name: value for name, value in (code.env or {}).items() if name in names}
        self.memory = 0
        self.alive = False
        self.retired = False
        self.inflight: dict[int, Req] = {}
        self.handles: dict[int, Any] = {}
        self.closable: set[int] = set()
        self.tasks: dict[asyncio.Task, dict] = {}     # running ops → their event (``rid``, ``id``)
        self.cancelled: dict[int, None] = {}          # rids the caller gave up on (the last few)
        self.loaded: asyncio.Future | None = None
        self.requests = 0
        self.on_idle: Callable[["Instance"], None] | None = None

    def task_done(self, task: asyncio.Task) -> None:
        self.tasks.pop(task, None)


def shard_binding_names(code: WorkerCode) -> list[str]:
    """Names of the ``env`` entries of ``code`` that are Python bindings."""
    return code.split_env()[1]



def add_handle(inst: Instance, body: Any, rid: int) -> int:
    """Register ``body`` under a new handle owned by request ``rid`` of ``inst``; return the handle."""
    h = next(_handle_ids)
    inst.handles[h] = body
    req = inst.inflight.get(rid)
    if req is not None:
        req.handles.append(h)
    return h


def release_handles(inst: Instance, req: Req) -> None:
    """Drop the handles of a finished request; close dropped binding bodies (``aclose``)."""
    for h in req.handles:
        body = inst.handles.pop(h, None)
        if h in inst.closable:
            inst.closable.discard(h)
            # a binding's streaming response body the worker dropped: close it so the producer
            # (e.g. the edge's origin stream) is released
            close_later(body)


def close_later(body: Any) -> None:
    """Close a body nobody will read (``await body.aclose()`` in the background, if it has one)."""
    aclose = getattr(body, "aclose", None)
    if aclose is not None and not isinstance(body, (bytes, bytearray, memoryview)):
        task = asyncio.get_running_loop().create_task(_close_quietly(aclose))
        _background.add(task)
        task.add_done_callback(_background.discard)


def body_from_wire(inst: Instance, b: dict | None) -> Any:
    """The Python body for a JS body description (a handle takes the original object out)."""
    if b is None:
        return None
    if "h" in b:
        if b["h"] not in inst.handles:
            raise TypeError("body is no longer available (its request has ended)")
        return inst.handles.pop(b["h"])
    if "s" in b:
        return b["s"].encode("utf-8", "surrogatepass")
    return base64.b64decode(b["b64"])


def response_from_wire(inst: Instance, r: dict) -> Response:
    """A Python ``Response`` from its JS description. Raises ``TypeError`` on invalid fields."""
    status = r["status"]
    if not isinstance(status, int) or not 0 <= status <= 999:
        raise TypeError(f"invalid status {status!r}")
    return Response._checked(int(status), _checked_headers(r["headers"]), body_from_wire(inst, r["body"]),
                             _checked_text(r.get("statusText", ""), "statusText"))


def request_from_wire(inst: Instance, r: dict) -> Request:
    """A Python ``Request`` from its JS description. Raises ``TypeError`` on invalid fields."""
    return Request._checked(_checked_text(r["method"], "method"), _checked_text(r["url"], "url"),
                            _checked_headers(r["headers"]), body_from_wire(inst, r["body"]), r.get("cf"))


async def run_op(inst: Instance, ev: dict, max_body_bytes: int) -> tuple[dict, bytes]:
    """Perform one op a worker asked for (binding call, global fetch, body read, digest, hmac, timer).

    Returns:
        The ``done`` message for the shard and its blob. Errors become a failed ``done`` (the JS
        promise rejects with a matching error); cancellation propagates.
    """
    reply: dict = {"t": "done", "wid": inst.wid, "rid": ev["rid"], "id": ev["id"], "ok": True}
    blob = b""
    try:
        kind = ev["op"]
        if kind == "call":
            reply["v"], blob = await _call(inst, ev)
            if blob:
                reply["p"] = "bin"
        elif kind == "read":
            h = ev["h"]
            if h not in inst.handles:
                raise TypeError("body is no longer available (its request has ended)")
            data = await read_body(inst.handles[h], max_body_bytes)
            inst.handles[h] = data
            reply["p"] = "text" if ev["mode"] == "text" else "bin"
            blob = data
        elif kind == "hmac":
            blob = hmac.new(base64.b64decode(ev["k"]), base64.b64decode(ev["d"]), ev["alg"]).digest()
            reply["v"], reply["p"] = {"bin": True}, "bin"
        elif kind == "digest":
            blob = hashlib.new(ev["alg"], base64.b64decode(ev["d"])).digest()
            reply["v"], reply["p"] = {"bin": True}, "bin"
        elif kind == "timer":
            await asyncio.sleep(min(float(ev["ms"]) / 1000.0, _MAX_TIMER_S))
            reply["v"] = None
        else:
            raise TypeError(f"unknown op {kind!r}")
    except asyncio.CancelledError:
        raise
    except BodyTooLarge as exc:
        reply = {**reply, "ok": False, "e": {"name": "RangeError", "message": f"{exc} (max_body_bytes)"}}
        reply.pop("v", None)
        reply.pop("p", None)
        blob = b""
    except Exception as exc:
        reply = {**reply, "ok": False, "e": {"name": _js_error_name(exc), "message": str(exc) or type(exc).__name__}}
        reply.pop("v", None)
        reply.pop("p", None)
        blob = b""
    return reply, blob


async def _call(inst: Instance, ev: dict) -> tuple[Any, bytes]:
    target, method = ev["b"], ev["m"]
    if target == "$outbound":
        obj = inst.code.global_outbound
        if obj is None:
            raise Exception("This worker is not permitted to access the internet via global functions like fetch().")
    else:
        obj = inst.bindings.get(target)
        if obj is None:
            raise TypeError(f"no binding named {target!r}")
    if not isinstance(method, str) or not method.isidentifier() or method.startswith("_"):
        raise TypeError(f"binding {target}: {method!r} is not a callable method")
    fn = getattr(obj, method, None)
    if not callable(fn):
        raise TypeError(f"binding {target} has no method {method!r}")
    args = [_arg(inst, a) for a in ev["a"]]
    result = fn(*args)
    if inspect.isawaitable(result):
        result = await result
    return _result(inst, result, ev["rid"])


def _arg(inst: Instance, a: dict) -> Any:
    if "$req" in a:
        return request_from_wire(inst, a["$req"])
    if "$res" in a:
        return response_from_wire(inst, a["$res"])
    if "$bin" in a:
        return base64.b64decode(a["$bin"])
    return a.get("$v")


def _result(inst: Instance, result: Any, rid: int) -> tuple[Any, bytes]:
    if isinstance(result, Response):
        body = None
        if not body_is_empty(result.body):
            h = add_handle(inst, result.body, rid)
            inst.closable.add(h)
            body = {"h": h}
        return {"res": {"status": result.status, "statusText": result.status_text,
                        "headers": list(result.headers.items()), "body": body}}, b""
    if isinstance(result, (bytes, bytearray, memoryview)):
        return {"bin": True}, bytes(result)
    return {"v": result}, b""


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_TOKEN_LINES = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+(?:\n[!#$%&'*+\-.^_`|~0-9A-Za-z]+)*\Z")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # every CTL but HTAB (RFC 9110 §5.5)
_first, _second = operator.itemgetter(0), operator.itemgetter(1)


def _checked_headers(pairs: Any) -> CIMultiDict:
    """Validate header pairs coming from JavaScript (defence in depth against header injection).

    Returns them as a ``CIMultiDict``. One regex over the names joined by newlines (which no
    token contains; their count must match) and one over the values joined, all in C; the
    per-pair loop only runs to name the offending header.
    """
    try:
        if type(pairs) is not list:
            raise TypeError
        if not pairs:
            return CIMultiDict()
        names = "\n".join(map(_first, pairs))
        if (_TOKEN_LINES.match(names) and names.count("\n") == len(pairs) - 1
                and not _CONTROL.search("".join(map(_second, pairs)))):
            return CIMultiDict(pairs)
    except (TypeError, ValueError, LookupError):
        pass
    for pair in pairs if isinstance(pairs, list) else ():
        name, value = pair if isinstance(pair, (list, tuple)) and len(pair) == 2 else (pair, None)
        if not isinstance(name, str) or not isinstance(value, str) or not _TOKEN.match(name) or _CONTROL.search(value):
            raise TypeError(f"invalid header {name!r}")
    raise TypeError("invalid headers")


def _checked_text(value: Any, what: str) -> str:
    if not isinstance(value, str) or _CONTROL.search(value):
        raise TypeError(f"invalid {what} {value!r}")
    return value


_background: set[asyncio.Task] = set()


async def _close_quietly(aclose: Callable[[], Any]) -> None:
    try:
        await aclose()
    except Exception:  # the producer's own error on close is not the worker's business
        log.debug("closing a dropped body failed", exc_info=True)


def _js_error_name(exc: BaseException) -> str:
    if isinstance(exc, TypeError):
        return "TypeError"
    if isinstance(exc, (ValueError, OverflowError)):
        return "RangeError"
    return "Error"


