"""Hash and write a large body piece by piece in the connection's callback, as it arrives.

Used where ``files.hash_as_read`` holds (every core runs a worker, so a writer thread buys no
parallelism) and the lean client delivers a body stored as sent. Each piece is hashed and
written while it is still in the CPU cache, with no task woken per read and no batch kept for
a thread: a processes=2 run of 16 x 64 MiB on 2 cores took ~9% less CPU and wall time than
hashing as read and writing 1 MiB batches in a thread.

Invariants:
- pieces are written and hashed in the order they arrive; the first piece declined (after a
  failure, or once the writes fell behind, below) and every piece after it go to the
  caller's loop instead, so the two never interleave;
- a failure (a disk error, the body over ``max_bytes``, a body too slow) is kept for the
  caller to raise in its own task, never raised into the connection;
- writes that fall behind ``FAST_WRITES`` by ``SLOW_BUDGET`` seconds in all (a disk
  throttling its writers, a network home) send every body of the process to the caller's
  thread for ``SLOW_PAUSE`` seconds, those under way from their next piece on. So a slow
  disk holds the event loop, and every other download of the worker, for about the budget
  once per pause, not for one write per body (32 bodies starting together on a disk whose
  writes took 0.3 s stalled the loop ~10 s when each body decided for itself). A budget,
  not a limit per write: a 256 KiB write to the page cache takes ~0.05 ms, but on a busy
  machine one now and then takes 2-3 ms (the process is preempted during it), and that
  alone must not send a whole process to the thread.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from ..errors import DownloadFailed, ErrorKind

if TYPE_CHECKING:
    from .files import SpeedGuard
    from .meter import Counter

FAST_WRITES = 200e6  # bytes/s: a 256 KiB write may take 1.3 ms
SLOW_BUDGET = 0.02  # seconds behind that pace before the disk counts as slow
SLOW_PAUSE = 10.0  # seconds
_behind = 0.0  # seconds the writes here are behind FAST_WRITES (never below 0)
_slow_until = 0.0  # the monotonic time before which no body is written here


def behind_after(behind: float, seconds: float, size: int) -> float:
    """How far behind ``FAST_WRITES`` the writes are after one of ``size`` bytes that took
    ``seconds``: a write faster than that pace pays back what slower ones ran up."""
    return max(0.0, behind + seconds - size / FAST_WRITES)


def disk_is_fast() -> bool:
    """Whether no write here was slow in the last ``SLOW_PAUSE`` seconds."""
    return time.monotonic() >= _slow_until


def write_all(fd: int, data: bytes | memoryview) -> None:
    """``os.write`` until every byte is written (a short write is rare on files)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class InlineWriter:
    """A body's consumer (``LeanResponse.sink``): returns False for a piece it declines."""

    def __init__(
        self,
        fd: int,
        digest: Any,
        limit: int | None,
        guard: SpeedGuard | None,
        meter: Counter | None = None,
    ) -> None:
        self.fd = fd
        self.digest = digest
        self.limit = limit
        self.guard = guard
        self.meter = meter
        self.size = 0  # bytes written
        self.failure: BaseException | None = None
        self._declining = False

    def __call__(self, data: bytes | memoryview) -> bool:
        global _behind, _slow_until  # noqa: PLW0603  (one verdict on the disk per process)
        if self._declining or not disk_is_fast():
            self._declining = True
            return False
        try:
            size = self.size + len(data)
            if self.limit is not None and size > self.limit:
                raise DownloadFailed(ErrorKind.TOO_LARGE, f"body exceeds max {self.limit} bytes")
            if self.guard is not None:
                self.guard.feed(len(data))
            started = time.monotonic()
            write_all(self.fd, data)
            self.digest.update(data)
            if self.meter is not None:
                self.meter.value += len(data)
        except Exception as exc:  # the caller's task raises it
            self.failure = exc
            self._declining = True
            return False
        self.size = size
        ended = time.monotonic()
        _behind = behind_after(_behind, ended - started, len(data))
        if _behind > SLOW_BUDGET:
            _behind, _slow_until = 0.0, ended + SLOW_PAUSE
        return True

    def handover(self) -> int:
        """The bytes written, once the caller takes the body over; raises what failed here."""
        self._declining = True
        if self.failure is not None:
            raise self.failure
        return self.size
