"""Planning a run: options checked and turned into a coordinator and an executor.

Everything here happens in the caller's thread before any work starts, so misuse (an unknown
back end, an unpicklable strategy, a live client with worker processes) raises at once.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncGenerator, Callable, Collection, Mapping, Sized
from dataclasses import dataclass
from typing import Any, TypedDict

from .bundle import Bundle
from .coordinator import Limits, coordinate
from .errors import ConfigurationError, DownloadFailed
from .executors.base import Executor
from .executors.inloop import InLoopExecutor
from .executors.processes import ProcessExecutor
from .executors.starting import sendable_config
from .intake import Items
from .sharding import split_budget
from .strategy import DownloadStrategy, RequestStrategy
from .strategy_check import check_download_strategy, check_request_strategy
from .urls import host_key, normalise_host_key
from .worker.config import describe
from .worker.engine import AioDownload

# Counting the distinct hosts of a known-size input is worth it only up to this size.
_COUNT_HOSTS_UP_TO = 200_000
BACKENDS = ("local", "ray")


class RunOptions(TypedDict, total=False):
    """Keyword options shared by one/swarm/each and their async twins.

    processes: workers (default 1: in the caller's process; with backend="ray", the cluster's
        CPU count). Never more than there are hosts in a list, tuple or set of URLs or
        bundles, nor more than items in an input with a size.
    split_hosts: {"host:port": k} spreads a hot host over k workers, dividing its budget.
    start_method: "spawn" (default) or "forkserver" for local worker processes.
    backend: "local" (default: this machine) or "ray" (actors on a Ray cluster).
    ray_address: passed to ray.init when Ray is not initialised yet (None: a local cluster).
    hang_timeout: seconds a worker process's event loop may stand still (stopped, deadlocked,
        or blocked by a strategy's own code) before the worker is killed and its jobs go to a
        new one, as after a crash (default 600; 0 or None: never). Local processes only.
    """

    processes: int | None
    split_hosts: Mapping[str, int] | None
    start_method: str | None
    backend: str | None
    ray_address: str | None
    hang_timeout: float | None


DEFAULT_HANG_TIMEOUT = 600.0


@dataclass
class Plan:
    items: Items
    url_map: Callable[[Any], Any] | None
    download: AioDownload
    processes: int
    split_hosts: dict[str, int]
    start_method: str | None
    limits: Limits
    backend: str = "local"
    ray_address: str | None = None
    hang_timeout: float | None = DEFAULT_HANG_TIMEOUT
    # processes=1 was asked for, or the input is known to hold no work for a worker: the run
    # goes on in the caller's process. Otherwise even one worker is a process of its own, so
    # overrides run where the caller asked for them, a crash kills no caller, hang_timeout holds.
    in_caller: bool = True
    executor: Executor | None = None

    def __post_init__(self) -> None:
        # Built now, in the caller's thread: an unpicklable strategy fails before any work.
        self.executor = self._make_executor()

    def _make_executor(self) -> Executor:
        if self.in_caller and self.backend == "local":
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
            hang_timeout=self.hang_timeout,
        )

    def run(
        self, on_late: Callable[[list[Bundle]], None] | None = None
    ) -> AsyncGenerator[list[Bundle], None]:
        """The coordinator's batches; ``on_late`` as ``coordinate`` says."""
        executor, self.executor = self.executor, None
        if executor is None:
            raise RuntimeError("a plan runs once")
        return coordinate(
            self.items,
            executor,
            url_map=self.url_map,
            split_hosts=self.split_hosts,
            limits=self.limits,
            # Only the default mapping makes the file a function of the URL alone: an override
            # may name files by info or a bundle's attributes (one URL wanted at two paths).
            dedupe=type(self.download.download_strategy).get_file_path
            is DownloadStrategy.get_file_path,
            on_late=on_late,
        )


def _split_budgets(download: AioDownload, split_hosts: Mapping[str, int]) -> dict[str, Any]:
    rs = download.request_strategy
    budgets: dict[str, Any] = dict(download.host_budgets)
    for host, k in split_hosts.items():
        ways, concurrency, delay = split_budget(rs.concurrent, rs.delay, k)
        budgets[host] = (concurrency, delay, ways)
    return budgets


def make_plan(
    items: Items,
    url_map: Callable[[Any], Any] | None,
    download: AioDownload | None,
    options: RunOptions,
    *,
    sync: bool,
) -> Plan:
    unknown = set(options) - set(RunOptions.__annotations__)
    if unknown:
        raise TypeError(f"unexpected keyword argument(s): {', '.join(sorted(unknown))}")
    if isinstance(url_map, AioDownload | DownloadStrategy | RequestStrategy):
        # each(urls, AioDownload()): the second place is url_map's (as in aiodownload).
        raise ConfigurationError(
            f"a {type(url_map).__name__} was passed where url_map goes; pass it as download="
        )
    if url_map is not None and not callable(url_map):
        raise ConfigurationError(
            f"url_map must be a function of an item, got {type(url_map).__name__}"
        )
    if url_map is not None and (
        inspect.iscoroutinefunction(url_map)
        or inspect.iscoroutinefunction(type(url_map).__call__)  # an object's async __call__
    ):
        # Its coroutine would be taken for the URL (and never awaited): every item failed.
        raise ConfigurationError("url_map must be a plain function, not an async one")
    if download is not None and not isinstance(download, AioDownload):
        # swarm(urls, DownloadStrategy(...)): aiodownload took a strategy in no such place.
        raise ConfigurationError(
            f"download must be an AioDownload, got {type(download).__name__}: "
            "wrap strategies as AioDownload(download_strategy=..., request_strategy=...)"
        )
    download = download or AioDownload()
    check_request_strategy(download.request_strategy)
    check_download_strategy(download.download_strategy)
    backend = options.get("backend") or "local"
    if backend not in BACKENDS:
        raise ConfigurationError(f"backend must be one of {BACKENDS}, got {backend!r}")
    # Checked here, whatever the process count becomes: an empty input runs in the caller.
    start_method = options.get("start_method")
    if start_method not in (None, "spawn", "forkserver"):
        raise ConfigurationError(
            f"start_method must be 'spawn' or 'forkserver', got {start_method!r}"
            + (" ('fork' is unsafe here)" if start_method == "fork" else "")
        )
    processes = options.get("processes")
    split_hosts = options.get("split_hosts")
    if processes is None and backend == "ray":
        from .executors.ray import cluster_cpus, ensure_ray  # noqa: PLC0415

        processes = cluster_cpus(ensure_ray(options.get("ray_address")))
    if processes is None:
        processes = 1
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise ConfigurationError(f"processes must be a positive integer, got {processes!r}")
    splits = _normalise_splits(split_hosts)
    if isinstance(items, str | bytes | Bundle):
        raise ConfigurationError("pass an iterable of URLs (a list), not a single URL; use one()")
    wanted = processes
    useful = _useful_processes(items, url_map, processes, splits)
    in_caller = wanted == 1 or useful == 0
    processes = max(1, useful)
    # Checked for the processes asked for, not the ones this input needs: a script tried on
    # an empty list (which runs in the caller) must fail as it will on URLs.
    if wanted > 1 and backend == "local" and in_caller:
        sendable_config(describe(download))
    if (wanted > 1 or backend == "ray") and download.has_client:
        raise ConfigurationError(
            "a live client session cannot be shared with worker processes; "
            "drop client= or use processes=1"
        )
    if sync and download.has_client:
        raise ConfigurationError(
            "a live client session belongs to its own event loop; "
            "call aswarm()/aeach()/aone() from that loop instead"
        )
    if splits:
        # The same effective k divides the host's budget and picks its workers: a host can be
        # split at most over its concurrency and over the workers there are.
        rs = download.request_strategy
        # A jitter alone spaces starts too (0 to jitter seconds apart): not split either.
        spacing = rs.delay + rs.jitter
        effective = {
            h: split_budget(rs.concurrent, spacing, min(k, processes))[0] for h, k in splits.items()
        }
        splits = {h: k for h, k in effective.items() if k > 1}
    limits = Limits(
        shard_cap=max(512, 4 * download.request_strategy.worker_concurrent),
        lane_cap=max(8, 4 * download.request_strategy.concurrent),
    )
    return Plan(
        items,
        url_map,
        download,
        processes,
        splits,
        start_method,
        limits,
        backend=backend,
        ray_address=options.get("ray_address"),
        hang_timeout=_hang_timeout(options.get("hang_timeout", DEFAULT_HANG_TIMEOUT)),
        in_caller=in_caller,
    )


def _hang_timeout(value: object) -> float | None:
    if value is None or value == 0:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigurationError(
            f"hang_timeout must be a positive number of seconds, got {value!r}"
        )
    return float(value)


def _normalise_splits(split_hosts: Mapping[str, int] | None) -> dict[str, int]:
    out: dict[str, int] = {}
    if split_hosts is not None and not isinstance(split_hosts, Mapping):
        raise ConfigurationError(
            f"split_hosts must map a host to its number of workers, like {{'host:port': 4}}, "
            f"got {type(split_hosts).__name__}"
        )
    for host, k in (split_hosts or {}).items():
        if not isinstance(k, int) or k < 1:
            raise ConfigurationError(f"split_hosts[{host!r}] must be a positive integer")
        out[split_key(host)] = k
    return out


def split_key(host: str) -> str:
    """The host key a ``split_hosts`` entry (``host[:port]`` or a URL) applies to."""
    # Keys are compared with host_key(url): written any other way, a split never applies.
    try:
        return host_key(host) if "://" in host else normalise_host_key(host)
    except (DownloadFailed, TypeError) as exc:
        raise ConfigurationError(
            f"split_hosts key {host!r} is not a host[:port] or URL: {exc}"
        ) from exc


def _useful_processes(
    items: Items,
    url_map: Callable[[Any], Any] | None,
    processes: int,
    splits: Mapping[str, int],
) -> int:
    """Never more workers than shards of work, when the input's size is known (0 when it
    holds none: no URL with a host)."""
    if processes == 1 or not isinstance(items, Sized):
        return processes
    size = len(items)
    # A collection (list, tuple, set, dict keys...) can be walked twice; an iterator cannot,
    # nor can the caller's url_map be asked twice (it may be costly, or count its calls).
    if url_map is not None or size > _COUNT_HOSTS_UP_TO or not isinstance(items, Collection):
        return min(processes, size)
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
    return min(processes, lanes)
