"""Running a plan from synchronous code: the coordinator on a private loop in a thread.

The caller's thread only waits on a queue of finished batches, so ``each()`` works the same
from a plain script and from inside a running event loop (a notebook cell), and a slow consumer
never stalls in-flight downloads: the coordinator stops reading input instead, once
``max_undelivered`` bundles wait for the caller.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import multiprocessing.util  # noqa: F401  (registers its exit handler before ours: see _StopAtExit)
import queue
import threading
import weakref
from collections.abc import Iterator
from typing import Any

from .bundle import Bundle
from .plan import Plan
from .stats import RunStats
from .worker.process import run_loop


class _Bridge:
    """Runs a plan's coordinator on a private loop in a thread; feeds a queue for the caller."""

    _END = object()

    def __init__(self, plan: Plan, max_undelivered: int) -> None:
        self.plan = plan
        self.out: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._max_undelivered = max_undelivered
        self._undelivered = 0
        self._lock = threading.Lock()
        self._consumed = threading.Event()
        self._cancel = threading.Event()
        self._stopping = False  # stop() was called: the run's cancellation is its end
        self._thread = threading.Thread(target=self._run, daemon=True, name="shardload-loop")

    def start(self) -> None:
        _stop_at_exit.running.add(self)
        self._thread.start()

    def _run(self) -> None:
        try:
            run_loop(self._main())
        except BaseException as exc:
            # A close() from another thread (a watchdog) cancels the run under a consumer
            # still waiting in next(): for it the iteration ends, no asyncio error surfaces.
            if not (isinstance(exc, asyncio.CancelledError) and self._stopping):
                self.out.put(exc)
        finally:
            self.out.put(self._END)

    async def _main(self) -> None:
        runner = asyncio.current_task()
        loop = asyncio.get_running_loop()
        watcher = threading.Thread(
            target=self._watch_cancel, args=(loop, runner), daemon=True, name="shardload-cancel"
        )
        watcher.start()
        try:
            async with contextlib.aclosing(self.plan.run()) as batches:
                async for batch in batches:
                    self.out.put(batch)
                    with self._lock:
                        self._undelivered += len(batch)
                    while self._too_far_ahead() and not self._cancel.is_set():
                        await asyncio.to_thread(self._consumed.wait, 0.2)
                        self._consumed.clear()
        finally:
            self._cancel.set()

    def _too_far_ahead(self) -> bool:
        with self._lock:
            return self._undelivered > self._max_undelivered

    def _watch_cancel(self, loop: Any, task: Any) -> None:
        self._cancel.wait()
        if task is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(task.cancel)

    def consumed(self, count: int) -> None:
        with self._lock:
            self._undelivered -= count
        self._consumed.set()

    def stop(self) -> None:
        self._stopping = True
        self._cancel.set()
        # A close() from another thread may come before the consumer's first next() started
        # the thread: it then starts, sees the cancel, and ends at once.
        if self._thread.ident is not None:
            self._thread.join()
        _stop_at_exit.running.discard(self)

    def batches(self) -> Iterator[list[Bundle]]:
        while True:
            try:
                item = self.out.get(timeout=0.25)
            except queue.Empty:
                continue
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            self.consumed(len(item))
            yield item


class _StopAtExit:
    """Stops the runs still going when the interpreter exits (an ``each()`` kept in a variable
    and never closed): their loop threads are daemons, so without this their workers would be
    killed mid-write and leave partial temporary files. Registered after multiprocessing's own
    exit handler, so it runs first, while the workers can still be stopped cleanly."""

    def __init__(self) -> None:
        self.running: weakref.WeakSet[_Bridge] = weakref.WeakSet()
        atexit.register(self)

    def __call__(self) -> None:
        for bridge in list(self.running):
            bridge.stop()


_stop_at_exit = _StopAtExit()


class Run(Iterator[Bundle]):
    """The iterator ``each()`` returns: bundles as they finish, plus live statistics.

    ``stats.hosts`` maps each host key to its ``HostStats`` (requests, bytes, status classes,
    error kinds, latency), ``stats.total`` adds them up; both count the bundles yielded so far.
    ``received`` counts bytes as they arrive, downloads in progress included.
    ``close()`` (or leaving a ``with`` block, or breaking out of a for loop and dropping the
    iterator) stops the run. One kept in a variable and left unread pauses once
    ``max_undelivered`` finished bundles wait for the caller.
    """

    def __init__(self, plan: Plan) -> None:
        self.stats = RunStats()
        self.processes = plan.processes
        self._plan = plan
        self._executor = plan.executor
        self._batches: Iterator[list[Bundle]] | None = None
        self._bridge: _Bridge | None = None
        self._current: Iterator[Bundle] = iter(())
        # One consumer at a time: two threads reading one run each get some of its bundles
        # (two each starting the run lost all but a few, silently).
        self._reading = threading.Lock()

    @property
    def received(self) -> int | None:
        """Bytes of response bodies received so far, as stored (a compressed body counts
        its decoded size), downloads in progress and failed attempts included: what a live
        progress shows as speed, where ``stats`` counts a bundle's bytes only once it is
        yielded. Bodies a strategy's own ``on_success`` reads are not counted; None with
        ``backend="ray"``."""
        return self._executor.received() if self._executor is not None else None

    def __iter__(self) -> Run:
        return self

    def __next__(self) -> Bundle:
        with self._reading:
            return self._next()

    def _next(self) -> Bundle:
        for bundle in self._current:
            self.stats.add(bundle)
            return bundle
        if self._batches is None:
            bridge = _Bridge(
                self._plan, max_undelivered=max(4096, self._plan.limits.shard_cap * self.processes)
            )
            self._bridge = bridge
            bridge.start()
            self._batches = bridge.batches()
        try:
            while True:
                self._current = iter(next(self._batches))
                for bundle in self._current:
                    self.stats.add(bundle)
                    return bundle
        except StopIteration:
            self.close()
            raise
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop the run: workers end, temporary files go, no partial file is left."""
        bridge, self._bridge = self._bridge, None
        if bridge is not None:
            bridge.stop()
        self._batches = iter(())
        self._current = iter(())

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()
