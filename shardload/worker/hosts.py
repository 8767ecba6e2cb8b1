"""Per-host slots: the politeness limits of one host, exact because one worker owns the host.

Invariants:
- at most ``concurrency`` requests of the host are in flight;
- two request starts of the host are at least ``delay`` (+ jitter) seconds apart;
- no request of the host starts before ``paused_until`` (a Retry-After pause covers the whole host);
- a request waiting for its turn holds no worker-wide slot: the worker-wide semaphore is taken
  last, right before the request starts, so a slow or paused host never blocks other hosts.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class HostSlot:
    def __init__(self, concurrency: int, delay: float = 0.0, jitter: float = 0.0) -> None:
        self.concurrency = max(1, concurrency)
        self.delay = max(0.0, delay)
        self.jitter = max(0.0, jitter)
        self._sem = asyncio.Semaphore(self.concurrency)
        self._next_start = 0.0
        self.paused_until = 0.0
        self.users = 0  # bundles of this host inside the engine; 0 means the slot may be dropped

    @asynccontextmanager
    async def turn(self, worker: asyncio.Semaphore) -> AsyncIterator[None]:
        """Wait for this host's next start, then for a worker-wide slot; hold both while inside."""
        async with self._sem:
            await self._wait_start()
            async with worker:
                yield

    async def _wait_start(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            at = max(self._next_start, self.paused_until)
            if at <= now:
                gap = self.delay + (random.uniform(0.0, self.jitter) if self.jitter else 0.0)
                self._next_start = now + gap
                return
            await asyncio.sleep(at - now)

    def pause(self, seconds: float) -> None:
        """Hold every request of this host for ``seconds`` from now (Retry-After, host-wide)."""
        if seconds > 0:
            until = asyncio.get_running_loop().time() + seconds
            self.paused_until = max(self.paused_until, until)

    def idle(self) -> bool:
        """True when dropping the slot loses nothing: no user and no pending gap or pause."""
        now = asyncio.get_running_loop().time()
        return self.users == 0 and max(self._next_start, self.paused_until) <= now
