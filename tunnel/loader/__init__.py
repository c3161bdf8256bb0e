"""Worker loader: Cloudflare Worker Loader semantics on QuickJS isolates.

Public API (see docs/loader.md)::

    from tunnel.loader import Loader, WorkerCode, Request, Response, WorkerError
    loader = Loader()
    worker = loader.get("key", factory)          # factory: async () -> WorkerCode
    response = await worker.fetch(Request("GET", "http://web.localhost/x"))
"""

from .bridge import close_later
from .errors import (
    CpuLimitExceeded,
    MemoryLimitExceeded,
    WorkerError,
    WorkerLoadError,
    WorkerQuarantined,
    WorkerScriptError,
    WorkerUnavailable,
)
from .http_types import BodyTooLarge, Request, Response, WorkerCode
from .loader import Loader, PreparedWorker, Ticket, WorkerStub

__all__ = [
    "BodyTooLarge", "CpuLimitExceeded", "Loader", "MemoryLimitExceeded", "PreparedWorker", "Request", "Response", "Ticket",
    "WorkerCode", "WorkerError", "WorkerLoadError", "WorkerQuarantined", "WorkerScriptError", "WorkerStub", "WorkerUnavailable", "close_later",
]
