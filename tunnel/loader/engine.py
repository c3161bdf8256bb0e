"""One QuickJS isolate: the only module of the project that imports the ``quickjs`` binding.

An ``Isolate`` owns one ``quickjs.Context`` (its own JSRuntime: nothing is shared between
isolates) and must only ever be used from the thread that created it (a shard process's
main thread). It exchanges JSON messages with the runtime (``js/runtime/*.js``) and never installs Python
callbacks (the binding refuses them while a time limit is set).

What an isolate gets, in order (each is precompiled bytecode when the fast path is on): the
runtime's core (``js/runtime/[0-9]*.js``: Request, Response, Headers, bodies, console, fetch, the
host protocol); the optional parts its worker can reach (``_parts``: crypto, structuredClone,
TextEncoder/TextDecoder, timers when its code names them — ``linker.mentioned`` —, env bindings
when it has some, the registry of rewritten modules unless the plan is native); the URL polyfill
when its code names URL or URLSearchParams; then 'init' and the modules. Per-isolate memory is
mostly QuickJS's own (a bare context as the binding makes it: ~165 KiB RSS here), then the core
(~105 KiB), so leaving out what a worker cannot use is what keeps an isolate small and its
load short (each fresh page costs ~2.7 µs to fault in on this machine).

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
from collections import OrderedDict
from importlib import metadata, resources

import _quickjs
import quickjs

from . import linker
from .linker import Plan

_JS = resources.files(__package__) / "js"
_RUNTIME = _JS / "runtime"


def _part(name: str) -> str:
    """An optional part of the runtime (``js/runtime/opt-<name>.js``): a fragment of a function body
    that gets the core's internals as ``R`` (50-host.js), run once through ``__qjs_ext``."""
    return "__qjs_ext(function (R) {\n'use strict';\n" + (_RUNTIME / f"opt-{name}.js").read_text("utf-8") + "\n});"


# js/runtime/[0-9]*.js are fragments of one function body: one private scope for the whole core
_RUNTIME_SRC = "(function () {\n'use strict';\n" + "\n".join(
    part.read_text("utf-8") for part in sorted(_RUNTIME.iterdir(), key=lambda p: p.name)
    if part.name.endswith(".js") and part.name[:1].isdigit()) + "\n})();"
# The optional parts, in the order they are instantiated (after the core, before the URL polyfill
# and 'init'): each only in the isolates of workers that can reach it (see ``_parts``).
_PARTS = {
    "encoding": (_JS / "vendor/fast-text-encoding-1.0.6.min.js").read_text("utf-8"),    # TextEncoder/TextDecoder
    "clone": (_JS / "vendor/ungap-structured-clone-1.4.0.min.js").read_text("utf-8") + "\n;" + _part("clone"),
    "crypto": _part("crypto"),
    "timers": _part("timers"),
    "bindings": _part("bindings"),  # env bindings (when the host says there are any)
    "modules": _part("modules"),  # the registry of rewritten modules (every plan but a native one)
}
#: which part provides each of ``linker.GATED``
_GATES = {"crypto": "crypto", "CryptoKey": "crypto", "structuredClone": "clone", "TextEncoder": "encoding",
          "TextDecoder": "encoding", "setTimeout": "timers", "setInterval": "timers", "clearTimeout": "timers",
          "clearInterval": "timers"}
assert set(_GATES) == set(linker.GATED)
_URL_SRC = "\n;".join((_JS / name).read_text("utf-8") for name in (
    "vendor/core-js-3.51.0-url.min.js",
    "fast-url.js",
))
_HOST_GLOBALS = ("__qjs_host", "__qjs_flush", "__qjs_watch", "__qjs_native", "__qjs_ext")
_DELETE_HOST_GLOBALS = "".join(f"delete globalThis.{name};" for name in _HOST_GLOBALS)
# The module a native plan evaluates is named like every module the binding compiles ("<input>"),
# so stack traces read as before; import() of that name returns its namespace.
_IMPORT_NATIVE = 'import("<input>")'
# QuickJS collects cycles when its heap passes a threshold (256 KiB at first), i.e. in the middle of
# every load, while the runtime is being instantiated: nothing is garbage then, and the collection
# costs ~0.1 ms. Loads run with this threshold instead (a worker whose top-level code makes that
# much cyclic garbage still gets it collected); afterwards the threshold is what QuickJS itself
# sets after a collection (1.5 x the heap).
_LOAD_GC_THRESHOLD = 2 << 20


def _parts(plan: Plan, bindings: list[str]) -> list[str]:
    """The optional parts of the runtime that ``plan``'s modules can reach."""
    want = {_GATES[name] for name in plan.names if name in _GATES}
    if bindings:
        want.add("bindings")
    if not plan.native:
        want.add("modules")
    return [name for name in _PARTS if name in want]


_PINNED = "0.17.0.2"


class _JSValue(ctypes.Structure):
    _fields_ = [("u", ctypes.c_uint64), ("tag", ctypes.c_int64)]


class Bytecode:
    """Precompiled bytecode for the runtime, its optional parts and the URL polyfill (a fast path).

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
    _MODULE = 1 << 0
    _BYTECODE = 1 << 0
    _STRIP_SOURCE = 1 << 4
    _STRIP_DEBUG = 1 << 5
    _SCRATCH_USES = 8
    #: whether trusted native modules can be compiled without their functions' source (``compile_module``)
    modules_ok = False

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
            ("JS_SetGCThreshold", None, [vp, sz]),
        ):
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = res, args
        self.programs: dict[str, bytes] = {}
        self._scratch: quickjs.Context | None = None
        self._scratch_uses = 0

    # JSRuntime starts with JSMallocFunctions (5 pointers), then JSMallocState {malloc_count,
    # malloc_size, …}: the heap size without JS_ComputeMemoryUsage walking the whole heap (about
    # 12 µs for a policy worker). Checked against ctx.memory() before use (``_check_sizes``).
    _MALLOC_SIZE_WORD = 6
    sizes_ok = False

    def set_gc_threshold(self, ctx: "quickjs.Context", size: int) -> None:
        """Set the heap size at which the runtime of ``ctx`` next collects cycles."""
        self.lib.JS_SetGCThreshold((ctypes.c_void_p * 4).from_address(id(ctx))[2], size)

    def malloc_size(self, ctx: "quickjs.Context") -> int:
        """The bytes the runtime of ``ctx`` holds (``ctx.memory()["malloc_size"]``), read directly."""
        if not self.sizes_ok:
            return int(ctx.memory()["malloc_size"])
        rt = (ctypes.c_void_p * 4).from_address(id(ctx))[2]
        return (ctypes.c_size_t * 8).from_address(rt)[self._MALLOC_SIZE_WORD]

    def _check_sizes(self) -> None:
        ctx = quickjs.Context()
        rt = (ctypes.c_void_p * 4).from_address(id(ctx))[2]
        words = (ctypes.c_size_t * 8).from_address(rt)
        for src in ("1", "globalThis.__x = new Array(5000).fill('x').join('')"):
            ctx.eval(src)
            if words[self._MALLOC_SIZE_WORD] != ctx.memory()["malloc_size"]:
                return
        self.sizes_ok = True

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

    def compile_module(self, source: str, memory_limit: int) -> bytes | None:
        """Compile the ES module ``source`` (named ``<input>``, like every module the binding
        compiles) in a scratch context and return its bytecode with line numbers but without the
        functions' source text, which QuickJS otherwise keeps for ``Function.prototype.toString``
        (about 25 KiB per generated policy worker); ``None`` if QuickJS rejects it.

        For trusted (generated) code only: its functions are never turned back into text. The
        scratch context runs nothing (compile only) and is replaced every ``_SCRATCH_USES``
        compiles (QuickJS keeps every module it compiled until its context goes).
        """
        if self._scratch is None or self._scratch_uses >= self._SCRATCH_USES:
            self._scratch = quickjs.Context()
            self._scratch_uses = 0
        scratch = self._scratch
        self._scratch_uses += 1
        scratch.set_memory_limit(memory_limit)
        lib = self.lib
        cx = self._ctx_ptr(scratch)
        data = source.encode("utf-8", "surrogatepass")
        module = lib.JS_Eval(cx, data, len(data), b"<input>", self._MODULE | self._COMPILE_ONLY)
        if module.tag == self._TAG_EXCEPTION:
            lib.JS_FreeValue(cx, lib.JS_GetException(cx))
            return None
        # a module value is never freed through JS_FreeValue: the context frees its modules
        size = ctypes.c_size_t()
        buf = lib.JS_WriteObject(cx, ctypes.byref(size), module, self._BYTECODE | self._STRIP_SOURCE)
        if not buf:
            lib.JS_FreeValue(cx, lib.JS_GetException(cx))
            return None
        code = ctypes.string_at(buf, size.value)
        lib.js_free(cx, buf)
        return code

    def read_module(self, ctx: "quickjs.Context", code: bytes) -> bool:
        """Add the module ``code`` (from ``compile_module``) to ``ctx``, unevaluated: ``import()``
        of ``<input>`` then links and evaluates it. False if it could not be read."""
        lib = self.lib
        cx = self._ctx_ptr(ctx)
        module = lib.JS_ReadObject(cx, code, len(code), self._BYTECODE)
        if module.tag == self._TAG_EXCEPTION:
            lib.JS_FreeValue(cx, lib.JS_GetException(cx))
            return False
        return True

    def _probe_modules(self) -> bool:
        code = self.compile_module("export default { f() { return 42; } };", 16 << 20)
        if code is None:
            return False
        ctx = quickjs.Context()
        self.check(ctx)
        if not self.read_module(ctx, code):
            return False
        ctx.eval('globalThis.__r = null; import("<input>").then((ns) => { globalThis.__r = ns.default.f() + ":" + '
                 'String(ns.default.f).includes("native code") }, (e) => { globalThis.__r = String(e) })')
        while ctx.execute_pending_job():
            pass
        return ctx.eval("__r") == "42:true"

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
                    code = 2  # the fast path works; 0 if compile_module works too
                    if fast._probe_modules():
                        code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) in (0, 2)):
            return None
        modules_ok = os.WEXITSTATUS(status) == 0
        try:
            fast = cls()
            fast.compile("runtime.js", _RUNTIME_SRC)
            for name, source in _PARTS.items():
                fast.compile(f"opt-{name}.js", source)
            fast.compile("url.js", _URL_SRC)
        except RuntimeError:
            return None
        fast._check_sizes()
        fast.modules_ok = modules_ok
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


_MODULE_CODE: OrderedDict[str, bytes] = OrderedDict()  # source -> compile_module() bytecode, LRU
_MODULE_CODE_MAX = 16


def _trusted_module(fast: Bytecode, source: str, memory_limit: int) -> bytes | None:
    """The bytecode of a trusted native module: compiled once (``compile_module``), then kept for
    the last ``_MODULE_CODE_MAX`` sources, so that reloading a worker (after an eviction or a
    limit hit) reads its ~20 KiB of bytecode instead of compiling its source again."""
    code = _MODULE_CODE.get(source)
    if code is not None:
        _MODULE_CODE.move_to_end(source)
        return code
    code = fast.compile_module(source, memory_limit)
    if code is not None:
        _MODULE_CODE[source] = code
        if len(_MODULE_CODE) > _MODULE_CODE_MAX:
            _MODULE_CODE.popitem(last=False)
    return code


class _Relink(Exception):
    """QuickJS rejected the module of a native plan: the isolate links it the full way instead."""


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
        args = (main, env_json, bindings, outbound, memory_limit, load_cpu_limit_s, log_rate)
        try:
            self._load(plan, *args)
        except _Relink:
            # QuickJS rejected the module of a native plan (a syntax error): link it the full way,
            # which reports exactly what it always did (LinkError for what tree-sitter finds, else
            # the failure of the rewritten module), in a fresh context
            self.close()
            self._load(linker.plan(plan.main, plan.modules, native=False), *args)

    def _load(self, plan: Plan, main: str, env_json: str, bindings: list[str], outbound: bool,
              memory_limit: int, load_cpu_limit_s: float, log_rate: int) -> None:
        ctx = self.ctx = quickjs.Context()
        ctx.set_memory_limit(memory_limit)
        ctx.set_max_stack_size(2 * 1024 * 1024)
        ctx.set_time_limit(load_cpu_limit_s)
        fast = _FAST
        if fast is not None:
            fast.set_gc_threshold(ctx, _LOAD_GC_THRESHOLD)
        try:
            ctx.set_time_limit(_NO_LIMIT)  # trusted vendored code; the ctypes path bypasses the binding
            if fast is None or not fast.run(ctx, "runtime.js"):
                ctx.eval(_RUNTIME_SRC)
            for name in _parts(plan, bindings):
                if fast is None or not fast.run(ctx, f"opt-{name}.js"):
                    ctx.eval(_PARTS[name])
            # before 'init', which installs the runtime's globals: core-js finds no fetch/Request to wrap
            if plan.uses_url and (fast is None or not fast.run(ctx, "url.js")):
                ctx.eval(_URL_SRC)
            ctx.set_time_limit(load_cpu_limit_s)
            self._host = ctx.get("__qjs_host")
            self._flush = ctx.get("__qjs_flush")
            watch = ctx.get("__qjs_watch")
            native = ctx.get("__qjs_native")
            ctx.eval(_DELETE_HOST_GLOBALS)
        except quickjs.JSException as exc:  # the runtime itself does not fit the limits
            raise _load_failure(exc, None) from None
        start = time.process_time()

        def limit() -> None:
            remaining = load_cpu_limit_s - (time.process_time() - start)
            if remaining <= 0:
                raise IsolateFailure("cpu", "Error", "Worker exceeded CPU time limit while loading.")
            ctx.set_time_limit(remaining)

        def call(fn, *args, module: str | None = None):
            limit()
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
            if step.kind == "native":
                # compiled and evaluated by QuickJS as it is; its namespace reaches the registry
                # through import() of it (evaluation errors and top-level await: that promise).
                # Trusted code is compiled without its functions' source text (compile_module).
                code = (_trusted_module(fast, step.payload, memory_limit)
                        if self.per_turn and fast is not None and fast.modules_ok else None)
                limit()
                if code is None or not fast.read_module(ctx, code):
                    try:
                        ctx.module(step.payload)
                    except quickjs.JSException:
                        raise _Relink() from None
                call(native, call(ctx.eval, _IMPORT_NATIVE, module=step.name), step.name)
            elif step.kind == "esm":
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
        if fast is not None:
            size = self.memory()
            fast.set_gc_threshold(ctx, size + (size >> 1))

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
        fast = _FAST
        return fast.malloc_size(self.ctx) if fast is not None else int(self.ctx.memory()["malloc_size"])

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
