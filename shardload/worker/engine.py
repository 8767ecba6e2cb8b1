"""AioDownload: the per-process engine (one event loop, one HTTP client, per-host slots).

Invariants:
- ``main(bundle)`` never raises for a download problem: every failure ends as a failed bundle
  with an error kind and message (DESIGN rule 4); only cancellation propagates;
- a bundle waiting for a retry, a per-host gap or a host pause holds no slot (see ``hosts``);
- bundles of the same URL that target the same file while one is in flight share its download,
  so duplicate URLs are fetched once; no two downloads ever write one file at once in a worker
  (a different URL given the same path waits, then makes its own);
- its base classes hold the rest: ``Attempts`` (one attempt, its redirects, whether it is the
  last, and aiodownload's ``request_and_download``), ``LoopBinding`` (what it made in one
  event loop, and closing it), ``Politeness`` (host slots, robots.txt rules) and ``Exchange``
  (the requests).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncGenerator, Generator
from typing import TYPE_CHECKING, Any

from ..bundle import (
    CACHED,
    PENDING,
    SAID_CACHED,
    SAID_GAVE_UP,
    SAID_WRITTEN,
    SKIPPED,
    WRITTEN,
    Bundle,
    apply_result,
    said_by_override,
    to_result,
)
from ..errors import DownloadFailed, ErrorKind
from ..strategy import DownloadStrategy, Outcome, RequestStrategy
from ..urls import UrlParts, split_url, userinfo
from . import partial
from .aiohttp_session import listening
from .attempts import Attempts, skip
from .failures import override_failure
from .hosts import HostSlot
from .own_writes import measure_own_write
from .tree import find_complete

if TYPE_CHECKING:
    # Imported where a session is made: a worker on the lean client never pays aiohttp's
    # import (~0.2 s per spawned process).
    import aiohttp


class AioDownload(Attempts):
    """Downloads bundles with the given strategies; the same engine runs in every worker."""

    def __init__(
        self,
        client: aiohttp.ClientSession | None = None,
        download_strategy: DownloadStrategy | None = None,
        request_strategy: RequestStrategy | None = None,
    ) -> None:
        self._client = client
        self.download_strategy = download_strategy or DownloadStrategy()
        self.request_strategy = request_strategy or RequestStrategy()
        # Per-host (concurrency, delay, ways) overrides: a hot host split over k ways (its
        # workers) gets 1/k of the concurrency, and waits k times its Crawl-delay.
        self.host_budgets: dict[str, tuple[int, float, int]] = {}
        self._runs = 0  # runs (swarm/each calls) using this engine now, all in self._loop
        self._calls = 0  # main()/request_and_download() calls under way, run or direct
        # (loop, generator): closes what this engine opened in that loop when the loop ends.
        self._closer: tuple[asyncio.AbstractEventLoop, AsyncGenerator[None, None]] | None = None
        self._opened: list[Any] = []  # the clients it will close
        self._own_loop: asyncio.AbstractEventLoop | None = None  # see ``loop``
        self._reset()

    @property
    def client(self) -> aiohttp.ClientSession | None:
        """The caller's session (``client=``). Without one, inside a running event loop,
        shardload's own aiohttp session in that loop (closed with the engine, or when the loop
        ends): aiodownload's overrides of ``main``/``request_and_download`` call
        ``self.client.get(...)``, where aiodownload always had a session, also when the caller
        awaits them directly. None outside a loop, or in a loop other than the one a run
        holds this engine in."""
        if self._client is not None:
            return self._client
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        if self._loop is not loop:
            # Another loop still running may be using this engine (a copied main holds no
            # count): rebinding would close its session under it.
            if self._busy_elsewhere(loop, or_running=True):
                return None
            self._bind(loop)
        return self._get_session()

    @client.setter
    def client(self, session: aiohttp.ClientSession | None) -> None:
        self._client = session
        self._reset()

    @property
    def has_client(self) -> bool:
        """Whether the caller gave a session of its own (it cannot leave its event loop)."""
        return self._client is not None

    # aiodownload's private names, read by some of its users' subclasses.
    @property
    def _download_strategy(self) -> DownloadStrategy:
        return self.download_strategy

    @property
    def _request_strategy(self) -> RequestStrategy:
        return self.request_strategy

    @property
    def _main_semaphore(self) -> asyncio.BoundedSemaphore:
        """aiodownload's bound on concurrent ``main()`` calls, for a ``main`` copied from it;
        shardload's own bounds are its host and worker slots. One a subclass sets is kept."""
        own = self.__dict__.get("_own_main_sem")
        if own is not None:
            return own  # type: ignore[no-any-return]
        if self._main_sem is None:
            self._main_sem = MainSemaphore(self.request_strategy.concurrent)
        return self._main_sem

    @_main_semaphore.setter
    def _main_semaphore(self, semaphore: asyncio.BoundedSemaphore) -> None:
        self.__dict__["_own_main_sem"] = semaphore

    async def main(self, bundle: Bundle) -> Bundle:
        """Download one bundle to its file, retrying as the request strategy says. A bundle
        downloaded before (by this or another engine) starts afresh, its path computed again
        unless its owner set one."""
        started = time.monotonic()
        bundle._begin()
        # Bound first: counted before, this call made the loop it leaves look busy to itself.
        bound = self._in_this_loop(bundle)
        self._calls += bound
        try:
            if bound:
                await self._caught_main(bundle)
        finally:
            self._calls -= bound
            bundle._run_path = bundle.file_path  # this call's answer, not the bundle's own
        bundle.elapsed = time.monotonic() - started
        return bundle

    async def run_job(self, bundle: Bundle) -> None:
        """``main`` for a job of a run, then ``settle`` for a bundle a subclass's ``main`` left
        pending. Around an overridden ``main`` (aiodownload's, copied, calls its own
        ``request_and_download``, whose requests go through ``self.client``): what those
        requests were answered gives the bundle its status, as aiodownload's code sets none,
        and a network error it lets out (aiodownload's ``main`` caught only ValueError) fails
        the bundle as that error's kind, a transient failure, not as a bug of the strategy."""
        if type(self).main is AioDownload.main:
            await self.main(bundle)
        else:
            with listening(bundle):
                try:
                    await self.main(bundle)
                except Exception as exc:
                    bundle.fail(*override_failure(exc, bundle.url))
        if bundle.state == PENDING:
            await self.settle(bundle)

    async def settle(self, bundle: Bundle) -> None:
        """After ``main``, for a bundle a subclass's ``main`` left pending: it gets the outcome
        it said in aiodownload's words (its ``main`` said "Cache hit" itself, and relied on
        ``request_and_download`` for the rest), or fails; none leaves a run unfinished."""
        said = said_by_override(bundle)
        home = self.download_strategy.home
        found = find_complete(bundle.file_path, home) if bundle.file_path else None
        if said in (SAID_WRITTEN, SAID_CACHED) and found is not None:
            bundle.file_path = found[0]
            if said == SAID_CACHED:
                bundle.state, bundle.bytes = CACHED, found[1]
            else:
                bundle.state = WRITTEN
                await measure_own_write(bundle, self.download_strategy.sha256)
        elif said == SAID_GAVE_UP:
            answer = f"HTTP {bundle.status}: " if bundle.status is not None else ""
            bundle.fail(
                bundle.error_kind or ErrorKind.HTTP, f"{answer}main() said: Download failed"
            )
        else:
            word = f" (it said {said!r})" if said else ""
            bundle.fail(ErrorKind.STRATEGY, f"main() returned the bundle unfinished{word}")

    async def _caught_main(self, bundle: Bundle) -> None:
        try:
            await self._main(bundle)
        except asyncio.CancelledError:
            if being_cancelled():
                raise
            # Nobody cancelled this download: a strategy raised it (or leaked it from work of
            # its own). Passed on, it would end the job's task with no result for ever.
            bundle.fail(ErrorKind.STRATEGY, STRAY_CANCEL)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # a bug in a user's strategy must not lose the bundle
            # GeneratorExit too: asyncio ends the task with any BaseException but these two.
            bundle.fail(ErrorKind.STRATEGY, f"{type(exc).__name__}: {exc}")

    async def _main(self, bundle: Bundle) -> None:
        try:
            parts = split_url(bundle.url, bundle.params)
        except DownloadFailed as exc:
            # Input refused before any download, as the coordinator refuses it in a run: no
            # on_fail (its docstring), whichever way the bundle came.
            bundle.fail(exc.kind, exc.message)
            return
        try:
            bundle.file_path = self._target(bundle)
        except DownloadFailed as exc:
            bundle.fail(exc.kind, exc.message)
            await self._on_fail(bundle)
            return
        path = bundle.file_path
        # UrlParts leave the credentials out; a request with them is another request.
        request = (parts, userinfo(bundle.url))
        while (twin := self._inflight.get(path)) is not None:
            fetching, download = twin
            try:
                shared = await asyncio.shield(download)
            except asyncio.CancelledError:
                if not download.cancelled() or being_cancelled():
                    raise  # this bundle itself was cancelled
                continue  # only the download it waited for was: make it (or wait) again
            if fetching != request:
                # Another request given the same file: its result is not ours.
                # Wait for it, then download our own; the file holds whichever came last.
                continue
            apply_result(bundle, to_result(shared))
            return
        done: asyncio.Future[Bundle] = asyncio.get_running_loop().create_future()
        inflight = self._inflight[path] = (request, done)
        try:
            await self._fetch(bundle, parts)
        except asyncio.CancelledError:
            done.cancel()
            raise
        finally:
            # Only our own entry: close() may have started afresh while a cancellation (a
            # worker ending) was on its way here, and a KeyError would turn the cancelled
            # download into a failure reported as final.
            if self._inflight.get(path) is inflight:
                del self._inflight[path]
            if not done.done():
                done.set_result(bundle)

    async def _fetch(self, bundle: Bundle, parts: UrlParts) -> None:
        ds, rs = self.download_strategy, self.request_strategy
        path = bundle.file_path
        if path is not None and ds.skip_cached:
            found = find_complete(path, ds.home)
            if found is not None:
                bundle.file_path, bundle.bytes = found
                bundle.state = CACHED
                return
        slot = self._take_slot(parts.host_key)
        try:
            if rs.robots:
                rules = await self._robots_rules(parts, slot)
                if not rules.allows(bundle.url):
                    if rules.unreachable is None:
                        skip(bundle, rules.refusal)  # the site said no: done, on purpose
                    else:  # nobody said no: not done, and a later run may get through
                        bundle.fail(ErrorKind.ROBOTS, rules.refusal)
                        await self._on_fail(bundle)
                    return
            with partial.holding(self._continues_cut_bodies()):
                await self._try(bundle, parts, slot)
        finally:
            self._give_back_slot(parts.host_key, slot)

    async def _try(self, bundle: Bundle, parts: UrlParts, slot: HostSlot) -> None:
        """The attempts of a download, each after ``get_sleep_time``, until one is written or
        the last has failed."""
        rs = self.request_strategy
        last: Outcome | None = None  # the previous attempt's failure
        while True:
            wait = rs.get_sleep_time(bundle)
            if wait is not None and not math.isfinite(wait):
                # An endless wait would hang the run at its tail; a Retry-After is capped.
                message = f"get_sleep_time() returned {wait!r}, not a finite number of seconds"
                bundle.fail(ErrorKind.STRATEGY, message)
                return
            if wait and wait > 0:
                await asyncio.sleep(wait)
            if type(self).request_and_download is AioDownload.request_and_download:
                outcome = await self._attempt(bundle, parts, slot)
            else:
                outcome = await self._overridden_attempt(bundle, slot)
            if outcome is None:
                bundle.state = WRITTEN
                bundle.error_kind = bundle.error_message = None
                return
            if bundle.state == SKIPPED:  # a redirect into a path robots.txt disallows
                return
            if outcome.error_kind == ErrorKind.BREAKER_OPEN:  # failed fast, nothing sent
                message = outcome.message
                if last is not None:  # what this URL's own attempts met before
                    message += f"; last attempt: {last.error_kind}: {last.message}"
                bundle.fail(outcome.error_kind, message)
                await self._on_fail(bundle)
                return
            last = outcome
            # Only whether to retry is decided here: the wait comes from get_sleep_time()
            # at the top of the loop, and a Retry-After pauses the whole host (record()).
            said = said_by_override(bundle)
            final = self._final_failure(bundle, outcome, said)
            if final is not None:
                bundle.fail(outcome.error_kind, final)
                if said != SAID_GAVE_UP:  # one that gave up called on_fail itself
                    await self._on_fail(bundle)
                return


class MainSemaphore(asyncio.BoundedSemaphore):
    """Also held as aiodownload's ``main`` held it: ``with (await semaphore):`` (Python 3.9
    took that form from asyncio's locks; ``async with`` works as ever)."""

    def __await__(self) -> Generator[Any, None, contextlib.AbstractContextManager[None]]:
        yield from self.acquire().__await__()
        return _Releasing(self)


class _Releasing(contextlib.AbstractContextManager[None]):
    def __init__(self, semaphore: asyncio.BoundedSemaphore) -> None:
        self._semaphore = semaphore

    def __exit__(self, *exc_info: object) -> None:
        self._semaphore.release()


STRAY_CANCEL = "CancelledError raised by a strategy or hook, not a cancellation of the download"


def being_cancelled() -> bool:
    """Whether the running task is being cancelled (by its owner, not by a stray raise)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
