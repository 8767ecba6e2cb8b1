"""Before and during a worker process's start: what it needs (a picklable configuration, file
descriptors for its pipes, a core to itself or not), and the start itself, run in a thread.

Invariants:
- a worker never starts from a configuration it could not rebuild: ``sendable_config`` refuses
  it in the caller, with the reason (unpicklable, defined in a notebook or under
  ``if __name__ == "__main__":``, from a module workers cannot import);
- the stop signals are blocked in a starting child until its ``worker_main`` ignores them
  (``Start.run``);
- an abandoned start's pipe ends are closed only once the start is over (``Start``).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import signal
import sys
import threading
from collections.abc import Iterator
from multiprocessing import forkserver, resource_tracker
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from ..errors import ConfigurationError
from ..stop_signals import STOP_SIGNALS
from ..worker.descriptors import open_file_limit
from ..worker.process import worker_main
from .base import THE_DOWNLOAD, interactive_names, names_hidden_in_main, unimportable_names

# Starting a process fixes the caller's default start method (multiprocessing's spawn code
# asks for it), after which the caller's own set_start_method() raises: once no run of ours
# starts processes any more, a default nobody chose is unset again.
_start_method_lock = threading.Lock()
_runs_starting = 0
_unset_before = False


def hold_start_method() -> None:
    """A run is about to start worker processes (its ``release_start_method`` follows)."""
    global _runs_starting, _unset_before  # noqa: PLW0603  (one process-wide count)
    with _start_method_lock:
        if _runs_starting == 0:
            _unset_before = multiprocessing.get_start_method(allow_none=True) is None
        _runs_starting += 1


def release_start_method() -> None:
    global _runs_starting  # noqa: PLW0603
    with _start_method_lock:
        _runs_starting -= 1
        if _runs_starting == 0 and _unset_before:
            multiprocessing.set_start_method(None, force=True)


class Start:
    """``process.start()``, run in a thread, and what to do when its caller gives up.

    The start goes on in its thread with the pipe ends: closed while it runs, their numbers
    could be reused by another worker's pipes before the child has its copies, crossing two
    workers' pipes. So an abandoned start is undone (ends closed, child stopped) only once it
    is over, by whichever of the thread and the loop comes last.
    """

    def __init__(self, process: BaseProcess, ends: tuple[Connection, ...]) -> None:
        self.process = process
        self.ends = ends
        self._lock = threading.Lock()
        self._over = self._abandoned = False

    def run(self) -> None:
        # A terminal's Ctrl-C (or a SIGTERM to the process group) reaches the child too,
        # before its worker_main can ignore it: it would die in its imports, with a traceback
        # on the user's terminal. Blocked in this (start-only) thread, the stop signals stay
        # blocked in the child across exec until worker_main ignores them; the caller's
        # threads still get them.
        # multiprocessing's resource tracker, started by the first start, unblocks SIGINT
        # after its own spawn: started first, it leaves the mask alone. The fork server is
        # shared with the caller's own forkserver processes: started first, it does not keep
        # SIGINT blocked for them (its children, ours included, are forked preloaded, with
        # no imports left to interrupt).
        resource_tracker.ensure_running()
        if getattr(self.process, "_start_method", None) == "forkserver":
            forkserver.ensure_running()
        with _stops_blocked():
            try:
                self.process.start()
            finally:
                self._mark("_over")

    def abandon(self) -> None:
        self._mark("_abandoned")

    def _mark(self, which: str) -> None:
        """Note that the start is over, or abandoned; the second of the two undoes it."""
        with self._lock:
            setattr(self, which, True)
            both = self._over and self._abandoned
        if both:
            self.undo()

    def undo(self) -> None:
        for end in self.ends:
            end.close()
        if self.process.pid is not None:
            self.process.kill()
            threading.Thread(target=self.process.join, daemon=True).start()  # reap it


@contextlib.contextmanager
def _stops_blocked() -> Iterator[None]:
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _check_can_start_workers() -> None:
    """Refuse what would fail in every worker's start, with multiprocessing's raw error (an
    ``AssertionError``) or with a traceback per worker and a misleading hint."""
    if multiprocessing.current_process().daemon:
        raise ConfigurationError(
            "worker processes cannot be started from a daemonic process (a "
            "multiprocessing.Pool worker, say): run with processes=1 there"
        )
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if getattr(main, "__spec__", None) is None and path and not os.path.isfile(path):
        # A spawned worker runs the caller's main script again from its path (its
        # `if __name__ == "__main__":` block aside); `python - < job.py` has none.
        raise ConfigurationError(
            f"the main script ({path}) is not a file worker processes can import (a script "
            "read from standard input?): save it as a .py file and run that, or run with "
            "processes=1"
        )


def every_core_busy(local_workers: int) -> bool:
    """Whether this machine's workers are at least as many as the cores this process (and the
    workers it starts) may run on, its affinity mask where the OS has one: then none has a core
    to spare, and each hashes bodies as it reads them (``files.hash_as_read``)."""
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:  # pragma: no cover - macOS, Windows
        cores = os.cpu_count() or 1
    return local_workers >= cores


def sendable_config(config: dict[str, Any]) -> bytes:
    """The pickled worker configuration; ``ConfigurationError`` saying why worker processes
    could not start here, or not rebuild it."""
    _check_can_start_workers()
    try:
        blob = pickle.dumps(config, pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise ConfigurationError(
            f"{THE_DOWNLOAD} must be picklable to run in worker processes (define classes "
            f"at module level; no open clients or lambdas): {exc}"
        ) from exc
    interactive = interactive_names(config)
    if interactive:
        raise ConfigurationError(
            f"{', '.join(interactive)} is defined in an interactive session (a notebook, "
            "the REPL or python -c), which worker processes cannot import: define it in a "
            ".py module and import it from there, or run with processes=1"
        )
    unreachable = unimportable_names(config)
    if unreachable:
        raise ConfigurationError(
            f"{', '.join(unreachable)} comes from a module worker processes cannot import "
            "by its name (loaded from a file outside the import path, or made in memory): "
            "put that module where `import` finds it (sys.path), or run with processes=1"
        )
    hidden = names_hidden_in_main(config)
    if hidden:
        raise ConfigurationError(
            f"{', '.join(hidden)} is defined inside the main script's "
            "`if __name__ == '__main__':` block, which worker processes do not run when "
            "they import the script: define it at the script's top level (or in a module)"
        )
    return blob


def preload_in_fork_server(context: Any) -> None:
    """Add the worker module to what the fork server imports when it starts, keeping what is
    there (``__main__`` by default, or the caller's own list). Once the server runs, this no
    longer changes anything, which is fine: it is the same server for every later run."""
    server = getattr(forkserver, "_forkserver", None)
    current = list(getattr(server, "_preload_modules", ["__main__"]))
    if worker_main.__module__ not in current:
        context.set_forkserver_preload([*current, worker_main.__module__])


def processes_that_fit(wanted: int) -> int:
    """At most ``wanted`` worker processes, as many as this process has descriptors for (a
    default that a low ``ulimit -n`` should shrink, not refuse); 1 runs in the caller."""
    limit = open_file_limit()
    if limit is None:
        return wanted
    return max(1, min(wanted, (limit - _RESERVED_DESCRIPTORS) // _PER_WORKER))


def check_descriptors(shards: int) -> None:
    """Refuse at once a worker count this process cannot open pipes for: failing after
    spawning hundreds helps nobody."""
    limit = open_file_limit()
    need = _PER_WORKER * shards + _RESERVED_DESCRIPTORS
    if limit is not None and need > limit:
        raise ConfigurationError(
            f"cannot start {shards} worker processes: they need about {need} file "
            f"descriptors and this process may open {limit} (ulimit -n); use fewer processes"
        )


_PER_WORKER = 4  # descriptors a worker takes while it starts: its two pipes' four ends
_RESERVED_DESCRIPTORS = 64  # the caller's own files, sockets and the input
