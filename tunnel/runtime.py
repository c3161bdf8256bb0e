"""Process set-up shared by every long-running command: event loop, allocator, signals."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

DEFAULT_DATA_DIR = os.environ.get("TUNNEL_DATA_DIR") or os.path.join(
    os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share"), "tunnel")


def parse_hostport(value: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``"H:P"``, ``":P"`` or ``"P"`` → (host, port); ``[::1]:P`` for IPv6."""
    value = value.strip()
    if value.startswith("["):
        host, _, port = value[1:].partition("]:")
        return host, int(port)
    host, sep, port = value.rpartition(":")
    if not sep:
        return default_host, int(value)
    return host or default_host, int(port)


def tune_allocator() -> None:
    """Raise glibc's mmap and trim thresholds: bulk transfers otherwise spend their time in
    page faults (research/python-tunnel-perf.md: ~200 → ~685 MB/s). No-op elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 4 * 1024 * 1024)
        libc.mallopt(m_trim_threshold, 256 * 1024 * 1024)
    except (OSError, AttributeError):
        pass


def run(main: Callable[[asyncio.Event], Coroutine[Any, Any, int]]) -> int:
    """Run ``main(stop_event)`` on uvloop (when installed) and return its exit code.

    The first SIGINT/SIGTERM sets ``stop_event`` (graceful stop); a second one exits at once.
    """
    tune_allocator()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        uvloop = None

    async def wrapper() -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        signals = {"count": 0}

        def on_signal(signum: int) -> None:
            signals["count"] += 1
            if signals["count"] > 1:
                os._exit(128 + signum)
            stop.set()

        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(signum, on_signal, signum)
            except (NotImplementedError, RuntimeError):  # pragma: no cover
                pass
        return await main(stop)

    if uvloop is not None:
        return uvloop.run(wrapper())
    return asyncio.run(wrapper())
