"""The loader's side of a shard process: spawning, messaging, events, watchdog.

Each ``Shard`` runs ``python -m tunnel.loader.child`` connected by a Unix socket pair, read on the
event loop (asyncio transport: writes never block the loop). Isolates live in exactly one shard
(chosen by key hash) and only that process's main thread touches them; the event loop thread
never runs JavaScript. Ops the JavaScript side asks for (binding calls, global fetch, body
reads, timers) run here as asyncio tasks (``bridge.run_op``) answered with ``done`` messages.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import logging
import mmap
import os
import socket
import struct
import subprocess
import sys
import time
from typing import Callable

from .bridge import Instance, Limits, Req, add_handle, close_later, release_handles, response_from_wire, run_op
from .errors import WorkerError, WorkerLoadError, WorkerUnavailable, error_from_wire
from .http_types import Request, Response, WorkerCode, body_is_empty
from .protocol import FrameBuffer, ProtocolError, encode, encode_hot

log = logging.getLogger("tunnel.loader")
worker_log = logging.getLogger("tunnel.loader.worker")
_LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_START_TIMEOUT_S = 30.0
_MAX_CANCELLED = 1024


class Shard:
    """One shard process and everything in flight on it.

    Args:
        index: shard number (for logs).
        limits: isolate limits.
        hang_timeout_s: kill the process when it has work and answers nothing for this long.
        on_dead: called with an ``Instance`` the shard discarded (limit hit, crash, kill).
    """

    def __init__(self, index: int, limits: Limits, hang_timeout_s: float, on_dead: Callable[[Instance], None],
                 on_memory: Callable[[Instance], None]):
        self.index, self.limits, self.hang_timeout_s = index, limits, hang_timeout_s
        self.on_dead, self.on_memory = on_dead, on_memory
        self.proc: subprocess.Popen | None = None
        self.transport: asyncio.Transport | None = None
        self.starting: asyncio.Future | None = None
        self.instances: dict[int, Instance] = {}
        self.frames = FrameBuffer()
        self.seq = 0
        self.acked = 0
        self.sent: collections.deque[tuple[int, int, int]] = collections.deque()  # (seq, wid, rid)
        self.last_progress = time.monotonic()
        self.watchdog: asyncio.TimerHandle | None = None
        self.kills = 0
        self.restarts = 0
        self.bytecode = False
        self.current: mmap.mmap | None = None
        self._ids = itertools.count(1)
        self.closed = False

    # ------------------------------------------------------------------ process
    async def ensure_started(self) -> None:
        """Start the shard process if it is not running (single flight)."""
        if self.transport is not None:
            return
        if self.closed:
            raise WorkerUnavailable("the loader is closed", js_name="Error", js_message="the loader is closed")
        if self.starting is None:
            self.starting = asyncio.get_running_loop().create_future()
            try:
                await self._start()
                self.starting.set_result(None)
            except BaseException as exc:
                self.starting.set_exception(exc)
                self.starting.exception()
                raise
            finally:
                self.starting = None
            return
        await asyncio.shield(self.starting)

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        parent, child = socket.socketpair()
        current_fd = _shared_word()
        try:
            env = dict(os.environ)
            # the child must import this very package, however the parent found it
            env["PYTHONPATH"] = os.pathsep.join(p or os.getcwd() for p in sys.path)
            fds = (child.fileno(),) + ((current_fd,) if current_fd >= 0 else ())
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tunnel.loader.child", str(child.fileno()), str(current_fd)],
                pass_fds=fds, stdin=subprocess.DEVNULL, close_fds=True, env=env)
        finally:
            child.close()
        if self.current is not None:
            self.current.close()
        self.current = None
        if current_fd >= 0:
            self.current = mmap.mmap(current_fd, 8)
            os.close(current_fd)
        self.restarts += 1
        self.frames = FrameBuffer()
        self.seq = self.acked = 0
        self.sent.clear()
        hello = loop.create_future()
        transport, _ = await loop.create_unix_connection(lambda: _ShardProtocol(self, hello), sock=parent)
        try:
            await asyncio.wait_for(hello, _START_TIMEOUT_S)
        except (asyncio.TimeoutError, ConnectionError) as exc:
            transport.abort()
            self.proc.kill()
            self.proc.wait()
            self.proc = None
            raise WorkerUnavailable(f"shard {self.index} did not start: {exc!r}", js_name="Error",
                                    js_message="shard did not start") from None
        self.transport = transport
        self.last_progress = time.monotonic()
        self.watchdog = loop.call_later(self.hang_timeout_s / 4, self._check)

    def _check(self) -> None:
        if self.transport is None:
            return
        loop = asyncio.get_running_loop()
        if self.seq > self.acked and time.monotonic() - self.last_progress > self.hang_timeout_s:
            self.kill("did not answer within %.1fs" % self.hang_timeout_s)
            return
        self.watchdog = loop.call_later(self.hang_timeout_s / 4, self._check)

    def kill(self, reason: str) -> None:
        """Kill the process and fail everything on it (the watchdog's last resort)."""
        if self.transport is None:
            return
        log.warning("loader shard %d killed: %s", self.index, reason)
        self.kills += 1
        culprit = self.sent[0] if self.sent else None
        if self.current is not None:  # the child records the seq it is working on
            working = _SEQ.unpack_from(self.current, 0)[0]
            culprit = next((m for m in self.sent if m[0] == working), culprit)
        self._lost(culprit, reason)

    def _lost(self, culprit: tuple[int, int, int] | None, reason: str) -> None:
        transport, self.transport = self.transport, None
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None
        if transport is not None:
            transport.abort()
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:  # pragma: no cover - the kernel reaps SIGKILLed processes fast
                pass
        for inst in list(self.instances.values()):
            kind = "unavailable"
            rid = -1
            if culprit is not None and culprit[1] == inst.wid:
                kind, rid = "cpu", culprit[2]
            self._discard(inst, rid, kind, "Error",
                          "Worker exceeded CPU time limit." if kind == "cpu" else f"shard {self.index} {reason}", "")

    async def close(self) -> None:
        """Stop the process and fail whatever is still running on it."""
        self.closed = True
        if self.transport is not None:
            self._lost(None, "closed")
        if self.current is not None:
            self.current.close()
            self.current = None

    # ------------------------------------------------------------------ messaging
    def _send(self, header: dict, blob: bytes = b"", wid: int = 0, rid: int = 0) -> None:
        if self.transport is None:
            raise WorkerUnavailable(f"shard {self.index} is not running", js_name="Error", js_message="shard down")
        if self.seq == self.acked:
            self.last_progress = time.monotonic()
        self.seq += 1
        header["seq"] = self.seq
        self.sent.append((self.seq, wid, rid))
        self.transport.write(encode(header, blob))

    def _send_hot(self, kind: bytes, wid: int, rid: int, blob: bytes, extra: bytes = b"") -> None:
        """``_send`` for ``req``/``done`` (the per-request messages): the header is formatted, not dumped."""
        if self.transport is None:
            raise WorkerUnavailable(f"shard {self.index} is not running", js_name="Error", js_message="shard down")
        if self.seq == self.acked:
            self.last_progress = time.monotonic()
        seq = self.seq = self.seq + 1
        self.sent.append((seq, wid, rid))
        self.transport.write(encode_hot(kind, wid, rid, seq, blob, extra))

    def _frame(self, header: dict, blob: bytes) -> None:
        self.last_progress = time.monotonic()
        ack = header.get("ack", 0)
        if ack > self.acked:
            self.acked = ack
        sent = self.sent
        while sent and sent[0][0] <= ack:
            sent.popleft()
        for ev in header.get("ev", ()):
            try:
                self._event(ev)
            except Exception:  # a malformed event must not break the protocol loop
                log.exception("loader shard %d: bad event %r", self.index, ev.get("t"))
        for wid, rid, off, n in header.get("js", ()):
            inst = self.instances.get(wid)
            if inst is None:
                continue
            try:
                events = _loads(blob[off:off + n].decode("utf-8", "surrogatepass"))
                for ev in events:
                    self._js_event(inst, rid, ev)
            except Exception:  # hostile code controls this text: never let it break the loop
                log.exception("loader shard %d: bad runtime event from %r", self.index, inst.key)

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
            if req is not None and not req.future.done():
                if ev["ok"]:
                    try:
                        req.future.set_result(response_from_wire(inst, ev["res"]))
                    except TypeError as exc:
                        req.future.set_exception(error_from_wire("script", "TypeError", str(exc), inst.key))
                else:
                    kind = "memory" if ev.get("kind") == "memory" else "script"
                    req.future.set_exception(error_from_wire(kind, str(ev["name"]), str(ev["message"]),
                                                             inst.key, str(ev.get("stack", ""))))
                    if kind == "memory":  # the isolate may be left inconsistent: discard it
                        self._discard(inst, rid, "memory", str(ev["name"]), str(ev["message"]), "")
                        if self.transport is not None:
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
            task = asyncio.get_running_loop().create_task(self._op(inst, ev))
            inst.tasks[task] = ev
            task.add_done_callback(inst.task_done)
        elif t == "log":
            worker_log.log(_LOG_LEVELS.get(ev.get("l"), logging.INFO), "[%s] %s", inst.key, ev.get("m", ""))

    def _discard(self, inst: Instance, rid: int, kind: str, name: str, message: str, stack: str) -> None:
        self.instances.pop(inst.wid, None)
        was_alive, inst.alive = inst.alive, False
        if inst.loaded is not None and not inst.loaded.done():
            inst.loaded.set_exception(error_from_wire(kind if kind != "unavailable" else "unavailable", name, message, inst.key))
        for req in list(inst.inflight.values()):
            if not req.future.done():
                if req.rid == rid:
                    err = error_from_wire(kind, name, message, inst.key, stack)
                else:
                    err = WorkerUnavailable(
                        f"worker {inst.key!r}: isolate discarded ({kind}: {message}) while this request ran on it",
                        js_name=name, js_message=message, key=inst.key)
                req.future.set_exception(err)
        inst.inflight.clear()
        inst.handles.clear()
        inst.closable.clear()
        for task in inst.tasks:
            task.cancel()
        if was_alive or kind != "load":
            self.on_dead(inst)

    def _end(self, inst: Instance, rid: int) -> None:
        req = inst.inflight.pop(rid, None)
        if req is None:
            return
        release_handles(inst, req)
        if not req.future.done():  # ended without a response (should not happen)
            req.future.set_exception(WorkerUnavailable(f"worker {inst.key!r}: request ended without a response",
                                                       key=inst.key))
        if not inst.inflight and inst.retired:
            self.drop(inst)

    # ------------------------------------------------------------------ ops
    async def _op(self, inst: Instance, ev: dict) -> None:
        reply, blob = await run_op(inst, ev, self.limits.max_body_bytes)
        if inst.alive and self.transport is not None:
            # the runtime's message travels as ready JSON text in the blob (before the payload), so
            # the shard hands it to JavaScript without parsing and re-encoding it
            rid, p = reply.pop("rid"), reply.pop("p", None)
            del reply["wid"]
            text = _dumps(reply).encode("ascii")
            extra = b',"n":%d' % len(text) if p is None else b',"n":%d,"p":"%b"' % (len(text), p.encode())
            self._send_hot(b"done", inst.wid, rid, text + blob if blob else text, extra)

    # ------------------------------------------------------------------ public
    async def load(self, key: str, code: WorkerCode, timeout: float) -> Instance:
        """Create an isolate for ``code`` in this shard.

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
        lim = self.limits
        self._send({"t": "load", "wid": wid, "main": code.main_module, "mods": mods, "env": env_json,
                    "bindings": bindings, "outbound": code.global_outbound is not None,
                    "limits": {"cpu": lim.cpu_s, "mem": lim.memory, "load": lim.load_cpu_s}}, bytes(blob), wid, 0)
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
        """
        if not inst.alive:
            raise WorkerUnavailable(f"worker {inst.key!r}: isolate is gone", key=inst.key)
        rid = next(self._ids)
        req = Req(rid, asyncio.get_running_loop().create_future())
        inst.inflight[rid] = req
        inst.requests += 1
        body = None
        if not body_is_empty(request.body):
            body = {"h": add_handle(inst, request.body, rid)}
        wire = {"t": "req", "rid": rid, "req": {"method": request.method, "url": request.url,
                                                "headers": list(request.headers.items()),
                                                "cf": request.cf, "body": body}}
        try:
            self._send_hot(b"req", inst.wid, rid, _dumps(wire).encode("ascii"))
        except WorkerError:
            inst.inflight.pop(rid, None)
            raise
        try:
            return await req.future
        except asyncio.CancelledError:  # the caller gave up (e.g. asyncio.wait_for's timeout)
            self._cancel(inst, req, request)
            raise

    def _cancel(self, inst: Instance, req: Req, request: Request) -> None:
        """Forget a request whose caller was cancelled: its in-flight entry, body handles and
        running ops here, and (``cancel`` message) what the isolate holds for it."""
        fut = req.future
        if fut.done() and not fut.cancelled():
            # the answer arrived as the caller gave up: the request runs to its end (waitUntil),
            # but nobody will read that response's body
            if fut.exception() is None and fut.result().body is not request.body:
                close_later(fut.result().body)
            return
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
        if inst.alive and self.transport is not None:
            self._send({"t": "cancel", "wid": inst.wid, "rid": rid, "ops": ops}, b"", inst.wid, rid)

    def drop(self, inst: Instance) -> None:
        """Discard an isolate now (its in-flight requests fail with ``WorkerUnavailable``)."""
        if self.instances.pop(inst.wid, None) is None:
            return
        inst.alive = False
        for req in inst.inflight.values():
            if not req.future.done():
                req.future.set_exception(WorkerUnavailable(f"worker {inst.key!r} was evicted", key=inst.key))
        inst.inflight.clear()
        inst.handles.clear()
        for task in inst.tasks:
            task.cancel()
        if self.transport is not None:
            self._send({"t": "drop", "wid": inst.wid}, b"", inst.wid, 0)


_SEQ = struct.Struct("<Q")
_loads = json.JSONDecoder().decode
_dumps = json.JSONEncoder().encode  # ASCII JSON: what reaches JavaScript never carries a lone surrogate


def _shared_word() -> int:
    """An 8-byte memory file to share with the child (-1 where memfd is not available)."""
    try:
        fd = os.memfd_create("tunnel-loader-shard", 0)
    except (AttributeError, OSError):
        return -1
    os.ftruncate(fd, 8)
    return fd


class _ShardProtocol(asyncio.Protocol):
    def __init__(self, shard: Shard, hello: asyncio.Future):
        self.shard = shard
        self.hello = hello

    def data_received(self, data: bytes) -> None:
        shard = self.shard
        try:
            frames = shard.frames.feed(data)
        except ProtocolError as exc:
            shard.kill(f"protocol error: {exc}")
            return
        for header, blob in frames:
            if "hello" in header:
                shard.bytecode = bool(header.get("bytecode"))
                if not self.hello.done():
                    self.hello.set_result(header["hello"])
                continue
            shard._frame(header, blob)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.hello.done():
            self.hello.set_exception(ConnectionError("shard process exited during start"))
            self.hello.exception()
        shard = self.shard
        if shard.transport is not None:
            shard._lost(None, "process exited")
