"""Where isolates live: the shard processes and the key → shard placement.

Two groups of shard processes:

- **trusted**: code the host generated (``WorkerCode.trusted``). They never run a user's
  JavaScript, so no tenant can stall or kill them: the state generated workers keep (rate-limit
  windows, metric counts) survives whatever a custom worker does. A key's shard is fixed by its
  hash.
- **untrusted**: everything else. A key has a home shard (the least loaded one when it first
  loads). A shard that has been running one message for more than ``busy_after_s`` is *busy*: the
  other keys homed there move to a shard that is not (their isolates reload there from cached
  code, ~1–2 ms), and their requests still queued behind the long message are sent again there.
  So a worker spinning up to its CPU limit, allocating up to its memory limit, or stuck in a
  native call until the watchdog kills its shard, delays other tunnels by ``busy_after_s`` at
  most. A key's own requests stay behind it (an isolate runs one turn at a time): a tenant holds
  at most one process at a time. One idle *spare* process is kept ready, so a move never waits
  for a process to start; it is also where new untrusted code is prepared (a module that hangs
  at top level kills only the spare).
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from typing import Callable

from .bridge import Instance, Limits
from .shard import Shard

log = logging.getLogger("tunnel.loader")

#: A shard running one message longer than this counts as busy (others move away).
BUSY_AFTER_S = 0.02


class ShardPool:
    """The shard processes of one loader (see the module docstring).

    Args:
        limits: default isolate limits.
        untrusted: untrusted shards in service (the spare comes on top).
        trusted: shards for trusted code.
        hang_s: the watchdog's bound for a message, from the limits of the isolate running it.
        on_dead / on_memory: the loader's callbacks for discarded isolates and heap reports.
        on_kill: called with the key whose message was running when a shard was killed.
        setup: called with every shard made (the loader sets its other callbacks).
    """

    def __init__(self, limits: Limits, untrusted: int, trusted: int, hang_s: Callable[[Limits], float],
                 on_dead: Callable[[Instance, str], None], on_memory: Callable[[Instance], None],
                 on_kill: Callable[[str], None], busy_after_s: float = BUSY_AFTER_S,
                 setup: Callable[[Shard], None] = lambda shard: None):
        self.limits, self.hang_s, self.setup = limits, hang_s, setup
        self.on_dead, self.on_memory, self.on_kill = on_dead, on_memory, on_kill
        self.busy_after_s = busy_after_s
        self._count = 0
        self.trusted = [self._new("trusted") for _ in range(trusted)]
        self.untrusted = [self._new("untrusted") for _ in range(untrusted)]
        self.spare: Shard | None = self._new("untrusted")
        self.target = untrusted
        self._home: dict[str, Shard] = {}
        self._spawning: asyncio.Task | None = None
        self.moves = 0

    def _new(self, group: str) -> Shard:
        shard = Shard(self._count, self.limits, self.hang_s, self.on_dead, self.on_memory, self._killed,
                      self.busy_after_s, group)
        self._count += 1
        self.setup(shard)
        return shard

    @property
    def all(self) -> list[Shard]:
        return self.trusted + self.untrusted + ([self.spare] if self.spare is not None else [])

    async def start(self) -> None:
        """Start every process now (they also start on first use)."""
        await asyncio.gather(*(shard.ensure_started() for shard in self.all))

    async def close(self) -> None:
        for shard in self.all:
            await shard.close()
        if self._spawning is not None:
            self._spawning.cancel()

    # ------------------------------------------------------------------ placement
    def place(self, key: str, trusted: bool) -> Shard:
        """The shard where ``key``'s isolate should be loaded now."""
        if trusted:
            return self.trusted[zlib.crc32(key.encode("utf-8", "surrogatepass")) % len(self.trusted)]
        home = self._home.get(key)
        if home is not None and home in self.untrusted and home.alive_or_startable and not home.busy_with_other(key):
            return home
        ready = [s for s in self.untrusted if s.alive_or_startable and s.busy_key() is None]
        if ready:
            shard = min(ready, key=lambda s: len(s.instances))
        elif self.spare is not None and self.spare.running:
            shard = self._take_spare()
        else:  # no process ready to take it (the spare is still starting): wait where it is
            self._spawn_spare()
            shard = home if home in self.untrusted else self.untrusted[0]
        if home is not None and home is not shard:
            self.moves += 1
        self._home[key] = shard
        return shard

    def should_move(self, inst: Instance) -> bool:
        """Whether a request for ``inst`` would wait behind another key's long message."""
        shard = inst.shard
        return shard.group == "untrusted" and shard.busy_with_other(inst.key)

    def staging(self) -> Shard:
        """The shard where new untrusted code is prepared (the spare, when there is one)."""
        return self.spare if self.spare is not None else self.untrusted[0]

    def adopt(self, shard: Shard, key: str) -> None:
        """A worker prepared on ``shard`` (the spare) is installed: the spare joins the service."""
        if shard is self.spare:
            self._take_spare()
        self._home[key] = shard

    def forget(self, key: str) -> None:
        self._home.pop(key, None)

    def _take_spare(self) -> Shard | None:
        spare, self.spare = self.spare, None
        if spare is None:
            return None
        self.untrusted.append(spare)
        log.info("loader: shard %d joins the service (%d busy or moved); starting a new spare", spare.index,
                 len(self.untrusted) - 1)
        self._spawn_spare()
        return spare

    def _spawn_spare(self) -> None:
        """Have a spare process starting or started."""
        if self._spawning is not None and not self._spawning.done():
            return
        if self.spare is None:
            self.spare = self._new("untrusted")
        if not self.spare.running:
            self._spawning = asyncio.get_running_loop().create_task(self._start_spare(self.spare))

    async def _start_spare(self, shard: Shard) -> None:
        try:
            await shard.ensure_started()
        except Exception:  # the next use starts it again
            log.warning("loader: the spare shard did not start", exc_info=True)

    def retire_idle(self) -> None:
        """Close shards beyond the target that hold no isolate any more (after moves, installs)."""
        for shard in list(self.untrusted):
            if len(self.untrusted) <= self.target:
                return
            if not shard.instances and shard.busy_key() is None:
                self.untrusted.remove(shard)
                for key in [k for k, s in self._home.items() if s is shard]:
                    del self._home[key]
                asyncio.get_running_loop().create_task(shard.close())

    def _killed(self, shard: Shard, key: str | None) -> None:
        if key is not None:  # the shard itself restarts on its next use
            self.on_kill(key)
