"""The one place where exceptions become error kinds.

Every exception an attempt can raise (aiohttp, asyncio, OS, a user's strategy) is mapped here to
an ``ErrorKind`` and a message; nothing else in shardload inspects aiohttp's exception types.
The lean client (``http``) raises ``DownloadFailed`` itself, except for connecting, where the
socket layer's exceptions are mapped by ``connect_error``. Messages never carry credentials
(URLs are redacted).
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import ssl
import sys
from typing import Any

from ..errors import DownloadFailed, ErrorKind
from ..urls import redact


def classify(exc: BaseException, url: str = "") -> tuple[ErrorKind, str]:
    """The error kind and a one-line message for an exception raised during an attempt."""
    kind = _kind(exc)
    if isinstance(exc, DownloadFailed):
        return exc.kind, exc.message
    text = " ".join(str(exc).split()) or type(exc).__name__  # one line, as a message is
    if url:
        text = text.replace(url, redact(url))
    return kind, f"{type(exc).__name__}: {text}"[:500]


def override_failure(exc: Exception, url: str) -> tuple[ErrorKind, str]:
    """What an exception out of a subclass's ``main`` or ``request_and_download`` means:
    aiodownload's let a refused connection or a timeout out, a failure of its kind (retried
    as such); anything else is a bug of the override's."""
    if network_error(exc):
        return classify(exc, url)
    return ErrorKind.STRATEGY, f"{type(exc).__name__}: {exc}"


def network_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a failure of the network (a connection, a timeout, TLS, DNS, an
    HTTP client's error), not of the code that made the request."""
    aiohttp = sys.modules.get("aiohttp")
    if aiohttp is not None and isinstance(exc, aiohttp.ClientError | aiohttp.ServerTimeoutError):
        return True
    return isinstance(exc, asyncio.TimeoutError | ssl.SSLError | ConnectionError | socket.gaierror)


def _kind(exc: BaseException) -> ErrorKind:
    if isinstance(exc, DownloadFailed):
        return exc.kind
    # An aiohttp exception implies aiohttp is imported; a worker on the lean client never is.
    aiohttp = sys.modules.get("aiohttp")
    if aiohttp is not None and isinstance(exc, aiohttp.ClientError | aiohttp.ServerTimeoutError):
        return _aiohttp_kind(exc, aiohttp)
    if isinstance(exc, asyncio.TimeoutError):
        return ErrorKind.TIMEOUT
    if isinstance(exc, ssl.SSLError):
        return ErrorKind.TLS
    if isinstance(exc, ConnectionError):
        return ErrorKind.RESET
    if isinstance(exc, OSError):
        # A path too long for the file system stays so: permanent, unlike a full disk.
        return ErrorKind.UNSAFE_PATH if exc.errno == errno.ENAMETOOLONG else ErrorKind.DISK
    return ErrorKind.STRATEGY


def _aiohttp_kind(exc: BaseException, aiohttp: Any) -> ErrorKind:
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return ErrorKind.DNS
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
        return ErrorKind.TLS
    if isinstance(exc, aiohttp.ClientConnectorError):
        return ErrorKind.CONNECT
    if isinstance(exc, aiohttp.TooManyRedirects | aiohttp.RedirectClientError):
        return ErrorKind.REDIRECT
    if isinstance(exc, aiohttp.InvalidURL | aiohttp.InvalidUrlClientError):
        return ErrorKind.INVALID_URL
    if isinstance(exc, aiohttp.NonHttpUrlClientError):
        return ErrorKind.UNSUPPORTED_SCHEME
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return ErrorKind.TIMEOUT
    if isinstance(exc, aiohttp.ClientPayloadError):
        # A body that does not decode is what the server sent, not a cut: asking again gets
        # the same (the lean client says protocol too).
        if isinstance(exc.__cause__, aiohttp.http_exceptions.ContentEncodingError):
            return ErrorKind.PROTOCOL
        return ErrorKind.TRUNCATED
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientConnectionResetError):
        return ErrorKind.RESET
    if isinstance(exc, aiohttp.ClientOSError):
        return ErrorKind.RESET if exc.errno in _RESET_ERRNOS else ErrorKind.CONNECT
    if type(exc) is aiohttp.ClientResponseError and exc.__cause__ is None:
        # raise_for_status() in an aiodownload-style assert_response: the status refused it,
        # so a 503 stays transient (retried, and by --retry-transient) as an assert would.
        # (A response aiohttp could not parse is one too, caused by its parser: protocol.)
        return ErrorKind.HTTP
    return ErrorKind.PROTOCOL


_RESET_ERRNOS = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED})


def connect_error(exc: BaseException, host: str, port: int) -> tuple[ErrorKind, str]:
    """The error kind and message for a failure to open a connection to ``host:port``."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if isinstance(exc, TimeoutError):
        return ErrorKind.TIMEOUT, f"cannot connect to {where}: connect timeout"
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return ErrorKind.TLS, f"TLS handshake with {where} failed: {exc}"[:500]
    if isinstance(exc, socket.gaierror):
        return ErrorKind.DNS, f"cannot resolve {host}: {exc}"[:500]
    # From the errno: uvloop and asyncio's own loop word a refusal differently ("Connection
    # refused", "Connect call failed (...)"), and one download must read the same on both.
    errno_ = exc.errno if isinstance(exc, OSError) else None
    reason = (os.strerror(errno_) if errno_ else None) or exc
    return ErrorKind.CONNECT, f"cannot connect to {where}: {reason}"[:500]
