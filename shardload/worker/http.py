"""A lean HTTP/1.1 client for the engine's own GET requests (asyncio protocols + httptools).

Why: aiohttp's request path costs ~110-130 us of CPU per request on the bench machine, about
half of what a small file costs end to end; a GET with a streamed body needs far less. The
engine uses this client when it owns the whole request (no caller ``client`` session, and the
strategies' ``on_success``/``assert_response`` are shardload's own); an override gets aiohttp's
response object, as in aiodownload. ``LeanResponse`` offers the subset shardload itself reads:
``status``, ``reason``, ``headers``, ``url``, ``content_length`` and ``content.read`` /
``content.iter_chunked``.

Invariants:
- a connection returns to the pool only after its response was read to the end and the server
  allows keep-alive; anything else is closed, so a pooled connection never holds stale bytes;
- open connections (busy + idle) never exceed ``limit``: a new connection first evicts the
  least recently used idle one, so the engine's descriptor budget (one socket and one temporary
  file per request in flight) holds;
- a body is complete only when the parser says so (Content-Length reached, last chunk seen) or,
  for a response with neither length nor chunking, when the server closes the connection;
  a connection lost earlier is ``truncated`` (or ``reset`` before any response byte);
- a request never waits more than ``read_timeout`` seconds without a byte arriving (a paused
  reader does not count: the pause is ours), nor ``connect_timeout`` seconds to connect;
- a request that finds its reused connection closed before a byte of the answer is sent once
  more on a fresh connection (GET is idempotent; servers close idle connections at any time);
- decompression (gzip, deflate) yields at most ``_DECODE_STEP`` bytes per step, so a
  compression bomb cannot allocate more than that before the caller's size cap sees it.
Every failure is raised as ``DownloadFailed`` with its error kind (connection errors through
``failures.connect_error``), so the engine handles both clients alike.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import functools
import ipaddress
import re
import socket
import ssl
import time
import zlib
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote, unquote, urljoin, urlsplit

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from ..errors import DownloadFailed, ErrorKind
from ..urls import DEFAULT_PORTS, UrlParts, redact, split_url
from .failures import connect_error

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_KEEPALIVE = 15.0  # seconds an idle connection is kept (aiohttp's default too)
_HIGH_WATER = 4 << 20  # buffered body bytes at which reading pauses
_LOW_WATER = 1 << 20
_DECODE_STEP = 1 << 20
_SAFE_TARGET = re.compile(r"[!#-;=?-Z_a-z~]*", re.ASCII)  # printable but space "<>[\]^`{|}
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


def request_target(parts: UrlParts) -> str:
    """The path and query as sent on the request line, percent-encoded where they need it."""
    target = parts.path or "/"
    if parts.query:
        target = f"{target}?{parts.query}"
    if _SAFE_TARGET.fullmatch(target) and ("%" not in target or not _BAD_PERCENT.search(target)):
        return target
    # Keep what is already escaped (as aiohttp/yarl do); escape a lone '%' and everything else.
    target = _BAD_PERCENT.sub("%25", target)
    return quote(target, safe="!#$%&'()*+,/:;=?@[]~")


class LeanResponse:
    """One response; its body is read with ``content.iter_chunked`` or ``content.read``."""

    def __init__(self, conn: _Connection, url: str, status: int, reason: str) -> None:
        self._conn = conn
        self.url = url
        self.status = status
        self.reason = reason
        self.headers: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict(conn.header_list))
        self.content_length: int | None = conn.content_length
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._complete = False
        self._error: DownloadFailed | None = None
        self._waiter: asyncio.Future[None] | None = None

    @property
    def content(self) -> LeanResponse:
        """aiohttp's ``response.content`` stream: here the response reads its own body."""
        return self

    # Fed by the connection.
    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > _HIGH_WATER:
            self._conn.pause()
        self._wake()

    def _finish(self, error: DownloadFailed | None = None) -> None:
        if self._complete or self._error is not None:
            return
        if error is None:
            self._complete = True
        else:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _next_raw(self) -> bytes | None:
        """The next piece of the body as sent (still encoded), or None at its end."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._complete:
                return None
            self._waiter = self._conn.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = self._chunks.popleft()
        self._buffered -= len(data)
        if self._buffered < _LOW_WATER:
            self._conn.resume()
        return data

    async def iter_chunked(self, n: int) -> AsyncIterator[bytes]:
        """The decoded body in pieces of at most ``n`` bytes."""
        decoder = _decoder(self.headers.get("Content-Encoding"))
        while (data := await self._next_raw()) is not None:
            pieces = decoder.feed(data) if decoder is not None else (data,)
            for piece in pieces:
                for start in range(0, len(piece), n):
                    yield piece[start : start + n] if len(piece) > n else piece
        if decoder is not None:
            for piece in decoder.end():
                yield piece

    async def read(self, n: int = -1) -> bytes:
        """The decoded body, or its first ``n`` bytes (the rest is left unread)."""
        out = bytearray()
        async for piece in self.iter_chunked(1 << 20):
            out += piece
            if 0 <= n <= len(out):
                return bytes(out[:n])
        return bytes(out)


class _Decoder:
    """Incremental gzip/deflate decoding in bounded steps (see the module's invariants)."""

    def __init__(self, gzip: bool) -> None:
        self._gzip = gzip
        self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS if gzip else zlib.MAX_WBITS)
        self._first = True

    def feed(self, data: bytes) -> list[bytes]:
        try:
            return list(self._steps(data))
        except zlib.error as exc:
            if self._first and not self._gzip:
                # "deflate" is sent both zlib-wrapped (as specified) and raw; accept both.
                self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
                self._first = False
                return self.feed(data)
            raise DownloadFailed(ErrorKind.PROTOCOL, f"cannot decode the body: {exc}") from exc

    def _steps(self, data: bytes) -> Any:
        while data:
            out = self._zlib.decompress(data, _DECODE_STEP)
            self._first = False
            data = self._zlib.unconsumed_tail
            if out:
                yield out
            if self._zlib.eof:
                return

    def end(self) -> list[bytes]:
        tail = self._zlib.flush()
        if self._gzip and not self._zlib.eof:
            raise DownloadFailed(ErrorKind.TRUNCATED, "the gzip body ended early")
        return [tail] if tail else []


def _decoder(encoding: str | None) -> _Decoder | None:
    name = (encoding or "").strip().lower()
    if name in ("gzip", "x-gzip"):
        return _Decoder(gzip=True)
    if name == "deflate":
        return _Decoder(gzip=False)
    return None  # identity, or an encoding we never asked for: stored as sent


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection and the response being parsed on it."""

    def __init__(self, client: LeanClient, key: tuple[str, str, int]) -> None:
        self.client = client
        self.key = key
        self.loop = client.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self.header_list: list[tuple[str, str]] = []
        self.content_length: int | None = None
        self._reason = ""
        self._chunked = False
        self._received = 0  # bytes of the current response, headers included
        self._body = 0
        self._response: LeanResponse | None = None
        self._head: asyncio.Future[LeanResponse] | None = None
        self._url = ""
        self._reusable = False
        self._expecting = False  # between sending a request and the end of its answer
        self._paused = False
        self._last = 0.0
        self._timeout = 0.0
        self._timer: asyncio.TimerHandle | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self._expecting:
            # Bytes nobody asked for (after a complete answer, or on an idle connection): the
            # stream can no longer be trusted to line up with the next request.
            self._reusable = False
            self.abort()
            return
        self._last = self.loop.time()
        self._received += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(DownloadFailed(ErrorKind.PROTOCOL, "the server switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(DownloadFailed(ErrorKind.PROTOCOL, f"malformed HTTP response: {exc}"))

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost decides what the end means

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.client._forget(self)
        response = self._response
        if response is not None and not response._complete:
            if self.content_length is None and not self._chunked:
                response._finish()  # no length, no chunks: the body ends with the connection
            else:
                what = (
                    f"got {self._body} of {self.content_length} bytes"
                    if self.content_length is not None
                    else f"chunked body cut after {self._body} bytes"
                )
                response._finish(
                    DownloadFailed(ErrorKind.TRUNCATED, f"connection closed early: {what}")
                )
        elif self._head is not None and not self._head.done():
            self._head.set_exception(
                DownloadFailed(
                    ErrorKind.RESET,
                    "server disconnected"
                    + (f" mid-headers ({self._received} bytes)" if self._received else ""),
                )
            )
        self._stop_timer()

    # httptools callbacks
    def on_message_begin(self) -> None:
        if not self._expecting:
            self._reusable = False  # a second answer in the same read as the first

    def on_status(self, status: bytes) -> None:
        self._reason = status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_list.append((name.decode("latin-1"), value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        if not self._expecting:
            return  # that second answer is ignored
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            self.header_list = []  # an interim answer (100 Continue): the real one follows
            return
        for name, value in self.header_list:
            lowered = name.lower()
            if lowered == "content-length" and value.strip().isdigit():
                self.content_length = int(value)
            elif lowered == "transfer-encoding" and "chunked" in value.lower():
                self._chunked = True
        response = self._response = LeanResponse(self, self._url, status, self._reason)
        if self._head is not None and not self._head.done():
            self._head.set_result(response)

    def on_body(self, body: bytes) -> None:
        if self._expecting and self._response is not None:
            self._body += len(body)
            self._response._feed(body)

    def on_message_complete(self) -> None:
        if not self._expecting:
            return
        if self._response is None:
            return  # the end of an interim 1xx answer
        self._expecting = False
        self._reusable = self.parser.should_keep_alive()
        self._stop_timer()
        self._response._finish()

    # Driven by the client.
    def send(self, head: bytes, url: str, timeout: float) -> asyncio.Future[LeanResponse]:
        self.header_list = []
        self.content_length = None
        self._chunked = False
        self._received = self._body = 0
        self._response = None
        self._reusable = False
        self._expecting = True
        self._url = url
        self._head = self.loop.create_future()
        self._last = self.loop.time()
        self._timeout = timeout
        if timeout and timeout > 0:
            self._timer = self.loop.call_at(self._last + timeout, self._check_stall)
        if self.transport is None or self.closed:
            self._head.set_exception(DownloadFailed(ErrorKind.RESET, "connection closed"))
        else:
            self.transport.write(head)
        return self._head

    def _check_stall(self) -> None:
        self._timer = None
        now = self.loop.time()
        if self._paused or now - self._last < self._timeout:
            self._timer = self.loop.call_at(max(now, self._last) + self._timeout, self._check_stall)
            return
        self._fail(
            DownloadFailed(ErrorKind.TIMEOUT, f"no data for {self._timeout:g} s (read timeout)")
        )

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fail(self, error: DownloadFailed) -> None:
        if self._head is not None and not self._head.done():
            self._head.set_exception(error)
        if self._response is not None:
            self._response._finish(error)
        self.abort()

    def pause(self) -> None:
        if not self._paused and self.transport is not None and not self.closed:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self._last = self.loop.time()  # the pause was ours: the stall clock restarts
            self.transport.resume_reading()

    def reusable(self) -> bool:
        response = self._response
        return self._reusable and not self.closed and response is not None and response._complete

    def abort(self) -> None:
        self._stop_timer()
        if self.transport is not None and not self.closed:
            self.transport.abort()
        self.closed = True


class _Request:
    """``async with client.get(parts, url) as response``: releases the connection on exit."""

    def __init__(self, client: LeanClient, parts: UrlParts, url: str) -> None:
        self._client = client
        self._parts = parts
        self._url = url
        self._response: LeanResponse | None = None

    async def __aenter__(self) -> LeanResponse:
        self._response = await self._client.fetch(self._parts, self._url)
        return self._response

    async def __aexit__(self, *exc: object) -> None:
        if self._response is not None:
            self._client.release(self._response._conn)


class LeanClient:
    """Keep-alive connection pool and GET requests for one event loop (one worker)."""

    def __init__(
        self,
        *,
        limit: int,
        headers: Mapping[str, str],
        connect_timeout: float | None,
        read_timeout: float | None,
        max_redirects: int,
        dns_ttl: float | None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.limit = max(1, limit)
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout or 0.0
        self.max_redirects = max_redirects
        self.dns_ttl = dns_ttl
        self._fixed = _fixed_headers(headers)
        self._has_auth = any(name.lower() == "authorization" for name in headers)
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._lru: dict[_Connection, None] = {}  # idle connections, oldest first
        self._open = 0
        self._dns: dict[tuple[str, int], tuple[float, list[Any]]] = {}
        self._ssl: ssl.SSLContext | None = None
        self._last_sweep = time.monotonic()

    def get(self, parts: UrlParts, url: str) -> _Request:
        return _Request(self, parts, url)

    async def fetch(self, parts: UrlParts, url: str) -> LeanResponse:
        """Send the GET, follow redirects, and return once the final response's headers are in."""
        for hop in range(max(0, self.max_redirects) + 1):
            response = await self._once(parts, url)
            location = response.headers.get("Location")
            if response.status not in REDIRECT_STATUSES or location is None:
                return response
            self.release(response._conn)
            if hop >= self.max_redirects:
                break
            url = urljoin(url, location)
            try:
                parts = split_url(url)
            except DownloadFailed as exc:
                raise DownloadFailed(
                    ErrorKind.REDIRECT, f"redirect refused: {exc.message}"
                ) from exc
        raise DownloadFailed(
            ErrorKind.REDIRECT,
            f"too many redirects (max_redirects={self.max_redirects}), last to {redact(url)}",
        )

    async def _once(self, parts: UrlParts, url: str) -> LeanResponse:
        head = self._head(parts, url)
        conn, reused = await self._acquire(parts)
        try:
            return await conn.send(head, url, self.read_timeout)
        except DownloadFailed as exc:
            conn.abort()
            if not (reused and exc.kind == ErrorKind.RESET and not conn._received):
                raise
        except BaseException:
            conn.abort()
            raise
        # The server had closed the idle connection: the request never reached it.
        conn, _ = await self._acquire(parts, fresh=True)
        try:
            return await conn.send(head, url, self.read_timeout)
        except BaseException:
            conn.abort()
            raise

    def _head(self, parts: UrlParts, url: str) -> bytes:
        auth = ""
        if "@" in url and not self._has_auth:
            auth = _basic_auth(url)
        return (
            f"GET {request_target(parts)} HTTP/1.1\r\nHost: {parts.host_key}\r\n"
            f"{self._fixed}{auth}\r\n"
        ).encode("utf-8", "surrogateescape")

    # Pool.
    async def _acquire(self, parts: UrlParts, fresh: bool = False) -> tuple[_Connection, bool]:
        key = (parts.scheme, parts.host, parts.port or DEFAULT_PORTS[parts.scheme])
        idle = self._idle.get(key)
        now = self.loop.time()
        while idle and not fresh:
            conn = idle.pop()
            del self._lru[conn]
            if not conn.closed and now - conn.idle_since < _KEEPALIVE:
                return conn, True
            conn.abort()
        if self._open >= self.limit and self._lru:
            self._evict(next(iter(self._lru)))
        conn = await self._connect(key)
        return conn, False

    def release(self, conn: _Connection) -> None:
        """Return a connection after its response: pooled if clean and kept alive, else closed."""
        if not conn.reusable():
            conn.abort()
            return
        conn._response = None
        conn.resume()  # a body left unread may have paused reading; watch for the server's close
        conn.idle_since = self.loop.time()
        self._idle.setdefault(conn.key, []).append(conn)
        self._lru[conn] = None
        if conn.idle_since - self._last_sweep > _KEEPALIVE:
            self._sweep(conn.idle_since)

    def _sweep(self, now: float) -> None:
        self._last_sweep = now
        for conn in [c for c in self._lru if now - c.idle_since >= _KEEPALIVE]:
            self._evict(conn)

    def _evict(self, conn: _Connection) -> None:
        self._drop_idle(conn)
        conn.abort()

    def _drop_idle(self, conn: _Connection) -> None:
        if conn not in self._lru:
            return
        del self._lru[conn]
        idle = self._idle[conn.key]
        idle.remove(conn)
        if not idle:
            del self._idle[conn.key]

    def _forget(self, conn: _Connection) -> None:
        """A connection closed (by either side): it no longer counts or waits in the pool."""
        self._open -= 1
        self._drop_idle(conn)

    async def _connect(self, key: tuple[str, str, int]) -> _Connection:
        scheme, host, port = key
        context = self._ssl_context() if scheme == "https" else None
        try:
            async with asyncio.timeout(self.connect_timeout):
                addresses = await self._resolve(host, port)
                last: BaseException | None = None
                for address in addresses:
                    try:
                        _, conn = await self.loop.create_connection(
                            lambda: _Connection(self, key),
                            address,
                            port,
                            ssl=context,
                            server_hostname=host if context is not None else None,
                        )
                        self._open += 1
                        return conn
                    except OSError as exc:
                        last = exc
                raise last or OSError(f"no address for {host}")
        except DownloadFailed:
            raise
        except (OSError, TimeoutError) as exc:
            kind, message = connect_error(exc, host, port)
            raise DownloadFailed(kind, message) from exc

    async def _resolve(self, host: str, port: int) -> list[str]:
        if _is_ip(host):
            return [host]
        now = self.loop.time()
        known = self._dns.get((host, port))
        if known is not None and (self.dns_ttl is None or now < known[0]):
            return known[1]
        try:
            infos = await self.loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise DownloadFailed(ErrorKind.DNS, f"cannot resolve {host}: {exc}") from exc
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        self._dns[(host, port)] = (now + (self.dns_ttl or 0), addresses)
        return addresses

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    async def close(self) -> None:
        for conn in list(self._lru):
            self._evict(conn)


def _fixed_headers(headers: Mapping[str, str]) -> str:
    """The request headers every GET carries; a caller's header replaces the default one."""
    merged = {"accept": ("Accept", "*/*"), "accept-encoding": ("Accept-Encoding", "gzip, deflate")}
    for name, value in headers.items():
        if any(c in f"{name}{value}" for c in "\r\n\0") or not name or ":" in name:
            raise DownloadFailed(ErrorKind.STRATEGY, f"invalid request header {name!r}")
        merged[name.lower()] = (name, value)
    merged.pop("host", None)  # the Host header always names the URL's host
    return "".join(f"{name}: {value}\r\n" for name, value in merged.values())


def _basic_auth(url: str) -> str:
    """The Authorization header for credentials in the URL (each hop's own: a redirect to
    another URL does not inherit them), or ''."""
    parts = urlsplit(url)
    if parts.username is None:
        return ""
    pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
    return f"Authorization: Basic {base64.b64encode(pair.encode('utf-8')).decode('ascii')}\r\n"


@functools.lru_cache(maxsize=4096)
def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
