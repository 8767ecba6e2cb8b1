"""A response body streamed to disk atomically (DESIGN rule 6).

Invariants:
- a body is streamed to a temporary file in ``<home>/.shardload-tmp/`` (``temp_files``; the
  same filesystem as the final path, so the final ``os.replace`` is atomic);
- a file appears at its final path only when complete and verified: the whole body was read,
  the HTTP client checked it against Content-Length, and it fits ``max_bytes``; then
  ``tree.commit`` moves it into place, never outside home;
- a failed attempt removes its temporary file and never touches an earlier copy at the final path.

Small bodies are written with one inline ``write`` (page cache, microseconds); bodies over
``_INLINE_LIMIT`` are written in a thread, so a slow disk does not stall the event loop. Where
the sha256 is computed depends on whether the process has a core to spare (``hash_as_read``);
where it has none, the lean client's large bodies are hashed and written piece by piece as
they arrive (``inline_writer``), and in the thread again for a while once the disk is slow.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from ..bundle import Bundle
from ..errors import DownloadFailed, ErrorKind
from ..ranges import Continuable, continuable, continues
from . import partial
from .failures import classify
from .inline_writer import InlineWriter, disk_is_fast, write_all
from .meter import received
from .own_writes import note_commit
from .partial import Kept
from .temp_files import Temp, open_temp
from .tree import commit

if TYPE_CHECKING:
    from ..strategy import DownloadStrategy, Response

_INLINE_LIMIT = 1 << 20
_hash_as_read = False  # see hash_as_read()
# Bodies are read at least this much at a time (the session's read buffer matches it):
# aiohttp's 64 KiB default pauses and resumes the socket every 64 KiB of a large body.
READ_SIZE = 1 << 20


def hash_as_read(on: bool) -> None:
    """Hash each piece of a body as it arrives, in the event loop's thread (``on``), or in the
    thread that writes it (the default).

    The writer thread hashes beside the loop, on another core, when the process has one to
    spare (one worker on a multi-core machine). When every core runs a worker, the thread buys
    no parallelism, and by the time it hashes a batch, the reads of the process's other bodies
    have pushed that batch's bytes out of the CPU cache: hashing them as they arrive, still in
    cache, cut a processes=2 run of 16 x 64 MiB on 2 cores from ~1.6 s to ~1.3 s, while the
    same change with one worker made it ~10% slower. Set once per worker process.
    """
    global _hash_as_read  # noqa: PLW0603  (one setting per process, like its allocator's)
    _hash_as_read = on


class SpeedGuard:
    """Fails a body that stays under ``limit`` bytes/s for a whole ``window`` of seconds."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._start = time.monotonic()
        self._bytes = 0

    def feed(self, size: int) -> None:
        if self.limit <= 0:
            return
        self._bytes += size
        elapsed = time.monotonic() - self._start
        if elapsed >= self.window:
            if self._bytes / elapsed < self.limit:
                raise DownloadFailed(
                    ErrorKind.TIMEOUT,
                    f"body slower than {self.limit} B/s for {self.window:g} s",
                )
            self._start, self._bytes = time.monotonic(), 0


# Set by the engine around on_success(): the request strategy's speed floor for this body,
# without changing aiodownload's on_success(response, bundle) signature.
speed_guard: ContextVar[SpeedGuard | None] = ContextVar("speed_guard", default=None)


async def stream_to_file(response: Response, bundle: Bundle, strategy: DownloadStrategy) -> None:
    """Write the response body to ``bundle.file_path`` atomically; sets bytes and sha256
    (unless the strategy's ``sha256`` is off)."""
    guard = speed_guard.get()
    meter = received.get()
    if bundle.file_path is None:
        raise DownloadFailed(ErrorKind.STRATEGY, "no file path for the bundle")
    home = strategy.home
    limit = strategy.max_bytes
    # A 204 has no body whatever its Content-Length says (RFC 9110).
    declared = response.content_length if response.status != 204 else None
    encoded = response.headers.get("Content-Encoding", "identity").lower() != "identity"
    held = partial.holder()
    kept = _continued(response, held, encoded)
    offset = kept.size if kept is not None else 0
    whole = offset + declared if declared is not None else None
    if kept is not None:
        whole = kept.total  # as its Content-Range said, declared length or not (chunked)
    if limit is not None and whole is not None and whole > limit and not encoded:
        partial.drop(kept)
        raise DownloadFailed(ErrorKind.TOO_LARGE, f"Content-Length {whole} > max {limit}")
    if kept is None:
        tmp = open_temp(home)
        digest = hashlib.sha256() if strategy.sha256 else None
    else:
        tmp = partial.reopen(kept, home)
        try:
            digest = await _hash_kept(tmp, offset) if strategy.sha256 else None
        except BaseException:
            tmp.discard()
            raise
    # Hashed as read: by the response as each piece arrives (the lean client's tap; only for a
    # body stored as sent), else here piece by piece. Otherwise the writer thread hashes.
    hash_here = digest is not None and _hash_as_read
    tap = getattr(response, "tap", None) if hash_here and not encoded else None
    # A large body that would be tapped is written in the connection's callback instead, as
    # it arrives (see inline_writer); what that declines comes through the loop below.
    big = declared is not None and declared > _INLINE_LIMIT
    sink = getattr(response, "sink", None) if tap and big and disk_is_fast() else None
    as_read = digest if hash_here and (tap is None or sink is not None) else None
    to_writer = None if hash_here else digest
    size = offset
    pending: list[bytes | memoryview] = []  # the lean client hands views (no copy)
    pending_size = 0
    try:
        inline = (
            InlineWriter(tmp.fd, digest, None if limit is None else limit - offset, guard, meter)
            if sink is not None
            else None
        )
        try:
            if sink is not None:
                sink(inline)
            elif tap is not None:
                tap(digest)
            async for chunk in response.content.iter_chunked(max(strategy.chunk_size, READ_SIZE)):
                if inline is not None:
                    size, inline = offset + inline.handover(), None
                size += len(chunk)
                if limit is not None and size > limit:
                    raise DownloadFailed(ErrorKind.TOO_LARGE, f"body exceeds max {limit} bytes")
                if guard is not None:
                    guard.feed(len(chunk))
                if meter is not None:
                    meter.value += len(chunk)
                if as_read is not None:
                    as_read.update(chunk)
                pending.append(chunk)
                pending_size += len(chunk)
                if pending_size >= _INLINE_LIMIT:
                    await _write_in_thread(tmp, pending, to_writer)
                    pending, pending_size = [], 0
        finally:
            # Before the file is closed: the connection may still be feeding this response.
            if sink is not None:
                sink(None)
            elif tap is not None:
                tap(None)
        if inline is not None:
            size = offset + inline.handover()
        if whole is not None and not encoded and size != whole:
            raise DownloadFailed(
                ErrorKind.TRUNCATED, f"got {size} of {whole} bytes (Content-Length)"
            )
        if pending and size > _INLINE_LIMIT:
            await _write_in_thread(tmp, pending, to_writer)
        else:
            _write_and_hash(tmp.fd, pending, to_writer)
        os.close(tmp.fd)
        tmp.fd = -1
        bundle.file_path = commit(tmp.path, bundle.file_path, home)
        note_commit(bundle.file_path)
    except Exception as exc:
        if not (held is not None and _keep(exc, held, tmp, pending, response, kept, encoded)):
            tmp.discard()
        raise
    except BaseException:
        tmp.discard()
        raise
    bundle.bytes = size
    bundle.sha256 = digest.hexdigest() if digest is not None else None


def _continued(response: Response, held: partial.Holder | None, encoded: bool) -> Kept | None:
    """The body kept from this download's last attempt, if this response continues it; a
    kept body it does not continue is removed (a 200 brings the whole body again)."""
    kept = held.take() if held is not None else None
    if kept is None:
        return None
    if response.status == 206:
        if not encoded and continues(response.headers.get("Content-Range"), kept.size, kept.total):
            return kept
        partial.drop(kept)
        answer = response.headers.get("Content-Range")
        coded = " (coded)" if encoded else ""
        raise DownloadFailed(
            ErrorKind.TRUNCATED,
            f"HTTP 206 with Content-Range {answer!r}{coded} does not continue the {kept.size}"
            f" of {kept.total} bytes kept: the next attempt starts over",
        )
    partial.drop(kept)
    return None


def _keep(
    exc: Exception,
    held: partial.Holder,
    tmp: Temp,
    pending: list[bytes | memoryview],
    response: Response,
    kept: Kept | None,
    encoded: bool,
) -> bool:
    """Keep what a body cut mid-way wrote, for the next attempt to continue (``ranges``);
    False where it cannot be continued (the caller removes it)."""
    if classify(exc)[0] not in _CUT or tmp.fd < 0 or encoded:
        return False
    if kept is not None:  # a continuation cut again: the first answer still names the body
        resumable: Continuable | None = Continuable(kept.validator, kept.total)
    elif response.status == 200:
        resumable = continuable(response.headers, response.content_length)
    else:
        resumable = None
    if resumable is None:
        return False
    try:
        _write_and_hash(tmp.fd, pending, None)  # what was read and not yet written
    except OSError:
        return False
    return partial.keep(held, tmp, resumable.validator, resumable.total)


# A body cut by the network: the rest may come on the next attempt.
_CUT = frozenset({ErrorKind.TRUNCATED, ErrorKind.RESET, ErrorKind.TIMEOUT})


async def _hash_kept(tmp: Temp, size: int) -> Any:
    """The sha256 of the kept bytes, read back in a thread (up to a whole body's)."""
    found: list[Any] = []
    await _in_thread(tmp, lambda fd: found.append(partial.hash_prefix(fd, size)))
    return found[0]


async def _write_in_thread(tmp: Temp, chunks: list[bytes | memoryview], digest: Any) -> None:
    await _in_thread(tmp, lambda fd: _write_and_hash(fd, chunks, digest))


async def _in_thread(tmp: Temp, work: Callable[[int], None]) -> None:
    """``work(fd)`` on the file in a thread. A cancelled caller leaves it to finish there,
    and the file open until it has (``Temp``)."""
    run = tmp.write_in_thread(work)
    try:
        writing = asyncio.get_running_loop().run_in_executor(None, run)
    except BaseException:
        tmp.thread_refused()
        raise
    # Cancelled, this download never looks at the batch's outcome again: an error of its
    # write is retrieved here, not logged as never retrieved.
    writing.add_done_callback(lambda done: done.cancelled() or done.exception())
    await asyncio.shield(writing)


def _write_and_hash(fd: int, chunks: list[bytes | memoryview], digest: Any) -> None:
    # Large bodies run this in a thread: hashlib and os.write both release the GIL.
    if digest is not None:
        for chunk in chunks:
            digest.update(chunk)
    # One system call per batch of pieces; a short write (rare on files) goes on piece by piece.
    for start in range(0, len(chunks), _IOV_MAX):
        batch = chunks[start : start + _IOV_MAX]
        written = os.writev(fd, batch) if len(batch) > 1 else 0
        for chunk in batch:
            if written >= len(chunk):
                written -= len(chunk)
                continue
            write_all(fd, memoryview(chunk)[written:])
            written = 0


_IOV_MAX = 1024  # Linux's limit on pieces per writev
