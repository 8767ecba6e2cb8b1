"""one / swarm / each, and their async twins: the public entry points.

The sync functions run the coordinator on a private event loop in a background thread and hand
bundles over through a queue, so they work the same from a plain script and from inside a
running event loop (a notebook cell), and a slow consumer never stalls in-flight downloads.
Closing an ``each()`` iterator early (break, exception, Ctrl-C) cancels the run: workers stop,
temporary files are removed, nothing is left at a final path but complete files.

Library rule (DESIGN rule 8): nothing here installs signal handlers, exits or prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator, Mapping, Sized
from dataclasses import dataclass
from typing import Any, TypedDict, Unpack

from .bundle import Bundle
from .coordinator import Limits, coordinate
from .errors import ConfigurationError, DownloadFailed
from .executors.base import Executor
from .executors.inloop import InLoopExecutor
from .executors.processes import ProcessExecutor
from .paths import DISPLACED_NAME
from .sharding import split_budget
from .stats import RunStats
from .urls import host_key
from .worker.engine import AioDownload, describe
from .worker.process import run_loop

# Counting the distinct hosts of a known-size input is worth it only up to this size.
_COUNT_HOSTS_UP_TO = 200_000
BACKENDS = ("local", "ray")


class RunOptions(TypedDict, total=False):
    """Keyword options shared by one/swarm/each and their async twins.

    processes: workers (default 1: in the caller's process; with backend="ray", the cluster's
        CPU count). Never more than there are hosts when the input's size is known.
    split_hosts: {"host:port": k} spreads a hot host over k workers, dividing its budget.
    start_method: "spawn" (default) or "forkserver" for local worker processes.
    backend: "local" (default: this machine) or "ray" (actors on a Ray cluster).
    ray_address: passed to ray.init when Ray is not initialised yet (None: a local cluster).
    """

    processes: int | None
    split_hosts: Mapping[str, int] | None
    start_method: str | None
    backend: str | None
    ray_address: str | None


@dataclass
class _Plan:
    items: Iterable[Any]
    url_map: Callable[[Any], Any] | None
    download: AioDownload
    processes: int
    split_hosts: dict[str, int]
    start_method: str | None
    limits: Limits
    backend: str = "local"
    ray_address: str | None = None
    executor: Executor | None = None

    def __post_init__(self) -> None:
        # Built now, in the caller's thread: an unpicklable strategy fails before any work.
        self.executor = self._make_executor()

    def _make_executor(self) -> Executor:
        if self.processes == 1 and self.backend == "local":
            return InLoopExecutor(self.download)
        config = describe(self.download)
        config["host_budgets"] = _split_budgets(self.download, self.split_hosts)
        if self.backend == "ray":
            from .executors.ray import RayExecutor  # noqa: PLC0415  (Ray is optional)

            return RayExecutor(
                config,
                self.processes,
                home=self.download.download_strategy.home,
                address=self.ray_address,
            )
        return ProcessExecutor(
            config,
            self.processes,
            home=self.download.download_strategy.home,
            start_method=self.start_method,
        )

    def run(self) -> AsyncGenerator[list[Bundle], None]:
        executor, self.executor = self.executor, None
        if executor is None:
            raise RuntimeError("a plan runs once")
        return coordinate(
            self.items,
            executor,
            url_map=self.url_map,
            split_hosts=self.split_hosts,
            limits=self.limits,
        )


def _split_budgets(download: AioDownload, split_hosts: Mapping[str, int]) -> dict[str, Any]:
    rs = download.request_strategy
    budgets: dict[str, Any] = dict(download.host_budgets)
    for host, k in split_hosts.items():
        _, concurrency, delay = split_budget(rs.concurrent, rs.delay, k)
        budgets[host] = (concurrency, delay)
    return budgets


def _plan(
    items: Iterable[Any],
    url_map: Callable[[Any], Any] | None,
    download: AioDownload | None,
    options: RunOptions,
    *,
    sync: bool,
) -> _Plan:
    unknown = set(options) - set(RunOptions.__annotations__)
    if unknown:
        raise TypeError(f"unexpected keyword argument(s): {', '.join(sorted(unknown))}")
    download = download or AioDownload()
    backend = options.get("backend") or "local"
    if backend not in BACKENDS:
        raise ConfigurationError(f"backend must be one of {BACKENDS}, got {backend!r}")
    processes = options.get("processes")
    split_hosts = options.get("split_hosts")
    if processes is None and backend == "ray":
        from .executors.ray import cluster_cpus, ensure_ray  # noqa: PLC0415

        processes = cluster_cpus(ensure_ray(options.get("ray_address")))
    if processes is None:
        processes = 1
    if not isinstance(processes, int) or processes < 1:
        raise ConfigurationError(f"processes must be a positive integer, got {processes!r}")
    splits = _normalise_splits(split_hosts)
    if isinstance(items, str | bytes | Bundle):
        raise ConfigurationError("pass an iterable of URLs (a list), not a single URL; use one()")
    processes = _useful_processes(items, url_map, processes, splits)
    if (processes > 1 or backend == "ray") and download.client is not None:
        raise ConfigurationError(
            "a live client session cannot be shared with worker processes; "
            "drop client= or use processes=1"
        )
    if sync and download.client is not None:
        raise ConfigurationError(
            "a live client session belongs to its own event loop; "
            "call aswarm()/aeach()/aone() from that loop instead"
        )
    if splits:
        # The same effective k divides the host's budget and picks its workers: a host can be
        # split at most over its concurrency and over the workers there are.
        rs = download.request_strategy
        effective = {
            h: split_budget(rs.concurrent, rs.delay, min(k, processes))[0]
            for h, k in splits.items()
        }
        splits = {h: k for h, k in effective.items() if k > 1}
    limits = Limits(
        shard_cap=max(512, 4 * download.request_strategy.worker_concurrent),
        lane_cap=max(8, 4 * download.request_strategy.concurrent),
    )
    return _Plan(
        items,
        url_map,
        download,
        processes,
        splits,
        options.get("start_method"),
        limits,
        backend=backend,
        ray_address=options.get("ray_address"),
    )


def _normalise_splits(split_hosts: Mapping[str, int] | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for host, k in (split_hosts or {}).items():
        if not isinstance(k, int) or k < 1:
            raise ConfigurationError(f"split_hosts[{host!r}] must be a positive integer")
        key = host if "://" not in host else host_key(host)
        out[key.lower()] = k
    return out


def _useful_processes(
    items: Iterable[Any],
    url_map: Callable[[Any], Any] | None,
    processes: int,
    splits: Mapping[str, int],
) -> int:
    """Never more workers than shards of work, when the input's size is known."""
    if processes == 1 or not isinstance(items, Sized):
        return processes
    size = len(items)
    if url_map is not None or size > _COUNT_HOSTS_UP_TO or not isinstance(items, list | tuple):
        return max(1, min(processes, size))
    lanes = 0
    seen: set[str] = set()
    for item in items:
        url = item.url if isinstance(item, Bundle) else item
        try:
            key = host_key(url) if isinstance(url, str) else None
        except DownloadFailed:
            key = None
        if key is not None and key not in seen:
            seen.add(key)
            lanes += splits.get(key, 1)
            if lanes >= processes:
                return processes  # enough hosts for every worker: no need to look further
    return max(1, min(processes, lanes))


class _Bridge:
    """Runs a plan's coordinator on a private loop in a thread; feeds a queue for the caller."""

    _END = object()

    def __init__(self, plan: _Plan, max_undelivered: int) -> None:
        self.plan = plan
        self.out: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._max_undelivered = max_undelivered
        self._undelivered = 0
        self._lock = threading.Lock()
        self._consumed = threading.Event()
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="shardload-loop")

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            run_loop(self._main())
        except BaseException as exc:
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
        self._cancel.set()
        self._thread.join()

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


class Run(Iterator[Bundle]):
    """The iterator ``each()`` returns: bundles as they finish, plus live statistics.

    ``stats.hosts`` maps each host key to its ``HostStats`` (requests, bytes, status classes,
    error kinds, latency), ``stats.total`` adds them up; both count the bundles yielded so far.
    ``close()`` (or leaving a ``with`` block, or breaking out of a for loop and dropping the
    iterator) stops the run.
    """

    def __init__(self, plan: _Plan) -> None:
        self.stats = RunStats()
        self.processes = plan.processes
        self._plan = plan
        self._batches: Iterator[list[Bundle]] | None = None
        self._bridge: _Bridge | None = None
        self._current: Iterator[Bundle] = iter(())

    def __iter__(self) -> Run:
        return self

    def __next__(self) -> Bundle:
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


def _iterate(plan: _Plan) -> Iterator[Bundle]:
    return Run(plan)


def each(
    iterable: Iterable[Any],
    url_map: Callable[[Any], Any] | None = None,
    download: AioDownload | None = None,
    **options: Unpack[RunOptions],
) -> Run:
    """Download every item; yield each bundle as it finishes (input read lazily).

    ``url_map(item)`` gives the URL (or a Bundle) of an item; the item becomes ``bundle.info``.
    Options (``RunOptions``): ``processes``, ``split_hosts``, ``start_method``, ``backend``,
    ``ray_address``; they are checked before any work starts.
    """
    return Run(_plan(iterable, url_map, download, options, sync=True))


def swarm(
    iterable: Iterable[Any],
    download: AioDownload | None = None,
    *,
    url_map: Callable[[Any], Any] | None = None,
    **options: Unpack[RunOptions],
) -> list[Bundle]:
    """Download every item; return the bundles in input order (``[]`` for an empty input)."""
    return _in_order(list(each(iterable, url_map, download, **options)))


def one(
    url_or_bundle: str | Bundle,
    download: AioDownload | None = None,
    **options: Unpack[RunOptions],
) -> Bundle:
    """Download one URL (or bundle) and return its bundle."""
    return swarm([url_or_bundle], download, **options)[0]


async def aeach(
    iterable: Iterable[Any],
    url_map: Callable[[Any], Any] | None = None,
    download: AioDownload | None = None,
    **options: Unpack[RunOptions],
) -> AsyncGenerator[Bundle, None]:
    """``each`` for asyncio programs: runs in the current loop (a ``client=`` session works)."""
    plan = _plan(iterable, url_map, download, options, sync=False)
    async with contextlib.aclosing(plan.run()) as batches:
        async for batch in batches:
            for bundle in batch:
                yield bundle


async def aswarm(
    iterable: Iterable[Any],
    download: AioDownload | None = None,
    *,
    url_map: Callable[[Any], Any] | None = None,
    **options: Unpack[RunOptions],
) -> list[Bundle]:
    """``swarm`` for asyncio programs."""
    stream = aeach(iterable, url_map, download, **options)
    async with contextlib.aclosing(stream):
        bundles = [bundle async for bundle in stream]
    return _in_order(bundles)


async def aone(
    url_or_bundle: str | Bundle,
    download: AioDownload | None = None,
    **options: Unpack[RunOptions],
) -> Bundle:
    """``one`` for asyncio programs."""
    return (await aswarm([url_or_bundle], download, **options))[0]


def _in_order(bundles: list[Bundle]) -> list[Bundle]:
    bundles.sort(key=lambda b: b.seq)
    for bundle in bundles:
        _follow_displacement(bundle)
    return bundles


def _follow_displacement(bundle: Bundle) -> None:
    """A file moved to ``<path>/%file`` after its bundle was made: point the bundle there."""
    path = bundle.file_path
    if bundle.ok and path and not os.path.isfile(path):
        moved = os.path.join(path, DISPLACED_NAME)
        if os.path.isfile(moved):
            bundle.file_path = moved
