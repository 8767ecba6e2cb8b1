"""The executor interface the coordinator drives.

Contract: ``send`` never blocks the coordinator's loop; every sink callback runs in the
coordinator's loop thread; after ``crashed(shard)`` the coordinator owns every job it had sent to
that shard and not yet seen a result for (it may ``restart`` the shard and send them again);
``finish`` is called only when no job is outstanding; ``abort`` stops everything promptly and
leaves no process behind.
"""

from __future__ import annotations

from typing import Protocol

from ..bundle import Job, Result

# How long a worker (process or actor) may take to report ready before its start counts as
# failed; a restart that never ends would otherwise keep its shard's jobs pending forever.
START_SECONDS = 120.0


class ExecutorSink(Protocol):
    def results(self, shard: int, results: list[Result]) -> None: ...

    def crashed(self, shard: int, reason: str) -> None: ...


class Executor(Protocol):
    shards: int
    # True when jobs are pickled to another process: then ``info`` travels only if it pickles.
    crosses_processes: bool

    async def start(self, sink: ExecutorSink) -> None: ...

    def send(self, shard: int, jobs: list[Job]) -> None: ...

    async def restart(self, shard: int) -> None: ...

    async def finish(self) -> None: ...

    async def abort(self) -> None: ...
