"""Download and request strategies: aiodownload's extension points, with its documented defaults.

Users subclass these and override methods; the engine always calls the methods (never inlines
their logic), so overrides take effect. Strategies are sent to worker processes by pickling, so
keep subclasses at module level and their attributes plain data.

What changed from aiodownload (see DESIGN.md): ``max_attempts`` reaches its attribute (Lenient and
BackOff really retry), ``retry`` also sees network errors (``Outcome.status`` is ``None`` then),
sleeps hold no concurrency slot, ``concurrent`` and ``delay`` are per-host limits, and ``on_fail``
never writes anything.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from .backoff import exponential_delay
from .bundle import Bundle
from .errors import ErrorKind, ResponseRejected, is_transient
from .paths import url_to_relpath
from .urls import split_url
from .worker.files import stream_to_file

if TYPE_CHECKING:
    import aiohttp

    from .worker.http import LeanResponse

    # What on_success/assert_response receive: aiohttp's response when a request runs on
    # aiohttp (a caller's session, or either method overridden), else shardload's own.
    Response = aiohttp.ClientResponse | LeanResponse

DEFAULT_USER_AGENT = "shardload/0.1 (+https://pypi.org/project/shardload/)"


@dataclass(frozen=True)
class Outcome:
    """One unsuccessful attempt, as ``RequestStrategy.retry`` sees it.

    ``status`` is the HTTP status, or ``None`` when no response arrived (refused, reset, DNS,
    timeout); ``error_kind`` says which. Code written for aiodownload that reads
    ``response.status`` keeps working.
    """

    error_kind: str
    message: str
    status: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    retry_after: float | None = None
    attempt: int = 1

    @property
    def transient(self) -> bool:
        """True for failures worth retrying: 5xx, 408/425/429, network errors, timeouts."""
        return is_transient(self.error_kind, self.status)


class DownloadStrategy:
    """Where files go and how a body is written.

    Bodies are read in units of ``max(chunk_size, 1 MiB)``: smaller reads make large files
    slow (aiohttp pauses the socket at every read-buffer boundary). ``home`` defaults to the
    working directory at construction time. ``skip_cached`` trusts what it finds, because only
    complete files ever reach a final path. ``max_bytes`` caps a body (after decompression); a
    larger one fails as ``too_large`` and leaves nothing behind. ``sha256=False`` skips hashing
    (``bundle.sha256`` stays None): every byte costs ~0.6 CPU-seconds per GiB to hash, most of
    a large download's CPU when nobody reads the digest (img2dataset's ``compute_hash=None``).
    """

    # Class-level defaults as well: an aiodownload-era subclass that sets the attributes it
    # knew in its own __init__, without calling this one, still has the newer ones.
    chunk_size: int = 65536
    skip_cached: bool = False
    max_bytes: int | None = None
    sha256: bool = True

    def __init__(
        self,
        chunk_size: int = 65536,
        home: str | os.PathLike[str] | None = None,
        skip_cached: bool = False,
        *,
        max_bytes: int | None = None,
        sha256: bool = True,
    ) -> None:
        self.chunk_size = chunk_size
        self.home = os.path.abspath(os.fspath(home)) if home else os.getcwd()
        self.skip_cached = skip_cached
        self.max_bytes = max_bytes
        self.sha256 = sha256

    def get_file_path(self, bundle: Bundle) -> str:
        """``<home>/<host>/<path segments>``; see ``shardload.paths`` for the exact rule."""
        return os.path.join(self.home, url_to_relpath(split_url(bundle.url, bundle.params)))

    # ``response: Any`` in the signatures below: an override annotated as aiodownload's users
    # wrote it (``aiohttp.ClientResponse``) must type-check; the base gets either client's.
    async def on_success(self, response: Any, bundle: Bundle) -> None:
        """Stream the body to a temporary file and move it to ``bundle.file_path`` when complete.

        An override receives aiohttp's ``ClientResponse`` (as in aiodownload): overriding this
        method keeps the engine's requests on aiohttp.
        """
        await stream_to_file(response, bundle, self)

    async def on_fail(self, bundle: Bundle) -> None:
        """Called once when a bundle's download has finally failed (a failing
        ``get_file_path`` included; not for input refused before any download: ``bad_input``,
        ``invalid_url``, ``unsupported_scheme``).
        Writes nothing: a good copy stays. An exception it raises is noted in the bundle's
        ``error_message``; the failure keeps its kind."""


class RequestStrategy:
    """How requests are made, limited and retried.

    ``concurrent`` is the per-host concurrency limit and ``delay`` the per-host minimum time
    between request starts (plus up to ``jitter`` seconds); ``worker_concurrent`` caps all
    requests of one worker process. ``max_attempts`` counts every attempt (0 and 1 both mean a
    single one). ``timeout`` bounds connecting and every stall while reading, not the whole body,
    so a large file can finish; ``max_time`` optionally bounds a whole attempt (its time on
    the network, redirect hops included, not its waits for a turn), and a body slower
    than ``low_speed_limit`` bytes/s over ``low_speed_time`` seconds fails as a timeout (curl's
    options of the same names; 0 disables), so a server dripping bytes cannot hold a slot forever.
    A ``timeout``, ``connect_timeout`` or ``max_time`` of 0 or None is no limit. Every value
    is checked when a run starts (``strategy_check``): one no run can use raises
    ``ConfigurationError``.

    Host health: a 429/503 or a Retry-After pauses the whole host (Retry-After capped at
    ``retry_after_cap``). With ``adaptive`` a host starts at 1 request in flight and grows to
    ``concurrent`` on successes whose latency is healthy (at most twice the host's quickest
    plus 50 ms), halving on 429/503/timeouts. After ``breaker_threshold``
    consecutive connection failures (DNS, refused, TLS, timeout; 0 disables) the host's
    remaining URLs fail fast as ``breaker_open`` until a probe after ``breaker_cooldown``
    seconds succeeds. ``robots`` fetches each host's robots.txt once, skips what it disallows
    for ``user_agent`` and honours its Crawl-delay as the host's ``delay``. Up to
    ``max_redirects`` redirects are followed (0: a redirect fails as ``redirect``), each hop
    under the politeness of the host it goes to. Each worker
    resolves a host once and caches the answer for ``dns_ttl`` seconds (None: for the whole
    run); the hosts of a worker are its own, so no two workers resolve the same host.

    With ``continue_partial`` a retry of a body cut mid-way (a reset, a stall, a short body)
    asks only for the rest (``Range``, as wget does on its retries), where the server proves
    the resource unchanged (its strong ETag or Last-Modified as ``If-Range``); a changed one
    comes whole. The file's sha256 covers the whole body either way.
    """

    # Class-level defaults as well (see DownloadStrategy): the values of __init__'s defaults.
    concurrent: int = 2
    max_attempts: int = 0
    timeout: float = 60
    delay: float = 0.0
    jitter: float = 0.0
    worker_concurrent: int = 64
    connect_timeout: float | None = None
    max_time: float | None = None
    headers: Mapping[str, str] = MappingProxyType({})
    user_agent: str = DEFAULT_USER_AGENT
    retry_after_cap: float = 300.0
    max_redirects: int = 10
    adaptive: bool = False
    breaker_threshold: int = 5
    breaker_cooldown: float = 30.0
    robots: bool = False
    low_speed_limit: int = 0
    low_speed_time: float = 30.0
    dns_ttl: int | None = 300
    continue_partial: bool = True

    def __init__(
        self,
        concurrent: int = 2,
        max_attempts: int = 0,
        timeout: float = 60,
        *,
        delay: float = 0.0,
        jitter: float = 0.0,
        worker_concurrent: int = 64,
        connect_timeout: float | None = None,
        max_time: float | None = None,
        headers: Mapping[str, str] | None = None,
        user_agent: str | None = None,
        retry_after_cap: float = 300.0,
        max_redirects: int = 10,
        adaptive: bool = False,
        breaker_threshold: int = 5,
        breaker_cooldown: float = 30.0,
        robots: bool = False,
        low_speed_limit: int = 0,
        low_speed_time: float = 30.0,
        dns_ttl: int | None = 300,
        continue_partial: bool = True,
    ) -> None:
        self.concurrent = concurrent
        self.max_attempts = max_attempts
        self.timeout = timeout
        self.delay = delay
        self.jitter = jitter
        self.worker_concurrent = worker_concurrent
        self.connect_timeout = connect_timeout
        self.max_time = max_time
        self.headers = dict(headers or {})
        self.user_agent = user_agent or DEFAULT_USER_AGENT
        self.retry_after_cap = retry_after_cap
        self.max_redirects = max_redirects
        self.adaptive = adaptive
        self.breaker_threshold = breaker_threshold
        self.breaker_cooldown = breaker_cooldown
        self.robots = robots
        self.low_speed_limit = low_speed_limit
        self.low_speed_time = low_speed_time
        self.dns_ttl = dns_ttl
        self.continue_partial = continue_partial

    def assert_response(self, response: Any) -> None:  # Any: see on_success
        """Reject an unsuccessful response (status >= 400) by raising ``AssertionError``; also
        a 304, which has no body to store (shardload asks nothing conditionally, and an empty
        file must not replace a stored copy).

        An override receives aiohttp's ``ClientResponse``, as ``on_success`` does.
        """
        if response.status >= 400:
            raise ResponseRejected(f"HTTP {response.status}")
        if response.status == 304:
            raise ResponseRejected("HTTP 304 Not Modified: no body to store")

    def retry(self, response: Any) -> bool:
        """Whether a failed attempt is worth another; ``response`` is an ``Outcome`` (or
        aiohttp's response, where an aiodownload override asks)."""
        transient = getattr(response, "transient", None)
        if transient is None:  # a response: its status alone says
            return is_transient(ErrorKind.HTTP, getattr(response, "status", None))
        return bool(transient)

    def get_sleep_time(self, bundle: Bundle) -> float:
        """Seconds to wait before the next attempt (``bundle.attempts`` made so far).

        The wait holds no concurrency slot. It is called before every attempt, as in aiodownload.
        """
        return 0.0


class Lenient(RequestStrategy):
    """2 concurrent requests and 0.25 s between starts per host; up to 4 retries 60 s apart.

    Every failure is retried except 404 and the failures no retry can fix (invalid URL, ...).
    """

    def __init__(self, max_attempts: int = 5, **options: Any) -> None:
        options.setdefault("concurrent", 2)
        options.setdefault("delay", 0.25)
        super().__init__(max_attempts=max_attempts, **options)

    def retry(self, response: Any) -> bool:
        return getattr(response, "status", None) != 404

    def get_sleep_time(self, bundle: Bundle) -> float:
        return 60.0 if bundle.attempts > 0 else 0.0


class BackOff(RequestStrategy):
    """Exponential backoff: retries of transient failures after 0.25, 0.5, 1, ... capped at 60 s."""

    def __init__(self, max_attempts: int = 10, **options: Any) -> None:
        super().__init__(max_attempts=max_attempts, **options)

    def get_sleep_time(self, bundle: Bundle) -> float:
        return exponential_delay(bundle.attempts, base=0.25, cap=60.0)


__all__ = [
    "BackOff",
    "DownloadStrategy",
    "ErrorKind",
    "Lenient",
    "Outcome",
    "RequestStrategy",
]
