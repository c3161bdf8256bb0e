"""Errors raised by ``await worker.fetch()``.

The whole tree hangs from one root so the edge can catch it once::

    WorkerError                  base; ``status`` is the HTTP status the edge should answer with
    ├── WorkerLoadError          500  the factory failed, or the code does not load
    │                                 (syntax error, missing module, bad import, top-level throw)
    ├── WorkerScriptError        500  the fetch handler threw or returned a non-Response
    ├── CpuLimitExceeded         503  one invocation used more CPU than ``cpu_limit_ms``
    ├── MemoryLimitExceeded      503  the isolate ran out of its ``memory_limit_mb``
    └── WorkerUnavailable        503  the isolate or its shard was discarded under this request
        │                             (another request on it hit a limit, the shard was killed
        │                             by the watchdog, or the loader was closed)
        └── WorkerQuarantined    503  the key keeps hitting its limits (or got its shard killed):
                                      refused without running for a while (``retry_after`` s)

Every error carries the JavaScript error's name and message (``js_name``, ``js_message``)
and shows them in ``str(error)``. Turning an error into a response is the edge's job.
"""

from __future__ import annotations


class WorkerError(Exception):
    """Base class of every error a worker invocation can raise.

    Args:
        message: human-readable text (already containing the JS name and message).
        js_name: the JavaScript error name (``"TypeError"``) or a loader name.
        js_message: the JavaScript error message.
        key: the worker key, when known.
    """

    status = 500

    def __init__(self, message: str, *, js_name: str = "Error", js_message: str = "", key: str | None = None):
        super().__init__(message)
        self.js_name = js_name
        self.js_message = js_message
        self.key = key


class WorkerLoadError(WorkerError):
    """The worker could not be loaded (factory failure, bad code, top-level throw)."""

    status = 500


class WorkerScriptError(WorkerError):
    """The fetch handler threw, rejected, or returned something that is not a Response."""

    status = 500


class CpuLimitExceeded(WorkerError):
    """One invocation exceeded the CPU time limit; the isolate was discarded."""

    status = 503


class MemoryLimitExceeded(WorkerError):
    """The isolate exceeded its memory limit; it was discarded."""

    status = 503


class WorkerUnavailable(WorkerError):
    """The isolate was discarded while this request ran on it, through no fault of this request."""

    status = 503


class WorkerQuarantined(WorkerUnavailable):
    """The key is refused for a while: it kept hitting its limits, or got its shard killed."""

    def __init__(self, message: str, *, retry_after: float, key: str | None = None):
        super().__init__(message, js_name="Error", js_message="quarantined", key=key)
        self.retry_after = retry_after


def error_from_wire(kind: str, name: str, message: str, key: str | None, stack: str = "") -> WorkerError:
    """Build the right ``WorkerError`` subclass from a shard report.

    Args:
        kind: ``"load"``, ``"script"``, ``"cpu"``, ``"kill"`` (its message hung the shard), ``"memory"``
            or ``"unavailable"``.
        name: JavaScript error name.
        message: JavaScript error message.
        key: worker key.
        stack: optional JS stack text, appended to the message.
    Returns:
        The exception instance (not raised).
    """
    cls = {
        "load": WorkerLoadError,
        "script": WorkerScriptError,
        "cpu": CpuLimitExceeded,
        "kill": CpuLimitExceeded,
        "memory": MemoryLimitExceeded,
    }.get(kind, WorkerUnavailable)
    text = f"{name}: {message}" if message else name
    if key is not None:
        text = f"worker {key!r}: {text}"
    if stack:
        text = f"{text}\n{stack.rstrip()}"
    return cls(text, js_name=name, js_message=message, key=key)
