"""Live connector connections per tunnel, and how a new stream picks one."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from tunnel.errors import AtCapacity, NoConnector

if TYPE_CHECKING:  # pragma: no cover
    from tunnel.edge.connectors import EdgeSession


class TunnelRegistry:
    """Which connector sessions serve which tunnel.

    ``pick`` spreads new streams: the live session with the fewest open streams wins, ties
    broken round-robin, so a slow connection naturally receives less.
    """

    def __init__(self) -> None:
        self._sessions: dict[str, list["EdgeSession"]] = {}
        self._turn = 0

    def add(self, tunnel: str, session: "EdgeSession") -> None:
        self._sessions.setdefault(tunnel, []).append(session)

    def remove(self, tunnel: str, session: "EdgeSession") -> None:
        sessions = self._sessions.get(tunnel)
        if sessions and session in sessions:
            sessions.remove(session)
            if not sessions:
                del self._sessions[tunnel]

    def pick(self, tunnel: str) -> "EdgeSession | None":
        """Return a session that can take a new stream for ``tunnel``, or None."""
        sessions = self._sessions.get(tunnel)
        if not sessions:
            return None
        if len(sessions) == 1:
            session = sessions[0]
            return session if session.conn.can_open_stream() else None
        self._turn += 1
        best = None
        best_load = 0
        count = len(sessions)
        for i in range(count):
            session = sessions[(self._turn + i) % count]
            if not session.conn.can_open_stream():
                continue
            load = len(session.conn.streams)
            if best is None or load < best_load:
                best, best_load = session, load
        return best

    def pick_for(self, tunnel: str) -> "EdgeSession":
        """Like ``pick``, but raise what the client should be told when there is none:
        NoConnector (530) without a connection, AtCapacity (503) when every one is full."""
        session = self.pick(tunnel)
        if session is not None:
            return session
        if self._sessions.get(tunnel):
            raise AtCapacity(f"every connection of tunnel {tunnel!r} carries its most concurrent streams", retry_after=1)
        raise NoConnector(f"tunnel {tunnel!r} has no connector connected right now")

    def connections(self, tunnel: str) -> int:
        """Number of live connector connections of ``tunnel``."""
        return len(self._sessions.get(tunnel, ()))

    def sessions(self, tunnel: str | None = None) -> Iterator["EdgeSession"]:
        """Every live session (of one tunnel, or of all)."""
        if tunnel is not None:
            yield from list(self._sessions.get(tunnel, ()))
            return
        for sessions in list(self._sessions.values()):
            yield from list(sessions)
