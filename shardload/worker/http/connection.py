"""One TCP (or TLS) connection: sends a request, feeds the answer to httptools and the body to
its ``LeanResponse``, and watches for stalls.

A body with a Content-Length and no transfer coding bypasses httptools: httptools gets the
headers only, and the bytes the transport read go to the response as they are (the part of a
read past the headers as a memoryview of it), counted down to the declared length. httptools
would copy every body byte once more (into the bytes it passes to ``on_body``): a tenth of a
large download's CPU, and ~15% of a 100 KiB one's, whose body mostly arrives in the same read
as its headers. The connection then gets a fresh parser for its next request, since the old one
is left in the middle of a body.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import httptools

from ...errors import DownloadFailed, ErrorKind
from .response import LeanResponse

if TYPE_CHECKING:
    from .client import LeanClient

MAX_HEAD = 100 * 1024  # bytes of status line and headers
_SPLIT_FROM = 8192  # a smaller read's body is cheaper to copy than to split off
# Bytes of chunked framing (size lines, extensions, CRLFs) allowed per chunk, past MAX_HEAD:
# an endless size line would never end the body, nor deliver a byte of it.
_FRAMING_PER_CHUNK = 256
_CLOCK_SLACK = 0.002  # seconds: a timer set for t may run at t - 1 ms


def _parser(conn: Connection) -> httptools.HttpResponseParser:
    parser = httptools.HttpResponseParser(conn)
    # Lines ended by a bare LF, and header values folded over lines (obs-fold, which RFC 9112
    # has a user agent read as spaces), as some servers send and curl and aiohttp accept.
    parser.set_dangerous_leniencies(lenient_optional_cr_before_lf=True, lenient_headers=True)
    return parser


class Connection(asyncio.Protocol):
    """One TCP (or TLS) connection and the response being parsed on it."""

    def __init__(self, client: LeanClient, key: tuple[str, str, int]) -> None:
        self.client = client
        self.key = key
        self.loop = client.loop
        self.transport: asyncio.Transport | None = None
        self.parser = _parser(self)
        self.closed = False
        self.idle_since = 0.0
        self.header_list: list[tuple[str, str]] = []
        self.content_length: int | None = None
        self._reason = ""
        self._chunked = False
        self._received = 0  # bytes of the current response, headers included
        self._trailers = 0  # bytes of trailer fields after a chunked body (dropped, but capped)
        self._chunks = 0  # chunk size lines of a chunked body so far
        self._head_end = 0  # bytes received by the read that completed the headers
        self._body = 0
        self._raw_left = 0  # body bytes still to come past the parser (see the module doc)
        self._response: LeanResponse | None = None
        self._head: asyncio.Future[LeanResponse] | None = None
        self._url = ""
        self._reusable = False
        self._raw_keep_alive = False
        self._expecting = False  # between sending a request and the end of its answer
        self._paused = False
        self._last = 0.0
        self._sent = 0.0  # when the request went
        self._timeout = 0.0
        self._timer: asyncio.TimerHandle | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # Counted here, where connection_lost's uncounting is sure to follow (even if the
        # connect is cancelled before create_connection returns).
        self.client._open += 1

    def data_received(self, data: bytes) -> None:
        if not self._expecting:
            # Bytes nobody asked for (after a complete answer, or on an idle connection): the
            # stream can no longer be trusted to line up with the next request.
            self._reusable = False
            self.abort()
            return
        self._last = self.loop.time()
        self._received += len(data)
        if self._raw_left:
            self._raw_body(data)
            return
        if (
            self._response is None
            and len(data) > _SPLIT_FROM
            and data.find(b"\r\n\r\n", 0, MAX_HEAD) >= 0
        ):
            self._split_heads(data)
        else:
            self._parse(data)

    def _split_heads(self, data: bytes) -> None:
        """Headers and much of the body in one read: only the heads (interim 1xx answers, then
        the final one) go to httptools, and the body past them is a view of this read, not a
        copy (see the module doc). Each part counts as received once it is parsed or fed, so
        the header and framing caps see the final answer's head end where it ends."""
        self._received -= len(data)
        start = 0
        while self._response is None and not self.closed:
            end = data.find(b"\r\n\r\n", start, start + MAX_HEAD)
            if end < 0:
                break
            self._received += end + 4 - start
            self._parse(data[start : end + 4])
            start = end + 4
        rest = memoryview(data)[start:]
        self._received += len(rest)
        if self._raw_left:
            self._raw_body(rest)
        elif rest and not self.closed:
            self._parse(bytes(rest))  # a chunked body, one without a length, or no head: rare

    def _parse(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(DownloadFailed(ErrorKind.PROTOCOL, "the server switched protocols"))
        except httptools.HttpParserError as exc:
            why = exc.__context__ if isinstance(exc.__context__, _BadStatus) else exc
            self._fail(DownloadFailed(ErrorKind.PROTOCOL, f"malformed HTTP response: {why}"))
        else:
            response = self._response
            if self._trailers > MAX_HEAD and not self.closed:
                # Trailers are dropped, but an endless stream of them would never end the body.
                self._fail(DownloadFailed(ErrorKind.PROTOCOL, f"trailers over {MAX_HEAD} bytes"))
            elif (
                self._chunked
                and self._received - self._head_end - self._body - self._trailers
                > MAX_HEAD + _FRAMING_PER_CHUNK * self._chunks
                and self._expecting
                and not self.closed
            ):
                self._fail(
                    DownloadFailed(
                        ErrorKind.PROTOCOL,
                        f"chunk framing over {MAX_HEAD} bytes past its {self._chunks} chunks",
                    )
                )
            elif response is None:
                if self._received > MAX_HEAD and not self.closed:
                    # Still no end of headers: they would grow without bound (curl's limit too).
                    self._fail(
                        DownloadFailed(
                            ErrorKind.PROTOCOL, f"response headers over {MAX_HEAD} bytes"
                        )
                    )
            elif (
                self._expecting
                and not self._chunked
                and self.content_length is not None
                and self.content_length > self._body
            ):
                # Mid-body with a known length: the rest need not go through the parser.
                self._raw_left = self.content_length - self._body
                self._raw_keep_alive = self.parser.should_keep_alive()
                self.parser = _parser(self)

    def _raw_body(self, data: bytes | memoryview) -> None:
        response = self._response
        if response is None:  # pragma: no cover - _raw_left is set only with a response
            return
        extra: bytes | memoryview = b""
        if len(data) > self._raw_left:
            data, extra = data[: self._raw_left], data[self._raw_left :]
        self._raw_left -= len(data)
        self._body += len(data)
        response._feed(data)
        if self._raw_left:
            return
        self._expecting = False
        self._reusable = self._raw_keep_alive
        self._stop_timer()
        response._finish()
        if extra:
            self.abort()  # bytes past the declared length: nobody asked for them

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost decides what the end means

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.client._forget(self)
        response = self._response
        if response is not None and not response._complete:
            if self.content_length is None and not self._chunked and exc is None:
                response._finish()  # no length, no chunks: the body ends with the connection
            elif self.content_length is None and not self._chunked:
                # A reset is no end: the server gave up on the body (curl's error 56 too).
                message = f"connection reset after {self._body} bytes of a body without length"
                response._finish(DownloadFailed(ErrorKind.TRUNCATED, message))
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
        if self._response is not None:  # a trailer after a chunked body: not kept
            self._trailers += len(name) + len(value)
            return
        self.header_list.append((name.decode("latin-1"), value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        if not self._expecting:
            return  # that second answer is ignored
        status = self.parser.get_status_code()
        if status < 100:  # "000" parses; as an answer it means nothing (curl refuses it too)
            raise _BadStatus(no_status(status))
        if 100 <= status < 200:
            self.header_list = []  # an interim answer (100 Continue): the real one follows
            return
        for name, value in self.header_list:
            lowered = name.lower()
            if lowered == "content-length" and value.strip().isdigit():
                self.content_length = int(value)
            elif lowered == "transfer-encoding":
                # Chunked only as the last coding; before it, the body ends with the connection.
                self._chunked = value.rsplit(",", 1)[-1].strip().lower() == "chunked"
        self._head_end = self._received
        response = self._response = LeanResponse(self, self._url, status, self._reason)
        if self._head is not None and not self._head.done():
            self._head.set_result(response)

    def on_chunk_header(self) -> None:
        self._chunks += 1

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
        # A 204 or 304 has no body; one that declared a length may send it yet, and on a
        # pooled connection those bytes would answer the next request.
        self._reusable = self.parser.should_keep_alive() and not (
            self._response.status in (204, 304) and self.content_length
        )
        self._stop_timer()
        self._response._finish()

    # Driven by the client.
    def send(self, head: bytes, url: str, timeout: float) -> asyncio.Future[LeanResponse]:
        self.header_list = []
        self.content_length = None
        self._chunked = False
        self._received = self._body = self._raw_left = self._trailers = self._chunks = 0
        self._response = None
        self._reusable = False
        self._expecting = True
        self._url = url
        self._head = self.loop.create_future()
        self._last = self._sent = self.loop.time()
        self._timeout = timeout
        if timeout and timeout > 0:
            self._timer = self.loop.call_at(self._last + timeout, self._check_stall)
        if self.transport is None or self.closed:
            self._head.set_exception(DownloadFailed(ErrorKind.RESET, "connection closed"))
        else:
            self.transport.write(head)
        return self._head

    def _check_stall(self) -> None:
        """The read timeout: no data for ``timeout`` seconds, or, until the response's headers
        are complete, ``timeout`` seconds since the request went (a server dripping header
        lines one at a time would otherwise hold the request for ever)."""
        self._timer = None
        now = self.loop.time()
        heading = self._head is not None and not self._head.done()
        since = self._sent if heading else self._last
        if self._paused:  # reading held back by us: the stall clock starts again
            self._timer = self.loop.call_at(now + self._timeout, self._check_stall)
            return
        if now - since < self._timeout - _CLOCK_SLACK:
            # Data came meanwhile: look again a timeout after it. The loop's clock and timers
            # count in milliseconds, so a timer may fire a hair early; counted from now, that
            # made a stall fail after twice its timeout.
            self._timer = self.loop.call_at(since + self._timeout, self._check_stall)
            return
        if heading and now - self._last < self._timeout - _CLOCK_SLACK:
            message = f"no complete response headers within {self._timeout:g} s (read timeout)"
        else:
            message = f"no data for {self._timeout:g} s (read timeout)"
        self._fail(DownloadFailed(ErrorKind.TIMEOUT, message))

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


class _BadStatus(Exception):
    """A status line httptools takes and HTTP does not (under 100): raised from its callback."""


def no_status(status: int) -> str:
    """Why a status under 100 is refused (by both clients)."""
    return f"status {status:03d} is no HTTP status"
