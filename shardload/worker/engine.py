"""AioDownload: the per-process engine (one event loop, one HTTP client, per-host slots).

Invariants:
- ``main(bundle)`` never raises for a download problem: every failure ends as a failed bundle
  with an error kind and message (DESIGN rule 4); only cancellation propagates;
- a bundle waiting for a retry, a per-host gap or a host pause holds no slot (see ``hosts``);
- bundles of the same URL that target the same file while one is in flight share its download,
  so duplicate URLs are fetched once; no two downloads ever write one file at once in a worker
  (a different URL given the same path waits, then makes its own);
- the HTTP client (the lean one, or an aiohttp session when a request is not shardload's own:
  see ``_owns_requests``) is created lazily inside the running loop and closed by ``close()``;
  a session passed as ``client`` belongs to the caller and is never closed here.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ..backoff import decide, parse_retry_after
from ..bundle import CACHED, SKIPPED, WRITTEN, Bundle, apply_result, to_result
from ..errors import NEVER_RETRY_KINDS, DownloadFailed, ErrorKind
from ..robots import ALLOW_ALL, RobotRules, rules_from_response
from ..strategy import DownloadStrategy, Outcome, RequestStrategy
from ..urls import UrlParts, split_url
from .failures import classify
from .files import (
    READ_SIZE,
    SpeedGuard,
    check_target,
    find_complete,
    forget_directories,
    speed_guard,
)
from .hosts import CLOSED, HostSlot
from .http import REDIRECT_STATUSES, LeanClient

if TYPE_CHECKING:
    # Imported where a session is made: a worker on the lean client never pays aiohttp's
    # import (~0.2 s per spawned process).
    import aiohttp

_ROBOTS_MAX_BYTES = 512 * 1024


class AioDownload:
    """Downloads bundles with the given strategies; the same engine runs in every worker."""

    def __init__(
        self,
        client: aiohttp.ClientSession | None = None,
        download_strategy: DownloadStrategy | None = None,
        request_strategy: RequestStrategy | None = None,
    ) -> None:
        self.client = client
        self.download_strategy = download_strategy or DownloadStrategy()
        self.request_strategy = request_strategy or RequestStrategy()
        # Per-host (concurrency, delay) overrides: a hot host split over k workers gets 1/k.
        self.host_budgets: dict[str, tuple[int, float]] = {}
        self._runs = 0  # runs (swarm/each calls) using this engine now, all in self._loop
        self._reset()

    # aiodownload's private names, read by some of its users' subclasses.
    @property
    def _download_strategy(self) -> DownloadStrategy:
        return self.download_strategy

    @property
    def _request_strategy(self) -> RequestStrategy:
        return self.request_strategy

    def _reset(self) -> None:
        # Everything below belongs to one event loop: made lazily inside it, useless in another.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: aiohttp.ClientSession | None = self.client
        self._lean: LeanClient | None = None
        self._worker_sem: asyncio.Semaphore | None = None
        self._hosts: dict[str, HostSlot] = {}
        self._inflight: dict[str, tuple[UrlParts, asyncio.Future[Bundle]]] = {}
        self._robots: dict[str, asyncio.Future[RobotRules]] = {}

    async def __aenter__(self) -> AioDownload:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def for_run(self) -> AioDownload:
        """The engine a run in the running loop uses: this one, or a fresh copy of it (same
        class and strategies) when a run in another event loop holds this one (``one()``
        called while iterating ``each()``, or two threads sharing one download)."""
        loop = asyncio.get_running_loop()
        engine = self
        if self._busy_elsewhere(loop):
            engine = copy.copy(self)
            engine._runs = 0
            engine._reset()
        engine._bind(loop)
        engine._runs += 1
        return engine

    async def end_run(self) -> None:
        """A run that ``for_run`` gave this engine is over; the last one closes it."""
        self._runs = max(0, self._runs - 1)
        if self._runs == 0:
            await self.close()

    def _busy_elsewhere(self, loop: asyncio.AbstractEventLoop) -> bool:
        bound = self._loop
        return bound is not None and bound is not loop and self._runs > 0 and not bound.is_closed()

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is not loop:
            self._reset()  # made in a loop that is gone or stopped: start afresh in this one
            self._loop = loop

    async def close(self) -> None:
        """Close the session this engine created (never a caller's ``client``)."""
        session, lean = self._session, self._lean
        forget_directories(self.download_strategy.home)
        for pending in self._robots.values():
            pending.cancel()
        self._reset()
        if session is not None and session is not self.client:
            await session.close()
        if lean is not None:
            await lean.close()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            import aiohttp  # noqa: PLC0415  (see the import at the top)

            rs = self.request_strategy
            connector = aiohttp.TCPConnector(
                limit=max(1, self._worker_limit()),  # the descriptor budget, as the lean pool
                limit_per_host=0,
                ttl_dns_cache=rs.dns_ttl,
                enable_cleanup_closed=False,
            )
            headers = {"User-Agent": rs.user_agent, **rs.headers}
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers=headers,
                cookie_jar=aiohttp.DummyCookieJar(),
                read_bufsize=READ_SIZE,
                timeout=self._timeout(),
                trust_env=False,
            )
        return self._session

    def _owns_requests(self) -> bool:
        """Whether every step of a request is shardload's own, so the lean client may make it.

        A caller's session, or an overridden ``on_success``/``assert_response`` (written against
        aiohttp's response), keeps the request on aiohttp.
        """
        return (
            self.client is None
            and type(self.download_strategy).on_success is DownloadStrategy.on_success
            and type(self.request_strategy).assert_response is RequestStrategy.assert_response
        )

    def _get_lean(self) -> LeanClient:
        if self._lean is None:
            rs = self.request_strategy
            self._lean = LeanClient(
                limit=self._worker_limit(),
                headers={"User-Agent": rs.user_agent, **rs.headers},
                connect_timeout=_connect_timeout(rs),
                read_timeout=rs.timeout,
                max_redirects=rs.max_redirects,
                dns_ttl=rs.dns_ttl,
            )
        return self._lean

    def _request(self, url: str, parts: UrlParts, params: Any = None) -> Any:
        """``async with`` this for the response of one GET (redirects followed)."""
        if self._owns_requests():
            return self._get_lean().get(parts, url)
        rs = self.request_strategy
        # aiohttp fails on the max_redirects-th redirect; shardload follows that many (as curl).
        return self._get_session().get(
            url,
            params=params,
            allow_redirects=rs.max_redirects > 0,
            max_redirects=rs.max_redirects + 1,
            timeout=self._timeout(),  # also over a caller's session and its own timeout
        )

    def _timeout(self) -> aiohttp.ClientTimeout:
        import aiohttp  # noqa: PLC0415  (see the import at the top)

        rs = self.request_strategy
        return aiohttp.ClientTimeout(
            total=rs.max_time, sock_connect=_connect_timeout(rs), connect=None, sock_read=rs.timeout
        )

    def _slot(self, host_key: str) -> HostSlot:
        slot = self._hosts.get(host_key)
        if slot is None:
            rs = self.request_strategy
            concurrency, delay = self.host_budgets.get(host_key, (rs.concurrent, rs.delay))
            slot = self._hosts[host_key] = HostSlot(
                concurrency,
                max(delay, self._crawl_delay(host_key)),
                rs.jitter,
                adaptive=rs.adaptive,
                breaker_threshold=rs.breaker_threshold,
                breaker_cooldown=rs.breaker_cooldown,
                retry_after_cap=rs.retry_after_cap,
            )
        return slot

    def _crawl_delay(self, host_key: str) -> float:
        known = self._robots.get(host_key)
        if known is None or not known.done() or known.cancelled():
            return 0.0
        return self._capped_crawl_delay(known.result())

    def _capped_crawl_delay(self, rules: RobotRules) -> float:
        # Capped as a Retry-After is: "Crawl-delay: 86400" must not park the run for days.
        return min(rules.crawl_delay or 0.0, self.request_strategy.retry_after_cap)

    def _worker_slots(self) -> asyncio.Semaphore:
        if self._worker_sem is None:
            self._worker_sem = asyncio.Semaphore(max(1, self._worker_limit()))
        return self._worker_sem

    def _worker_limit(self) -> int:
        return min(self.request_strategy.worker_concurrent, _descriptor_budget())

    async def main(self, bundle: Bundle) -> Bundle:
        """Download one bundle to its file, retrying as the request strategy says."""
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._busy_elsewhere(loop):
                message = "this AioDownload is running in another event loop: use one per loop"
                bundle.fail(ErrorKind.STRATEGY, message)
                return bundle
            self._bind(loop)
        try:
            await self._main(bundle)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug in a user's strategy must not lose the bundle
            bundle.fail(ErrorKind.STRATEGY, f"{type(exc).__name__}: {exc}")
        bundle.elapsed = time.monotonic() - started
        return bundle

    async def _main(self, bundle: Bundle) -> None:
        try:
            parts = split_url(bundle.url, bundle.params)
            bundle.file_path = self._target(bundle)
        except DownloadFailed as exc:
            bundle.fail(exc.kind, exc.message)
            return
        path = bundle.file_path
        while (twin := self._inflight.get(path)) is not None:
            fetching, download = twin
            try:
                shared = await asyncio.shield(download)
            except asyncio.CancelledError:
                if not download.cancelled() or _cancelling():
                    raise  # this bundle itself was cancelled
                continue  # only the download it waited for was: make it (or wait) again
            if fetching != parts:
                # Another URL given the same file (explicit paths): its result is not ours.
                # Wait for it, then download our own; the file holds whichever came last.
                continue
            apply_result(bundle, to_result(shared))
            return
        done: asyncio.Future[Bundle] = asyncio.get_running_loop().create_future()
        self._inflight[path] = (parts, done)
        try:
            await self._fetch(bundle, parts)
        except asyncio.CancelledError:
            done.cancel()
            raise
        finally:
            del self._inflight[path]
            if not done.done():
                done.set_result(bundle)

    def _target(self, bundle: Bundle) -> str:
        ds = self.download_strategy
        if bundle.file_path:
            return check_target(ds.home, bundle.file_path)
        try:
            path = ds.get_file_path(bundle)
        except DownloadFailed:
            raise
        except Exception as exc:
            raise DownloadFailed(
                ErrorKind.STRATEGY, f"get_file_path failed: {type(exc).__name__}: {exc}"
            ) from exc
        return check_target(ds.home, path)

    async def _fetch(self, bundle: Bundle, parts: UrlParts) -> None:
        ds, rs = self.download_strategy, self.request_strategy
        path = bundle.file_path
        if path is not None and ds.skip_cached:
            found = find_complete(path)
            if found is not None:
                bundle.file_path, bundle.bytes = found
                bundle.state = CACHED
                return
        slot = self._slot(parts.host_key)
        slot.users += 1
        try:
            if rs.robots and not await self._robots_allow(bundle, parts, slot):
                return
            while True:
                wait = rs.get_sleep_time(bundle)
                if wait and wait > 0:
                    await asyncio.sleep(wait)
                refused = await slot.admit() if slot.breaker != CLOSED else None
                if refused is None:
                    worker = self._worker_slots()
                    await slot.enter(worker)
                    try:
                        # The breaker may have opened while this request waited for its turn.
                        refused = slot.open_reason() if slot.breaker != CLOSED else None
                        outcome = None if refused else await self._attempt(bundle, parts)
                    finally:
                        slot.leave(worker)
                if refused is not None:
                    bundle.fail(ErrorKind.BREAKER_OPEN, refused)
                    await ds.on_fail(bundle)
                    return
                if outcome is None:
                    slot.record(bundle.status, None, None)
                    bundle.state = WRITTEN
                    bundle.error_kind = bundle.error_message = None
                    return
                slot.record(outcome.status, outcome.error_kind, outcome.retry_after)
                # Only whether to retry is decided here: the wait comes from get_sleep_time()
                # at the top of the loop, and a Retry-After pauses the whole host (record()).
                wants_retry, retry_error = self._wants_retry(outcome)
                decision = decide(
                    attempts=bundle.attempts,
                    max_attempts=rs.max_attempts,
                    wants_retry=wants_retry,
                    never_retry=outcome.error_kind in NEVER_RETRY_KINDS,
                    strategy_delay=0.0,
                    retry_after=None,
                    retry_after_cap=rs.retry_after_cap,
                )
                if not decision.retry:
                    message = outcome.message + retry_error
                    if bundle.attempts > 1:
                        message += f"; {decision.reason}"  # e.g. attempts exhausted (5 of 5)
                    bundle.fail(outcome.error_kind, message)
                    await ds.on_fail(bundle)
                    return
        finally:
            slot.end_probe()
            slot.users -= 1
            if slot.idle():
                self._hosts.pop(parts.host_key, None)

    def _wants_retry(self, outcome: Outcome) -> tuple[bool, str]:
        """The strategy's ``retry()``, and a note for the message when it raised.

        One that raises (aiodownload code reading ``response.status >= 500`` on a refused
        connection, whose status is None) means no retry: the bundle keeps the failure that
        happened, and its message says what retry() did, so the strategy's bug stays visible.
        """
        try:
            return bool(self.request_strategy.retry(outcome)), ""
        except Exception as exc:
            return False, f"; retry() raised {type(exc).__name__}: {exc}"

    async def _robots_allow(self, bundle: Bundle, parts: UrlParts, slot: HostSlot) -> bool:
        """Fetch the host's robots.txt once (politely, through its slot); skip what it forbids."""
        known = self._robots.get(parts.host_key)
        if known is None:
            known = self._robots[parts.host_key] = asyncio.ensure_future(
                self._fetch_robots(parts, slot)
            )
        rules = await asyncio.shield(known)
        if rules.crawl_delay:
            slot.delay = max(slot.delay, self._capped_crawl_delay(rules))
        if rules.allows(bundle.url):
            return True
        bundle.state = SKIPPED
        bundle.error_kind = ErrorKind.ROBOTS
        bundle.error_message = f"disallowed by robots.txt for {rules.agent}"
        return False

    async def _fetch_robots(self, parts: UrlParts, slot: HostSlot) -> RobotRules:
        url = f"{parts.scheme}://{parts.host_key}/robots.txt"
        rs = self.request_strategy
        worker = self._worker_slots()
        await slot.enter(worker)
        try:
            async with self._request(url, split_url(url)) as response:
                # read(n) returns what is buffered (on aiohttp), not n bytes: gather the pieces.
                body = bytearray()
                async for piece in response.content.iter_chunked(READ_SIZE):
                    body += piece
                    if len(body) >= _ROBOTS_MAX_BYTES:
                        break
                return rules_from_response(
                    response.status, bytes(body[:_ROBOTS_MAX_BYTES]), rs.user_agent
                )
        except asyncio.CancelledError:
            raise
        except Exception:
            return ALLOW_ALL
        finally:
            slot.leave(worker)

    async def request_and_download(self, bundle: Bundle) -> Bundle:
        """One attempt (no retry): request, check, write. Sets the bundle's final state."""
        try:
            if bundle.file_path is None:
                bundle.file_path = self._target(bundle)
            parts = split_url(bundle.url, bundle.params)
        except DownloadFailed as exc:
            return bundle.fail(exc.kind, exc.message)
        outcome = await self._attempt(bundle, parts)
        if outcome is None:
            bundle.state = WRITTEN
        else:
            bundle.fail(outcome.error_kind, outcome.message)
        return bundle

    async def _attempt(self, bundle: Bundle, parts: UrlParts | None = None) -> Outcome | None:
        """Make one request and write its body; None on success, else what went wrong."""
        rs = self.request_strategy
        bundle.attempts += 1
        status: int | None = None
        headers: Mapping[str, str] = {}
        # aiohttp applies max_time itself (ClientTimeout.total); the lean client does not.
        limit = asyncio.timeout(rs.max_time) if rs.max_time and self._owns_requests() else None
        try:
            if parts is None:
                parts = split_url(bundle.url, bundle.params)
            async with (
                limit or _NO_LIMIT,
                self._request(bundle.url, parts, bundle.params) as response,
            ):
                status = bundle.status = response.status
                headers = response.headers
                if status in REDIRECT_STATUSES and "Location" in headers:
                    # Only reached with max_redirects=0 (otherwise followed, or too many).
                    raise DownloadFailed(
                        ErrorKind.REDIRECT, "redirect not followed (max_redirects=0)"
                    )
                try:
                    rs.assert_response(response)
                except AssertionError as exc:
                    return Outcome(
                        error_kind=ErrorKind.HTTP,
                        message=str(exc) or f"HTTP {status}",
                        status=status,
                        headers=_plain(headers),
                        retry_after=parse_retry_after(headers.get("Retry-After"), time.time()),
                        attempt=bundle.attempts,
                    )
                token = speed_guard.set(
                    SpeedGuard(rs.low_speed_limit, rs.low_speed_time)
                    if rs.low_speed_limit
                    else None
                )
                try:
                    await self.download_strategy.on_success(response, bundle)
                finally:
                    speed_guard.reset(token)
                return None
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            kind, message = classify(exc, bundle.url)
            if limit is not None:
                over_time = limit.expired()
            else:
                # aiohttp's max_time raises a bare TimeoutError; its connect and read timeouts
                # raise subclasses of it, with messages of their own.
                over_time = bool(rs.max_time) and type(exc) is TimeoutError
            if over_time:
                message = f"attempt exceeded max_time ({rs.max_time:g} s)"
            return Outcome(
                error_kind=kind,
                message=message,
                status=status,
                headers=_plain(headers),
                attempt=bundle.attempts,
            )


_NO_LIMIT = contextlib.nullcontext()


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _connect_timeout(rs: RequestStrategy) -> float | None:
    return rs.connect_timeout if rs.connect_timeout is not None else rs.timeout


def _descriptor_budget() -> int:
    """Requests this process can hold open at once: each needs a socket and a temporary file,
    and the process keeps some descriptors of its own (pipes, the event loop, libraries)."""
    try:
        import resource  # noqa: PLC0415  (POSIX only)
    except ImportError:
        return 1 << 30
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 30
    return max(1, (soft - _RESERVED_DESCRIPTORS) // 2)


_RESERVED_DESCRIPTORS = 32


def _plain(headers: Mapping[str, str]) -> dict[str, str]:
    return {str(k): str(v) for k, v in headers.items()}


def describe(engine: AioDownload) -> dict[str, Any]:
    """The plain, picklable configuration a worker process rebuilds this engine from."""
    return {
        "download_strategy": engine.download_strategy,
        "request_strategy": engine.request_strategy,
        "host_budgets": dict(engine.host_budgets),
    }
