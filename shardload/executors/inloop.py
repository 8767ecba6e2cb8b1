"""processes=1: the shard worker runs in the coordinator's own event loop, no child process."""

from __future__ import annotations

from ..bundle import Job
from ..worker.engine import AioDownload
from ..worker.meter import new_counter
from ..worker.shard import ShardWorker
from .base import ExecutorSink


class InLoopExecutor:
    shards = 1
    crosses_processes = False
    imports_main = False

    def __init__(self, engine: AioDownload) -> None:
        self.engine = engine
        self._worker: ShardWorker | None = None
        self._meter = new_counter()

    async def start(self, sink: ExecutorSink) -> None:
        self.engine = self.engine.for_run()
        self._worker = ShardWorker(
            self.engine, emit=lambda results: sink.results(0, results), meter=self._meter
        )

    def _the_worker(self) -> ShardWorker:
        if self._worker is None:
            raise RuntimeError("executor not started")
        return self._worker

    def send(self, shard: int, jobs: list[Job]) -> None:
        self._the_worker().accept(jobs)

    def received(self) -> int:
        return self._meter.value

    async def restart(self, shard: int) -> None:
        raise RuntimeError("an in-loop worker cannot crash separately from its coordinator")

    async def finish(self) -> None:
        await self._the_worker().drain()
        await self.engine.end_run()

    async def abort(self) -> None:
        if self._worker is not None:
            await self._worker.abort()
            await self.engine.end_run()
