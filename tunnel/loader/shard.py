"""The loader's side of a shard process: spawning, framing, busy and hang detection.

Each ``Shard`` runs ``python -m tunnel.loader.child`` connected by a Unix socket pair, read on the
event loop (asyncio transport: writes never block the loop). An isolate lives in exactly one
shard and only that process's main thread touches it; the event loop thread never runs
JavaScript. What happens to the messages is ``host.IsolateHost``'s.

The child writes, in memory shared with the loader, the sequence number of the message it is
working on and when it started it (0 when idle). From that the loader knows, without asking,
that a shard is *busy* with one long message (``pool`` moves other keys away) and exactly which
request to blame when the message runs past its bound and the process has to be killed.
"""

from __future__ import annotations

import asyncio
import collections
import mmap
import os
import socket
import struct
import subprocess
import sys
import time
from typing import Callable

from .bridge import Instance, Limits, Req
from .errors import WorkerUnavailable
from .host import IsolateHost, log
from .protocol import FrameBuffer, ProtocolError, encode, encode_hot

_START_TIMEOUT_S = 30.0
#: The shared word: the seq of the message being handled, and when the child started it.
WORK = struct.Struct("<Qd")


class Shard(IsolateHost):
    """One shard process and everything in flight on it.

    Args:
        index: shard number (for logs).
        limits: default isolate limits.
        hang_s: how long the message of an isolate with these limits may run before the process
            is killed (the CPU limit stops ordinary runaways long before; this is for native
            operations QuickJS cannot interrupt).
        on_dead: called with an ``Instance`` the shard discarded (limit hit, crash, kill).
        on_memory: called when an isolate reports its heap size.
        on_killed: called with the shard and the key blamed for a kill (None when unknown).
        busy_after_s: a message running longer than this makes the shard busy.
        group: ``trusted`` or ``untrusted`` (see ``pool``).
    """

    def __init__(self, index: int, limits: Limits, hang_s: Callable[[Limits], float],
                 on_dead: Callable[[Instance], None], on_memory: Callable[[Instance], None],
                 on_killed: Callable[["Shard", str | None], None], busy_after_s: float, group: str):
        super().__init__(index, limits, on_dead, on_memory)
        self.hang_s, self.on_killed, self.busy_after_s, self.group = hang_s, on_killed, busy_after_s, group
        self.on_busy: Callable[["Shard"], None] | None = None  # set by the loader
        self.proc: subprocess.Popen | None = None
        self.transport: asyncio.Transport | None = None
        self.starting: asyncio.Future | None = None
        self.frames = FrameBuffer()
        self.seq = 0
        self.acked = 0
        self.sent: collections.deque[tuple[int, int, int, bytes]] = collections.deque()  # (seq, wid, rid, kind)
        self.watchdog: asyncio.TimerHandle | None = None
        self.kills = 0
        self.restarts = 0
        self.bytecode = False
        self.current: mmap.mmap | None = None
        self._out: list[bytes] = []  # per-request messages queued during this loop turn
        self._busy_seq = 0  # the message already reported busy

    @property
    def running(self) -> bool:
        return self.transport is not None

    @property
    def alive_or_startable(self) -> bool:
        return not self.closed

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
            self.current = mmap.mmap(current_fd, WORK.size)
            os.close(current_fd)
        self.restarts += 1
        self.frames = FrameBuffer()
        self.seq = self.acked = 0
        self.sent.clear()
        hello = loop.create_future()
        transport, _ = await loop.create_unix_connection(lambda: _ShardProtocol(self, hello), sock=parent)
        try:
            await asyncio.wait_for(hello, _START_TIMEOUT_S)
        except BaseException as exc:  # also cancelled (the loader closing): never leave the process behind
            transport.abort()
            self._reap()
            if isinstance(exc, (asyncio.TimeoutError, ConnectionError)):
                raise WorkerUnavailable(f"shard {self.index} did not start: {exc!r}", js_name="Error",
                                        js_message="shard did not start") from None
            raise
        self.transport = transport

    def _reap(self) -> None:
        """Kill the process (if it still runs) and wait for it."""
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:  # pragma: no cover - the kernel reaps SIGKILLed processes fast
                pass

    # ------------------------------------------------------------------ busy and hung
    def working(self) -> tuple[tuple[int, int, int, bytes] | None, float]:
        """The message the child is handling now (``(seq, wid, rid, kind)``, None when idle or
        unknown) and for how long it has been at it."""
        if self.current is None or self.seq == self.acked:
            return None, 0.0
        seq, started = WORK.unpack_from(self.current, 0)
        if not started:
            return None, 0.0
        message = next((m for m in self.sent if m[0] == seq), None)
        return message, time.monotonic() - started

    def busy_key(self) -> str | None:
        """The key whose message has kept this shard for more than ``busy_after_s``, else None."""
        if self.current is None or self.seq == self.acked:
            return None
        seq, started = WORK.unpack_from(self.current, 0)
        if not started or time.monotonic() - started < self.busy_after_s:
            return None
        message = next((m for m in self.sent if m[0] == seq), None)
        inst = self.instances.get(message[1]) if message is not None else None
        return inst.key if inst is not None else ""

    def busy_with_other(self, key: str) -> bool:
        """Whether a request of ``key`` would wait here behind another key's long message."""
        busy = self.busy_key()
        return busy is not None and busy != key

    def queued(self, wid: int) -> list[tuple[Instance, Req]]:
        """Requests of other isolates than ``wid`` whose first message waits behind the current
        one (nothing of them has run yet: they can be sent elsewhere)."""
        message, _ = self.working()
        if message is None:
            return []
        out = []
        for seq, mwid, rid, kind in self.sent:
            if seq <= message[0] or kind != b"req" or mwid == wid:
                continue
            inst = self.instances.get(mwid)
            req = inst.inflight.get(rid) if inst is not None else None
            if req is not None and not req.answered:
                out.append((inst, req))
        return out

    def _arm(self) -> None:
        if self.watchdog is None and self.transport is not None:
            self.watchdog = asyncio.get_running_loop().call_later(self.busy_after_s, self._check)

    def _check(self) -> None:
        """While messages are outstanding, every ``busy_after_s``: report a newly busy shard, kill
        one whose message ran past the bound of the isolate running it."""
        self.watchdog = None
        if self.transport is None or self.seq == self.acked:
            return
        message, running = self.working()
        if message is not None and running >= self.busy_after_s:
            inst = self.instances.get(message[1])
            limits = inst.limits if inst is not None else self.limits
            bound = self.hang_s(limits)
            if running > bound:
                self.kill(f"one message ran for {running:.1f} s (its bound: {bound:.1f} s)")
                return
            if self._busy_seq != message[0]:
                self._busy_seq = message[0]
                if self.on_busy is not None:
                    self.on_busy(self)
        self._arm()

    def kill(self, reason: str) -> None:
        """Kill the process and fail everything on it (the watchdog's last resort)."""
        if self.transport is None:
            return
        log.warning("loader shard %d killed: %s", self.index, reason)
        self.kills += 1
        message, _ = self.working()
        culprit = message or (self.sent[0] if self.sent else None)
        inst = self.instances.get(culprit[1]) if culprit is not None else None
        self._lost(culprit, reason)
        self.on_killed(self, inst.key if inst is not None else None)

    def _lost(self, culprit: tuple[int, int, int, bytes] | None, reason: str) -> None:
        transport, self.transport = self.transport, None
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None
        if transport is not None:
            transport.abort()
        self._reap()
        self._out.clear()
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
        self._reap()  # a process still starting
        if self.current is not None:
            self.current.close()
            self.current = None

    # ------------------------------------------------------------------ messaging
    def _send(self, header: dict, blob: bytes = b"", wid: int = 0, rid: int = 0) -> None:
        if self.transport is None:
            raise WorkerUnavailable(f"shard {self.index} is not running", js_name="Error", js_message="shard down")
        self.seq += 1
        header["seq"] = self.seq
        self.sent.append((self.seq, wid, rid, header["t"].encode()))
        self._out.append(encode(header, blob))
        self._write_out()  # control messages leave at once, after what this turn queued before them
        self._arm()

    def _send_hot(self, kind: bytes, wid: int, rid: int, blob: bytes, extra: bytes = b"") -> None:
        """``_send`` for ``req``/``done`` (the per-request messages): the header is formatted, not dumped."""
        if self.transport is None:
            raise WorkerUnavailable(f"shard {self.index} is not running", js_name="Error", js_message="shard down")
        seq = self.seq = self.seq + 1
        self.sent.append((seq, wid, rid, kind))
        out = self._out
        out.append(encode_hot(kind, wid, rid, seq, blob, extra))
        if len(out) == 1:  # the first message of this loop turn: they all leave in one write at its end
            asyncio.get_running_loop().call_soon(self._write_out)
        if self.watchdog is None:
            self._arm()

    def _write_out(self) -> None:
        out, self._out = self._out, []
        if out and self.transport is not None:
            self.transport.write(b"".join(out))

    def _send_req(self, inst: Instance, rid: int, text: str) -> None:
        self._send_hot(b"req", inst.wid, rid, text.encode("ascii"))

    def _send_done(self, inst: Instance, rid: int, text: str, blob: bytes, p: str | None) -> None:
        # the runtime's message travels as ready JSON text in the blob (before the payload), so the
        # shard hands it to JavaScript without parsing and re-encoding it
        data = text.encode("ascii")
        extra = b',"n":%d' % len(data) if p is None else b',"n":%d,"p":"%b"' % (len(data), p.encode())
        self._send_hot(b"done", inst.wid, rid, data + blob if blob else data, extra)

    def _frame(self, header: dict, blob: bytes) -> None:
        ack = header.get("ack", 0)
        if ack > self.acked:
            self.acked = ack
        sent = self.sent
        while sent and sent[0][0] <= ack:
            sent.popleft()
        js = [(wid, rid, blob[off:off + n].decode("utf-8", "surrogatepass"))
              for wid, rid, off, n in header.get("js", ())]
        self._deliver(header.get("ev", ()), js)


def _shared_word() -> int:
    """A small memory file to share with the child (-1 where memfd is not available)."""
    try:
        fd = os.memfd_create("tunnel-loader-shard", 0)
    except (AttributeError, OSError):
        return -1
    os.ftruncate(fd, WORK.size)
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
