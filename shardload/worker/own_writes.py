"""An overridden ``on_success`` (or ``request_and_download``) that writes the file itself, as
aiodownload's did.

Invariants:
- the override gets the final path as ``bundle.file_path``, as in aiodownload: it may write
  there, append to what is there, read it, derive side files or other names from it, or upload
  under its name. While it runs, the final path holds what it has written so far;
- when it fails (it raises, it returns after a read of the body failed, an error it caught
  itself, or its attempt ends failed), the file it wrote is removed: a regular file at the
  final path that it created or changed, and one at a path it set on the bundle instead, if
  written since it began. A cut body never stays there for ``skip_cached`` (or a user) to take
  for a copy. An override that opens the final path for writing has replaced an earlier copy
  itself, before shardload could keep it; shardload cannot tell an append from a rewrite, so a
  file an override appended to is removed too when the override fails. A file it left as it
  was is left alone;
- a file shardload's own write committed while the override ran (an override that calls
  ``super().on_success()`` and then fails) is complete and verified: it stays, as any
  complete file would, rather than leaving nothing where an earlier copy was;
- only a file inside home, reached from home without following a symlink, is ever removed;
- ``bytes`` and ``sha256`` of a file it wrote are measured from the file when it set none.

An override that reads only part of a body on purpose fails too when the rest of the body is
then cut or stalls before it returns: aiohttp keeps that error on the stream, unread, the same
as one the override caught.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import stat
import time
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..bundle import Bundle
from .tree import regular_in_home

if TYPE_CHECKING:
    from ..strategy import DownloadStrategy

# File times come from the kernel's coarse clock, a few milliseconds behind time.time_ns().
_CLOCK_LAG_NS = 50_000_000


Identity = tuple[int, int, int, int]  # device, inode, size, mtime

# While an override runs: the identities of the files shardload's own write committed in
# this task (``note_commit``); None where no override is watched.
_commits: ContextVar[list[Identity] | None] = ContextVar("own_commits", default=None)


@dataclass(frozen=True)
class Before:
    """What stood at a bundle's path before an override ran, and when it began."""

    path: str | None
    identity: Identity | None
    began_ns: int
    commits: list[Identity]  # committed by shardload's own write since (complete files)
    token: Token[list[Identity] | None] = field(repr=False)


def note_before(bundle: Bundle) -> Before:
    """Note what stands at ``bundle``'s path, and the files shardload commits from now on
    in this task, until ``stop_noting``. An override inside another's shares its list."""
    commits = _commits.get()
    if commits is None:
        commits = []
    token = _commits.set(commits)
    return Before(bundle.file_path, _identity(bundle.file_path), time.time_ns(), commits, token)


def stop_noting(before: Before) -> None:
    _commits.reset(before.token)


def note_commit(path: str) -> None:
    """Shardload's own write put a complete file at ``path``: while an override is watched,
    it is no cut body to remove when that override fails. One ContextVar read otherwise."""
    commits = _commits.get()
    if commits is not None:
        identity = _identity(path)
        if identity is not None:
            commits.append(identity)


async def run_on_success(strategy: DownloadStrategy, response: Any, bundle: Bundle) -> None:
    """``strategy.on_success(response, bundle)``, an override's that may write the file
    itself, cleaned up after as the module says."""
    before = note_before(bundle)
    try:
        await strategy.on_success(response, bundle)
        failure = _read_failure(response)
        if failure is not None:
            raise failure
    except BaseException:
        remove_written(bundle, before, strategy.home)
        raise
    finally:
        stop_noting(before)


def _read_failure(response: Any) -> BaseException | None:
    """The error a read of ``response``'s body met, if any (both clients keep it on the
    body stream, as aiohttp's ``StreamReader.exception()``)."""
    exception = getattr(getattr(response, "content", None), "exception", None)
    return exception() if callable(exception) else None


def _identity(path: str | None) -> Identity | None:
    """The identity of the regular file at ``path``; None where none stands."""
    if path is None:
        return None
    try:
        st = os.lstat(path)
    except (OSError, ValueError):
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def remove_written(bundle: Bundle, before: Before, home: str) -> None:
    """After a failed attempt: remove what it wrote (see the module's invariants)."""
    now = _identity(before.path)
    if now is not None and now != before.identity and now not in before.commits:
        _remove_in_home(before.path, home)
    moved = bundle.file_path
    if moved is not None and moved != before.path:
        now = _identity(moved)
        if (
            now is not None
            and now[3] >= before.began_ns - _CLOCK_LAG_NS
            and now not in before.commits
        ):
            _remove_in_home(moved, home)


def _remove_in_home(path: str | None, home: str) -> None:
    if path is not None and regular_in_home(path, home):
        with contextlib.suppress(OSError):
            os.unlink(path)


async def measure_own_write(bundle: Bundle, with_hash: bool) -> None:
    """Fill in ``bytes`` (and ``sha256``) of a written bundle whose override set neither, from
    the file it wrote itself (in a thread: the file may be large; the bundle is changed here,
    so a download cancelled meanwhile is not changed later by the thread)."""
    if bundle.bytes == 0 and bundle.sha256 is None and bundle.file_path is not None:
        measured = await asyncio.to_thread(_measure, bundle.file_path, with_hash)
        if measured is not None:
            bundle.bytes, bundle.sha256 = measured


def _measure(path: str, with_hash: bool) -> tuple[int, str | None] | None:
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        return size, hashlib.file_digest(f, "sha256").hexdigest() if with_hash else None
