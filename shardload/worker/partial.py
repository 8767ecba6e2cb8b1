"""The bytes of a cut body, kept for the next attempt of the same download to continue
(``ranges`` says when; ``files.stream_to_file`` keeps and continues them).

Invariants:
- a download (the engine's retry loop, ``holding``) keeps at most one cut body, in its own
  temporary file, closed between attempts; when the download ends, however it ends, a kept
  file nobody continued is removed;
- a kept file is continued only while it is what was kept: a plain file (opened
  O_APPEND|O_NOFOLLOW, in a temporary folder that is no symlink) of the size kept. Its
  sha256 is computed again from the file, so the digest never depends on how far the
  interrupted attempt had hashed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from ..errors import DownloadFailed, ErrorKind
from ..ranges import range_request
from .temp_files import Temp, refuse_symlink, temp_dir


@dataclass(frozen=True, slots=True)
class Kept:
    """A cut body's first ``size`` bytes at ``path``, of ``total``, from the response that
    ``validator`` names."""

    path: str
    size: int
    validator: str
    total: int


class Holder:
    """The kept body of one download, if any."""

    __slots__ = ("kept",)

    def __init__(self) -> None:
        self.kept: Kept | None = None

    def take(self) -> Kept | None:
        """The kept body, which the caller now owns (continues or ``drop``s)."""
        kept, self.kept = self.kept, None
        return kept


_holder: ContextVar[Holder | None] = ContextVar("shardload_partial", default=None)


@contextlib.contextmanager
def holding(enabled: bool) -> Iterator[None]:
    """Around a download's attempts: with ``enabled``, a body cut in one is kept for the next."""
    if not enabled:
        yield
        return
    holder = Holder()
    token = _holder.set(holder)
    try:
        yield
    finally:
        _holder.reset(token)
        drop(holder.take())


def holder() -> Holder | None:
    """This download's holder; None where cut bodies are not kept."""
    return _holder.get()


def range_headers() -> dict[str, str] | None:
    """The headers asking for the rest of this download's kept body, if it has one."""
    held = _holder.get()
    kept = held.kept if held is not None else None
    return None if kept is None else range_request(kept.size, kept.validator)


def forget() -> None:
    """Remove this download's kept body: the next attempt asks for the whole body."""
    held = _holder.get()
    if held is not None:
        drop(held.take())


def keep(held: Holder, tmp: Temp, validator: str, total: int) -> bool:
    """Keep ``tmp`` (its descriptor open, everything received written) for the next attempt;
    False when there is nothing to keep, and ``tmp`` is still the caller's to discard."""
    try:
        size = os.fstat(tmp.fd).st_size
    except OSError:
        return False
    if not 0 < size < total:
        return False
    fd, tmp.fd = tmp.fd, -1
    with contextlib.suppress(OSError):  # reopen() checks the size it finds
        os.close(fd)
    drop(held.take())
    held.kept = Kept(tmp.path, size, validator, total)
    return True


def drop(kept: Kept | None) -> None:
    if kept is not None:
        with contextlib.suppress(OSError):
            os.unlink(kept.path)


def reopen(kept: Kept, home: str) -> Temp:
    """The kept file, open for appending (and reading); ``DownloadFailed`` (the kept file
    removed) when it is no longer what was kept."""
    # Read as well: its sha256 is computed again through the same descriptor.
    flags = os.O_RDWR | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0)
    try:
        refuse_symlink(temp_dir(home))
        fd = os.open(kept.path, flags)
    except DownloadFailed:
        drop(kept)
        raise
    except OSError as exc:
        drop(kept)
        raise DownloadFailed(ErrorKind.DISK, f"cannot reopen the cut body kept: {exc}") from exc
    tmp = Temp(fd, kept.path)
    try:
        size = os.fstat(fd).st_size
    except OSError as exc:
        tmp.discard()
        raise DownloadFailed(ErrorKind.DISK, f"cannot read the cut body kept: {exc}") from exc
    if size != kept.size:
        tmp.discard()
        message = f"the cut body kept changed on disk ({size} bytes, {kept.size} kept)"
        raise DownloadFailed(ErrorKind.DISK, message)
    return tmp


def hash_prefix(fd: int, size: int) -> Any:
    """sha256 of the first ``size`` bytes of the file ``fd``, to go on with (run in a thread)."""
    digest = hashlib.sha256()
    done = 0
    while done < size:
        block = os.pread(fd, min(size - done, _BLOCK), done)
        if not block:
            raise DownloadFailed(ErrorKind.DISK, "the cut body kept got shorter on disk")
        digest.update(block)
        done += len(block)
    return digest


_BLOCK = 1 << 20
