"""The message handlers that own isolates: what a shard process runs.

``Child`` takes the loader's messages (load, req, done, cancel, drop) for the isolates it owns and
appends what comes back: loader events (dicts) and runtime events as ``(wid, rid, JSON text)``.
It does no I/O; ``child.main`` feeds it from the socket of a shard process.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict

from . import linker
from .engine import Isolate, IsolateFailure, syntax_details

_MEM_EVERY = 64
_PLAN_CACHE = 256


class Child:
    """Message handlers of one shard process (no I/O; ``handle`` returns events)."""

    def __init__(self) -> None:
        self.isolates: dict[int, Isolate] = {}
        self.plans: OrderedDict[str, linker.Plan] = OrderedDict()

    def _plan(self, main: str, modules: dict) -> linker.Plan:
        digest = hashlib.sha256(json.dumps([main, sorted((k, v[0], v[1] if v[0] != "data" else v[1].hex())
                                                          for k, v in modules.items())]).encode()).hexdigest()
        plan = self.plans.get(digest)
        if plan is None:
            plan = linker.plan(main, modules)
            self.plans[digest] = plan
            if len(self.plans) > _PLAN_CACHE:
                self.plans.popitem(last=False)
        else:
            self.plans.move_to_end(digest)
        return plan

    def load(self, m: dict, blob: bytes, out: list) -> None:
        """Link and evaluate a worker's modules into a new isolate; report ``loaded`` (ok or the error)."""
        wid = m["wid"]
        modules = {}
        for name, (kind, payload) in m["mods"].items():
            if kind == "data":
                off, n = payload
                payload = blob[off:off + n]
            modules[name] = (kind, payload)
        try:
            plan = self._plan(m["main"], modules)
            lim = m["limits"]
            iso = Isolate(plan, m["main"], m["env"], m["bindings"], m["outbound"],
                          lim["cpu"], lim["mem"], lim["load"], lim.get("log", 65536), bool(m.get("trusted")))
        except linker.LinkError as exc:
            name, message = exc.js_name, exc.js_message
            if name == "SyntaxError":
                name, message = syntax_details(modules, exc) or (name, message)
            out.append({"t": "loaded", "wid": wid, "ok": False, "kind": "load", "name": name, "message": message})
            return
        except IsolateFailure as exc:
            out.append({"t": "loaded", "wid": wid, "ok": False, "kind": exc.kind, "name": exc.name,
                        "message": exc.message, "stack": exc.stack})
            return
        except Exception as exc:  # an engine/binding error must not take the shard down
            out.append({"t": "loaded", "wid": wid, "ok": False, "kind": "load", "name": "InternalError",
                        "message": f"engine error: {type(exc).__name__}: {exc}"})
            return
        self.isolates[wid] = iso
        for ev in iso.pending_events:
            ev["wid"] = wid
            out.append(ev)
        iso.pending_events = []
        out.append({"t": "loaded", "wid": wid, "ok": True, "mem": iso.memory()})

    def run(self, wid: int, rid: int, message: str, payload: str | None, out: list, js: list) -> None:
        """One turn on isolate ``wid`` charged to request ``rid``; an isolate failure reports ``dead``."""
        iso = self.isolates.get(wid)
        if iso is None:
            return
        try:
            raw = iso.turn(rid, message, payload)
        except Exception as exc:  # IsolateFailure, or anything the binding raised: the isolate is suspect
            if not isinstance(exc, IsolateFailure):
                exc = IsolateFailure("script", "InternalError", f"engine error: {type(exc).__name__}: {exc}")
            del self.isolates[wid]
            iso.close()
            out.append({"t": "dead", "wid": wid, "rid": rid, "kind": exc.kind, "name": exc.name,
                        "message": exc.message, "stack": exc.stack})
            return
        if raw:
            js.append((wid, rid, raw))
        if iso.turns % _MEM_EVERY == 0:
            out.append({"t": "mem", "wid": wid, "bytes": iso.memory()})

    def cancel(self, wid: int, rid: int, ops: list, out: list) -> None:
        """The loader gave up on request ``rid``: drop what the isolate holds for it."""
        iso = self.isolates.get(wid)
        if iso is None:
            return
        try:
            iso.cancel(rid, [int(i) for i in ops])
        except Exception as exc:  # the runtime could not even forget: the isolate is suspect
            if not isinstance(exc, IsolateFailure):
                exc = IsolateFailure("script", "InternalError", f"engine error: {type(exc).__name__}: {exc}")
            del self.isolates[wid]
            iso.close()
            out.append({"t": "dead", "wid": wid, "rid": rid, "kind": exc.kind, "name": exc.name,
                        "message": exc.message, "stack": exc.stack})

    def handle(self, m: dict, blob: bytes, out: list, js: list) -> None:
        """Handle one message from the loader; append loader events to ``out`` and
        ``(wid, rid, raw JSON)`` runtime event batches to ``js``."""
        t = m["t"]
        if t == "req":
            self.run(m["wid"], m["rid"], blob.decode("utf-8", "surrogatepass"), None, out, js)
        elif t == "done":
            # blob: the runtime's message (ASCII JSON, n bytes), then the payload if "p" says so
            n = m["n"]
            payload = None
            if "p" in m:
                payload = blob[n:].decode("utf-8", "replace") if m["p"] == "text" else blob[n:].decode("latin-1")
            self.run(m["wid"], m["rid"], blob[:n].decode("latin-1"), payload, out, js)
        elif t == "load":
            self.load(m, blob, out)
        elif t == "cancel":
            self.cancel(m["wid"], m["rid"], m.get("ops") or [], out)
        elif t == "drop":
            iso = self.isolates.pop(m["wid"], None)
            if iso is not None:
                iso.close()
