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
import time
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
        # Not a SimpleQueue: a close() from another thread drains it (``unread``) while the
        # consumer may wait in a timed get, and CPython 3.11's SimpleQueue then blocks that
        # get for ever when the item it was woken for is taken after its deadline passed
        # (each() hung about once in 150 such closes). Queue's timed get is plain Python.
        self.out: queue.Queue[Any] = queue.Queue()
        self._max_undelivered = max_undelivered
        self._undelivered = 0
        self._lock = threading.Lock()
        self._consumed = threading.Event()
        self._cancel = threading.Event()
        self._stopping = False  # stop() was called: the run's cancellation is its end
        self._late: list[Bundle] = []  # finished as the run stopped (the loop thread's)
        self._ended = False  # the caller has seen the end
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
            async with contextlib.aclosing(self.plan.run(self._late.extend)) as batches:
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
        # the thread: it then starts, sees the cancel, and ends at once. One from the loop
        # thread itself (an abandoned run collected there, in a strategy) cannot wait for it.
        if self._thread.ident is not None and self._thread is not threading.current_thread():
            self._thread.join()
        _stop_at_exit.running.discard(self)

    def unread(self) -> list[Bundle]:
        """After ``stop``: the bundles that finished but never reached the caller. The end
        mark goes with them: a consumer still waiting in ``take`` (a close() from another
        thread) ends by ``_ended``."""
        self._ended = True
        left: list[Bundle] = []
        while True:
            try:
                item = self.out.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, list):
                left.extend(item)
        return left + self._late

    def take(self, timeout: float | None) -> list[Bundle] | None:
        """The next batch; None when none came within ``timeout`` seconds (None: no limit);
        StopIteration once the run has ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._ended:
            wait = 0.25 if deadline is None else min(0.25, deadline - time.monotonic())
            try:
                item = self.out.get(timeout=max(0.0, wait))
            except queue.Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    return None
                continue
            if item is self._END:
                break
            if isinstance(item, BaseException):
                raise item
            batch: list[Bundle] = item
            self.consumed(len(batch))
            return batch
        self._ended = True
        raise StopIteration


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
    iterator) stops the run; then ``unread`` holds the bundles that had finished (their files
    written, or failed for good) but were never yielded, which a program that keeps records
    may still record (not counted in ``stats``). One kept in a variable and left unread
    pauses once ``max_undelivered`` finished bundles wait for the caller.
    """

    def __init__(self, plan: Plan) -> None:
        self.stats = RunStats()
        self.processes = plan.processes
        self._plan = plan
        self._executor = plan.executor
        self._bridge: _Bridge | None = None
        self._closed = False
        self._current: Iterator[Bundle] = iter(())
        self.unread: list[Bundle] = []
        # One consumer at a time: two threads reading one run each get some of its bundles
        # (two each starting the run lost all but a few, silently).
        self._reading = threading.Lock()
        # Starting the run and closing it, from two threads: a close() between the start's
        # check and the bridge it makes was lost, and the run went on.
        self._starting = threading.Lock()

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
            bundle = self._next(None)
        if bundle is None:  # never: with no timeout, it waits for one
            raise StopIteration
        return bundle

    def poll(self, timeout: float) -> Bundle | None:
        """The next bundle, or None when none finished within ``timeout`` seconds; raises
        StopIteration once the run has ended. For a consumer with more to do than wait: the
        CLI takes its stop signals between two calls, so none lands while a bundle is on
        its way from the run to the manifest."""
        with self._reading:
            return self._next(timeout)

    def _next(self, timeout: float | None) -> Bundle | None:
        for bundle in self._current:
            self.stats.add(bundle)
            return bundle
        with self._starting:
            if self._closed:
                raise StopIteration
            bridge = self._bridge
            if bridge is None:
                limit = max(4096, self._plan.limits.shard_cap * self.processes)
                bridge = self._bridge = _Bridge(self._plan, max_undelivered=limit)
                bridge.start()
        try:
            while (batch := bridge.take(timeout)) is not None:
                self._current = iter(batch)
                for bundle in self._current:
                    self.stats.add(bundle)
                    return bundle
        except BaseException:  # the end (StopIteration) too
            self.close()
            raise
        return None

    def close(self) -> None:
        """Stop the run: workers end, temporary files go, no partial file is left; what had
        finished but was never yielded goes to ``unread``."""
        with self._starting:
            self._closed = True
            bridge, self._bridge = self._bridge, None
        self.unread.extend(self._current)
        self._current = iter(())
        if bridge is not None:
            bridge.stop()
            self.unread.extend(bridge.unread())

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()
