"""AioDownload: the per-process engine (one event loop, one HTTP client, per-host slots).

Invariants:
- ``main(bundle)`` never raises for a download problem: every failure ends as a failed bundle
  with an error kind and message (DESIGN rule 4); only cancellation propagates;
- a bundle waiting for a retry, a per-host gap or a host pause holds no slot (see ``hosts``);
- every request is made under the slot of the host it goes to: a redirect hop leaves the slot
  it came from and waits for its target host's turn, breaker and robots.txt;
- bundles of the same URL that target the same file while one is in flight share its download,
  so duplicate URLs are fetched once; no two downloads ever write one file at once in a worker
  (a different URL given the same path waits, then makes its own);
- its base classes hold the rest: ``LoopBinding`` (what it made in one event loop, and
  closing it), ``Politeness`` (host slots, robots.txt rules) and ``Exchange`` (the requests).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncGenerator, Generator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from ..backoff import decide, parse_retry_after
from ..bundle import (
    CACHED,
    PENDING,
    SAID_CACHED,
    SAID_GAVE_UP,
    SAID_TRY_AGAIN,
    SAID_WRITTEN,
    SKIPPED,
    WRITTEN,
    Bundle,
    apply_result,
    said_by_override,
    to_result,
)
from ..errors import NEVER_RETRY_KINDS, DownloadFailed, ErrorKind
from ..strategy import DownloadStrategy, Outcome, RequestStrategy
from ..urls import UrlParts, redact, redirect_target, split_url, userinfo
from .aiohttp_session import heard
from .binding import LoopBinding
from .exchange import Redirect, over_time
from .failures import classify, network_error
from .tree import check_target, find_complete
from .hosts import HostSlot
from .own_writes import measure_own_write, note_before, remove_written

if TYPE_CHECKING:
    # Imported where a session is made: a worker on the lean client never pays aiohttp's
    # import (~0.2 s per spawned process).
    import aiohttp


class AioDownload(LoopBinding):
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
            bundle.fail(bundle.error_kind or ErrorKind.HTTP, "main() said: Download failed")
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
                        _skip(bundle, rules.refusal)  # the site said no: done, on purpose
                    else:  # nobody said no: not done, and a later run may get through
                        bundle.fail(ErrorKind.ROBOTS, rules.refusal)
                        await self._on_fail(bundle)
                    return
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
        finally:
            self._give_back_slot(parts.host_key, slot)

    def _final_failure(self, bundle: Bundle, outcome: Outcome, said: str | None) -> str | None:
        """None when the failed attempt is to be tried again, else the final failure's message.

        ``said`` is an aiodownload override's word on the attempt: "Download attempted" asks
        for a retry (within ``max_attempts``), "Download failed" was its own decision to give
        up, reported as it stands."""
        if said == SAID_GAVE_UP:
            return outcome.message
        rs = self.request_strategy
        wants_retry, retry_error = self._wants_retry(outcome)
        decision = decide(
            attempts=bundle.attempts,
            max_attempts=rs.max_attempts,
            wants_retry=wants_retry or said == SAID_TRY_AGAIN,
            never_retry=outcome.error_kind in NEVER_RETRY_KINDS,
            strategy_delay=0.0,
            retry_after=None,
            retry_after_cap=rs.retry_after_cap,
        )
        if decision.retry:
            return None
        message = outcome.message + retry_error
        if bundle.attempts > 1:
            message += f"; {decision.reason}"  # e.g. attempts exhausted (5 of 5)
        return message

    async def _on_fail(self, bundle: Bundle) -> None:
        """The strategy's ``on_fail``, once the bundle has finally failed. One that raises
        keeps the failure it was told of (its kind decides what a resume retries), with a
        note in the message, so neither the cause nor the strategy's bug is hidden."""
        try:
            await self.download_strategy.on_fail(bundle)
        except Exception as exc:
            note = f"on_fail() raised {type(exc).__name__}: {exc}"
            bundle.error_message = f"{bundle.error_message}; {note}"

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

    async def request_and_download(self, bundle: Bundle) -> Bundle:
        """One attempt: request, check, write. As in aiodownload, where ``main`` called it once
        per attempt while the bundle said "Download attempted": a failure the request strategy
        would retry (``retry()``, within ``max_attempts``) leaves the bundle pending, with
        that failure's kind and message; a final one fails it and calls ``on_fail``."""
        if not self._in_this_loop(bundle):  # called directly, as aiodownload allowed
            return bundle
        self._calls += 1
        try:
            return await self._request_and_download(bundle)
        finally:
            self._calls -= 1

    async def _request_and_download(self, bundle: Bundle) -> Bundle:
        try:
            if bundle.file_path is None:
                bundle.file_path = self._target(bundle)
            parts = split_url(bundle.url, bundle.params)
        except DownloadFailed as exc:
            return bundle.fail(exc.kind, exc.message)
        outcome = await self._attempt(bundle, parts)
        if outcome is None:
            bundle.state = WRITTEN
            bundle.error_kind = bundle.error_message = None  # an earlier attempt's
            return bundle
        told = _told.get()
        if told is not None:  # through an override, in shardload's main: it decides
            told.append(outcome)
            return bundle.fail(outcome.error_kind, outcome.message)
        # Called by aiodownload code (a copied main loops on "Download attempted").
        message = self._final_failure(bundle, outcome, None)
        if message is None:
            bundle.state = PENDING
            bundle.error_kind, bundle.error_message = outcome.error_kind, outcome.message
        else:
            bundle.fail(outcome.error_kind, message)
            await self._on_fail(bundle)
        return bundle

    async def _overridden_attempt(self, bundle: Bundle, slot: HostSlot) -> Outcome | None:
        """One attempt through a subclass's ``request_and_download`` (aiodownload's main
        called it for every attempt), under the host's slot; its final state is the outcome."""
        worker = self._worker_slots()
        refused = await slot.enter(worker)
        if refused is not None:
            return Outcome(ErrorKind.BREAKER_OPEN, refused, attempt=bundle.attempts)
        told: list[Outcome] = []
        token = _told.set(told)
        answers: list[tuple[int, dict[str, str], str | None]] = []  # its own, on self.client
        listening = heard.set(answers)
        ds = self.download_strategy
        found = note_before(bundle)  # aiodownload's override calls on_success, which may write
        raised: tuple[ErrorKind, str] | None = None
        try:
            before = bundle.attempts
            bundle.__dict__.pop("_status_msg", None)  # said by this attempt, or not at all
            bundle.status = None  # answered to this attempt, or not at all
            try:
                await self.request_and_download(bundle)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # aiodownload's own request_and_download lets a refused connection or a
                # timeout out: it is this attempt's failure, of its kind (retried as such).
                # Anything else is a bug of the override's.
                if network_error(exc):
                    raised = classify(exc, bundle.url)
                else:
                    raised = (ErrorKind.STRATEGY, f"{type(exc).__name__}: {exc}")
            if bundle.attempts == before:  # an override that made its own request
                bundle.attempts += 1
        except BaseException:
            remove_written(bundle, found, ds.home)
            raise
        finally:
            _told.reset(token)
            heard.reset(listening)
            slot.leave(worker)
        if bundle.status is None and answers:  # aiodownload's overrides set no status
            bundle.status = answers[-1][0]
        said = said_by_override(bundle)  # nor a state
        if raised is not None:
            bundle.state = PENDING
            bundle.error_kind, bundle.error_message = raised
        elif bundle.state == WRITTEN or said == SAID_WRITTEN:
            bundle.state = WRITTEN
            await measure_own_write(bundle, ds.sha256)
            slot.record(bundle.status, None, None, bundle.url)
            return None
        remove_written(bundle, found, ds.home)  # what a failed attempt wrote is no copy
        answer = f"HTTP {bundle.status}: " if bundle.status is not None else ""
        if said in (SAID_TRY_AGAIN, SAID_GAVE_UP):  # an aiodownload override rejected a response
            kind = bundle.error_kind or ErrorKind.HTTP
            message = bundle.error_message or f"{answer}request_and_download() said: {said}"
        else:
            kind = bundle.error_kind or ErrorKind.STRATEGY
            message = bundle.error_message or "request_and_download() did not write the file"
        # What the base request_and_download saw (a Retry-After, the headers), if it ran; else
        # what the override's own requests were answered.
        if told:
            headers, retry_after = told[-1].headers, told[-1].retry_after
        elif answers:
            _, headers, asked = answers[-1]
            retry_after = parse_retry_after(asked, time.time())
        else:
            headers, retry_after = {}, None
        if slot.record(bundle.status, kind, retry_after, bundle.url):
            bundle._opened_breaker = True
        return Outcome(
            kind,
            message,
            status=bundle.status,
            headers=headers,
            retry_after=retry_after,
            attempt=bundle.attempts,
        )

    async def _attempt(
        self, bundle: Bundle, parts: UrlParts, slot: HostSlot | None = None
    ) -> Outcome | None:
        """One attempt: the request, each redirect hop, then the body; None on success, else
        what went wrong. With a ``slot`` (a download under politeness) each hop waits for its
        own host's turn, is checked against that host's breaker and robots.txt, and teaches
        that host what it answered; ``request_and_download`` passes none. ``max_time`` bounds
        the attempt's time on the network, not its waits for a turn."""
        rs = self.request_strategy
        origin = parts
        url, here, here_key = bundle.url, slot, parts.host_key
        taken = False  # whether ``here`` is a hop's slot that this attempt took
        same_origin = True
        time_left = rs.max_time or None
        started = 0.0
        worker = self._worker_slots()
        try:
            for hop in range(max(0, rs.max_redirects) + 1):
                if here is not None and (refused := await here.enter(worker)) is not None:
                    return Outcome(ErrorKind.BREAKER_OPEN, refused, attempt=bundle.attempts)
                if hop == 0:
                    bundle.attempts += 1
                if time_left is not None:
                    started = time.monotonic()
                went = here.went if here is not None and here.spaced() else None
                try:
                    step = await self._exchange(bundle, url, parts, same_origin, time_left, went)
                finally:
                    if here is not None:
                        here.leave(worker)
                if here is not None:
                    if isinstance(step, Redirect):
                        here.record(bundle.status, None, step.retry_after, url)
                    elif step is None:
                        here.record(bundle.status, None, None, url)
                    elif (
                        here.record(step.status, step.error_kind, step.retry_after, url)
                        and here is slot
                    ):
                        # Only the breaker of the host the URL names: the stats count it there.
                        bundle._opened_breaker = True
                if not isinstance(step, Redirect):
                    return step
                if hop >= rs.max_redirects:
                    break
                if time_left is not None:
                    time_left -= time.monotonic() - started
                    if time_left <= 0:
                        return _failure(bundle, ErrorKind.TIMEOUT, over_time(rs))
                came_from = parts.host_key
                try:
                    url, parts = redirect_target(url, step.location)
                except DownloadFailed as exc:
                    return _failure(bundle, exc.kind, exc.message)
                if step.retry_after and parts.host_key != came_from:
                    # The redirected request waits as asked (RFC 9110 10.2.3); on the same
                    # host, that host's pause holds it.
                    await asyncio.sleep(min(step.retry_after, rs.retry_after_cap))
                same_origin = (parts.scheme, parts.authority) == (origin.scheme, origin.authority)
                if here is not None:
                    if taken:
                        self._give_back_slot(here_key, here)
                    here_key = parts.host_key
                    here, taken = self._take_slot(here_key), True
                    if rs.robots:
                        rules = await self._robots_rules(parts, here, same_origin)
                        if not rules.allows(url):
                            # As for the URL asked: a disallowed target is skipped; one whose
                            # robots.txt could not be read fails.
                            why = f"redirect to {redact(url)}: {rules.refusal}"
                            if rules.unreachable is None:
                                _skip(bundle, why)
                            return _failure(bundle, ErrorKind.ROBOTS, why)
        finally:
            if here is not None and taken:
                self._give_back_slot(here_key, here)
        if rs.max_redirects <= 0:
            return _failure(bundle, ErrorKind.REDIRECT, "redirect not followed (max_redirects=0)")
        return _failure(
            bundle,
            ErrorKind.REDIRECT,
            f"too many redirects (max_redirects={rs.max_redirects}), last to {redact(url)}",
        )


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


# The outcomes the base ``request_and_download`` reports to an ``_overridden_attempt`` that
# called it through a subclass's override: only the bundle's state comes back otherwise.
_told: ContextVar[list[Outcome] | None] = ContextVar("shardload_told", default=None)


def _failure(bundle: Bundle, kind: ErrorKind, message: str) -> Outcome:
    return Outcome(error_kind=kind, message=message, status=bundle.status, attempt=bundle.attempts)


def _skip(bundle: Bundle, message: str) -> None:
    bundle.state = SKIPPED
    bundle.error_kind = ErrorKind.ROBOTS
    bundle.error_message = message


STRAY_CANCEL = "CancelledError raised by a strategy or hook, not a cancellation of the download"


def being_cancelled() -> bool:
    """Whether the running task is being cancelled (by its owner, not by a stray raise)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
