"""One attempt at a download (the request, each redirect hop, the body) and whether it is the
last; also aiodownload's ``request_and_download``, which a subclass may override.

Invariants:
- every request is made under the slot of the host it goes to: a redirect hop leaves the slot
  it came from and waits for its target host's turn, breaker and robots.txt;
- an attempt ends as None (written) or an ``Outcome`` (what went wrong); whether it is tried
  again is decided in one place, ``_final_failure``, from the request strategy's ``retry()``
  and ``max_attempts`` (the wait comes from ``get_sleep_time`` before the next one);
- what a failed attempt through an override wrote is removed: a cut body is no copy.
"""

from __future__ import annotations

import asyncio
import time
from contextvars import ContextVar

from ..backoff import decide, parse_retry_after
from ..bundle import (
    PENDING,
    SAID_GAVE_UP,
    SAID_TRY_AGAIN,
    SAID_WRITTEN,
    SKIPPED,
    WRITTEN,
    Bundle,
    said_by_override,
)
from ..errors import NEVER_RETRY_KINDS, DownloadFailed, ErrorKind
from ..paths import is_text_path
from ..strategy import Outcome
from ..urls import UrlParts, redact, redirect_target, split_url, userinfo, with_userinfo
from .aiohttp_session import listening
from .binding import LoopBinding
from .exchange import Redirect, over_time
from .failures import override_failure
from .hosts import HostSlot
from .own_writes import measure_own_write, note_before, remove_written, stop_noting
from .tree import download_target


class Attempts(LoopBinding):
    """The engine's attempts; ``AioDownload`` adds the download around them (in-flight
    sharing, the cache, robots.txt for the URL asked, the retry loop)."""

    def _target(self, bundle: Bundle) -> str:
        ds = self.download_strategy
        if bundle.file_path:
            return download_target(ds.home, bundle.file_path)
        try:
            path = ds.get_file_path(bundle)
        except DownloadFailed:
            raise
        except Exception as exc:
            raise DownloadFailed(
                ErrorKind.STRATEGY, f"get_file_path failed: {type(exc).__name__}: {exc}"
            ) from exc
        if not is_text_path(path):
            message = f"get_file_path returned {type(path).__name__}, not a path (a str)"
            raise DownloadFailed(ErrorKind.STRATEGY, message)
        return download_target(ds.home, path)

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
        ds = self.download_strategy
        found = note_before(bundle)  # aiodownload's override calls on_success, which may write
        raised: tuple[ErrorKind, str] | None = None
        try:
            with listening(bundle) as answers:  # its own requests, on self.client
                before = bundle.attempts
                bundle.__dict__.pop("_status_msg", None)  # said by this attempt, or not at all
                bundle.status = None  # answered to this attempt, or not at all
                try:
                    await self.request_and_download(bundle)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    raised = override_failure(exc, bundle.url)
                if bundle.attempts == before:  # an override that made its own request
                    bundle.attempts += 1
        except BaseException:
            remove_written(bundle, found, ds.home)
            raise
        finally:
            _told.reset(token)
            stop_noting(found)
            slot.leave(worker)
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
                    bundle.status = None  # an earlier attempt's answer is not this one's
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
                        here.record(bundle.status, None, None, url, bundle._latency)
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
                if same_origin and not userinfo(url):
                    # The credentials of the URL asked go on to its own origin, as curl -L
                    # sends them: Apache answers a protected /dir with an absolute /dir/.
                    url = with_userinfo(url, userinfo(bundle.url))
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
                                skip(bundle, why)
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


# The outcomes the base ``request_and_download`` reports to an ``_overridden_attempt`` that
# called it through a subclass's override: only the bundle's state comes back otherwise.
_told: ContextVar[list[Outcome] | None] = ContextVar("shardload_told", default=None)


def _failure(bundle: Bundle, kind: ErrorKind, message: str) -> Outcome:
    return Outcome(error_kind=kind, message=message, status=bundle.status, attempt=bundle.attempts)


def skip(bundle: Bundle, message: str) -> None:
    bundle.state = SKIPPED
    bundle.error_kind = ErrorKind.ROBOTS
    bundle.error_message = message
