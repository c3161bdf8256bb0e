"""``LocalHost``: isolates in the loader's own process, for code the host itself generated.

A request to a shard costs two process hand-offs per turn; for code the host wrote (the edge's
generated policy, metrics and routing workers: ``WorkerCode.trusted``) that isolation buys
nothing, so such isolates run here, on the event loop thread, through the very same
``child.Child`` handlers a shard process uses. Each isolate still has its own QuickJS runtime
with its CPU and memory limits, and its failures discard only it.

What it does not give: a native operation QuickJS cannot interrupt would stall the event loop,
and an engine crash would take the process down. Code a user wrote must never be trusted.
"""

from __future__ import annotations

from typing import Callable

from .bridge import Instance, Limits
from .handlers import Child
from .engine import bytecode_available
from .errors import WorkerUnavailable
from .host import IsolateHost


class LocalHost(IsolateHost):
    """The isolates of trusted workers, driven synchronously from the event loop."""

    def __init__(self, index: int, limits: Limits, on_dead: Callable[[Instance], None],
                 on_memory: Callable[[Instance], None]):
        super().__init__(index, limits, on_dead, on_memory)
        self._child: Child | None = None
        self.bytecode = False
        self._delivering = False
        self._later: list[tuple[int, int, str, str | None]] = []  # turns due once the batch is handled

    @property
    def running(self) -> bool:
        return self._child is not None

    async def ensure_started(self) -> None:
        if self.closed:
            raise WorkerUnavailable("the loader is closed", js_name="Error", js_message="the loader is closed")
        if self._child is None:
            self.bytecode = bytecode_available()
            self._child = Child()

    async def close(self) -> None:
        self.closed = True
        for inst in list(self.instances.values()):
            self._discard(inst, -1, "unavailable", "Error", "the loader is closed", "")
        self._child = None

    def _deliver(self, events: list, js: list) -> None:
        # A turn runs synchronously here, so an op answered at once (a digest, a binding that
        # returns a value) must not start the next turn in the middle of this batch: it waits in
        # _later, and the batches it produces are handled in order after this one.
        if self._delivering:
            super()._deliver(events, js)
            return
        self._delivering = True
        try:
            super()._deliver(events, js)
            while self._later and self._child is not None:
                wid, rid, text, payload = self._later.pop(0)
                out: list = []
                more: list = []
                self._child.run(wid, rid, text, payload, out, more)
                super()._deliver(out, more)
        finally:
            self._delivering = False
            self._later.clear()

    def _send(self, header: dict, blob: bytes = b"", wid: int = 0, rid: int = 0) -> None:
        if self._child is None:
            raise WorkerUnavailable("the local host is not running", js_name="Error", js_message="host down")
        out: list = []
        js: list = []
        self._child.handle(header, blob, out, js)
        self._deliver(out, js)

    def _send_req(self, inst: Instance, rid: int, text: str) -> None:
        if self._child is None:
            raise WorkerUnavailable("the local host is not running", js_name="Error", js_message="host down")
        out: list = []
        js: list = []
        self._child.run(inst.wid, rid, text, None, out, js)
        self._deliver(out, js)

    def _send_done(self, inst: Instance, rid: int, text: str, blob: bytes, p: str | None) -> None:
        if self._child is None:
            return
        payload = None if p is None else blob.decode("utf-8", "replace") if p == "text" else blob.decode("latin-1")
        if self._delivering:
            self._later.append((inst.wid, rid, text, payload))
            return
        out: list = []
        js: list = []
        self._child.run(inst.wid, rid, text, payload, out, js)
        self._deliver(out, js)
