"""ShardWorker: runs the jobs of one shard on one engine and emits results in batches.

The same object runs inside the coordinator's loop (processes=1), inside a worker process, and
(later) inside a cluster actor: only how jobs arrive and results leave differs (the ``emit``
callback). Invariant: every accepted job produces exactly one result, whatever happens, unless
the worker is aborted (then the coordinator owns the unfinished jobs).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..bundle import Job, Result, from_job, to_result
from ..errors import ErrorKind
from .engine import STRAY_CANCEL, AioDownload, being_cancelled
from .meter import Counter, received

_FLUSH_WINDOW = 0.002


class ShardWorker:
    def __init__(
        self,
        engine: AioDownload,
        emit: Callable[[list[Result]], None],
        batch_size: int = 256,
        meter: Counter | None = None,
    ) -> None:
        self.engine = engine
        self.meter = meter
        self._emit = emit
        self._batch_size = batch_size
        self._out: list[Result] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    def accept(self, jobs: list[Job]) -> None:
        """Start every job now; per-host limits inside the engine decide when each runs."""
        loop = asyncio.get_running_loop()
        for job in jobs:
            task = loop.create_task(self._run(job))
            self._tasks.add(task)
            task.add_done_callback(self._done)
        if self._tasks:
            self._idle.clear()

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not self._tasks:
            self._idle.set()

    async def _run(self, job: Job) -> None:
        bundle, given = from_job(job)
        received.set(self.meter)  # in this task's own context
        try:
            await self.engine.run_job(bundle)
        except asyncio.CancelledError:
            if being_cancelled():  # aborted: the coordinator owns the job again
                raise
            bundle.fail(ErrorKind.STRATEGY, STRAY_CANCEL)  # a subclass's main() leaked one
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # main() already maps failures; this is the last net
            # (GeneratorExit too: it would end this task with no result, and the run waits)
            bundle.fail(ErrorKind.STRATEGY, f"{type(exc).__name__}: {exc}")
        self._out.append(to_result(bundle, given))
        if len(self._out) >= self._batch_size:
            self.flush()
        elif self._flush_handle is None:
            # A short window: long enough that results finishing one by one still travel in
            # batches (a message per result doubled the CPU of a worker process on 100 KiB
            # files), short enough that a busy host's freed places are refilled at once (a
            # 20 ms window capped one host near 2,500 files/s).
            self._flush_handle = asyncio.get_running_loop().call_later(_FLUSH_WINDOW, self.flush)

    def flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._out:
            out, self._out = self._out, []
            self._emit(out)

    async def drain(self) -> None:
        """Wait until every accepted job has finished, then emit what is left."""
        await self._idle.wait()
        self.flush()

    async def abort(self) -> None:
        """Cancel every job (their temporary files are removed by the writers' cleanup), and
        emit the results of jobs that finished before (their files are written): a caller
        that stops early may still record them."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.flush()
