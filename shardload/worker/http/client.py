"""The keep-alive pool and the GET requests of one worker (one event loop); one request per
call: the engine follows redirects, each hop under its own host's politeness."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
import socket
import ssl
from collections.abc import Callable, Mapping
from urllib.parse import quote

from ...errors import DownloadFailed, ErrorKind
from ...urls import DEFAULT_PORTS, UrlParts, basic_authorization
from ..failures import connect_error
from .connection import Connection
from .response import LeanResponse

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# A caller's headers that belong to the origin asked for, never sent to another (a redirect
# elsewhere, or that host's robots.txt).
ORIGIN_ONLY = frozenset({"authorization", "proxy-authorization", "cookie", "host"})
_KEEPALIVE = 15.0  # seconds an idle connection is kept (aiohttp's default too)
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


class _Request:
    """``async with client.get(parts, url) as response``: releases the connection on exit."""

    def __init__(
        self,
        client: LeanClient,
        parts: UrlParts,
        url: str,
        same_origin: bool,
        went: Callable[[], None] | None,
        extra: Mapping[str, str] | None,
    ) -> None:
        self._client = client
        self._parts = parts
        self._url = url
        self._same_origin = same_origin
        self._went = went
        self._extra = extra
        self._response: LeanResponse | None = None

    async def __aenter__(self) -> LeanResponse:
        client = self._client
        self._response = await client.fetch(
            self._parts, self._url, self._same_origin, self._went, self._extra
        )
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
        dns_ttl: float | None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.limit = max(1, limit)
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout or 0.0
        self.dns_ttl = dns_ttl
        self._fixed = _fixed_headers(headers)
        # A caller's credentials and cookies are for the host asked for: a redirect to another
        # origin does not get them (as curl; aiohttp drops Authorization and Cookie too).
        self._fixed_elsewhere = _fixed_headers(
            {name: value for name, value in headers.items() if name.lower() not in ORIGIN_ONLY}
        )
        self._has_auth = any(name.lower() == "authorization" for name in headers)
        # A caller's Host header (a virtual host behind an address) is for the origin asked
        # for; a redirect elsewhere names its own host (as curl).
        self._host = next((v for n, v in headers.items() if n.lower() == "host"), None)
        self._idle: dict[tuple[str, str, int], list[Connection]] = {}
        self._lru: dict[Connection, None] = {}  # idle connections, oldest first
        self._open = 0
        self._connecting = 0
        self._dns: dict[tuple[str, int], tuple[float, list[str]]] = {}
        self._ssl: ssl.SSLContext | None = None
        self._last_sweep = self.loop.time()  # the clock of idle_since

    def get(
        self,
        parts: UrlParts,
        url: str,
        same_origin: bool = True,
        went: Callable[[], None] | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> _Request:
        return _Request(self, parts, url, same_origin, went, extra)

    async def fetch(
        self,
        parts: UrlParts,
        url: str,
        same_origin: bool = True,
        went: Callable[[], None] | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> LeanResponse:
        """Send the GET and return once the response's headers are in. Redirects are the
        caller's (the engine takes each hop's host slot); ``same_origin`` False is a hop to
        another origin, which gets none of the caller's Authorization or Host. ``went`` is
        called once the request is written (after any wait for a new connection); ``extra``
        headers are this request's own (a range of a cut body)."""
        head = self._head(parts, url, same_origin, extra)
        conn, reused = await self._acquire(parts)
        try:
            return await _sent(conn.send(head, url, self.read_timeout), went)
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
            return await _sent(conn.send(head, url, self.read_timeout), went)
        except BaseException:
            conn.abort()
            raise

    def _head(
        self, parts: UrlParts, url: str, same_origin: bool, extra: Mapping[str, str] | None = None
    ) -> bytes:
        fixed = self._fixed if same_origin else self._fixed_elsewhere
        if extra:
            fixed += "".join(f"{name}: {value}\r\n" for name, value in extra.items())
        auth = ""
        if "@" in url and not (same_origin and self._has_auth):
            auth = _basic_auth(url)
        host = self._host if same_origin and self._host else parts.authority
        return (
            f"GET {request_target(parts)} HTTP/1.1\r\nHost: {host}\r\n{fixed}{auth}\r\n"
        ).encode("utf-8", "surrogateescape")

    # Pool.
    async def _acquire(self, parts: UrlParts, fresh: bool = False) -> tuple[Connection, bool]:
        key = (parts.scheme, parts.host, parts.port or DEFAULT_PORTS[parts.scheme])
        idle = self._idle.get(key)
        now = self.loop.time()
        while idle and not fresh:
            conn = idle.pop()
            del self._lru[conn]
            if not idle:
                del self._idle[key]
            if not conn.closed and now - conn.idle_since < _KEEPALIVE:
                return conn, True
            conn.abort()
        # Connections still being opened count too: several requests may be connecting at
        # once, each past this check before any of them is open.
        if self._open + self._connecting >= self.limit and self._lru:
            self._evict(next(iter(self._lru)))
        self._connecting += 1
        try:
            conn = await self._connect(key)
        finally:
            self._connecting -= 1
        return conn, False

    def release(self, conn: Connection) -> None:
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
        if self.dns_ttl is not None:
            for name in [name for name, (until, _) in self._dns.items() if until <= now]:
                del self._dns[name]

    def _evict(self, conn: Connection) -> None:
        self._drop_idle(conn)
        conn.abort()

    def _drop_idle(self, conn: Connection) -> None:
        if conn not in self._lru:
            return
        del self._lru[conn]
        idle = self._idle[conn.key]
        idle.remove(conn)
        if not idle:
            del self._idle[conn.key]

    def _forget(self, conn: Connection) -> None:
        """A connection closed (by either side): it no longer counts or waits in the pool."""
        self._open -= 1
        self._drop_idle(conn)

    async def _connect(self, key: tuple[str, str, int]) -> Connection:
        scheme, host, port = key
        context = self._ssl_context() if scheme == "https" else None
        try:
            async with asyncio.timeout(self.connect_timeout):
                addresses = await self._resolve(host, port)
                last: BaseException | None = None
                for address in addresses:
                    try:
                        _, conn = await self.loop.create_connection(
                            lambda: Connection(self, key),
                            address,
                            port,
                            ssl=context,
                            server_hostname=host if context is not None else None,
                        )
                        return conn
                    except OSError as exc:
                        last = exc
                raise last or OSError(f"no address for {host}")
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
        infos = await self.loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
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


def _sent(
    answer: asyncio.Future[LeanResponse], went: Callable[[], None] | None
) -> asyncio.Future[LeanResponse]:
    """``answer``, the future of a request ``send`` has just written: ``went`` is told now, so
    the host's next start counts its gap from after the write."""
    if went is not None:
        went()
    return answer


def _fixed_headers(headers: Mapping[str, str]) -> str:
    """The request headers every GET carries; a caller's header replaces the default one."""
    merged = {"accept": ("Accept", "*/*"), "accept-encoding": ("Accept-Encoding", "gzip, deflate")}
    for name, value in headers.items():
        if any(c in f"{name}{value}" for c in "\r\n\0") or not name or ":" in name:
            raise DownloadFailed(ErrorKind.STRATEGY, f"invalid request header {name!r}")
        merged[name.lower()] = (name, value)
    merged.pop("host", None)  # sent first, by _head
    return "".join(f"{name}: {value}\r\n" for name, value in merged.values())


def _basic_auth(url: str) -> str:
    """The Authorization header for credentials in the URL (each hop's own: a redirect to
    another URL does not inherit them), or ''."""
    value = basic_authorization(url)
    return "" if value is None else f"Authorization: {value}\r\n"


@functools.lru_cache(maxsize=4096)
def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
