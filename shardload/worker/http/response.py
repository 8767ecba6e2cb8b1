"""The body of one response as a stream: buffered with flow control, decoded in bounded steps."""

from __future__ import annotations

import asyncio
import collections
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

from multidict import CIMultiDict, CIMultiDictProxy

from ...errors import DownloadFailed, ErrorKind

if TYPE_CHECKING:
    from .connection import Connection

HIGH_WATER = 4 << 20  # buffered body bytes at which reading pauses
_LOW_WATER = 1 << 20
_DECODE_STEP = 1 << 20
# Encoded bytes in a row that may decode to nothing (gzip headers, zero padding): past this,
# empty blocks or members that keep coming would never end the body nor write a byte of it.
_IDLE_LIMIT = 1 << 20
# A piece of a body: a view of the bytes read where slicing them off would copy (see connection).
Piece = bytes | memoryview


class LeanResponse:
    """One response; its body is read with ``content.iter_chunked`` or ``content.read``."""

    def __init__(self, conn: Connection, url: str, status: int, reason: str) -> None:
        self._conn = conn
        self.url = url
        self.status = status
        self.reason = reason
        self.headers: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict(conn.header_list))
        self.content_length: int | None = conn.content_length
        self._chunks: collections.deque[Piece] = collections.deque()
        self._buffered = 0
        self._complete = False
        self._error: DownloadFailed | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._tap: Any = None
        self._sink: Callable[[Piece], bool] | None = None

    @property
    def content(self) -> LeanResponse:
        """aiohttp's ``response.content`` stream: here the response reads its own body."""
        return self

    def exception(self) -> DownloadFailed | None:
        """What ended the body early, if anything did (aiohttp's ``StreamReader.exception``)."""
        return self._error

    def tap(self, digest: Any) -> None:
        """Update ``digest`` (a hashlib object; None stops) with every byte of the body as
        sent that is not read yet: what is buffered now, then each piece as it arrives, while
        it is still in the CPU cache (see ``files.hash_as_read``)."""
        self._tap = digest
        if digest is not None:
            for data in self._chunks:
                digest.update(data)

    def sink(self, consume: Callable[[Piece], bool] | None) -> None:
        """Hand each piece of the body as sent to ``consume`` (None stops), what is buffered
        first, then each piece in the connection's callback as it arrives, instead of
        buffering it for a task to wake up and read. A piece ``consume`` declines (it returns
        False) and every piece after it are buffered as before, in order."""
        self._sink = consume
        chunks = self._chunks
        while consume is not None and chunks:
            if not consume(chunks[0]):
                self._sink = None
                break
            self._buffered -= len(chunks.popleft())
        if self._buffered < _LOW_WATER:
            self._conn.resume()

    # Fed by the connection.
    def _feed(self, data: Piece) -> None:
        if self._sink is not None:
            if self._sink(data):
                return
            self._sink = None
        if self._tap is not None:
            self._tap.update(data)
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > HIGH_WATER:
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

    async def _next_raw(self) -> Piece | None:
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

    async def iter_chunked(self, n: int) -> AsyncIterator[Piece]:
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
    """Incremental gzip/deflate decoding in bounded steps (see the module's invariants). A gzip
    body may hold several members, decoded one after another (as ``gzip -d`` does); bytes
    after the last one other than zero padding are a protocol error, and a stream that stops
    before its end is truncated."""

    def __init__(self, gzip: bool) -> None:
        self._gzip = gzip
        self._zlib = self._new()
        self._first = True
        self._between = b""  # bytes after a gzip member's end, until the next one shows
        self._idle = 0  # encoded bytes since the last decoded one

    def _new(self, wbits: int | None = None) -> Any:
        return zlib.decompressobj(wbits or (16 + zlib.MAX_WBITS if self._gzip else zlib.MAX_WBITS))

    def feed(self, data: Piece) -> Iterator[bytes]:
        """The decoded pieces of ``data``, one step at a time: a consumer that stops (past
        ``max_bytes``) stops the decoding, so one read of a bomb never sits in memory whole
        (127 KB read at once decoded to 125 MiB before the size check saw any of it)."""
        decoded = False
        try:
            for out in self._steps(data):
                decoded = True
                yield out
        except zlib.error as exc:
            if self._first and not self._gzip:
                # "deflate" is sent both zlib-wrapped (as specified) and raw; accept both.
                self._zlib = self._new(-zlib.MAX_WBITS)
                self._first = False
                yield from self.feed(data)
                return
            raise DownloadFailed(ErrorKind.PROTOCOL, f"cannot decode the body: {exc}") from exc
        self._idle = 0 if decoded else self._idle + len(data)
        if self._idle > _IDLE_LIMIT:
            raise DownloadFailed(
                ErrorKind.PROTOCOL, f"{self._idle} bytes of the body decoded to nothing"
            )

    def _steps(self, data: Piece) -> Any:
        while data:
            if self._zlib.eof:
                if not self._gzip:
                    return  # past a deflate stream's end: nothing more is part of it
                data = self._next_member(data)
                if not data:
                    return
            out = self._zlib.decompress(data, _DECODE_STEP)
            self._first = False
            data = self._zlib.unconsumed_tail or self._zlib.unused_data
            if out:
                yield out

    def _next_member(self, data: Piece) -> bytes:
        """What starts the next gzip member (a fresh decoder takes it), or b"" for now."""
        self._between = (self._between + bytes(data)).lstrip(b"\0")  # padding: gzip -d allows it
        if len(self._between) < 2:
            return b""  # too little to tell yet
        if not self._between.startswith(b"\x1f\x8b"):
            raise DownloadFailed(ErrorKind.PROTOCOL, "bytes after the end of the gzip body")
        data, self._between = self._between, b""
        self._zlib = self._new()
        return data

    def end(self) -> list[bytes]:
        tail = self._zlib.flush()
        if self._between.strip(b"\0"):
            raise DownloadFailed(ErrorKind.PROTOCOL, "bytes after the end of the gzip body")
        if not self._zlib.eof and not self._first:
            name = "gzip" if self._gzip else "deflate"
            raise DownloadFailed(ErrorKind.TRUNCATED, f"the {name} body ended early")
        return [tail] if tail else []


def _decoder(encoding: str | None) -> _Decoder | None:
    name = (encoding or "").strip().lower()
    if name in ("gzip", "x-gzip"):
        return _Decoder(gzip=True)
    if name == "deflate":
        return _Decoder(gzip=False)
    return None  # identity, or an encoding we never asked for: stored as sent
