"""One exception hierarchy, and the error kinds a failed bundle carries.

Exceptions never cross a process boundary (DESIGN rule 3): a worker turns every failure into an
``ErrorKind`` plus a message on the bundle. The exceptions below are raised only for misuse that
the caller must fix before any work starts (a bad option, an unpicklable strategy).
"""

from __future__ import annotations

from enum import StrEnum


class ErrorKind(StrEnum):
    """Why a bundle failed. A ``StrEnum``: compares equal to its plain string value."""

    INVALID_URL = "invalid_url"
    UNSUPPORTED_SCHEME = "unsupported_scheme"
    BAD_INPUT = "bad_input"
    DNS = "dns"
    CONNECT = "connect"
    TIMEOUT = "timeout"
    RESET = "reset"
    TRUNCATED = "truncated"
    TLS = "tls"
    HTTP = "http"
    REDIRECT = "redirect"
    TOO_LARGE = "too_large"
    PROTOCOL = "protocol"
    DISK = "disk"
    UNSAFE_PATH = "unsafe_path"
    WORKER_CRASH = "worker_crash"
    STRATEGY = "strategy"
    BREAKER_OPEN = "breaker_open"
    ROBOTS = "robots"


# Worth another attempt: the same request may well succeed later. Everything else is permanent.
TRANSIENT_KINDS = frozenset(
    {
        ErrorKind.DNS,
        ErrorKind.CONNECT,
        ErrorKind.TIMEOUT,
        ErrorKind.RESET,
        ErrorKind.TRUNCATED,
        ErrorKind.TLS,
        ErrorKind.WORKER_CRASH,
        ErrorKind.BREAKER_OPEN,
        # A URL fails as robots only when robots.txt could not be read (a disallowed one is
        # skipped, not failed): a later run may read it.
        ErrorKind.ROBOTS,
    }
)
TRANSIENT_STATUSES = frozenset(
    {408, 425, 429, 500, 502, 503, 504, 507, 509, 520, 521, 522, 523, 524}
)

# Failures a retry can never fix, whatever a lenient strategy says.
NEVER_RETRY_KINDS = frozenset(
    {
        ErrorKind.INVALID_URL,
        ErrorKind.UNSUPPORTED_SCHEME,
        ErrorKind.BAD_INPUT,
        ErrorKind.TOO_LARGE,
        ErrorKind.UNSAFE_PATH,
        ErrorKind.STRATEGY,
        ErrorKind.ROBOTS,
    }
)


def is_transient(kind: str | None, status: int | None) -> bool:
    """True for failures worth retrying later: 5xx, 408/425/429, network errors, timeouts."""
    if kind == ErrorKind.HTTP:
        return status is not None and (status in TRANSIENT_STATUSES or 500 <= status < 600)
    return kind in TRANSIENT_KINDS


class ShardloadError(Exception):
    """Base class of every exception shardload raises."""


class ConfigurationError(ShardloadError, ValueError):
    """An option or a strategy is unusable; raised before any work starts."""


class WorkerKilledAtStart(ShardloadError):
    """A worker process was killed by a signal before it was ready (an OOM kill, a
    SIGKILL): a crash of that worker, not a setup error. The coordinator counts it against
    ``max_restarts`` like any other crash."""


class ResponseRejected(ShardloadError, AssertionError):
    """Raised by ``RequestStrategy.assert_response`` for an unsuccessful response.

    It subclasses ``AssertionError`` because aiodownload strategies signal rejection with
    ``assert``; the engine catches ``AssertionError`` so both styles keep working.
    """


class DownloadFailed(ShardloadError):
    """Raised inside a worker to end an attempt with a given kind; never leaves the worker."""

    def __init__(self, kind: ErrorKind, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
