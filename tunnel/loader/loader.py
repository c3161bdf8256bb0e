"""``Loader``: key → worker cache with Worker Loader semantics (single flight, failure memory,
LRU/memory/idle eviction) over isolates that live in shard processes (``pool``, ``shard``).

The loader never runs JavaScript on the event loop thread, and never changes the code of a
cached key: new code for a key needs ``evict(key)`` (requests running on the old isolate finish
on it). A limit hit discards the isolate; the next request reloads it from the cached code
without running the factory again. A key that keeps hitting its limits, or whose code got its
shard killed, is refused for a while (``WorkerQuarantined``); its console output is bounded too.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import OrderedDict, deque
from typing import Any, Awaitable, Callable

from .bridge import Done, Instance, Limits, Req
from .errors import WorkerError, WorkerLoadError, WorkerQuarantined, WorkerUnavailable
from .http_types import DEFAULT_MAX_BODY_BYTES, Request, Response, WorkerCode
from .pool import BUSY_AFTER_S, ShardPool
from .shard import Shard

Factory = Callable[[], Awaitable[WorkerCode]]
log = logging.getLogger("tunnel.loader")
worker_log = logging.getLogger("tunnel.loader.worker")

#: Limit hits (CPU, memory) within STRIKE_WINDOW_S that quarantine a key for QUARANTINE_S.
STRIKES, STRIKE_WINDOW_S, QUARANTINE_S = 3, 10.0, 5.0
#: A second kill of a shard by the same key within KILL_WINDOW_S quarantines it for KILL_QUARANTINE_S.
KILL_WINDOW_S, KILL_QUARANTINE_S = 300.0, 60.0


class _Entry:
    __slots__ = ("key", "factory", "code", "instance", "error", "error_until", "loading", "last_used", "loads")

    def __init__(self, key: str, factory: Factory):
        self.key, self.factory = key, factory
        self.code: WorkerCode | None = None
        self.instance: Instance | None = None
        self.error: WorkerError | None = None
        self.error_until = 0.0
        self.loading: asyncio.Future | None = None
        self.last_used = time.monotonic()
        self.loads = 0


class PreparedWorker:
    """A worker loaded by ``Loader.prepare`` and not yet installed (``state``: prepared, installed, discarded)."""

    __slots__ = ("key", "factory", "code", "instance", "state")

    def __init__(self, key: str, factory: Factory, code: WorkerCode, instance: Instance):
        self.key, self.factory, self.code, self.instance = key, factory, code, instance
        self.state = "prepared"


def _copy_error(err: WorkerError) -> WorkerError:
    return type(err)(str(err), js_name=err.js_name, js_message=err.js_message, key=err.key)


class WorkerStub:
    """What ``Loader.get`` returns: call ``await stub.fetch(request)``.

    A stub stays usable after eviction or a limit hit: the next ``fetch`` reloads the key
    (running the factory again only if the key was evicted).
    """

    __slots__ = ("_loader", "key", "_factory")

    def __init__(self, loader: "Loader", key: str, factory: Factory):
        self._loader, self.key, self._factory = loader, key, factory

    async def fetch(self, request: Request) -> Response:
        """Run the worker's ``fetch`` handler.

        Args:
            request: the ``Request``; its body may be bytes or an async iterable (streamed through).
        Returns:
            The worker's ``Response`` (``headers`` is a case-insensitive ``CIMultiDict``).
        Raises:
            WorkerLoadError: the worker failed to load (also for every request while the failure
                is remembered). WorkerScriptError: the handler threw or returned a non-Response.
            CpuLimitExceeded / MemoryLimitExceeded: a limit was hit (the isolate was discarded).
            WorkerUnavailable: the isolate was discarded under this request, or the loader is
                closed; WorkerQuarantined: the key is refused for a while.
        Cancelling the call (e.g. ``asyncio.wait_for``'s timeout) abandons the request: the loader
        and its isolate forget it (pending host operations, body handles, its timers).
        """
        fut = asyncio.get_running_loop().create_future()

        def done(response: Response | None, error: BaseException | None) -> None:
            if not fut.done():
                fut.set_exception(error) if error is not None else fut.set_result(response)

        ticket = self.submit(request, done)
        try:
            return await fut
        except asyncio.CancelledError:  # the caller gave up (e.g. asyncio.wait_for's timeout)
            ticket.cancel()
            raise

    def submit(self, request: Request, done: Done) -> "Ticket":
        """``fetch`` without a coroutine: start the request and call ``done(response, error)``
        exactly once, with the worker's ``Response`` or a ``WorkerError`` (as ``fetch`` raises
        them). Cancel with the ``Ticket``. For callers that drive many requests from callbacks
        (the edge): no task, no future, when the worker is loaded.
        """
        ticket = Ticket(self._loader, self.key, self._factory, request, done)
        ticket.go()
        return ticket


class Ticket:
    """A request started with ``WorkerStub.submit``; ``cancel()`` abandons it (``done`` is then
    never called). The loader may send it again to another isolate of its key, as long as none of
    its code has run (its shard became busy with another key's message)."""

    __slots__ = ("_loader", "key", "_factory", "request", "_done", "inst", "req", "task", "cancelled")

    def __init__(self, loader: "Loader", key: str, factory: Factory, request: Request, done: Done):
        self._loader, self.key, self._factory, self.request, self._done = loader, key, factory, request, done
        self.inst: Instance | None = None
        self.req: Req | None = None
        self.task: asyncio.Task | None = None
        self.cancelled = False

    def go(self) -> None:
        """Send the request to the key's isolate (after loading it, when it is not there)."""
        loader = self._loader
        try:
            entry = loader._entry(self.key, self._factory, count=False)
        except WorkerError as exc:
            self.finish(None, exc)
            return
        left = loader.quarantined(self.key)
        if left:
            self.finish(None, WorkerQuarantined(
                f"worker {self.key!r} keeps exceeding its limits; refused for {left:.0f} s more",
                retry_after=left, key=self.key))
            return
        inst = entry.instance
        if inst is not None and inst.alive and entry.error is None:
            if loader._pool.should_move(inst):
                loader._move(entry)
            else:
                entry.last_used = time.monotonic()
                self._start(inst)
                return
        self.task = asyncio.get_running_loop().create_task(self._after_load(entry))

    def _start(self, inst: Instance) -> None:
        self.inst = inst
        try:
            self.req = inst.shard.submit(inst, self.request, self.finish)
            self.req.ticket = self
        except WorkerError as exc:
            self.finish(None, exc)

    async def _after_load(self, entry: _Entry) -> None:
        try:
            inst = await self._loader._ready(entry)
        except WorkerError as exc:
            self.finish(None, exc)
            return
        self.task = None
        if not self.cancelled:
            entry.last_used = time.monotonic()
            self._start(inst)

    def resend(self) -> None:
        """Take the request back from its isolate (nothing of it ran) and send it again."""
        inst, req = self.inst, self.req
        if self.cancelled or inst is None or req is None:
            return
        inst.shard.cancel(inst, req)
        self.inst = self.req = None
        self.go()

    def finish(self, response: Response | None, error: BaseException | None) -> None:
        if self.cancelled:
            return
        if error is not None:
            self._loader._count_error(error)
        self._done(response, error)

    def cancel(self) -> None:
        """Abandon the request (see ``IsolateHost.cancel``)."""
        if self.cancelled:
            return
        self.cancelled = True
        if self.task is not None:
            self.task.cancel()
        if self.req is not None and self.inst is not None:
            self.inst.shard.cancel(self.inst, self.req)


class _Strikes:
    """What a key did to get quarantined: limit hits and shard kills, with their times."""

    __slots__ = ("hits", "kills", "until")

    def __init__(self, strikes: int) -> None:
        self.hits: deque[float] = deque(maxlen=strikes)
        self.kills: deque[float] = deque(maxlen=2)
        self.until = 0.0


class _LogBudget:
    __slots__ = ("tokens", "stamp", "dropped", "warned")

    def __init__(self, burst: float):
        self.tokens, self.stamp, self.dropped, self.warned = burst, time.monotonic(), 0, 0.0


class Loader:
    """Cache of workers keyed by string, each in its own QuickJS runtime.

    Args:
        cpu_limit_ms: CPU time per request (all its turns together); exceeding it raises
            ``CpuLimitExceeded`` and discards the isolate. ``WorkerCode.limits`` may set its own.
        memory_limit_mb: heap limit per isolate; exceeding it raises ``MemoryLimitExceeded``.
        max_workers: cached workers beyond this are evicted, least recently used first.
        memory_budget_mb: total isolate heap beyond which LRU workers are evicted.
        idle_s: workers unused this long are evicted.
        failure_ttl_s: a failed load is remembered (and re-raised without re-running the factory) this long.
        load_timeout_s: bound on the factory plus module evaluation.
        load_cpu_limit_ms: CPU time for evaluating the modules of a worker.
        max_body_bytes: largest body a worker may read into memory with text()/json()/arrayBuffer().
        shards: shard processes for untrusted code (default: CPU count), plus one spare.
        trusted_shards: shard processes for trusted code (``WorkerCode.trusted``; default: CPU count).
        hang_timeout_s: a message that keeps its shard longer than this gets the shard killed and
            restarted (default, per isolate: ``max(1, 3 × max(cpu limit, load cpu limit)) + 0.5`` s).
            The CPU limit stops ordinary runaways long before; the watchdog is for native
            operations QuickJS cannot interrupt. The key blamed for a kill is quarantined on its
            second one.
        log_bytes_per_s: console output a key may write per second (bursts of 4 s); lines beyond
            are dropped and counted (``stats()["log_dropped"]``).
        busy_after_s: a shard running one message longer than this is busy: other keys move away.
        quarantine_after: this many limit hits of a key within 10 s refuse it for 5 s
            (``WorkerQuarantined``), and so does its second shard kill, for 60 s; 0: never.
    """

    def __init__(self, *, cpu_limit_ms: float = 50, memory_limit_mb: float = 64, max_workers: int = 1000,
                 memory_budget_mb: float = 1024, idle_s: float = 300.0, failure_ttl_s: float = 5.0,
                 load_timeout_s: float = 10.0, load_cpu_limit_ms: float = 400,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, shards: int | None = None, trusted_shards: int | None = None,
                 hang_timeout_s: float | None = None, log_bytes_per_s: int = 65536,
                 busy_after_s: float = BUSY_AFTER_S, quarantine_after: int = STRIKES):
        if (cpu_limit_ms <= 0 or memory_limit_mb <= 0 or max_workers < 1 or shards is not None and shards < 1
                or trusted_shards is not None and trusted_shards < 1 or log_bytes_per_s < 1):
            raise ValueError("limits must be positive")
        self.max_workers = max_workers
        self.memory_budget = int(memory_budget_mb * 1024 * 1024)
        self.idle_s, self.failure_ttl_s, self.load_timeout_s = idle_s, failure_ttl_s, load_timeout_s
        self.log_bytes_per_s = log_bytes_per_s
        self.quarantine_after = quarantine_after
        limits = Limits(cpu_limit_ms / 1000.0, int(memory_limit_mb * 1024 * 1024), load_cpu_limit_ms / 1000.0,
                        max_body_bytes)

        def hang_s(lim: Limits) -> float:
            return hang_timeout_s if hang_timeout_s is not None else max(1.0, 3 * max(lim.cpu_s, lim.load_cpu_s)) + 0.5

        cpus = os.cpu_count() or 1
        self._pool = ShardPool(limits, shards or cpus, trusted_shards or cpus, hang_s, self._on_dead,
                               self._on_memory, self._on_kill, busy_after_s, setup=self._setup_shard)
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._stats = {"hits": 0, "misses": 0, "loads": 0, "load_failures": 0, "evictions": 0, "reloads": 0,
                       "load_seconds": 0.0}
        self._errors: dict[str, int] = {}
        self._strikes: dict[str, _Strikes] = {}
        self._logs: dict[str, _LogBudget] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    def _setup_shard(self, shard: Shard) -> None:
        shard.on_busy = self._on_busy
        shard.on_log = self._log
        shard.on_log_dropped = self._log_dropped
        shard.log_rate = self.log_bytes_per_s

    # ------------------------------------------------------------------ public
    def get(self, key: str, factory: Factory) -> WorkerStub:
        """Return a stub for ``key`` at once; on a miss, start loading it in the background.

        Args:
            key: worker key; code for a key never changes while it is cached.
            factory: ``async () -> WorkerCode``; runs only on a miss, never inside ``get``.
        Returns:
            A ``WorkerStub``. Load errors surface from ``await stub.fetch()``.
        Raises:
            RuntimeError: when called without a running event loop or after ``aclose()``.
        """
        if self._closed:
            raise RuntimeError("Loader is closed")
        self._entry(key, factory, count=True)
        return WorkerStub(self, key, factory)

    def evict(self, key: str) -> bool:
        """Drop ``key`` from the cache. Requests running on its isolate finish on it.

        Returns:
            True if the key was cached (loaded, loading or a remembered failure).
        """
        entry = self._entries.pop(key, None)
        if entry is None:
            return False
        self._retire(entry)
        self._pool.forget(key)
        return True

    def quarantined(self, key: str) -> float:
        """Seconds ``key`` is still refused for (0 when it may run)."""
        strikes = self._strikes.get(key)
        if strikes is None or not strikes.until:
            return 0.0
        left = strikes.until - time.monotonic()
        if left <= 0:
            strikes.until = 0.0
            return 0.0
        return left

    def stats(self) -> dict[str, Any]:
        """Counters and live state.

        Returns:
            ``{"hits", "misses", "loads", "load_failures", "evictions", "reloads", "load_seconds" (sum of
            factory-to-ready times of successful loads), "errors": {WorkerError subclass name: count},
            "workers", "memory_bytes", "moves" (keys moved off a busy shard), "quarantined": {key: seconds
            left}, "log_dropped": {key: console lines dropped}, "shards": [{"index", "group", "pid",
            "isolates", "kills", "starts", "bytecode", "busy"}], "per_worker": {key: {"memory_bytes",
            "requests", "idle_s", "limits": {"cpu_ms", "memory_mb"}, "shard"}}}``.
        """
        now = time.monotonic()
        live = {k: e for k, e in self._entries.items() if e.instance is not None and e.instance.alive}
        spare = self._pool.spare
        return {
            **self._stats,
            "errors": dict(self._errors),
            "workers": len(live),
            "memory_bytes": sum(e.instance.memory for e in live.values()),
            "moves": self._pool.moves,
            "quarantined": {k: round(left, 1) for k in list(self._strikes) if (left := self.quarantined(k))},
            "log_dropped": {k: b.dropped for k, b in self._logs.items() if b.dropped},
            "per_worker": {k: {"memory_bytes": e.instance.memory, "requests": e.instance.requests,
                               "idle_s": round(now - e.last_used, 3), "limits": e.instance.limits.as_dict(),
                               "shard": e.instance.shard.index} for k, e in live.items()},
            "shards": [{"index": s.index, "group": "spare" if s is spare else s.group,
                        "pid": s.proc.pid if s.proc else None, "isolates": len(s.instances), "kills": s.kills,
                        "starts": s.restarts, "bytecode": s.bytecode, "busy": s.busy_key() is not None}
                       for s in self._pool.all],
        }

    async def prepare(self, key: str, factory: Factory) -> "PreparedWorker":
        """Load new code for ``key`` into a fresh isolate without touching the cache.

        For atomic version swaps: prepare every changed worker, then ``install`` them all (or
        ``discard`` them all if one failed). Nothing is remembered on failure. Untrusted code is
        prepared on the spare shard: code that hangs at top level only ever kills that one.
        Args:
            key: the worker key the code is for.
            factory: ``async () -> WorkerCode``; run once, now.
        Returns:
            A ``PreparedWorker`` to pass to ``install`` or ``discard``.
        Raises:
            WorkerLoadError, CpuLimitExceeded, MemoryLimitExceeded, WorkerUnavailable: as ``fetch`` would.
        """
        if self._closed:
            raise WorkerUnavailable("the loader is closed", key=key)
        started = time.perf_counter()
        try:
            code = await asyncio.wait_for(self._run_factory(key, factory), self.load_timeout_s)
        except asyncio.TimeoutError:
            raise WorkerLoadError(f"worker {key!r}: the factory did not finish within {self.load_timeout_s}s",
                                  js_name="Error", js_message="factory timed out", key=key) from None
        host = self._pool.place(key, True) if code.trusted else self._pool.staging()
        inst = await host.load(key, code, self.load_timeout_s)
        self._stats["loads"] += 1
        self._stats["load_seconds"] += time.perf_counter() - started
        return PreparedWorker(key, factory, code, inst)

    def install(self, prepared: "PreparedWorker") -> None:
        """Make a prepared worker the cached worker of its key, at once (synchronous).

        The previous worker of the key is retired: requests running on it finish on it, new
        requests (also through stubs obtained earlier) go to the prepared one.
        Raises:
            ValueError: when ``prepared`` was already installed or discarded.
        """
        if prepared.state != "prepared":
            raise ValueError(f"worker {prepared.key!r} was already {prepared.state}")
        prepared.state = "installed"
        old = self._entries.pop(prepared.key, None)
        if old is not None:
            self._retire(old)
        entry = _Entry(prepared.key, prepared.factory)
        entry.code, entry.instance = prepared.code, prepared.instance
        self._entries[prepared.key] = entry
        if not prepared.code.trusted:
            self._pool.adopt(prepared.instance.shard, prepared.key)
        if self._sweeper is None:
            self._arm_sweeper()
        self._enforce()

    def discard(self, prepared: "PreparedWorker") -> None:
        """Dispose of a prepared worker that will not be installed (no-op if already installed)."""
        if prepared.state == "prepared":
            prepared.state = "discarded"
            prepared.instance.shard.drop(prepared.instance)

    async def start(self) -> None:
        """Start every shard process now (optional: they also start on first use)."""
        await self._pool.start()

    async def aclose(self) -> None:
        """Stop the shard processes; requests still running fail with ``WorkerUnavailable``."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        for entry in self._entries.values():
            if entry.loading is not None and not entry.loading.done():
                entry.loading.cancel()
        self._entries.clear()
        await self._pool.close()

    async def __aenter__(self) -> "Loader":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ internals
    def _host_for(self, key: str, code: WorkerCode) -> Shard:
        return self._pool.place(key, code.trusted)

    def _move(self, entry: _Entry) -> None:
        """``entry``'s shard is busy with another key: its next request loads it elsewhere (the
        requests running on the old isolate finish there)."""
        self._retire(entry)

    def _on_busy(self, shard: Shard) -> None:
        """``shard`` has been running one message for a while: the requests of other keys still
        queued behind it are sent to isolates of their keys elsewhere."""
        message, _ = shard.working()
        if message is None or shard.group != "untrusted":  # trusted code is bounded: nothing moves off it
            return
        for inst, req in shard.queued(message[1]):
            entry = self._entries.get(inst.key)
            if entry is not None and entry.instance is inst:
                self._move(entry)
            ticket = getattr(req, "ticket", None)
            if ticket is not None:
                ticket.resend()

    def _entry(self, key: str, factory: Factory, count: bool) -> _Entry:
        if self._closed:
            raise WorkerUnavailable("the loader is closed", key=key)
        now = time.monotonic()
        if self._sweeper is None:
            self._arm_sweeper()
        entry = self._entries.get(key)
        if entry is not None and entry.error is not None and now >= entry.error_until:
            del self._entries[key]
            entry = None
        if entry is not None:
            self._entries.move_to_end(key)
            if count:
                self._stats["hits"] += 1
            return entry
        if count:
            self._stats["misses"] += 1
        entry = _Entry(key, factory)
        self._entries[key] = entry
        self._start_load(entry)
        return entry

    def _start_load(self, entry: _Entry) -> None:
        loop = asyncio.get_running_loop()
        fut = entry.loading = loop.create_future()
        task = loop.create_task(self._load(entry, fut))
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())
        del task

    async def _load(self, entry: _Entry, fut: asyncio.Future) -> None:
        started = time.perf_counter()
        try:
            reload = entry.code is not None
            if reload:
                self._stats["reloads"] += 1
                code = entry.code
            else:
                code = await asyncio.wait_for(self._run_factory(entry.key, entry.factory), self.load_timeout_s)
                entry.code = code
            inst = await self._host_for(entry.key, code).load(entry.key, code, self.load_timeout_s)
        except asyncio.CancelledError:
            if not fut.done():
                fut.cancel()
            raise
        except Exception as exc:
            err = exc if isinstance(exc, WorkerError) else WorkerLoadError(
                f"worker {entry.key!r}: {type(exc).__name__}: {exc}", js_name=type(exc).__name__,
                js_message=str(exc), key=entry.key)
            if isinstance(exc, asyncio.TimeoutError):
                err = WorkerLoadError(f"worker {entry.key!r}: the factory did not finish within {self.load_timeout_s}s",
                                      js_name="Error", js_message="factory timed out", key=entry.key)
            self._stats["load_failures"] += 1
            if isinstance(err, WorkerUnavailable):
                # transient (the shard died under the load, or the loader is closing): not remembered,
                # the next request loads again
                if entry.loading is fut:
                    entry.loading = None
            elif self._entries.get(entry.key) is entry:
                entry.error, entry.error_until = err, time.monotonic() + self.failure_ttl_s
            if not fut.done():
                fut.set_exception(err)
            return
        entry.loads += 1
        self._stats["loads"] += 1
        self._stats["load_seconds"] += time.perf_counter() - started
        entry.instance = inst
        entry.loading = None
        if self._entries.get(entry.key) is not entry:
            # evicted while loading: serve the requests that waited for this load, then dispose of it
            inst.retired = True
            asyncio.get_running_loop().call_later(1.0, self._drop_if_idle, inst)
        if not fut.done():
            fut.set_result(inst)
        self._enforce()

    @staticmethod
    def _drop_if_idle(inst: Instance) -> None:
        if not inst.inflight:
            inst.shard.drop(inst)

    async def _run_factory(self, key: str, factory: Factory) -> WorkerCode:
        try:
            code = await factory()
        except WorkerError:
            raise
        except Exception as exc:
            raise WorkerLoadError(f"worker {key!r}: {type(exc).__name__}: {exc}", js_name=type(exc).__name__,
                                  js_message=str(exc), key=key) from exc
        if not isinstance(code, WorkerCode):
            raise WorkerLoadError(f"worker {key!r}: TypeError: factory returned {type(code).__name__}, "
                                  "expected WorkerCode", js_name="TypeError",
                                  js_message="factory returned the wrong type", key=key)
        try:
            code.validate()
            code.split_env()
        except TypeError as exc:
            raise WorkerLoadError(f"worker {key!r}: TypeError: {exc}", js_name="TypeError",
                                  js_message=str(exc), key=key) from None
        return code

    async def _ready(self, entry: _Entry) -> Instance:
        while True:
            if entry.error is not None:
                raise _copy_error(entry.error)
            inst = entry.instance
            if inst is not None and inst.alive:
                return inst
            if entry.loading is None:
                entry.instance = None
                self._start_load(entry)
            await asyncio.shield(entry.loading)  # raises the load error for every waiter

    def _retire(self, entry: _Entry) -> None:
        inst, entry.instance = entry.instance, None
        if inst is None:
            return
        if inst.inflight:
            inst.retired = True
        else:
            inst.shard.drop(inst)

    def _evict_entry(self, key: str) -> None:
        entry = self._entries.pop(key)
        self._stats["evictions"] += 1
        self._retire(entry)

    def _enforce(self) -> None:
        live = [k for k, e in self._entries.items() if e.instance is not None]
        total = sum(self._entries[k].instance.memory for k in live)
        i = 0
        while i < len(live) - 1 and (len(live) - i > self.max_workers or total > self.memory_budget):
            key = live[i]
            total -= self._entries[key].instance.memory
            self._evict_entry(key)
            i += 1

    def _arm_sweeper(self) -> None:
        loop = asyncio.get_running_loop()
        self._sweeper = loop.call_later(min(max(self.idle_s / 4, 0.05), 30.0), self._on_sweep)

    def _sweep(self, now: float) -> None:
        cutoff = now - self.idle_s
        for key in [k for k, e in self._entries.items() if e.instance is not None and e.last_used < cutoff
                    and not e.instance.inflight]:
            self._evict_entry(key)
        # forget expired failures and discarded isolates nobody asked for again (no eviction counted)
        for key in [k for k, e in self._entries.items() if e.instance is None and (e.loading is None or e.loading.done()) and (
                (e.error is not None and now >= e.error_until) or (e.error is None and e.last_used < cutoff))]:
            del self._entries[key]

    def _on_sweep(self) -> None:
        self._sweeper = None
        if self._closed:
            return
        self._sweep(time.monotonic())
        self._pool.retire_idle()
        if self._entries:
            self._arm_sweeper()

    def _count_error(self, exc: BaseException) -> None:
        name = type(exc).__name__
        self._errors[name] = self._errors.get(name, 0) + 1

    def _on_dead(self, inst: Instance, kind: str) -> None:
        entry = self._entries.get(inst.key)
        if entry is not None and entry.instance is inst:
            entry.instance = None
        if kind in ("cpu", "memory"):
            self._strike(inst.key)

    def _on_memory(self, inst: Instance) -> None:
        self._enforce()

    def _on_kill(self, key: str) -> None:
        """A shard was killed while it ran ``key``'s message: charged to ``key``, which is
        quarantined at once on its second kill."""
        if not self.quarantine_after:
            return
        strikes = self._strikes.get(key)
        if strikes is None:
            strikes = self._strikes[key] = _Strikes(self.quarantine_after)
        now = time.monotonic()
        strikes.kills.append(now)
        if len(strikes.kills) == 2 and now - strikes.kills[0] <= KILL_WINDOW_S:
            self._quarantine(key, strikes, KILL_QUARANTINE_S, "got its shard killed twice")
        else:
            self._strike(key)

    def _strike(self, key: str) -> None:
        """``key`` hit a limit; a few in a short time quarantine it, so a runaway stops taking CPU."""
        if not self.quarantine_after:
            return
        strikes = self._strikes.get(key)
        if strikes is None:
            strikes = self._strikes[key] = _Strikes(self.quarantine_after)
        now = time.monotonic()
        strikes.hits.append(now)
        if len(strikes.hits) == self.quarantine_after and now - strikes.hits[0] <= STRIKE_WINDOW_S:
            self._quarantine(key, strikes, QUARANTINE_S,
                             f"hit its limits {self.quarantine_after} times in {STRIKE_WINDOW_S:.0f} s")
        if len(self._strikes) > 4 * self.max_workers:  # keys long gone: forget the oldest
            del self._strikes[next(iter(self._strikes))]

    def _quarantine(self, key: str, strikes: _Strikes, seconds: float, why: str) -> None:
        strikes.until = time.monotonic() + seconds
        strikes.hits.clear()
        log.warning("worker %s %s; refusing its requests for %.0f s", key, why, seconds)

    def _log(self, inst: Instance, level: int, text: str) -> None:
        """A console line of ``inst``'s worker, within its key's budget (``log_bytes_per_s``)."""
        rate = self.log_bytes_per_s
        budget = self._logs.get(inst.key)
        if budget is None:
            budget = self._logs[inst.key] = _LogBudget(4.0 * rate)
        now = time.monotonic()
        budget.tokens = min(4.0 * rate, budget.tokens + (now - budget.stamp) * rate)
        budget.stamp = now
        size = len(text) + 64
        if budget.tokens < size:
            self._log_dropped(inst, 1)
            return
        budget.tokens -= size
        worker_log.log(level, "[%s] %s", inst.key, text)

    def _log_dropped(self, inst: Instance, lines: int) -> None:
        budget = self._logs.get(inst.key)
        if budget is None:
            budget = self._logs[inst.key] = _LogBudget(4.0 * self.log_bytes_per_s)
        budget.dropped += lines
        now = time.monotonic()
        if now - budget.warned >= 60.0:
            budget.warned = now
            log.warning("worker %s writes console output faster than %d bytes/s: lines are dropped (%d so far)",
                        inst.key, self.log_bytes_per_s, budget.dropped)
