"""Isolates seen from the event loop: the part of a shard that is not about its process.

An ``IsolateHost`` keeps the loader's view of its isolates (``bridge.Instance``), the requests in
flight on them, and runs the host operations ("ops") their JavaScript asks for. ``shard.Shard``
adds the process, the framing and the watchdog; the messages it carries go to the same
``handlers.Child`` in the shard process. Subclasses say how a message reaches the child
(``_send``, ``_send_req``, ``_send_done``) and hand what comes back to ``_deliver``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from functools import partial
from typing import Callable

from .bridge import (
    Done,
    Instance,
    Limits,
    Pending,
    Req,
    add_base,
    add_handle,
    close_later,
    release_handles,
    response_from_wire,
    start_op,
)
from .errors import WorkerError, WorkerLoadError, WorkerUnavailable, error_from_wire
from .http_types import Request, Response, WorkerCode, body_is_empty

log = logging.getLogger("tunnel.loader")
worker_log = logging.getLogger("tunnel.loader.worker")
_LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_MAX_CANCELLED = 1024


def _log(inst: Instance, level: int, text: str) -> None:
    worker_log.log(level, "[%s] %s", inst.key, text)
_loads = json.JSONDecoder().decode
_dumps = json.JSONEncoder().encode  # ASCII JSON: what reaches JavaScript never carries a lone surrogate


class IsolateHost:
    """Isolates of one host and everything in flight on them.

    Args:
        index: host number (for logs).
        limits: default isolate limits (a worker's own ``WorkerCode.limits`` override them).
        on_dead: called with an ``Instance`` the host discarded and why (``cpu``, ``memory``,
            ``kill``, ``script``, ``unavailable``, ``load``).
        on_memory: called when an isolate reports its heap size.
    """

    def __init__(self, index: int, limits: Limits, on_dead: Callable[[Instance, str], None],
                 on_memory: Callable[[Instance], None]):
        self.index, self.limits = index, limits
        self.on_dead, self.on_memory = on_dead, on_memory
        self.on_log: Callable[[Instance, int, str], None] = _log  # the loader bounds it per key
        self.on_log_dropped: Callable[[Instance, int], None] = lambda inst, lines: None
        self.instances: dict[int, Instance] = {}
        self._ids = itertools.count(1)
        self.closed = False
        self.log_rate = 65536  # console bytes per second an isolate may send (the loader sets it)

    # ------------------------------------------------------------------ transport (subclasses)
    @property
    def running(self) -> bool:
        """Whether messages can be delivered now."""
        raise NotImplementedError

    async def ensure_started(self) -> None:
        """Make the host ready for ``load`` (single flight)."""
        raise NotImplementedError

    async def close(self) -> None:
        """Stop the host and fail whatever is still running on it."""
        raise NotImplementedError

    def _send(self, header: dict, blob: bytes = b"", wid: int = 0, rid: int = 0) -> None:
        """Deliver a control message (load, cancel, drop) to the child handlers."""
        raise NotImplementedError

    def _send_req(self, inst: Instance, rid: int, text: str) -> None:
        """Deliver a request (``text``: the runtime's JSON message) to the isolate."""
        raise NotImplementedError

    def _send_done(self, inst: Instance, rid: int, text: str, blob: bytes, p: str | None) -> None:
        """Deliver an op's answer: the runtime's JSON message and its payload (``p``: text/bin)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ what comes back
    def _deliver(self, events: list, js: list) -> None:
        """Handle a batch from the child handlers: loader ``events`` (dicts) and runtime events
        as ``(wid, rid, JSON text)`` triples."""
        for ev in events:
            try:
                self._event(ev)
            except Exception:  # a malformed event must not break the protocol loop
                log.exception("loader host %d: bad event %r", self.index, ev.get("t"))
        for wid, rid, raw in js:
            inst = self.instances.get(wid)
            if inst is None:
                continue
            try:
                for ev in _loads(raw):
                    self._js_event(inst, rid, ev)
            except Exception:  # hostile code controls this text: never let it break the loop
                log.exception("loader host %d: bad runtime event from %r", self.index, inst.key)

    def _event(self, ev: dict) -> None:
        t = ev["t"]
        inst = self.instances.get(ev.get("wid", 0))
        if t == "loaded":
            if inst is None or inst.loaded is None or inst.loaded.done():
                return
            if ev["ok"]:
                inst.alive = True
                inst.memory = ev.get("mem", 0)
                inst.loaded.set_result(None)
            else:
                self.instances.pop(inst.wid, None)
                inst.loaded.set_exception(error_from_wire("load" if ev["kind"] == "script" else ev["kind"],
                                                          ev["name"], ev["message"], inst.key, ev.get("stack", "")))
            return
        if inst is None:
            return
        if t == "log":
            self._js_event(inst, 0, ev)
        elif t == "mem":
            inst.memory = ev["bytes"]
            self.on_memory(inst)
        elif t == "dead":
            self._discard(inst, ev["rid"], ev["kind"], ev["name"], ev["message"], ev.get("stack", ""))

    def _js_event(self, inst: Instance, turn_rid: int, ev: dict) -> None:
        t = ev["t"]
        if t == "res":
            rid = ev["rid"]
            req = inst.inflight.get(rid)
            if req is not None and not req.answered:
                if ev["ok"]:
                    try:
                        response = response_from_wire(inst, ev["res"])
                    except TypeError as exc:
                        req.settle(None, error_from_wire("script", "TypeError", str(exc), inst.key))
                    else:
                        req.settle(response)
                else:
                    kind = "memory" if ev.get("kind") == "memory" else "script"
                    req.settle(None, error_from_wire(kind, str(ev["name"]), str(ev["message"]),
                                                             inst.key, str(ev.get("stack", ""))))
                    if kind == "memory":  # the isolate may be left inconsistent: discard it
                        self._discard(inst, rid, "memory", str(ev["name"]), str(ev["message"]), "")
                        if self.running:
                            self._send({"t": "drop", "wid": inst.wid}, b"", inst.wid, 0)
                        return
            if ev.get("end"):
                self._end(inst, rid)
        elif t == "end":
            self._end(inst, ev["rid"])
        elif t == "op":
            ev["rid"] = turn_rid
            if turn_rid in inst.cancelled:
                # from a turn of a request the caller gave up on (it ran before the shard got the
                # cancel): not performed, and the runtime forgets it too
                self._send_cancel(inst, turn_rid, [ev["id"]])
                return
            started = start_op(inst, ev, self.limits.max_body_bytes)
            if type(started) is tuple:
                self._answer(inst, turn_rid, started)
                return
            if type(started) is Pending:
                source = started.source
                inst.tasks[source] = ev
                source.add_done_callback(partial(self._pending_done, inst, turn_rid, started))
                return
            if not isinstance(started, asyncio.Future):
                started = asyncio.get_running_loop().create_task(started)
            inst.tasks[started] = ev
            started.add_done_callback(partial(self._op_done, inst, turn_rid))
        elif t == "log":
            self.on_log(inst, _LOG_LEVELS.get(ev.get("l"), logging.INFO), str(ev.get("m", "")))
        elif t == "logdrop":
            self.on_log_dropped(inst, int(ev.get("n", 0)))

    def _discard(self, inst: Instance, rid: int, kind: str, name: str, message: str, stack: str) -> None:
        self.instances.pop(inst.wid, None)
        was_alive, inst.alive = inst.alive, False
        if inst.loaded is not None and not inst.loaded.done():
            inst.loaded.set_exception(error_from_wire(kind if kind != "unavailable" else "unavailable", name, message, inst.key))
        for req in list(inst.inflight.values()):
            if not req.answered:
                if req.rid == rid:
                    err = error_from_wire(kind, name, message, inst.key, stack)
                else:
                    err = WorkerUnavailable(
                        f"worker {inst.key!r}: isolate discarded ({kind}: {message}) while this request ran on it",
                        js_name=name, js_message=message, key=inst.key)
                req.settle(None, err)
        inst.inflight.clear()
        inst.handles.clear()
        inst.bases.clear()
        inst.closable.clear()
        for task in inst.tasks:
            task.cancel()
        if was_alive or kind != "load":
            self.on_dead(inst, kind)

    def _end(self, inst: Instance, rid: int) -> None:
        req = inst.inflight.pop(rid, None)
        if req is None:
            return
        release_handles(inst, req)
        if not req.answered:  # ended without a response (should not happen)
            req.settle(None, WorkerUnavailable(f"worker {inst.key!r}: request ended without a response", key=inst.key))
        if not inst.inflight and inst.retired:
            self.drop(inst)

    # ------------------------------------------------------------------ ops
    def _pending_done(self, inst: Instance, rid: int, pending: Pending, fut: asyncio.Future) -> None:
        inst.tasks.pop(fut, None)
        if not fut.cancelled():
            self._answer(inst, rid, pending.outcome())

    def _op_done(self, inst: Instance, rid: int, fut: asyncio.Future) -> None:
        inst.tasks.pop(fut, None)
        if not fut.cancelled():
            self._answer(inst, rid, fut.result())

    def _answer(self, inst: Instance, rid: int, reply: tuple[dict, bytes]) -> None:
        """Send an op's reply to the isolate (if it is still there)."""
        if inst.alive and self.running:
            message, blob = reply
            p = message.pop("p", None)
            self._send_done(inst, rid, _dumps(message), blob, p)


    # ------------------------------------------------------------------ public
    async def load(self, key: str, code: WorkerCode, timeout: float) -> Instance:
        """Create an isolate for ``code`` on this host.

        Raises:
            WorkerLoadError: the code does not load (message names the module, line and column).
            CpuLimitExceeded / MemoryLimitExceeded: evaluating the modules hit a limit.
            WorkerUnavailable: the shard died meanwhile.
        """
        await self.ensure_started()
        wid = next(self._ids)
        inst = Instance(self, wid, key, code)
        inst.loaded = asyncio.get_running_loop().create_future()
        env_json, bindings = code.split_env()
        mods: dict[str, list] = {}
        blob = bytearray()
        for name, value in code.modules.items():
            if isinstance(value, str):
                mods[name] = ["js", value]
                continue
            kind, payload = next(iter(value.items()))
            if kind == "json":
                payload = json.dumps(payload)
            elif kind == "data":
                data = bytes(payload)
                payload = [len(blob), len(data)]
                blob += data
            mods[name] = [kind, payload]
        self.instances[wid] = inst
        lim = inst.limits
        self._send({"t": "load", "wid": wid, "main": code.main_module, "mods": mods, "env": env_json,
                    "bindings": bindings, "outbound": code.global_outbound is not None, "trusted": code.trusted,
                    "limits": {"cpu": lim.cpu_s, "mem": lim.memory, "load": lim.load_cpu_s,
                               "log": self.log_rate}}, bytes(blob), wid, 0)
        try:
            await asyncio.wait_for(asyncio.shield(inst.loaded), timeout)
        except asyncio.TimeoutError:
            self.drop(inst)
            raise WorkerLoadError(f"worker {key!r}: loading timed out after {timeout}s", key=key) from None
        return inst

    async def fetch(self, inst: Instance, request: Request) -> Response:
        """Run the worker's fetch handler on ``request``.

        Raises:
            WorkerScriptError, CpuLimitExceeded, MemoryLimitExceeded, WorkerUnavailable.
        Cancelling the call abandons the request (see ``cancel``).
        """
        fut = asyncio.get_running_loop().create_future()

        def done(response: Response | None, error: BaseException | None) -> None:
            if not fut.done():
                fut.set_exception(error) if error is not None else fut.set_result(response)

        req = self.submit(inst, request, done)
        try:
            return await fut
        except asyncio.CancelledError:  # the caller gave up (e.g. asyncio.wait_for's timeout)
            self.cancel(inst, req)
            raise

    def submit(self, inst: Instance, request: Request, done: Done) -> Req:
        """Start ``request`` on ``inst``; ``done(response, error)`` is called exactly once with the
        worker's ``Response`` or a ``WorkerError``. Returns the request's record, for ``cancel``.

        Raises:
            WorkerUnavailable: the isolate is gone or the host is down (``done`` is not called).
        """
        if not inst.alive:
            raise WorkerUnavailable(f"worker {inst.key!r}: isolate is gone", key=inst.key)
        rid = next(self._ids)
        req = Req(rid, done, request)
        inst.inflight[rid] = req
        inst.requests += 1
        body = None
        if not body_is_empty(request.body):
            body = {"h": add_handle(inst, request.body, rid)}
        headers = [(name.lower(), value) for name, value in request.header_pairs()]
        wire = {"t": "req", "rid": rid, "req": {"method": request.method, "url": request.url, "headers": headers,
                                                "hb": add_base(inst, headers, rid), "cf": request.cf, "body": body}}
        try:
            self._send_req(inst, rid, _dumps(wire))
        except WorkerError:
            inst.inflight.pop(rid, None)
            raise
        return req

    def cancel(self, inst: Instance, req: Req) -> None:
        """The caller gave up on ``req``: forget it (its in-flight entry, body handles and running
        ops here, and — ``cancel`` message — what the isolate holds for it). ``done`` is not called.
        If the answer had already come, the request runs to its end (``waitUntil``) and only the
        response body nobody will read is closed."""
        request = req.request
        if req.answered:
            response = req.response
            if response is not None and response.body is not (request.body if request is not None else None):
                close_later(response.body)
            return
        req.answered = True  # whatever comes now is nobody's
        rid = req.rid
        if inst.inflight.get(rid) is not req:  # already ended or discarded
            return
        del inst.inflight[rid]
        release_handles(inst, req)
        ops = []
        for task, ev in list(inst.tasks.items()):
            if ev["rid"] == rid and not task.done():
                task.cancel()
                ops.append(ev["id"])
        cancelled = inst.cancelled
        cancelled[rid] = None
        if len(cancelled) > _MAX_CANCELLED:
            del cancelled[next(iter(cancelled))]
        self._send_cancel(inst, rid, ops)
        if not inst.inflight and inst.retired:
            self.drop(inst)

    def _send_cancel(self, inst: Instance, rid: int, ops: list[int]) -> None:
        if inst.alive and self.running:
            self._send({"t": "cancel", "wid": inst.wid, "rid": rid, "ops": ops}, b"", inst.wid, rid)

    def drop(self, inst: Instance) -> None:
        """Discard an isolate now (its in-flight requests fail with ``WorkerUnavailable``)."""
        if self.instances.pop(inst.wid, None) is None:
            return
        inst.alive = False
        for req in list(inst.inflight.values()):
            if not req.answered:
                req.settle(None, WorkerUnavailable(f"worker {inst.key!r} was evicted", key=inst.key))
        inst.inflight.clear()
        inst.handles.clear()
        inst.bases.clear()
        for task in inst.tasks:
            task.cancel()
        if self.running:
            self._send({"t": "drop", "wid": inst.wid}, b"", inst.wid, 0)


