"""One HTTP exchange: the engine's clients, one request, its response checked and written.

``Exchange`` is the base class of ``AioDownload``: the request side, apart from the engine's
politeness, retries and bookkeeping.

Invariants:
- the HTTP client (the lean one, or an aiohttp session when a request is not shardload's own:
  see ``_owns_requests``) is created lazily inside the running loop; a session passed as
  ``client`` belongs to the caller and is never closed by shardload;
- one exchange is one request: a redirect comes back as a ``Redirect`` for the engine to
  follow hop by hop, under each hop's host slot (a caller's session follows them itself);
- a caller's origin-only headers (Authorization, Cookie, Host) and URL credentials go to the
  origin asked for only; an Authorization header wins over credentials in the URL;
- ``went``, when given, is called as the request is written, after any wait for a new
  connection (on shardload's own clients; a caller's session cannot tell): the host slot
  counts its gap from then;
- every failure comes back as an ``Outcome`` with its error kind (``failures.classify``);
  only cancellation propagates.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from multidict import CIMultiDictProxy

from ..backoff import parse_retry_after
from ..bundle import Bundle
from ..errors import DownloadFailed, ErrorKind
from ..ranges import conflicting
from ..strategy import DEFAULT_USER_AGENT, DownloadStrategy, Outcome, RequestStrategy
from ..urls import UrlParts, basic_authorization
from . import partial
from .aiohttp_session import (
    STALE_TRIES,
    HeadersWithin,
    Hooks,
    PastStaleConnections,
    Went,
    drop_if_body_pending,
    encoded_url,
    make_session,
    plain_headers,
)
from .descriptors import open_file_limit
from .failures import classify
from .files import READ_SIZE, SpeedGuard, speed_guard
from .http import ORIGIN_ONLY, REDIRECT_STATUSES, LeanClient, no_status
from .own_writes import measure_own_write, run_on_success

if TYPE_CHECKING:
    # Imported where a session is made: a worker on the lean client never pays aiohttp's
    # import (~0.2 s per spawned process).
    import aiohttp


class Exchange:
    """Makes the requests of ``AioDownload``; see the module's invariants."""

    _client: aiohttp.ClientSession | None  # the caller's own session, if given
    download_strategy: DownloadStrategy
    request_strategy: RequestStrategy
    _session: aiohttp.ClientSession | None
    _lean: LeanClient | None
    _opened: list[Any]  # the clients made here, for the engine to close at its loop's end

    def _get_session(self) -> aiohttp.ClientSession:
        if self._client is not None and self._client.closed:
            # Replaced by a session of our own, the requests would lose what the caller's
            # carried (its headers, cookies, auth) without a word.
            raise DownloadFailed(ErrorKind.STRATEGY, "the session passed as client= is closed")
        if self._session is None or self._session.closed:
            rs = self.request_strategy
            self._session = make_session(
                self._worker_limit(), rs.dns_ttl, READ_SIZE, self._timeout(rs.max_time)
            )
            self._opened.append(self._session)
        return self._session

    def _owns_requests(self) -> bool:
        """Whether every step of a request is shardload's own, so the lean client may make it.

        A caller's session, or an overridden ``on_success``/``assert_response`` (written against
        aiohttp's response), keeps the request on aiohttp.
        """
        return (
            self._client is None
            and not _overridden_on_success(self.download_strategy)
            and type(self.request_strategy).assert_response is RequestStrategy.assert_response
        )

    def _continues_cut_bodies(self) -> bool:
        """Whether a body cut mid-way is kept for the next attempt to continue (``ranges``):
        only where shardload writes the body itself (an override of ``on_success`` would
        read a range as the whole body), and the caller's headers ask for no range."""
        rs = self.request_strategy
        return (
            bool(getattr(rs, "continue_partial", True))
            and not _overridden_on_success(self.download_strategy)
            and not conflicting(getattr(rs, "headers", {}) or {})
        )

    def _get_lean(self) -> LeanClient:
        if self._lean is None:
            rs = self.request_strategy
            self._lean = LeanClient(
                limit=_pool_limit(self._worker_limit()),
                headers=request_headers(rs),
                connect_timeout=_connect_timeout(rs),
                read_timeout=rs.timeout,
                dns_ttl=rs.dns_ttl,
            )
            self._opened.append(self._lean)
        return self._lean

    def _request(
        self,
        url: str,
        parts: UrlParts,
        same_origin: bool = True,
        max_time: float | None = None,
        went: Went | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> Any:
        """``async with`` this for the response of one GET of ``parts`` (a bundle's params
        included; ``url`` as given, for its credentials and messages), with the ``extra``
        headers of this request. Redirects come back as responses (the engine follows them
        hop by hop), except on a caller's own session."""
        if self._owns_requests():
            return self._get_lean().get(parts, url, same_origin, went, extra)
        rs = self.request_strategy
        hooks = Hooks(went)
        request = PastStaleConnections(
            lambda: self._aiohttp_request(url, parts, same_origin, max_time, hooks, extra),
            hooks,
            self._worker_limit() + STALE_TRIES,
        )
        timeout = time_limit(rs.timeout)
        if timeout is None:
            return request
        return HeadersWithin(request, hooks, timeout, _connect_timeout(rs) or 0.0)

    def _aiohttp_request(
        self,
        url: str,
        parts: UrlParts,
        same_origin: bool,
        max_time: float | None,
        hooks: Hooks,
        extra: Mapping[str, str] | None = None,
    ) -> Any:
        """The GET on aiohttp, of the URL as the lean client would send it (``parts`` hold
        the params)."""
        rs = self.request_strategy
        session = self._get_session()
        # Credentials in the URL go as a header (aiohttp would encode them as Latin-1); an
        # Authorization header of the caller's wins over them, as on the lean client.
        auth = basic_authorization(url)
        if session is self._client:
            # A caller's session follows redirects itself: its own default headers (say an
            # Authorization) could not be kept from another origin otherwise. aiohttp fails on
            # the max_redirects-th redirect; shardload follows that many (as curl). It drops
            # an Authorization on a redirect to another origin.
            headers = self._session_headers(session)
            if (
                auth is not None
                and session.auth is None  # the session's own auth wins, as its header would
                and not _has_authorization(headers, session.headers)
            ):
                headers["Authorization"] = auth
            headers.update(extra or {})
            return session.get(
                encoded_url(parts),
                allow_redirects=rs.max_redirects > 0,
                max_redirects=rs.max_redirects + 1,
                headers=headers,
                timeout=self._timeout(max_time),  # over the session's own timeout too
            )
        headers = self._headers(same_origin)
        if auth is not None and not _has_authorization(headers):
            headers = {**headers, "Authorization": auth}
        if extra:
            headers = {**headers, **extra}
        return session.get(
            encoded_url(parts),
            allow_redirects=False,
            headers=headers,
            timeout=self._timeout(max_time),
            trace_request_ctx=hooks,
        )

    def _headers(self, same_origin: bool) -> dict[str, str]:
        """The request headers of shardload's own aiohttp session. A caller's Authorization,
        Cookie and Host are for the origin asked for, not for a redirect elsewhere (as curl)."""
        headers = request_headers(self.request_strategy)
        if same_origin:
            return headers
        return {k: v for k, v in headers.items() if k.lower() not in ORIGIN_ONLY}

    def _session_headers(self, session: aiohttp.ClientSession) -> dict[str, str]:
        """The strategy's headers on a caller's session, which follows redirects itself:
        aiohttp keeps an Authorization from other origins, but would carry a Cookie or a Host
        there (its cookie jar is the place for cookies). The session's own User-Agent stays
        unless the strategy names one."""
        rs = self.request_strategy
        headers = {k: v for k, v in request_headers(rs).items() if k.lower() not in _NOT_ON_HOPS}
        if (
            rs.user_agent == DEFAULT_USER_AGENT
            and "User-Agent" in session.headers
            and not any(k.lower() == "user-agent" for k in rs.headers)
        ):
            headers.pop("User-Agent", None)
        return headers

    def _timeout(self, max_time: float | None) -> aiohttp.ClientTimeout:
        import aiohttp  # noqa: PLC0415  (see the import at the top)

        rs = self.request_strategy
        return aiohttp.ClientTimeout(
            total=time_limit(max_time),
            sock_connect=_connect_timeout(rs),
            connect=None,
            sock_read=time_limit(rs.timeout),
        )

    def _worker_limit(self) -> int:
        return min(self.request_strategy.worker_concurrent, _descriptor_budget())

    async def _exchange(
        self,
        bundle: Bundle,
        url: str,
        parts: UrlParts,
        same_origin: bool,
        max_time: float | None,
        went: Went | None = None,
    ) -> Outcome | Redirect | None:
        """One request: a redirect to follow, or the response checked and its body written
        (None), or what went wrong."""
        rs = self.request_strategy
        status: int | None = None
        headers: Mapping[str, str] = {}
        lean = self._owns_requests()
        extra = partial.range_headers()  # the rest of a body cut in the last attempt
        # aiohttp applies max_time itself (ClientTimeout.total); the lean client does not.
        limit = asyncio.timeout(max_time) if max_time and lean else None
        bundle._latency = None  # an earlier hop's or attempt's answer is not this one's
        started = time.monotonic()
        try:
            async with (
                limit or _NO_LIMIT,
                self._request(url, parts, same_origin, max_time, went, extra) as response,
            ):
                bundle._latency = time.monotonic() - started
                status = bundle.status = response.status
                headers = response.headers
                if not lean:
                    if status < 100:  # the lean client fails these itself, and a 101
                        why = f"malformed HTTP response: {no_status(status)}"
                        raise DownloadFailed(ErrorKind.PROTOCOL, why)
                    if status < 200:
                        raise DownloadFailed(ErrorKind.PROTOCOL, "the server switched protocols")
                    drop_if_body_pending(response)
                location = headers.get("Location")
                # A 300 names its preferred choice in Location, if it has one (RFC 9110
                # 15.4.1): followed, as curl -L and wget do; without one, its page is stored.
                if status in REDIRECT_STATUSES or (status == 300 and location is not None):
                    if location is not None:
                        after = parse_retry_after(headers.get("Retry-After"), time.time())
                        return Redirect(location, after)
                    # wget's "Redirection without location": the body is no resource.
                    raise DownloadFailed(ErrorKind.REDIRECT, f"HTTP {status} without a Location")
                if extra is not None and status == 416:
                    partial.forget()
                    why = "HTTP 416 to the request for the rest of a cut body: the next attempt"
                    raise DownloadFailed(ErrorKind.TRUNCATED, f"{why} starts over")
                try:
                    rs.assert_response(response)
                except AssertionError as exc:
                    return Outcome(
                        error_kind=ErrorKind.HTTP,
                        message=str(exc) or f"HTTP {status}",
                        status=status,
                        headers=plain_headers(headers),
                        retry_after=parse_retry_after(headers.get("Retry-After"), time.time()),
                        attempt=bundle.attempts,
                    )
                _check_codings(headers)
                token = speed_guard.set(
                    SpeedGuard(rs.low_speed_limit, rs.low_speed_time)
                    if rs.low_speed_limit
                    else None
                )
                ds = self.download_strategy
                own = _overridden_on_success(ds)
                try:
                    if own:
                        await run_on_success(ds, response, bundle)
                    else:
                        await ds.on_success(response, bundle)
                finally:
                    speed_guard.reset(token)
                if own:
                    await measure_own_write(bundle, ds.sha256)
                return None
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            kind, message = classify(exc, url)
            if limit is not None:
                expired = limit.expired()
            else:
                # aiohttp's max_time raises a bare TimeoutError; its connect and read timeouts
                # raise subclasses of it, with messages of their own.
                expired = bool(max_time) and type(exc) is TimeoutError
            if expired:
                message = over_time(rs)
            return Outcome(
                error_kind=kind,
                message=message,
                status=status,
                headers=plain_headers(headers),
                attempt=bundle.attempts,
            )


def _check_codings(headers: Mapping[str, str]) -> None:
    """Fail a body whose codings would be stored undecoded: a transfer coding other than
    chunked (which both clients remove; said twice, as curl reads it, once), or a content
    coding beside another (one alone is decoded; identity, said any number of times, is
    none)."""
    if "Transfer-Encoding" in headers:
        transfer = [c for c in _codings(headers, "Transfer-Encoding") if c != "identity"]
        if transfer and set(transfer) != {"chunked"}:
            raise DownloadFailed(
                ErrorKind.PROTOCOL, f"Transfer-Encoding {', '.join(transfer)} is not supported"
            )
    if "Content-Encoding" in headers:
        content = _codings(headers, "Content-Encoding")
        if len(content) > 1 and set(content) != {"identity"}:
            raise DownloadFailed(
                ErrorKind.PROTOCOL, f"Content-Encoding {', '.join(content)}: not decoded"
            )


def _codings(headers: Mapping[str, str], name: str) -> list[str]:
    """The codings the header's lines list, in order."""
    if isinstance(headers, CIMultiDictProxy):
        values = headers.getall(name, [])
    else:
        values = [headers.get(name, "")]
    codings = (c.strip().lower() for value in values for c in value.split(","))
    return [c for c in codings if c]


def _overridden_on_success(ds: DownloadStrategy) -> bool:
    return type(ds).on_success is not DownloadStrategy.on_success


@dataclass(frozen=True, slots=True)
class Redirect:
    """A response that sends the request elsewhere: the engine's next hop, after the
    ``Retry-After`` seconds it asked for, if any (RFC 9110 10.2.3; the host pauses)."""

    location: str
    retry_after: float | None = None


def over_time(rs: RequestStrategy) -> str:
    return f"attempt exceeded max_time ({rs.max_time:g} s)"


_NO_LIMIT = contextlib.nullcontext()
# Headers a caller's session, following redirects itself, would carry to other origins.
_NOT_ON_HOPS = frozenset({"cookie", "host"})


def request_headers(rs: RequestStrategy) -> dict[str, str]:
    """The caller's headers every request carries, with ``user_agent`` unless they name a
    User-Agent themselves (in any case: one header, never two)."""
    if any(name.lower() == "user-agent" for name in rs.headers):
        return dict(rs.headers)
    return {"User-Agent": rs.user_agent, **rs.headers}


def effective_user_agent(rs: RequestStrategy) -> str:
    """The User-Agent the requests carry: a ``User-Agent`` in ``headers`` wins, as it does on
    the wire, so robots.txt is read for the agent the host sees."""
    return next((v for k, v in rs.headers.items() if k.lower() == "user-agent"), rs.user_agent)


def _connect_timeout(rs: RequestStrategy) -> float | None:
    """Seconds to connect; None for no limit."""
    return time_limit(rs.connect_timeout if rs.connect_timeout is not None else rs.timeout)


def time_limit(seconds: float | None) -> float | None:
    """A time limit as the clients take it: None for none, which 0 and infinity also say
    (as for curl; aiohttp rounds a limit up to whole seconds, and cannot round infinity)."""
    return seconds if seconds and 0 < seconds < math.inf else None


def _descriptor_budget() -> int:
    """Requests this process can hold open at once: each needs a socket and a temporary file,
    and the process keeps some descriptors of its own (pipes, the event loop, libraries)."""
    limit = open_file_limit()
    if limit is None:
        return 1 << 30
    return max(1, (limit - _RESERVED_DESCRIPTORS) // 2)


_RESERVED_DESCRIPTORS = 32


def _pool_limit(in_flight: int) -> int:
    """Connections the lean pool keeps open: one per request in flight, and as many idle ones
    again where descriptors allow. With no spare, the next request (often to another host than
    the one that just finished) closed an idle connection to open its own: on 2,000 x 100 KiB
    over 8 hosts, 500-1,200 connects instead of ~70, each a handshake the server pays too."""
    spare = 2 * (_descriptor_budget() - in_flight)  # an idle connection needs one descriptor
    return in_flight + max(0, min(in_flight, spare))


def _has_authorization(*headers: Mapping[str, str]) -> bool:
    return any(k.lower() == "authorization" for h in headers for k in h)
