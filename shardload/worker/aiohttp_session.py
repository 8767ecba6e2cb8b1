"""shardload's own aiohttp session (the request path of overridden ``on_success`` or
``assert_response``): how it is built, and what makes it behave as the lean client does. A
caller's ``client=`` session keeps its own connector; only the URL encoding and the header
timeout below apply to it.

Invariants:
- a request asks for the very resource the lean client would: the URL goes to aiohttp already
  encoded (``request_target``), so yarl resolves no ``..`` and decodes no ``%2F``, and two URLs
  that shardload stores as two files stay two requests;
- a pooled connection is reused only if nothing arrived on it while it was idle: bytes nobody
  asked for (a stray answer, the late body of a 204) would otherwise become the next
  request's response, and every later one on that connection would be shifted by one;
- a request whose pooled connection the server had already closed (its end not yet seen when
  the connection was taken) is sent again, as on the lean client: aiohttp retries once only,
  and its retry may take another such connection when a server drops many idle ones at once;
- aiohttp is imported only when a session is made: a worker on the lean client never pays its
  import (~0.2 s per spawned process).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from ..errors import DownloadFailed, ErrorKind
from ..urls import UrlParts
from .http import request_target

if TYPE_CHECKING:
    import aiohttp
    import yarl

    from ..bundle import Bundle

Went = Callable[[], None]

# The (status, headers, Retry-After) of each response this session gave while it is set: what
# an aiodownload-style override's own ``self.client.get(...)`` was answered (it sets no status).
heard: ContextVar[list[tuple[int, dict[str, str], str | None]] | None] = ContextVar(
    "shardload_heard", default=None
)


@contextlib.contextmanager
def listening(bundle: Bundle) -> Iterator[list[tuple[int, dict[str, str], str | None]]]:
    """What requests through ``self.client`` are answered while it is open; on exit, a bundle
    whose code set no status (aiodownload's overrides) gets the last answer's."""
    answers: list[tuple[int, dict[str, str], str | None]] = []
    token = heard.set(answers)
    try:
        yield answers
    finally:
        heard.reset(token)
        if bundle.status is None and answers:
            bundle.status = answers[-1][0]


def plain_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Response headers as a plain dict, as an ``Outcome`` carries them across processes."""
    return {str(k): str(v) for k, v in headers.items()}


# A connection found spoiled at reuse is closed and another taken. The idle connections of a
# host are at most as many as were ever in use at once (``limit``): after that many closes the
# pool is empty and the next is new. The bound only stops a server that speaks first on
# every new connection from looping us.
STALE_TRIES = 8


def make_session(
    limit: int, dns_ttl: int | None, read_bufsize: int, timeout: aiohttp.ClientTimeout
) -> aiohttp.ClientSession:
    import aiohttp  # noqa: PLC0415  (see the module's invariants)

    class FreshConnector(aiohttp.TCPConnector):
        """Never hands out a pooled connection on which something arrived while idle."""

        async def connect(self, req: Any, traces: Any, timeout: Any) -> Any:  # noqa: ASYNC109
            for _ in range(self.limit + STALE_TRIES):
                conn = await super().connect(req, traces, timeout)
                protocol = conn.protocol
                if protocol is None or not protocol.should_close:
                    return conn
                conn.close()  # an idle connection that received bytes: never reused
            return await super().connect(req, traces, timeout)

    connector = FreshConnector(
        # Counts connections in use only (aiohttp keeps idle ones beside them).
        limit=max(1, limit),
        limit_per_host=0,
        ttl_dns_cache=dns_ttl,
        enable_cleanup_closed=False,
    )
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        read_bufsize=read_bufsize,
        timeout=timeout,
        trust_env=False,
        trace_configs=[_request_trace()],
    )


def encoded_url(parts: UrlParts) -> yarl.URL:
    """The URL of ``parts`` (params included) as the lean client sends it, for aiohttp to send
    unchanged."""
    import yarl  # noqa: PLC0415  (comes with aiohttp, see the module's invariants)

    host = f"[{parts.host}]" if ":" in parts.host else parts.host
    port = "" if parts.port is None else f":{parts.port}"
    return yarl.URL(f"{parts.scheme}://{host}{port}{request_target(parts)}", encoded=True)


def drop_if_body_pending(response: Any) -> None:
    """A 204 or 304 has no body, but a server that declared one may send it after the
    headers: on a pooled connection it would become the next request's response."""
    declared = response.headers.get("Content-Length", "").strip()
    if response.status in (204, 304) and declared not in ("", "0"):
        # aiohttp pooled the connection as the (empty) body ended, before the response was
        # handed over: marked, the connector closes it instead of reusing it.
        protocol = getattr(response, "_protocol", None)
        if protocol is not None:
            protocol.force_close()


class Hooks:
    """What shardload's own aiohttp session tells one request (its ``trace_request_ctx``):
    ``went`` and ``sent`` once the request's head is written, and
    whether its last connection came from the pool (``reused``)."""

    __slots__ = ("reused", "sent", "went")

    def __init__(self, went: Went | None) -> None:
        self.went = went
        self.sent: Callable[[], None] | None = None
        self.reused = False


class PastStaleConnections:
    """The response of ``make()``'s request, made again while it fails on a pooled connection
    the server had closed (see the module's invariants); at most ``tries`` times more."""

    def __init__(self, make: Callable[[], Any], hooks: Hooks, tries: int) -> None:
        self._make = make
        self._hooks = hooks
        self._tries = tries
        self._request: Any = None

    async def __aenter__(self) -> Any:
        import aiohttp  # noqa: PLC0415  (see the module's invariants)

        left = self._tries
        while True:
            self._hooks.reused = False
            self._request = self._make()
            try:
                return await self._request.__aenter__()
            except aiohttp.ClientConnectorError:
                raise  # a new connection that failed: the host's answer, not a stale one
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                if not self._hooks.reused or left <= 0:
                    raise
                left -= 1

    async def __aexit__(self, *exc: Any) -> Any:
        return await self._request.__aexit__(*exc)


class HeadersWithin:
    """aiohttp's read timeout is per read, so a server dripping a header line at a time never
    trips it: this bounds the wait for a response's headers (the context's entry) as the lean
    client does, ``timeout`` from when the request's head was written. Until then the
    connect may take its own timeout; a caller's session, which tells nothing, gets both."""

    def __init__(self, request: Any, hooks: Hooks, timeout: float, connect: float) -> None:
        self._request = request
        self._hooks = hooks
        self._timeout = timeout
        self._connect = connect

    async def __aenter__(self) -> Any:
        loop = asyncio.get_running_loop()
        limit = asyncio.timeout(self._timeout + self._connect)
        told = False

        def sent() -> None:
            nonlocal told
            told = True
            limit.reschedule(loop.time() + self._timeout)

        self._hooks.sent = sent
        try:
            async with limit:
                return await self._request.__aenter__()
        except TimeoutError:
            if not limit.expired():
                raise  # one of aiohttp's own timeouts
            waited = self._timeout if told else self._timeout + self._connect
            message = f"no complete response headers within {waited:g} s (read timeout)"
            raise DownloadFailed(ErrorKind.TIMEOUT, message) from None
        finally:
            self._hooks.sent = None

    async def __aexit__(self, *exc: Any) -> Any:
        return await self._request.__aexit__(*exc)


def _request_trace() -> aiohttp.TraceConfig:
    """Tells a request's ``Hooks`` (its ``trace_request_ctx``) when its new connection is
    open, when it takes a pooled one, and when its head is written."""
    import aiohttp  # noqa: PLC0415  (see the module's invariants)

    async def opened(_session: object, context: Any, _params: object) -> None:
        hooks = context.trace_request_ctx
        if isinstance(hooks, Hooks):
            hooks.reused = False

    async def reused(_session: object, context: Any, _params: object) -> None:
        hooks = context.trace_request_ctx
        if isinstance(hooks, Hooks):
            hooks.reused = True

    async def head_sent(_session: object, context: Any, _params: object) -> None:
        hooks = context.trace_request_ctx
        if isinstance(hooks, Hooks):
            if hooks.went is not None:
                hooks.went()
            if hooks.sent is not None:
                hooks.sent()

    async def answered(_session: object, _context: object, params: Any) -> None:
        answers = heard.get()
        if answers is not None:
            headers = params.response.headers
            status = params.response.status
            answers.append((status, plain_headers(headers), headers.get("Retry-After")))

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(opened)
    trace.on_connection_reuseconn.append(reused)
    trace.on_request_headers_sent.append(head_sent)
    trace.on_request_end.append(answered)
    return trace
