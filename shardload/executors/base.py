"""The executor interface the coordinator drives.

Contract: ``send`` never blocks the coordinator's loop; every sink callback runs in the
coordinator's loop thread; after ``crashed(shard)`` the coordinator owns every job it had sent to
that shard and not yet seen a result for (it may ``restart`` the shard and send them again);
``finish`` is called only when no job is outstanding; ``abort`` stops everything promptly and
leaves no process behind.
"""

from __future__ import annotations

import pickle
import sys
from typing import Any, Protocol

from ..bundle import Job, Result

# How long a worker (process or actor) may take to report ready before its start counts as
# failed; a restart that never ends would otherwise keep its shard's jobs pending forever.
START_SECONDS = 120.0


class ExecutorSink(Protocol):
    def results(self, shard: int, results: list[Result]) -> None: ...

    def crashed(self, shard: int, reason: str) -> None: ...


class Executor(Protocol):
    shards: int
    # True when jobs are pickled to another process: then ``info`` travels only if it pickles.
    crosses_processes: bool

    async def start(self, sink: ExecutorSink) -> None: ...

    def send(self, shard: int, jobs: list[Job]) -> None: ...

    async def restart(self, shard: int) -> None: ...

    async def finish(self) -> None: ...

    async def abort(self) -> None: ...


def interactive_names(value: object) -> list[str]:
    """The classes and functions in ``value`` (as pickled) that live in an interactive
    ``__main__``.

    A spawned worker imports the caller's main module to unpickle what was defined there; a
    notebook's or a REPL's has no file to import, so the worker would die at start with an
    advice that does not apply. A script's ``__main__`` has a file: nothing to check.
    """
    main = sys.modules.get("__main__")
    if main is None or getattr(main, "__file__", None):
        return []
    found: list[str] = []

    class Finder(pickle._Pickler):  # the Python pickler: its save_global can be watched
        def save_global(self, obj: Any, name: str | None = None) -> None:
            if getattr(obj, "__module__", None) == "__main__":
                found.append(str(name or getattr(obj, "__qualname__", obj)))
            super().save_global(obj, name)  # type: ignore[misc]

    Finder(_Discard(), pickle.HIGHEST_PROTOCOL).dump(value)
    return list(dict.fromkeys(found))


class _Discard:
    def write(self, data: bytes) -> int:
        return len(data)
