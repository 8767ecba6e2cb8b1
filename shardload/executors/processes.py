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
import os
import pickle
import queue
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing import forkserver, resource_tracker
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from ..bundle import Job, Result
from ..errors import ConfigurationError, ShardloadError, WorkerKilledAtStart
from ..worker.descriptors import open_file_limit
from ..worker.process import worker_main
from ..worker.temp_files import forget_temp_dir, remove_temp_files, temp_prefix
from .base import (
    START_SECONDS,
    THE_DOWNLOAD,
    ExecutorSink,
    interactive_names,
    names_hidden_in_main,
    unimportable_names,
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


class _Start:
    """``process.start()``, run in a thread, and what to do when its caller gives up.

    The start goes on in its thread with the pipe ends: closed while it runs, their numbers
    could be reused by another worker's pipes before the child has its copies, crossing two
    workers' pipes. So an abandoned start is undone (ends closed, child stopped) only once it
    is over, by whichever of the thread and the loop comes last.
    """

    def __init__(self, process: BaseProcess, ends: tuple[Connection, ...]) -> None:
        self.process = process
        self.ends = ends
        self._lock = threading.Lock()
        self._over = self._abandoned = False

    def run(self) -> None:
        # A terminal's Ctrl-C reaches the whole process group, the child too, before its
        # worker_main can ignore SIGINT: it would die in its imports with a traceback on the
        # user's terminal. Blocked in this (start-only) thread, SIGINT stays blocked in the
        # child across exec until worker_main ignores it; the caller's threads still get it.
        # multiprocessing's resource tracker, started by the first start, unblocks SIGINT
        # after its own spawn: started first, it leaves the mask alone. The fork server is
        # shared with the caller's own forkserver processes: started first, it does not keep
        # SIGINT blocked for them (its children, ours included, are forked preloaded, with
        # no imports left to interrupt).
        resource_tracker.ensure_running()
        if getattr(self.process, "_start_method", None) == "forkserver":
            forkserver.ensure_running()
        with _sigint_blocked():
            try:
                self.process.start()
            finally:
                self._mark("_over")

    def abandon(self) -> None:
        self._mark("_abandoned")

    def _mark(self, which: str) -> None:
        """Note that the start is over, or abandoned; the second of the two undoes it."""
        with self._lock:
            setattr(self, which, True)
            both = self._over and self._abandoned
        if both:
            self.undo()

    def undo(self) -> None:
        for end in self.ends:
            end.close()
        if self.process.pid is not None:
            self.process.kill()
            threading.Thread(target=self.process.join, daemon=True).start()  # reap it


@contextlib.contextmanager
def _sigint_blocked() -> Iterator[None]:
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def every_core_busy(local_workers: int) -> bool:
    """Whether this machine's workers are at least as many as the cores this process (and the
    workers it starts) may run on, its affinity mask where the OS has one: then none has a core
    to spare, and each hashes bodies as it reads them (``files.hash_as_read``)."""
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:  # pragma: no cover - macOS, Windows
        cores = os.cpu_count() or 1
    return local_workers >= cores


def sendable_config(config: dict[str, Any]) -> bytes:
    """The pickled worker configuration; ``ConfigurationError`` saying why a worker process
    could not rebuild it."""
    try:
        blob = pickle.dumps(config, pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise ConfigurationError(
            f"{THE_DOWNLOAD} must be picklable to run in worker processes (define classes "
            f"at module level; no open clients or lambdas): {exc}"
        ) from exc
    interactive = interactive_names(config)
    if interactive:
        raise ConfigurationError(
            f"{', '.join(interactive)} is defined in an interactive session (a notebook, "
            "the REPL or python -c), which worker processes cannot import: define it in a "
            ".py module and import it from there, or run with processes=1"
        )
    unreachable = unimportable_names(config)
    if unreachable:
        raise ConfigurationError(
            f"{', '.join(unreachable)} comes from a module worker processes cannot import "
            "by its name (loaded from a file outside the import path, or made in memory): "
            "put that module where `import` finds it (sys.path), or run with processes=1"
        )
    hidden = names_hidden_in_main(config)
    if hidden:
        raise ConfigurationError(
            f"{', '.join(hidden)} is defined inside the main script's "
            "`if __name__ == '__main__':` block, which worker processes do not run when "
            "they import the script: define it at the script's top level (or in a module)"
        )
    return blob


def _preload_in_fork_server(context: Any) -> None:
    """Add the worker module to what the fork server imports when it starts, keeping what is
    there (``__main__`` by default, or the caller's own list). Once the server runs, this no
    longer changes anything, which is fine: it is the same server for every later run."""
    server = getattr(forkserver, "_forkserver", None)
    current = list(getattr(server, "_preload_modules", ["__main__"]))
    if worker_main.__module__ not in current:
        context.set_forkserver_preload([*current, worker_main.__module__])


def processes_that_fit(wanted: int) -> int:
    """At most ``wanted`` worker processes, as many as this process has descriptors for (a
    default that a low ``ulimit -n`` should shrink, not refuse); 1 runs in the caller."""
    limit = open_file_limit()
    if limit is None:
        return wanted
    return max(1, min(wanted, (limit - _RESERVED_DESCRIPTORS) // _PER_WORKER))


def _check_descriptors(shards: int) -> None:
    """Refuse at once a worker count this process cannot open pipes for: failing after
    spawning hundreds helps nobody."""
    limit = open_file_limit()
    need = _PER_WORKER * shards + _RESERVED_DESCRIPTORS
    if limit is not None and need > limit:
        raise ConfigurationError(
            f"cannot start {shards} worker processes: they need about {need} file "
            f"descriptors and this process may open {limit} (ulimit -n); use fewer processes"
        )


_PER_WORKER = 4  # descriptors a worker takes while it starts: its two pipes' four ends
_RESERVED_DESCRIPTORS = 64  # the caller's own files, sockets and the input


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
    ) -> None:
        _check_descriptors(shards)
        method = start_method or "spawn"  # checked by make_plan: spawn or forkserver
        # typeshed types get_context() as BaseContext, which lacks Process/Pipe attributes.
        self._context: Any = multiprocessing.get_context(method)
        if method == "forkserver":
            _preload_in_fork_server(self._context)
        self._config = sendable_config({**config, "hash_as_read": every_core_busy(shards)})
        self.shards = shards
        self._home = home
        self._stop_grace = stop_grace
        self._workers: list[_Worker | None] = [None] * shards
        # One per shard, kept across its restarts; written by its worker only. 64 bytes each,
        # so two workers' counters lie 64 bytes apart or more, never in one cache line (each
        # write would take the line from the other core).
        self._meters = [self._context.RawArray("Q", 8) for _ in range(shards)]
        self._generations = [0] * shards
        self._sink: ExecutorSink | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False

    async def start(self, sink: ExecutorSink) -> None:
        self._sink = sink
        self._loop = asyncio.get_running_loop()
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
        start = _Start(process, (inbox_r, inbox_w, outbox_r, outbox_w))
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
        reason = (
            f"worker process {pid} was killed by signal {-code}"
            if code is not None and code < 0
            else f"worker process {pid} exited unexpectedly (exit code {code})"
        )
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
        # A worker that ended its runs removed the folder if it was empty then; one killed
        # (a SIGTERM to the whole process group, an OOM kill) removed nothing.
        forget_temp_dir(self._home)

    async def abort(self) -> None:
        await _in_own_thread(self._reap, self._tell_all("abort"))
        forget_temp_dir(self._home)

    def _reap(self, workers: list[_Worker]) -> None:
        for worker in workers:
            worker.process.join(timeout=self._stop_grace)
        for worker in workers:
            if worker.process.is_alive():
                worker.process.terminate()
                worker.process.join(timeout=2)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            if worker.process.pid is not None:
                remove_temp_files(self._home, temp_prefix(worker.process.pid))
