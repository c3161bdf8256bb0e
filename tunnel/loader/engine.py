"""One QuickJS isolate: the only module of the project that imports the ``quickjs`` binding.

An ``Isolate`` owns one ``quickjs.Context`` (its own JSRuntime: nothing is shared between
isolates) and must only ever be used from the thread that created it (a shard process's
main thread). It exchanges JSON messages with the runtime (``js/runtime/*.js``) and never installs Python
callbacks (the binding refuses them while a time limit is set).

CPU limit: ``set_time_limit`` is per call into JS and counts process CPU time, so before every
call (host message, each pending job) the remaining budget of the request being served is set;
a request's budget is the sum over all the turns it causes. An uncatchable interrupt or an
out-of-memory while JS runs raises ``IsolateFailure``: the caller must discard the isolate.
"""

from __future__ import annotations

import ctypes
import json
import os
import time
from importlib import metadata, resources

import _quickjs
import quickjs

from .linker import Plan

_JS = resources.files(__package__) / "js"
_RUNTIME_SRC = "\n;".join([(_JS / name).read_text("utf-8") for name in (
    "vendor/fast-text-encoding-1.0.6.min.js",
    "vendor/ungap-structured-clone-1.4.0.min.js",
)] + [
    # js/runtime/*.js are fragments of one function body: one private scope for the whole runtime
    "(function () {\n'use strict';\n" + "\n".join(
        part.read_text("utf-8") for part in sorted((_JS / "runtime").iterdir(), key=lambda p: p.name)
        if part.name.endswith(".js")) + "\n})();",
])
_URL_SRC = "\n;".join((_JS / name).read_text("utf-8") for name in (
    "vendor/core-js-3.51.0-url.min.js",
    "fast-url.js",
))
_PINNED = "0.17.0.2"


class _JSValue(ctypes.Structure):
    _fields_ = [("u", ctypes.c_uint64), ("tag", ctypes.c_int64)]


class Bytecode:
    """Precompiled bytecode for the runtime and the URL polyfill (an optional fast path).

    The binding has no compile API, but its shared library exports QuickJS's C API. This reads
    the ``JSContext*`` out of the binding's ``Context`` object (private layout of quickjs-ng
    0.17.0.2: ``JSRuntime*`` and ``JSContext*`` right after the object header), compiles each
    script once per process (``JS_Eval`` compile-only + ``JS_WriteObject``) and instantiates it
    per isolate (``JS_ReadObject`` + ``JS_EvalFunction``): about 3x faster than evaluating source.
    It is only enabled when the installed version is exactly the pinned one and a probe in a
    forked process (``probe()``) passed; otherwise isolates evaluate the sources.
    """

    _TAG_EXCEPTION = 6
    _COMPILE_ONLY = 1 << 5
    _BYTECODE = 1 << 0
    _STRIP_DEBUG = 1 << 5

    def __init__(self) -> None:
        lib = self.lib = ctypes.CDLL(_quickjs.__file__)
        vp, sz, v = ctypes.c_void_p, ctypes.c_size_t, _JSValue
        for name, res, args in (
            ("JS_GetRuntime", vp, [vp]),
            ("JS_Eval", v, [vp, ctypes.c_char_p, sz, ctypes.c_char_p, ctypes.c_int]),
            ("JS_WriteObject", vp, [vp, ctypes.POINTER(sz), v, ctypes.c_int]),
            ("JS_ReadObject", v, [vp, ctypes.c_char_p, sz, ctypes.c_int]),
            ("JS_EvalFunction", v, [vp, v]),
            ("JS_FreeValue", None, [vp, v]),
            ("JS_GetException", v, [vp]),
            ("js_free", None, [vp, vp]),
        ):
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = res, args
        self.programs: dict[str, bytes] = {}

    @staticmethod
    def _ctx_ptr(ctx: "quickjs.Context") -> int:
        words = (ctypes.c_void_p * 4).from_address(id(ctx))
        rt, cx = words[2], words[3]
        for w in (rt, cx):
            if not w or w % 8 or w < 0x10000:
                raise RuntimeError("unexpected quickjs.Context layout")
        return cx

    def check(self, ctx: "quickjs.Context") -> int:
        """Return the ``JSContext*`` of ``ctx`` after checking it against ``JS_GetRuntime``."""
        cx = self._ctx_ptr(ctx)
        rt = (ctypes.c_void_p * 4).from_address(id(ctx))[2]
        if self.lib.JS_GetRuntime(cx) != rt:
            raise RuntimeError("unexpected quickjs.Context layout")
        return cx

    def compile(self, name: str, source: str) -> None:
        """Compile ``source`` once (in a scratch context) and keep its bytecode under ``name``."""
        ctx = quickjs.Context()
        cx = self.check(ctx)
        lib = self.lib
        data = source.encode("utf-8")
        fn = lib.JS_Eval(cx, data, len(data), name.encode(), self._COMPILE_ONLY)
        if fn.tag == self._TAG_EXCEPTION:
            lib.JS_FreeValue(cx, lib.JS_GetException(cx))
            raise RuntimeError(f"cannot compile {name}")
        size = ctypes.c_size_t()
        buf = lib.JS_WriteObject(cx, ctypes.byref(size), fn, self._BYTECODE | self._STRIP_DEBUG)
        lib.JS_FreeValue(cx, fn)
        if not buf:
            raise RuntimeError(f"cannot serialise {name}")
        self.programs[name] = ctypes.string_at(buf, size.value)
        lib.js_free(cx, buf)

    def run(self, ctx: "quickjs.Context", name: str) -> bool:
        """Instantiate and run the program ``name`` in ``ctx``; False when it threw (source eval then reports it)."""
        lib = self.lib
        cx = self._ctx_ptr(ctx)
        code = self.programs[name]
        fn = lib.JS_ReadObject(cx, code, len(code), self._BYTECODE)
        if fn.tag == self._TAG_EXCEPTION:
            lib.JS_FreeValue(cx, lib.JS_GetException(cx))
            return False
        result = lib.JS_EvalFunction(cx, fn)  # consumes fn
        if result.tag == self._TAG_EXCEPTION:
            lib.JS_FreeValue(cx, lib.JS_GetException(cx))
            return False
        lib.JS_FreeValue(cx, result)
        return True

    @classmethod
    def probe(cls) -> "Bytecode | None":
        """Enable the fast path if it provably works here; else return ``None``.

        The layout check and a full trial run happen in a forked child first, so a layout
        mismatch can at worst crash that child, never the shard.
        """
        if os.environ.get("TUNNEL_LOADER_BYTECODE", "1") == "0":
            return None
        try:
            if metadata.version("quickjs-ng") != _PINNED:
                return None
        except metadata.PackageNotFoundError:
            return None
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the forked probe
            code = 1
            try:
                fast = cls()
                fast.compile("probe.js", "globalThis.__probe = [1, 2].map((x) => x * 21).join(',');")
                ctx = quickjs.Context()
                fast.check(ctx)
                if fast.run(ctx, "probe.js") and ctx.eval("__probe") == "21,42":
                    code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
            return None
        try:
            fast = cls()
            fast.compile("runtime.js", _RUNTIME_SRC)
            fast.compile("url.js", _URL_SRC)
        except RuntimeError:
            return None
        return fast


_FAST: Bytecode | None = None
_PROBED = False


def enable_bytecode() -> bool:
    """Turn on the precompiled-runtime fast path for this process (call once, at shard start).

    Returns:
        True when it is enabled; False when isolates keep evaluating the runtime's source.
    """
    global _FAST, _PROBED
    _FAST = Bytecode.probe()
    _PROBED = True
    return _FAST is not None


def bytecode_available() -> bool:
    """``enable_bytecode()`` the first time (in a process that hosts isolates of its own), then
    whether it is on."""
    return _FAST is not None if _PROBED else enable_bytecode()
_ENTROPY_BYTES = 32  # seeds the runtime's ChaCha20 generator (00-core.js), at start and on reseed
_NO_LIMIT = -1.0
_MAX_TRACKED = 4096
_RUNTIME_LIMIT_S = 0.25


class IsolateFailure(Exception):
    """JS failed in a way that leaves the isolate unusable (limit hit, engine error).

    Attributes:
        kind: ``cpu``, ``memory``, ``script`` or ``load``.
        name, message, stack: the JavaScript error, as far as it is known.
    """

    def __init__(self, kind: str, name: str, message: str, stack: str = ""):
        super().__init__(f"{kind}: {name}: {message}")
        self.kind, self.name, self.message, self.stack = kind, name, message, stack


def _parse_exception(exc: BaseException, module: str | None = None) -> tuple[str, str, str]:
    text = str(exc)
    if module is not None:
        text = text.replace("<input>", module)
    first, _, stack = text.partition("\n")
    name, sep, message = first.partition(": ")
    if not sep:
        name, message = "Error", first
    return name, message, stack


def _classify(exc: BaseException) -> IsolateFailure:
    name, message, stack = _parse_exception(exc)
    text = str(exc)
    if isinstance(exc, quickjs.StackOverflow):
        return IsolateFailure("script", "RangeError", "Maximum call stack size exceeded", stack)
    if "interrupted" in text.split("\n", 1)[0]:
        return IsolateFailure("cpu", "Error", "Worker exceeded CPU time limit.", stack)
    if text.strip() in ("null", "") or "out of memory" in text:
        return IsolateFailure("memory", "Error", "Worker exceeded memory limit.", stack)
    return IsolateFailure("script", name, message, stack)


class Isolate:
    """A loaded worker in its own QuickJS runtime.

    Args:
        plan: the linked modules (``linker.plan``).
        main: main module name.
        env_json: JSON text of the plain env values.
        bindings: names of the env entries that are host bindings.
        outbound: whether global ``fetch()`` is routed to the host (else it throws "not permitted").
        cpu_limit_s: CPU seconds per request (all turns of one request together).
        memory_limit: bytes for the whole runtime.
        load_cpu_limit_s: CPU seconds for evaluating the modules.
        log_rate: console output this isolate may send, in bytes per second (bursts of 4 s).
        per_turn: bound each turn by ``cpu_limit_s`` instead of a request's turns together (trusted
            code: saves the clock reads).
    Raises:
        IsolateFailure: with kind ``load`` (or ``cpu``/``memory``) when the code does not load.
    """

    def __init__(self, plan: Plan, main: str, env_json: str, bindings: list[str], outbound: bool,
                 cpu_limit_s: float, memory_limit: int, load_cpu_limit_s: float, log_rate: int = 65536,
                 per_turn: bool = False):
        self.cpu_limit_s = cpu_limit_s
        self.per_turn = per_turn
        # bound for the runtime's own work after a turn (flush, entropy refill): it runs no worker
        # code, but a bound means that nothing in the isolate can ever run unlimited
        self.runtime_limit_s = max(cpu_limit_s, _RUNTIME_LIMIT_S)
        self.cpu_used: dict[int, float] = {}
        self.turns = 0
        ctx = self.ctx = quickjs.Context()
        ctx.set_memory_limit(memory_limit)
        ctx.set_max_stack_size(2 * 1024 * 1024)
        ctx.set_time_limit(load_cpu_limit_s)
        try:
            fast = _FAST
            ctx.set_time_limit(_NO_LIMIT)  # trusted vendored code; the ctypes path bypasses the binding
            if fast is None or not fast.run(ctx, "runtime.js"):
                ctx.eval(_RUNTIME_SRC)
            # before 'init', which installs the runtime's globals: core-js finds no fetch/Request to wrap
            if plan.uses_url and (fast is None or not fast.run(ctx, "url.js")):
                ctx.eval(_URL_SRC)
            ctx.set_time_limit(load_cpu_limit_s)
            self._host = ctx.get("__qjs_host")
            self._flush = ctx.get("__qjs_flush")
            watch = ctx.get("__qjs_watch")
            ctx.eval("delete globalThis.__qjs_host; delete globalThis.__qjs_flush; delete globalThis.__qjs_watch;")
        except quickjs.JSException as exc:  # the runtime itself does not fit the limits
            raise _load_failure(exc, None) from None
        start = time.process_time()

        def call(fn, *args, module: str | None = None):
            remaining = load_cpu_limit_s - (time.process_time() - start)
            if remaining <= 0:
                raise IsolateFailure("cpu", "Error", "Worker exceeded CPU time limit while loading.")
            ctx.set_time_limit(remaining)
            try:
                return fn(*args)
            except quickjs.JSException as exc:
                failure = _load_failure(exc, module)
                if failure.kind == "load" and self._near_memory_limit(memory_limit):
                    failure = IsolateFailure("memory", "Error", "Worker exceeded memory limit.", failure.stack)
                raise failure from None

        call(self._host, json.dumps({"t": "init", "env": env_json, "bindings": bindings, "outbound": outbound,
                                     "logRate": log_rate}),
             os.urandom(_ENTROPY_BYTES).decode("latin-1"))
        for step in plan.steps:
            if step.kind == "esm":
                promise = call(ctx.module, step.payload, module=step.name)
                call(watch, promise, step.name)
            elif step.kind == "cjs":
                call(ctx.eval, step.payload, module=step.name)
            else:
                payload = step.payload
                if step.kind == "data":
                    payload = bytes(payload).decode("latin-1")
                call(self._host, json.dumps({"t": "value", "name": step.name, "kind": step.kind}), payload)
            while call(ctx.execute_pending_job, module=step.name):
                pass
            events = self._take()
            for ev in events:
                if ev.get("t") == "modfail":
                    stack = ev["stack"].replace("<input>", ev["name"])
                    if "out of memory" in ev["message"] or self._near_memory_limit(memory_limit):
                        raise IsolateFailure("memory", "Error", "Worker exceeded memory limit.", stack)
                    raise IsolateFailure("load", ev["ename"], ev["message"], stack)
        call(self._host, json.dumps({"t": "start", "main": main}))
        ctx.set_time_limit(self.runtime_limit_s)
        self.pending_events = [ev for ev in self._take() if ev.get("t") == "log"]

    def _near_memory_limit(self, limit: int) -> bool:
        """True when the heap is within 5% of ``limit`` (an error then is most likely out-of-memory,
        whose error object QuickJS may have been unable to allocate)."""
        try:
            return self.ctx.memory()["malloc_size"] >= 0.95 * limit
        except quickjs.JSException:
            return True

    def _take(self) -> list[dict]:
        raw = self._flush()
        return json.loads(raw.partition("|")[2]) if raw else []

    def turn(self, rid: int, message: str, payload: str | None = None) -> str:
        """Deliver one message to the runtime, run the jobs it causes, return the events.

        Args:
            rid: the request this turn is charged to (CPU budget).
            message: JSON text for ``__qjs_host``.
            payload: optional raw string delivered alongside (a body, entropy).
        Returns:
            The runtime's events (``res``, ``end``, ``op``, ``log``) as JSON text, or ``""``.
            Requests that ended in this turn have their CPU accounting dropped.
        Raises:
            IsolateFailure: CPU limit, memory limit or another uncatchable failure; discard the isolate.
        """
        ctx = self.ctx
        if self.per_turn:
            return self._turn_bounded(message, payload)
        used = self.cpu_used
        budget = self.cpu_limit_s - used.get(rid, 0.0)
        clock = time.process_time  # a system call (no vDSO for CPU clocks): read it as few times as possible
        start = now = clock()
        ok = False
        try:
            ctx.set_time_limit(budget if budget > 0.0005 else 0.0005)
            if payload is None:
                self._host(message)
            else:
                self._host(message, payload)
            while True:
                now = clock()
                remaining = budget - (now - start)
                if remaining <= 0:
                    raise IsolateFailure("cpu", "Error", "Worker exceeded CPU time limit.")
                ctx.set_time_limit(remaining)
                if not ctx.execute_pending_job():
                    break
            # every value of the worker was serialised by the runtime during the turn (emit), so
            # flush only joins JSON texts; it still runs under a bound (the runtime's own limit)
            ctx.set_time_limit(self.runtime_limit_s)
            raw = self._flush()
            ok = True
        except quickjs.JSException as exc:
            raise _classify(exc) from None
        finally:
            # charged: up to the last clock read (the empty job check and the runtime's own
            # flush after it are not the worker's code)
            used[rid] = used.get(rid, 0.0) + (now if ok else clock()) - start
            if len(used) > _MAX_TRACKED:  # turns after a request ended (timers) are not cleaned up otherwise
                del used[next(iter(used))]
        self.turns += 1
        if not raw:
            return ""
        ended, _, raw = raw.partition("|")
        if ended:
            for r in ended.split(","):
                self.cpu_used.pop(int(r), None)
        if '"t":"entropy"' in raw:
            try:  # still under the runtime's bound set above
                self._host('{"t":"entropy"}', os.urandom(_ENTROPY_BYTES).decode("latin-1"))
            except quickjs.JSException as exc:
                raise _classify(exc) from None
        return raw

    def _turn_bounded(self, message: str, payload: str | None) -> str:
        """``turn`` for code the host trusts: each turn is bounded by the whole CPU limit, and no
        clock is read to sum a request's turns (they are short, and a clock read is a system call)."""
        ctx = self.ctx
        try:
            ctx.set_time_limit(self.cpu_limit_s)
            if payload is None:
                self._host(message)
            else:
                self._host(message, payload)
            while ctx.execute_pending_job():
                pass
            ctx.set_time_limit(self.runtime_limit_s)
            raw = self._flush()
        except quickjs.JSException as exc:
            raise _classify(exc) from None
        self.turns += 1
        if not raw:
            return ""
        raw = raw.partition("|")[2]
        if '"t":"entropy"' in raw:
            try:
                self._host('{"t":"entropy"}', os.urandom(_ENTROPY_BYTES).decode("latin-1"))
            except quickjs.JSException as exc:
                raise _classify(exc) from None
        return raw

    def end(self, rid: int) -> None:
        """Forget the CPU accounting of a finished request."""
        self.cpu_used.pop(rid, None)

    def cancel(self, rid: int, ops: list[int]) -> None:
        """Forget a request the host gave up on: its CPU accounting and, in the runtime, the host
        operations ``ops`` it was waiting for (and the timers behind them).

        No worker code runs (the runtime uses built-ins it captured at start), and the call is
        bounded anyway. Raises:
            IsolateFailure: the runtime did not complete it; discard the isolate.
        """
        self.cpu_used.pop(rid, None)
        ctx = self.ctx
        try:
            ctx.set_time_limit(self.runtime_limit_s)
            self._host(json.dumps({"t": "cancel", "rid": rid, "ops": ops}))
        except quickjs.JSException as exc:
            raise _classify(exc) from None

    def memory(self) -> int:
        """Return the bytes the runtime's allocator currently holds (QuickJS ``malloc_size``)."""
        return int(self.ctx.memory()["malloc_size"])

    def close(self) -> None:
        """Drop the context; its runtime is freed when the last reference goes."""
        self._host = self._flush = None
        self.ctx = None


def _load_failure(exc: BaseException, module: str | None) -> IsolateFailure:
    failure = _classify(exc)
    if failure.kind != "script":
        return failure
    name, message, stack = _parse_exception(exc, module)
    if module is not None and " at " not in message and stack.strip():
        pass
    return IsolateFailure("load", name, message, stack)


def syntax_details(modules: dict, error: Exception) -> tuple[str, str] | None:
    """Ask QuickJS for its own message about a syntax error the linker found.

    The module is compiled in a scratch context (imports fail at link time, before any code runs;
    a module without imports that QuickJS accepts runs there under a 50 ms limit, with no bindings).
    Args:
        modules: name → ``(kind, payload)`` as given to ``linker.plan``.
        error: the ``LinkError``; its message ends in ``at NAME:LINE:COL``.
    Returns:
        ``(name, message)`` with QuickJS's text and the module's name, line and column, or ``None``.
    """
    text = str(error)
    module = text.rsplit(" at ", 1)[-1].rsplit(":", 2)[0] if " at " in text else None
    if module not in modules:
        return None
    kind, src = modules[module]
    ctx = quickjs.Context()
    ctx.set_memory_limit(16 * 1024 * 1024)
    ctx.set_time_limit(0.05)
    try:
        if kind == "cjs":
            ctx.eval("(function(){" + src + "\n})")
        else:
            ctx.module(src)
    except quickjs.JSException as exc:
        name, message, stack = _parse_exception(exc, module)
        if name == "SyntaxError":
            where = stack.strip().splitlines()[0].strip() if stack.strip() else f"at {module}"
            return name, f"{message}\n    {where}"
    return None
