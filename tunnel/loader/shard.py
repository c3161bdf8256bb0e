"""The loader's side of a shard process: spawning, framing, watchdog.

Each ``Shard`` runs ``python -m tunnel.loader.child`` connected by a Unix socket pair, read on the
event loop (asyncio transport: writes never block the loop). An isolate lives in exactly one
shard and only that process's main thread touches it; the event loop thread never runs a
user's JavaScript. What happens to the messages is ``host.IsolateHost``'s.
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

from .bridge import Instance, Limits
from .errors import WorkerUnavailable
from .host import IsolateHost, log
from .protocol import FrameBuffer, ProtocolError, encode, encode_hot

_START_TIMEOUT_S = 30.0


class Shard(IsolateHost):
    """One shard process and everything in flight on it.

    Args:
        index: shard number (for logs).
        limits: isolate limits.
        hang_timeout_s: kill the process when it has work and answers nothing for this long.
        on_dead: called with an ``Instance`` the shard discarded (limit hit, crash, kill).
    """

    def __init__(self, index: int, limits: Limits, hang_timeout_s: float, on_dead: Callable[[Instance], None],
                 on_memory: Callable[[Instance], None]):
        super().__init__(index, limits, on_dead, on_memory)
        self.hang_timeout_s = hang_timeout_s
        self.proc: subprocess.Popen | None = None
        self.transport: asyncio.Transport | None = None
        self.starting: asyncio.Future | None = None
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
        self._out: list[bytes] = []  # per-request messages queued during this loop turn

    @property
    def running(self) -> bool:
        return self.transport is not None

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
        self._out.append(encode(header, blob))
        self._write_out()  # control messages leave at once, after what this turn queued before them

    def _send_hot(self, kind: bytes, wid: int, rid: int, blob: bytes, extra: bytes = b"") -> None:
        """``_send`` for ``req``/``done`` (the per-request messages): the header is formatted, not dumped."""
        if self.transport is None:
            raise WorkerUnavailable(f"shard {self.index} is not running", js_name="Error", js_message="shard down")
        if self.seq == self.acked:
            self.last_progress = time.monotonic()
        seq = self.seq = self.seq + 1
        self.sent.append((seq, wid, rid))
        out = self._out
        out.append(encode_hot(kind, wid, rid, seq, blob, extra))
        if len(out) == 1:  # the first message of this loop turn: they all leave in one write at its end
            asyncio.get_running_loop().call_soon(self._write_out)

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
        self.last_progress = time.monotonic()
        ack = header.get("ack", 0)
        if ack > self.acked:
            self.acked = ack
        sent = self.sent
        while sent and sent[0][0] <= ack:
            sent.popleft()
        js = [(wid, rid, blob[off:off + n].decode("utf-8", "surrogatepass"))
              for wid, rid, off, n in header.get("js", ())]
        self._deliver(header.get("ev", ()), js)


_SEQ = struct.Struct("<Q")


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
