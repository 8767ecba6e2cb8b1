"""Bytes of response bodies received so far by a run, downloads in progress included, for a
live progress display: a bundle reports its bytes only when it ends, so a run of a few large
files would otherwise show 0 B/s for minutes.

Each shard worker owns one counter (``Counter``: a ``ctypes.c_uint64``, in shared memory the
caller reads when the worker is a spawned process) and is its only writer, so no lock: an
aligned 64-bit store is never read half-made. The engine's tasks find it through ``received``
(a context variable, like ``files.speed_guard``), so aiodownload's ``on_success(response,
bundle)`` keeps its signature. Bodies the built-in writer stores are counted; a strategy's own
``on_success`` that reads the body itself is not.
"""

from __future__ import annotations

import ctypes
from contextvars import ContextVar
from typing import Protocol


class Counter(Protocol):
    value: int


def new_counter() -> Counter:
    """A counter for a worker in this process."""
    return ctypes.c_uint64(0)


received: ContextVar[Counter | None] = ContextVar("received", default=None)
