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
from typing import TYPE_CHECKING, Any, Awaitable, Callable

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


Done = Callable[["Response | None", "BaseException | None"], None]


class Req:
    """One request in flight on an isolate: who waits for its answer (``done``, called once with
    the response or the error), and the handles and header lists it owns. ``request`` is what the
    caller passed (its ``cf`` is what the runtime sends back as 0)."""

    __slots__ = ("rid", "done", "handles", "started", "request", "answered", "response", "ticket")

    def __init__(self, rid: int, done: Done, request: Request | None = None):
        self.rid, self.done, self.handles, self.request = rid, done, [], request
        self.started = time.monotonic()
        self.answered = False
        self.response: Response | None = None
        self.ticket: Any = None  # the loader's Ticket, which may send the request elsewhere

    def settle(self, response: "Response | None", error: "BaseException | None" = None) -> None:
        """Give the caller the answer (only the first one counts)."""
        if self.answered:
            return
        self.answered = True
        self.response = response
        self.done(response, error)


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
        self.bases: dict[int, list[tuple[str, str]]] = {}  # header lists the runtime may refer to
        self.closable: set[int] = set()
        self.tasks: dict[asyncio.Future, dict] = {}   # running ops (futures, tasks) → their event (``rid``, ``id``)
        self.cancelled: dict[int, None] = {}          # rids the caller gave up on (the last few)
        self.loaded: asyncio.Future | None = None
        self.requests = 0
        self.on_idle: Callable[["Instance"], None] | None = None


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


def add_base(inst: Instance, headers: list[tuple[str, str]], rid: int) -> int:
    """Register a header list the runtime gets, owned by request ``rid``; return its id. The
    runtime may send it back as edits of that list (``{"b": id, "o": [...]}``, see
    ``apply_header_ops``) while the request lasts."""
    h = next(_handle_ids)
    inst.bases[h] = headers
    req = inst.inflight.get(rid)
    if req is not None:
        req.handles.append(h)
    return h


def release_handles(inst: Instance, req: Req) -> None:
    """Drop the handles and header lists of a finished request; close dropped binding bodies
    (``aclose``)."""
    bases = inst.bases
    for h in req.handles:
        if bases.pop(h, None) is not None:
            continue
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
    return Response._checked(int(status), headers_from_wire(inst, r["headers"]), body_from_wire(inst, r["body"]),
                             _checked_text(r.get("statusText", ""), "statusText"))


def request_from_wire(inst: Instance, r: dict, req: Req | None = None) -> Request:
    """A Python ``Request`` from its JS description (``req``: the request whose turn sent it, whose
    ``cf`` a 0 refers to). Raises ``TypeError`` on invalid fields."""
    cf = r.get("cf")
    if cf == 0 and type(cf) is int:
        cf = req.request.cf if req is not None and req.request is not None else None
    return Request._checked(_checked_text(r["method"], "method"), _checked_text(r["url"], "url"),
                            headers_from_wire(inst, r["headers"]), body_from_wire(inst, r["body"]), cf)


def headers_from_wire(inst: Instance, h: Any) -> list[tuple[str, str]]:
    """Headers the runtime sent: ``[[name, value], …]``, or edits of a host list ``{"b", "o"}``, as
    pairs. Raises ``TypeError`` for invalid names or values, an unknown list or malformed edits."""
    if type(h) is dict:
        base = inst.bases.get(h.get("b"))
        ops = h.get("o")
        if base is None or type(ops) is not list:
            raise TypeError("headers refer to a list that is no longer available")
        if type(base) is not _Checked:  # what the caller gave is checked too, once, when it comes back
            _checked_headers(base)
            base = inst.bases[h["b"]] = _Checked(base)
        if ops:
            if not all(type(o) is list and len(o) == 3 and o[0] in _OPS for o in ops):
                raise TypeError("malformed header edits")
            _checked_headers([o[1:] for o in ops])
            return apply_header_ops(base, ops)
        return list(base)
    return _checked_headers(h)


_OPS = frozenset(("s", "a", "d"))


class _Checked(list):
    """A base header list already validated by ``headers_from_wire``."""

    __slots__ = ()


def apply_header_ops(base: list[tuple[str, str]], ops: list) -> list[tuple[str, str]]:
    """``base`` (lower-case names, as the runtime holds them) with the runtime's edits applied,
    exactly as its Headers applied them: ``a`` appends; ``s`` replaces the value of the first
    header of that name, drops the others, or appends when there is none; ``d`` drops them all."""
    out = list(base)
    for kind, name, value in ops:
        if kind == "a":
            out.append((name, value))
            continue
        kept = []
        done = kind == "d"
        for pair in out:
            if pair[0] != name:
                kept.append(pair)
            elif not done:
                kept.append((pair[0], value))
                done = True
        if not done:
            kept.append((name, value))
        out = kept
    return out


def headers_text(headers: list[tuple[str, str]]) -> str:
    """A (lower-case) header list in the runtime's lazy form ``name\0value\0…`` (names and values
    hold no NUL: both sides refuse it)."""
    return "\0".join([f"{name}\0{value}" for name, value in headers])


Reply = tuple[dict, bytes]  # a ``done`` message ({"t", "id", "ok", "v"|"e", "p"?}) and its payload


def start_op(inst: Instance, ev: dict, max_body_bytes: int) -> "Reply | Pending | asyncio.Future | Awaitable[Reply]":
    """Begin one op a worker asked for (binding call, global fetch, body read, digest, hmac, timer).

    Everything the op refers to (arguments, handles, header lists) is resolved now, while the
    request that asked is known to be alive. Returns the reply when the op is done at once, a
    ``Pending`` (a binding returned a Future), a Future of the reply (a timer) or a coroutine to
    run as a task. Errors become a failed reply (the JS promise rejects with a matching error).
    """
    reply: dict = {"t": "done", "id": ev["id"], "ok": True}
    try:
        kind = ev["op"]
        if kind == "call":
            result = _begin_call(inst, ev)
            rid = ev["rid"]
            if isinstance(result, asyncio.Future):
                return Pending(result, reply, lambda value: _done_with(inst, reply, value, rid))
            if inspect.isawaitable(result):
                return _finish_call(inst, reply, result, rid)
            return _done_with(inst, reply, result, rid)
        if kind == "read":
            h = ev["h"]
            if h not in inst.handles:
                raise TypeError("body is no longer available (its request has ended)")
            return _read(inst, reply, h, ev["mode"], max_body_bytes)
        if kind == "hmac":
            reply["v"], reply["p"] = {"bin": True}, "bin"
            return reply, hmac.new(base64.b64decode(ev["k"]), base64.b64decode(ev["d"]), ev["alg"]).digest()
        if kind == "digest":
            reply["v"], reply["p"] = {"bin": True}, "bin"
            return reply, hashlib.new(ev["alg"], base64.b64decode(ev["d"])).digest()
        if kind == "timer":
            reply["v"] = None
            loop = asyncio.get_running_loop()
            fut = loop.create_future()
            handle = loop.call_later(min(float(ev["ms"]) / 1000.0, _MAX_TIMER_S), _settle, fut, (reply, b""))
            fut.add_done_callback(lambda f: f.cancelled() and handle.cancel())
            return fut
        raise TypeError(f"unknown op {kind!r}")
    except Exception as exc:
        return failed_reply(reply, exc), b""


def failed_reply(reply: dict, exc: BaseException) -> dict:
    """The ``done`` message that rejects the op's promise with an error matching ``exc``."""
    if isinstance(exc, BodyTooLarge):
        error = {"name": "RangeError", "message": f"{exc} (max_body_bytes)"}
    else:
        error = {"name": _js_error_name(exc), "message": str(exc) or type(exc).__name__}
    return {"t": "done", "id": reply["id"], "ok": False, "e": error}


def _settle(fut: asyncio.Future, value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


class Pending:
    """An op that completes with a Future a binding returned: ``finish`` turns its result into
    the reply (a failed reply when it failed). No second future, no task."""

    __slots__ = ("source", "reply", "finish")

    def __init__(self, source: asyncio.Future, reply: dict, finish: Callable[[Any], Reply]):
        self.source, self.reply, self.finish = source, reply, finish

    def outcome(self) -> Reply:
        """The reply, once ``source`` is done (not cancelled)."""
        exc = self.source.exception()
        if exc is not None:
            return failed_reply(self.reply, exc), b""
        try:
            return self.finish(self.source.result())
        except Exception as error:  # a result that does not convert
            return failed_reply(self.reply, error), b""


async def _finish_call(inst: Instance, reply: dict, result: Awaitable, rid: int) -> Reply:
    try:
        value = await result
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        return failed_reply(reply, exc), b""
    return _done_with(inst, reply, value, rid)


async def _read(inst: Instance, reply: dict, h: int, mode: str, max_body_bytes: int) -> Reply:
    try:
        data = await read_body(inst.handles[h], max_body_bytes)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        return failed_reply(reply, exc), b""
    inst.handles[h] = data
    reply["p"] = "text" if mode == "text" else "bin"
    return reply, data


def _done_with(inst: Instance, reply: dict, value: Any, rid: int) -> Reply:
    reply["v"], blob = _result(inst, value, rid)
    if blob:
        reply["p"] = "bin"
    return reply, blob


def _begin_call(inst: Instance, ev: dict) -> Any:
    """Call the binding method an op names, with its arguments resolved now; return what it returned."""
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
    req = inst.inflight.get(ev["rid"])
    return fn(*[_arg(inst, a, req) for a in ev["a"]])


def _arg(inst: Instance, a: dict, req: Req | None) -> Any:
    if "$req" in a:
        return request_from_wire(inst, a["$req"], req)
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
        headers = [(name.lower(), value) for name, value in result.header_pairs()]
        return {"res": {"status": result.status, "statusText": result.status_text, "headers": headers_text(headers),
                        "hb": add_base(inst, headers, rid), "body": body}}, b""
    if isinstance(result, (bytes, bytearray, memoryview)):
        return {"bin": True}, bytes(result)
    return {"v": result}, b""


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_TOKEN_LINES = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+(?:\n[!#$%&'*+\-.^_`|~0-9A-Za-z]+)*\Z")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # every CTL but HTAB (RFC 9110 §5.5)
_first, _second = operator.itemgetter(0), operator.itemgetter(1)


def _checked_headers(pairs: Any) -> list[tuple[str, str]]:
    """Validate header pairs coming from JavaScript (defence in depth against header injection).

    Returns them as a list of ``(name, value)`` tuples. One regex over the names joined by newlines (which no
    token contains; their count must match) and one over the values joined, all in C; the
    per-pair loop only runs to name the offending header.
    """
    try:
        if type(pairs) is not list:
            raise TypeError
        if not pairs:
            return []
        names = "\n".join(map(_first, pairs))
        if (_TOKEN_LINES.match(names) and names.count("\n") == len(pairs) - 1
                and not _CONTROL.search("".join(map(_second, pairs)))):
            return [(name, value) for name, value in pairs]
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


