"""An overridden ``on_success`` (or ``request_and_download``) that writes the file itself, as
aiodownload's did.

Invariants:
- the override gets the final path as ``bundle.file_path``, as in aiodownload: it may write
  there, append to what is there, read it, derive side files or other names from it, or upload
  under its name. While it runs, the final path holds what it has written so far;
- when it fails (it raises, it returns after a read of the body failed, an error it caught
  itself, or its attempt ends failed), a regular file at the final path that it created or
  changed is removed: a cut body never stays there for ``skip_cached`` (or a user) to take
  for a copy. An override that opens the final path for writing has replaced an earlier copy
  itself, before shardload could keep it; shardload cannot tell an append from a rewrite, so a
  file an override appended to is removed too when the override fails. A file it left as it
  was is left alone;
- ``bytes`` and ``sha256`` of a file it wrote are measured from the file when it set none.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from collections.abc import Awaitable, Callable
from typing import Any

from ..bundle import Bundle

# What tells a file from another, or from itself changed: device, inode, size, mtime.
Identity = tuple[int, int, int, int] | None


async def run_own_write(call: Callable[[], Awaitable[Any]], bundle: Bundle, response: Any) -> Any:
    """``await call()``, an override that may write ``bundle.file_path`` itself, cleaning up
    after it as the module says. ``response`` is the response it reads, when there is one."""
    final = bundle.file_path
    before = identity(final)
    try:
        result = await call()
        failure = read_failure(response)
        if failure is not None:
            raise failure
    except BaseException:
        remove_if_changed(final, before)
        raise
    return result


def read_failure(response: Any) -> BaseException | None:
    """The error a read of ``response``'s body met, if any (both clients keep it on the
    body stream, as aiohttp's ``StreamReader.exception()``)."""
    exception = getattr(getattr(response, "content", None), "exception", None)
    return exception() if callable(exception) else None


def identity(path: str | None) -> Identity:
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


def remove_if_changed(path: str | None, before: Identity) -> None:
    """Remove the regular file at ``path`` if it is not the one that stood there ``before``
    (what a failed attempt wrote); never a folder."""
    now = identity(path)
    if path is not None and now is not None and now != before:
        with contextlib.suppress(OSError):
            os.unlink(path)


def measure_written(bundle: Bundle, with_hash: bool) -> None:
    """Fill in ``bytes`` (and ``sha256``) from the file at ``bundle.file_path``, for an
    override that wrote it itself. Runs in a thread: the file may be large."""
    path = bundle.file_path
    if path is None or not os.path.isfile(path):
        return
    with open(path, "rb") as f:
        bundle.bytes = os.fstat(f.fileno()).st_size
        if with_hash:
            bundle.sha256 = hashlib.file_digest(f, "sha256").hexdigest()
