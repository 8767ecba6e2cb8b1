"""processes=N: one worker process per shard, each with its own pipes.

Why a pipe pair per worker instead of one shared result queue: a worker killed while writing to a
shared queue can leave its lock held and hang every other worker; a private pipe breaks alone,
and its end of file tells us the worker is gone. Each pipe has a thread on our side (a writer fed
from a queue, a reader calling back into the loop), so the coordinator's loop never blocks.

Workers start with ``spawn`` by default (the same on Linux and macOS; ``forkserver`` also works);
``fork`` is refused because the caller's process may hold threads and event loops. With
``forkserver`` the worker module is preloaded in the fork server, so a program that runs many
batches pays the worker's imports once: later runs start their workers in ~25 ms instead of
~0.14 s (two workers, this machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import pickle
import queue
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from ..bundle import Job, Result
from ..errors import ConfigurationError, ShardloadError, WorkerKilledAtStart
from ..worker.process import worker_main
from ..worker.temp_files import forget_temp_dir, remove_temp_files, temp_prefix
from .base import START_SECONDS, ExecutorSink
from .starting import (
    Start,
    check_descriptors,
    every_core_busy,
    hold_start_method,
    preload_in_fork_server,
    release_start_method,
    sendable_config,
)

_STOP = object()


async def _in_own_thread(function: Any, *args: Any) -> None:
    """``asyncio.to_thread`` on a thread of its own: stopping a run must work also while the
    interpreter exits (a run stopped by ``run._StopAtExit``), when the default executor takes
    no more work ("cannot schedule new futures after interpreter shutdown")."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def run() -> None:
        error: BaseException | None = None
        try:
            function(*args)
        except BaseException as exc:  # handed to the awaiting task
            error = exc
        # The loop may be closed by now: asyncio.run ending on a KeyboardInterrupt raised in an
        # ``async for`` over aeach() does not wait for its generators' cleanup to finish.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_settle, done, error)

    threading.Thread(target=run, daemon=True, name="shardload-reap").start()
    await done


def _settle(done: asyncio.Future[None], error: BaseException | None) -> None:
    if done.done():
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)


@dataclass
class _Worker:
    generation: int
    process: BaseProcess
    inbox: Connection
    outbox: Connection
    sends: queue.SimpleQueue[Any] = field(default_factory=queue.SimpleQueue)
    finishing: bool = False
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    stood_still: float | None = None  # seconds its loop stood still before it was killed


_START_TRIES = 3


class ProcessExecutor:
    crosses_processes = True
    imports_main = True

    def __init__(
        self,
        config: dict[str, Any],
        shards: int,
        home: str,
        start_method: str | None = None,
        stop_grace: float = 5.0,
        hang_timeout: float | None = None,
    ) -> None:
        check_descriptors(shards)
        method = start_method or "spawn"  # checked by make_plan: spawn or forkserver
        # typeshed types get_context() as BaseContext, which lacks Process/Pipe attributes.
        self._context: Any = multiprocessing.get_context(method)
        if method == "forkserver":
            preload_in_fork_server(self._context)
        self._config = sendable_config({**config, "hash_as_read": every_core_busy(shards)})
        self.shards = shards
        self._home = home
        self._stop_grace = stop_grace
        self._hang_timeout = hang_timeout
        self._watchdog: asyncio.Task[None] | None = None
        self._workers: list[_Worker | None] = [None] * shards
        # One per shard, kept across its restarts; written by its worker only: [0] the bytes
        # of bodies received, [1] its loop's heartbeat (worker.process). 64 bytes each, so
        # two workers' counters lie 64 bytes apart or more, never in one cache line (each
        # write would take the line from the other core).
        self._meters = [self._context.RawArray("Q", 8) for _ in range(shards)]
        self._generations = [0] * shards
        self._sink: ExecutorSink | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._holding = False  # see hold_start_method

    async def start(self, sink: ExecutorSink) -> None:
        self._sink = sink
        self._loop = asyncio.get_running_loop()
        hold_start_method()
        self._holding = True
        # All at once: each spends a few hundred ms importing before it is ready. Every spawn
        # is awaited, so none is still starting a process when the others are aborted.
        outcomes = await asyncio.gather(
            *(self._first_spawn(shard) for shard in range(self.shards)), return_exceptions=True
        )
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        if errors:
            await self.abort()
            if isinstance(errors[0], OSError):  # out of descriptors or processes
                raise ConfigurationError(
                    f"cannot start {self.shards} worker processes ({errors[0]}): "
                    "use fewer processes"
                ) from errors[0]
            if isinstance(errors[0], WorkerKilledAtStart):  # every try: something kills them
                raise ConfigurationError(
                    f"the run could not start: {errors[0]} ({_START_TRIES} tries)"
                ) from errors[0]
            raise errors[0]
        if self._hang_timeout is not None:
            self._watchdog = asyncio.ensure_future(self._watch(self._hang_timeout))

    async def _watch(self, limit: float) -> None:
        """Kill a worker whose loop has not beaten for ``limit`` seconds (a SIGSTOP, a
        deadlock, a strategy blocking it): its pipe then ends, and the shard restarts and
        resends its jobs as after a crash. Without this, the run would wait for it for ever."""
        # Per shard: the worker's generation and beat last seen, and when its beat last moved.
        moved = [(-1, -1, 0.0)] * self.shards
        while True:
            await asyncio.sleep(min(1.0, limit / 4))
            now = time.monotonic()
            for shard, worker in enumerate(self._workers):
                # A finishing one too: finish() waits for its end.
                if worker is None or not worker.ready.is_set() or worker.ended.is_set():
                    continue
                beat = self._meters[shard][1]
                generation, last, since = moved[shard]
                if (generation, last) != (worker.generation, beat):
                    moved[shard] = (worker.generation, beat, now)
                elif now - since >= limit and worker.stood_still is None:
                    worker.stood_still = now - since
                    worker.process.kill()

    async def _first_spawn(self, shard: int) -> None:
        """A worker killed by a signal as the run starts (an OOM kill) is started again, as a
        crash later on is: a few times, since no job of its can be the cause yet."""
        for tries in range(1, _START_TRIES + 1):
            try:
                return await self._spawn(shard)
            except WorkerKilledAtStart:
                if tries == _START_TRIES:
                    raise

    async def _spawn(self, shard: int) -> None:
        inbox_r, inbox_w = self._context.Pipe(duplex=False)
        outbox_r, outbox_w = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=worker_main,
            args=(self._config, inbox_r, outbox_w, self._meters[shard]),
            name=f"shardload-worker-{shard}",
            daemon=True,
        )
        start = Start(process, (inbox_r, inbox_w, outbox_r, outbox_w))
        # Starting a spawn child takes a while; keep the loop (and the other shards) running.
        try:
            await asyncio.to_thread(start.run)
        except asyncio.CancelledError:
            start.abandon()
            raise
        except BaseException:
            start.undo()
            raise
        inbox_r.close()
        outbox_w.close()
        if self._closing:
            # finish() or abort() came while it started (a restart the caller's cancel did not
            # wait for): it missed their message, and nothing else would ever stop it.
            process.kill()
            await asyncio.to_thread(process.join)
            inbox_w.close()
            outbox_r.close()
            raise ShardloadError("the executor stopped while this worker started")
        self._generations[shard] += 1
        worker = _Worker(self._generations[shard], process, inbox_w, outbox_r)
        self._workers[shard] = worker
        threading.Thread(
            target=self._write_loop, args=(worker,), daemon=True, name=f"shardload-send-{shard}"
        ).start()
        threading.Thread(
            target=self._read_loop,
            args=(shard, worker),
            daemon=True,
            name=f"shardload-recv-{shard}",
        ).start()
        await self._started(worker)

    def received(self) -> int:
        return sum(meter[0] for meter in self._meters)

    async def _started(self, worker: _Worker) -> None:
        """Wait for the worker's ready message; a worker that dies first is a setup error."""
        ready = asyncio.ensure_future(worker.ready.wait())
        ended = asyncio.ensure_future(worker.ended.wait())
        await asyncio.wait({ready, ended}, timeout=START_SECONDS, return_when="FIRST_COMPLETED")
        ready.cancel()
        ended.cancel()
        if worker.ready.is_set():
            return
        worker.finishing = True  # its end is reported here, not as a crash
        if worker.ended.is_set():
            await _in_own_thread(worker.process.join, 5)
            code = worker.process.exitcode
            if code is not None and code < 0:
                raise WorkerKilledAtStart(
                    f"worker process {worker.process.pid} was killed by signal {-code} "
                    "as it started"
                )
        worker.process.kill()
        raise ConfigurationError(
            f"a worker process failed to start (exit code {worker.process.exitcode}). If the "
            "calling script runs shardload when it is imported, put that code under "
            "`if __name__ == '__main__':` - workers start with 'spawn' and import the main module."
        )

    def send(self, shard: int, jobs: list[Job]) -> None:
        worker = self._workers[shard]
        if worker is not None:
            worker.sends.put(("jobs", jobs))

    @staticmethod
    def _write_loop(worker: _Worker) -> None:
        while (message := worker.sends.get()) is not _STOP:
            try:
                worker.inbox.send_bytes(pickle.dumps(message, pickle.HIGHEST_PROTOCOL))
            except OSError:
                break  # the worker is gone; its reader reports it
            except Exception:
                # A message that cannot be sent (it does not pickle) must not end this thread
                # quietly: the worker's later jobs would never go out and the run would hang.
                # Ended like a broken pipe, its reader reports a crash and the shard restarts.
                worker.process.kill()
                break
        with contextlib.suppress(OSError):
            worker.inbox.close()

    def _read_loop(self, shard: int, worker: _Worker) -> None:
        loop, sink = self._loop, self._sink
        if loop is None or sink is None:
            return
        while True:
            try:
                data = worker.outbox.recv_bytes()
            except (EOFError, OSError):
                break
            try:
                results: list[Result] = pickle.loads(data)
            except Exception:
                # A batch that cannot be read back is lost with its worker, which is stopped
                # below: the shard restarts and its unanswered jobs go again (in halves, if it
                # keeps happening), instead of waiting for answers that never come.
                break
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._deliver, shard, worker, results)
        worker.process.join(timeout=self._stop_grace)
        if worker.process.is_alive():
            # Its pipe ended but it runs on (hung, or its writer gone): a restart must never
            # leave two workers for one shard.
            worker.process.kill()
            worker.process.join()
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._ended, shard, worker)

    def _deliver(self, shard: int, worker: _Worker, results: list[Result]) -> None:
        worker.ready.set()
        if results and self._sink is not None and self._workers[shard] is worker:
            self._sink.results(shard, results)

    def _ended(self, shard: int, worker: _Worker) -> None:
        worker.ended.set()
        worker.sends.put(_STOP)  # a crashed worker is never told to stop: free its writer
        with contextlib.suppress(OSError):
            worker.outbox.close()
        # One that never said it was ready is _started's to report (it waits on `ended`):
        # reported here too, its death at start counted as two crashes, and restarted twice.
        if self._workers[shard] is not worker or worker.finishing or not worker.ready.is_set():
            return
        pid = worker.process.pid
        if pid is not None:
            remove_temp_files(self._home, temp_prefix(pid))
        code = worker.process.exitcode
        if worker.stood_still is not None:
            reason = (
                f"worker process {pid} stood still for {worker.stood_still:.1f} s "
                "(hang_timeout) and was killed"
            )
        elif code is not None and code < 0:
            reason = f"worker process {pid} was killed by signal {-code}"
        else:
            reason = f"worker process {pid} exited unexpectedly (exit code {code})"
        if self._sink is not None:
            self._sink.crashed(shard, reason)

    async def restart(self, shard: int) -> None:
        await self._spawn(shard)

    def _tell_all(self, message: str) -> list[_Worker]:
        """Send a last message to every live worker; from now on their exits are expected."""
        self._closing = True
        live = [w for w in self._workers if w is not None]
        for worker in live:
            worker.finishing = True
            worker.sends.put((message,))
            worker.sends.put(_STOP)
        return live

    async def finish(self) -> None:
        for worker in self._tell_all("finish"):
            await worker.ended.wait()
        self._stop_watching()
        # A worker that ended its runs removed the folder if it was empty then; one killed
        # (a SIGTERM to the whole process group, an OOM kill) removed nothing.
        forget_temp_dir(self._home)
        self._release()

    def _stop_watching(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()

    def _release(self) -> None:
        if self._holding:
            self._holding = False
            release_start_method()

    async def abort(self) -> None:
        self._stop_watching()  # a worker that does not stop is killed after stop_grace
        workers = self._tell_all("abort")
        await _in_own_thread(self._reap, workers)
        # What a worker sent before it ended (jobs done as the stop came) is delivered once its
        # reader thread has read the pipe to its end, which ``ended`` says.
        with contextlib.suppress(TimeoutError):
            ended = asyncio.gather(*(worker.ended.wait() for worker in workers))
            await asyncio.wait_for(ended, self._stop_grace)
        forget_temp_dir(self._home)
        self._release()

    def _reap(self, workers: list[_Worker]) -> None:
        for worker in workers:
            worker.process.join(timeout=self._stop_grace)
        for worker in workers:
            if worker.process.is_alive():  # it ignores SIGTERM (stop_signals)
                worker.process.kill()
                worker.process.join()
            if worker.process.pid is not None:
                remove_temp_files(self._home, temp_prefix(worker.process.pid))
