"""Temporary files: ``<home>/.shardload-tmp/<node>-<pid>-<n>.part``, one per body being written.

Invariants:
- names carry the node and pid of the process writing them, so the coordinator can remove
  what a killed worker left behind, and the first write of a run removes those of this node's
  processes that are gone (never a running process's, nor another node's);
- a temporary file is created with O_EXCL|O_NOFOLLOW, in a folder that is not a symlink
  (looked at again for every file: one swapped for a symlink mid-run is refused);
- the folder is removed when an engine's runs end, if empty; a write that finds it gone
  (another run on the same home ended) makes it again.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import threading
from collections.abc import Callable

from ..errors import DownloadFailed, ErrorKind
from ..paths import TEMP_DIR_NAME, absolute

_counter = itertools.count()


def temp_dir(home: str) -> str:
    return os.path.join(home, TEMP_DIR_NAME)


def temp_prefix(pid: int | None = None) -> str:
    """Temporary files of a process start with this; see ``remove_temp_files``.

    The node name is part of it: on a cluster, homes on a shared filesystem see the temporary
    files of every node, and cleaning up after a dead worker must not touch another's.
    """
    return f"{_NODE}-{os.getpid() if pid is None else pid}-"


_NODE = socket.gethostname().replace(os.sep, "_") or "node"


def remove_temp_files(home: str, prefix: str) -> int:
    """Remove the temporary files a (dead) worker left in home; returns how many."""
    removed = 0
    try:
        names = os.listdir(temp_dir(home))
    except OSError:
        return 0
    for name in names:
        if name.startswith(prefix) and name.endswith(".part"):
            try:
                os.unlink(os.path.join(temp_dir(home), name))
                removed += 1
            except OSError:
                pass
    return removed


# The temporary folders already made (and swept of orphans) in this run, per home.
_made: dict[str, set[str]] = {}


def forget_temp_dir(home: str) -> None:
    """Forget that home's temporary folder was made, and remove it if empty (a run still
    writing elsewhere keeps it: rmdir refuses a folder with files)."""
    _made.pop(absolute(home), None)
    with contextlib.suppress(OSError):
        os.rmdir(temp_dir(home))


def _remove_if_forgotten(directory: str) -> None:
    """A write abandoned by a run that has ended removes its file last: the folder the run
    could not remove then (``forget_temp_dir``) goes now, if empty and no run uses it (one
    that makes it again in between finds it gone at its open, and makes it again)."""
    if absolute(os.path.dirname(directory)) not in _made:
        with contextlib.suppress(OSError):
            os.rmdir(directory)


class Temp:
    """An open temporary file; ``discard`` closes and removes it.

    A batch of the body may be written in a thread (``write_in_thread``). A download
    cancelled meanwhile leaves that batch to finish there: closed at once, the descriptor's
    number could go to another download's file, and the rest of the batch with it. So
    ``discard`` then leaves the closing to that thread, which does it as it ends, whether or
    not the event loop that started it still runs.
    """

    def __init__(self, fd: int, path: str) -> None:
        self.fd = fd
        self.path = path
        self._lock = threading.Lock()
        self._in_thread = False  # a thread writes into fd now
        self._abandoned = False  # discarded meanwhile: that thread closes and removes it

    def write_in_thread(self, write: Callable[[int], None]) -> Callable[[], None]:
        """``write(fd)`` wrapped for the thread that runs it; call this before handing it
        over, so that a ``discard`` from then on waits for it."""
        with self._lock:
            self._in_thread = True

        def run() -> None:
            try:
                write(self.fd)
            finally:
                with self._lock:
                    self._in_thread = False
                    abandoned = self._abandoned
                if abandoned:
                    self._close()
                    _remove_if_forgotten(os.path.dirname(self.path))

        return run

    def thread_refused(self) -> None:
        """The executor refused the wrapped ``write``: no thread will run it."""
        with self._lock:
            self._in_thread = False

    def discard(self) -> None:
        with self._lock:
            if self._in_thread:
                self._abandoned = True
                return
        self._close()

    def _close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def open_temp(home: str) -> Temp:
    directory = temp_dir(home)
    try:
        made = _made.setdefault(absolute(home), set())
        if directory not in made:
            _make_temp_dir(directory)
            _remove_orphans(directory)
            made.add(directory)
        else:
            # Swapped for a symlink since it was made? O_NOFOLLOW guards only the file's own
            # name, and the body would go wherever the link points. One lstat per file; a
            # swap in the microseconds between it and the open is not covered.
            refuse_symlink(directory)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        lost = 0
        while True:
            # Node, pid and a counter make the name unique; O_EXCL guards against a stale
            # file of an earlier process that had the same pid.
            path = os.path.join(directory, f"{temp_prefix()}{next(_counter)}.part")
            try:
                # 0o666: the umask decides, as for any file a program creates.
                return Temp(os.open(path, flags, 0o666), path)
            except FileExistsError:
                continue
            except FileNotFoundError:
                # Another engine's runs on this home ended and removed the folder while it was
                # empty (between our making it and this open, even): make it again.
                lost += 1
                if lost > _FOLDER_RACES:
                    raise
                _make_temp_dir(directory)
    except DownloadFailed:
        raise
    except OSError as exc:
        raise DownloadFailed(ErrorKind.DISK, f"cannot create a temporary file: {exc}") from exc


def _remove_orphans(directory: str) -> None:
    """Remove the temporary files of this node's processes that are gone. A worker's are
    removed by its coordinator when it dies; a process killed whole (SIGKILL of a one-process
    run, or of the CLI) leaves its own behind, and the next run on the same home takes them."""
    prefix = f"{_NODE}-"
    try:
        names = os.listdir(directory)
    except OSError:
        return
    gone: dict[int, bool] = {}
    for name in names:
        pid_text = name[len(prefix) :].split("-", 1)[0] if name.startswith(prefix) else ""
        if not (pid_text.isdigit() and name.endswith(".part")):
            continue
        pid = int(pid_text)
        if pid not in gone:
            gone[pid] = not _running(pid)
        if gone[pid]:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, name))


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # another user's process: alive
    # A killed process stays a zombie until it is reaped (a second or two where PID 1 reaps
    # late), and signal 0 still reaches it: its files are orphans all the same.
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] != b"Z"
    except (OSError, IndexError):
        return True  # no /proc (not Linux): trust the signal


_FOLDER_RACES = 50  # each lost race needs another run to end at that very moment


def _make_temp_dir(directory: str) -> None:
    with contextlib.suppress(FileExistsError):  # made, and removed again, by other runs
        os.makedirs(directory, exist_ok=True)
    refuse_symlink(directory)


def refuse_symlink(directory: str) -> None:
    """``unsafe_path`` when home's temporary folder is a symlink."""
    if os.path.islink(directory):
        raise DownloadFailed(ErrorKind.UNSAFE_PATH, f"{directory} is a symlink")
