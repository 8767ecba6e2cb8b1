"""Where a complete file lands inside the download home (DESIGN rule 6), and where it is found.

Invariants:
- nothing is written outside home: every directory on the way is opened from home without
  following a symlink, and a file is renamed into place relative to its directory's open
  descriptor, so a symlink is never followed for writing, whatever a URL or a custom
  ``get_file_path`` says. A held directory that is no longer the one at its path (renamed
  away, replaced by a symlink, removed) is walked again. Not covered: someone moving a
  folder of home outside it and putting a symlink to it in the place of one of its parents;
  a file could follow it there;
- a file stored at ``a`` is moved to ``a/%file`` when another URL needs ``a`` as a directory
  (and a file for ``a`` goes straight to ``a/%file`` when ``a`` is already a directory), so the
  final layout depends only on the set of URLs, not on the order of downloads;
- a file found as already complete (``find_complete``, ``regular_in_home``) is looked for as
  it is written: from home, following no symlink on the way.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator

from ..errors import DownloadFailed, ErrorKind
from ..paths import DISPLACED_NAME, TEMP_DIR_NAME, absolute, contains, displaced_path
from .temp_files import forget_temp_dir, temp_dir, temp_prefix

_NAME_MAX = 255  # bytes in one file or folder name: Linux's file systems, macOS, Windows
# Bytes in a whole path (Linux's PATH_MAX, with its NUL): the writer walks folders by
# descriptor and could write deeper, but no one could open the file by its name afterwards,
# and skip_cached would never find it.
_PATH_MAX = 4095


def check_target(home: str, path: str) -> str:
    """The absolute target path if it lies strictly inside home; else ``unsafe_path``."""
    home = absolute(home)
    path = os.fspath(path)  # a strategy may return a Path
    if "\0" in path:  # no file system takes it; os calls would raise a bare ValueError
        raise DownloadFailed(ErrorKind.UNSAFE_PATH, f"NUL character in path: {path!r}")
    if not path.isascii():
        try:
            os.fsencode(path)
        except UnicodeEncodeError:  # a lone surrogate ("\ud800", from JSON): os calls raise
            why = f"path has characters no file system name can hold: {path!r}"
            raise DownloadFailed(ErrorKind.UNSAFE_PATH, why) from None
    target = os.path.normpath(path if os.path.isabs(path) else os.path.join(home, path))
    if target == home or not contains(home, target):
        raise DownloadFailed(ErrorKind.UNSAFE_PATH, f"path outside the download home: {target}")
    # Inside home (checked above), so the first component follows home's own prefix.
    below = _below(home, target)
    if below.split(os.sep, 1)[0] == TEMP_DIR_NAME:
        raise DownloadFailed(ErrorKind.UNSAFE_PATH, f"path inside the temporary folder: {target}")
    # A name no file system takes fails before any request, as the permanent failure it is
    # (as a disk error after the download, a rerun of transient failures fetched it again).
    # Shorter than _NAME_MAX / 4 characters, no name can be over _NAME_MAX bytes.
    if len(below) > _NAME_MAX // 4:
        for name in below.split(os.sep):
            if len(os.fsencode(name)) > _NAME_MAX:
                raise DownloadFailed(
                    ErrorKind.UNSAFE_PATH,
                    f"a name in the path is over {_NAME_MAX} bytes: {name[:40]}...",
                )
    if len(target) > _PATH_MAX // 4 and len(os.fsencode(target)) > _PATH_MAX:
        why = f"the path is over {_PATH_MAX} bytes: {target[:60]}..."
        raise DownloadFailed(ErrorKind.UNSAFE_PATH, why)
    return target


def download_target(home: str, path: str) -> str:
    """``check_target`` for the path a download is asked to write (a strategy's, a bundle's).

    ``a/%file`` is where the file of ``a`` lives once ``a`` is a folder: asked for, it means
    the file ``a``, which the commit puts there itself when it must. Written as asked, it
    moved the file of ``a`` aside onto itself and replaced it. ``%file`` inside a path would
    make a file's place a folder: refused.
    """
    target = check_target(home, path)
    if DISPLACED_NAME not in target:
        return target
    names = _below(absolute(home), target).split(os.sep)
    if DISPLACED_NAME in names[:-1] or names == [DISPLACED_NAME]:
        why = f"{DISPLACED_NAME!r} is reserved for a displaced file: {target}"
        raise DownloadFailed(ErrorKind.UNSAFE_PATH, why)
    return os.path.dirname(target) if names[-1] == DISPLACED_NAME else target


def _below(home: str, path: str) -> str:
    """``path`` relative to ``home``, for a path known to lie inside it (home may be "/")."""
    return path[len(home.rstrip(os.sep)) + 1 :]


def forget_directories(home: str) -> None:
    """The end of an engine's runs: close the directories held under home, and remove home's
    temporary folder if it is empty (see ``temp_files.forget_temp_dir``)."""
    with _directories_lock:
        _close_directories(absolute(home))
    forget_temp_dir(home)


def find_complete(path: str, home: str | None) -> tuple[str, int] | None:
    """Where the complete file for ``path`` lies now (itself, or displaced) and its size.
    With ``home``, it is looked for as it is written: from home, following no symlink on the
    way (a folder of home linked elsewhere must not pass a file outside home for a copy)."""
    for candidate in (path, displaced_path(path)):
        size = _regular_size(candidate) if home is None else _regular_size_in(candidate, home)
        if size is not None:
            return candidate, size
    return None


def regular_in_home(path: str, home: str) -> bool:
    """Whether a regular file stands at ``path`` inside home, reached from home without
    following a symlink (as it is written)."""
    try:
        path = check_target(home, path)
    except DownloadFailed:
        return False
    return _regular_size_in(path, home) is not None


def _regular_size(path: str) -> int | None:
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None


def _regular_size_in(path: str, home: str) -> int | None:
    size = _regular_size(path)
    if size is None or not _reached_from(home, os.path.dirname(path)):
        return None
    return size


# Directories found reached from home without a symlink, by the identity they had then: a
# lookup costs one more lstat, not a walk (a skip_cached pass over 20,000 files took 4x the
# time in lookups when each walked from home).
_REACHED = 256
_reached: OrderedDict[tuple[str, str], tuple[int, int]] = OrderedDict()


def _reached_from(home: str, directory: str) -> bool:
    """Whether ``directory`` is reached from ``home`` without following a symlink."""
    key = (home, directory)
    known = _reached.get(key)  # written under the lock; a read needs none
    try:
        now = os.lstat(directory)
    except OSError:
        return False
    if known is not None and (now.st_dev, now.st_ino) == known and stat.S_ISDIR(now.st_mode):
        return True
    home = absolute(home)
    if directory != home and not contains(home, directory):
        return False
    try:
        fd = os.open(home, _DIRECTORY_FLAGS)  # home itself may be a symlink: the user chose it
    except OSError:
        return False
    try:
        for folder in _below(home, directory).split(os.sep) if directory != home else ():
            step = os.open(folder, _DIRECTORY_FLAGS | _NO_FOLLOW, dir_fd=fd)
            os.close(fd)
            fd = step
        walked = os.fstat(fd)
    except OSError:
        return False
    finally:
        os.close(fd)
    identity = (walked.st_dev, walked.st_ino)
    if identity != (now.st_dev, now.st_ino):
        return False  # the path leads elsewhere than the walk (a folder swapped meanwhile)
    with _directories_lock:
        _reached[key] = identity
        if len(_reached) > _REACHED:
            _reached.popitem(last=False)
    return True


def commit(tmp: str, final: str, home: str) -> str:
    """Move a complete temporary file to ``final`` inside home; returns where it landed."""
    home = absolute(home)
    final = check_target(home, final)
    with _directories_lock:
        for _ in range(2):
            try:
                return _commit(tmp, final, home)
            except (NotADirectoryError, FileNotFoundError, FileExistsError):
                # The tree changed under us (another worker of a split host turned a file into
                # a directory, or someone removed a folder): forget what we held and look again.
                _close_directories(home)
        return _commit(tmp, final, home)


def _commit(tmp: str, final: str, home: str) -> str:
    directory, name = os.path.split(final)
    try:
        parent = _directory_fd(home, directory)
        try:
            os.replace(tmp, name, dst_dir_fd=parent)
            return final
        except OSError as exc:
            # A directory stands at the final path (other URLs live below it): the file goes
            # inside it, under the reserved name.
            if exc.errno not in _IS_A_DIRECTORY or not stat.S_ISDIR(_mode_at(parent, name)):
                raise
        inside = _enter(parent, name, final, home)
        try:
            os.replace(tmp, DISPLACED_NAME, dst_dir_fd=inside)
        finally:
            os.close(inside)
        return displaced_path(final)
    except (DownloadFailed, NotADirectoryError, FileNotFoundError, FileExistsError):
        raise
    except OSError as exc:
        raise DownloadFailed(ErrorKind.DISK, f"cannot write {final}: {exc}") from exc


# Directories of each home already walked from home without following a symlink, held open
# (the most recently used few): a file is committed with one rename relative to its
# directory's descriptor, so a commit costs no lstat per path component, and a directory
# swapped for a symlink after the walk (while a run goes on) cannot lead a file outside home.
# One lock for every event loop of the process (threads calling one() at once): a descriptor
# is never closed, and its number reused, while another commit renames through it.
_DIRECTORY_FDS = 8
# (home, directory): its descriptor, and the (device, inode) it had when walked.
_open_directories: OrderedDict[tuple[str, str], tuple[int, tuple[int, int]]] = OrderedDict()
_directories_lock = threading.Lock()
_DIRECTORY_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)


def _directory_fd(home: str, directory: str) -> int:
    key = (home, directory)
    held = _open_directories.get(key)
    if held is not None:
        fd, identity = held
        # One lstat: a directory renamed away (and another made in its place), or replaced
        # by a symlink, since the walk is not this path any more: walk it again.
        try:
            now = os.lstat(directory)
            still = (now.st_dev, now.st_ino) == identity and stat.S_ISDIR(now.st_mode)
        except OSError:
            still = False
        if still:
            _open_directories.move_to_end(key)
            return fd
        del _open_directories[key]
        os.close(fd)
    fd = os.open(home, _DIRECTORY_FLAGS)  # home itself may be a symlink: the user chose it
    try:
        current = home
        for name in _below(home, directory).split(os.sep) if directory != home else ():
            current = os.path.join(current, name)
            step = _enter(fd, name, current, home)
            os.close(fd)
            fd = step
    except BaseException:
        os.close(fd)
        raise
    info = os.fstat(fd)
    _open_directories[key] = (fd, (info.st_dev, info.st_ino))
    if len(_open_directories) > _DIRECTORY_FDS:
        os.close(_open_directories.popitem(last=False)[1][0])
    return fd


def _close_directories(home: str) -> None:
    for key in [key for key in _open_directories if key[0] == home]:
        os.close(_open_directories.pop(key)[0])


def _enter(parent: int, name: str, path: str, home: str) -> int:
    """Open directory ``name`` of ``parent`` (``path``) without following a symlink, making it
    if missing, and moving a file that stands there to ``name/%file``."""
    for _ in range(3):
        try:
            return os.open(name, _DIRECTORY_FLAGS | _NO_FOLLOW, dir_fd=parent)
        except FileNotFoundError:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, dir_fd=parent)
            continue
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
        mode = _mode_at(parent, name)
        if mode == 0:
            continue  # gone while we looked: another process is moving it (see _displace)
        if stat.S_ISLNK(mode):
            raise DownloadFailed(ErrorKind.UNSAFE_PATH, f"refusing to follow a symlink: {path}")
        if not stat.S_ISREG(mode):
            raise DownloadFailed(ErrorKind.UNSAFE_PATH, f"not a directory: {path}")
        _displace(path, home)
    raise FileNotFoundError(errno.ENOENT, "the directory keeps changing", path)


_NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _mode_at(parent: int, name: str) -> int:
    try:
        return os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode
    except FileNotFoundError:
        return 0


_IS_A_DIRECTORY = frozenset({errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST})


def _displace(path: str, home: str) -> None:
    """Turn the file at ``path`` into ``path/%file`` so ``path`` can be a directory.

    Other processes may write into the same home (a split host's workers, a second run) and
    displace the same file at once: unlocked, one took the directory the other had just made
    for the file, and stored it as the file (``a/%file/%file``). Displacements of one home
    take turns under a lock on the home directory, each first checking that a file is still
    there; writers that only make a missing directory or store a file take no lock, so a
    directory or a newer copy may appear at ``path`` meanwhile, and both are handled.
    """
    with _home_locked(home):
        if not stat.S_ISREG(_mode_at_path(path)):
            return  # displaced by another process while we waited (or gone): look again
        holding = os.path.join(temp_dir(home), f"{temp_prefix()}move-{secrets.token_hex(4)}")
        os.replace(path, holding)
        try:
            with contextlib.suppress(FileExistsError):  # a writer below made it meanwhile
                os.mkdir(path)
            if not stat.S_ISDIR(_mode_at_path(path)):  # a newer copy of the file came back
                raise FileExistsError(errno.EEXIST, "the file came back", path)
            os.replace(holding, displaced_path(path))
        except BaseException:
            # A full disk, say: the good copy goes back where it was, unless a newer copy
            # took its place; never left behind in the temp folder.
            with contextlib.suppress(OSError):
                os.rmdir(path)  # only if empty: the directory it made, nobody's yet
            with contextlib.suppress(OSError):
                mode = _mode_at_path(path)
                if mode == 0:
                    os.replace(holding, path)
                elif stat.S_ISREG(mode):
                    os.unlink(holding)
            raise


@contextlib.contextmanager
def _home_locked(home: str) -> Iterator[None]:
    """An exclusive lock between processes writing into home, held on its temporary folder
    (no lock file to leave behind). Not on home itself: a user's own guard may hold that for
    the whole run (``flock out shardload ... -o out``, a cron guard), and every move aside
    then waited out the bound and failed. Threads of one process already take turns under
    ``_directories_lock``. Our holders keep it for microseconds; the wait is bounded, because
    it blocks the event loop, and a lock someone else took must not freeze the run."""
    fd = _lock_temp_dir(home)
    try:
        yield
    finally:
        os.close(fd)  # releases the lock


def _lock_temp_dir(home: str) -> int:
    """A descriptor of home's temporary folder, locked. A run that ends removes the folder
    when it is empty, and another makes it again: a lock taken on a folder that is no longer
    at its name locks nothing another process would see, so it is taken again."""
    deadline = time.monotonic() + _LOCK_WAIT
    directory = temp_dir(home)
    while True:
        os.makedirs(directory, exist_ok=True)
        fd = os.open(directory, _DIRECTORY_FLAGS | _NO_FOLLOW)
        try:
            _flock(fd, deadline, directory)
            with contextlib.suppress(FileNotFoundError):
                if os.path.samestat(os.fstat(fd), os.lstat(directory)):
                    return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        if time.monotonic() >= deadline:
            raise DownloadFailed(ErrorKind.DISK, f"{directory} keeps being removed")


def _flock(fd: int, deadline: float, directory: str) -> None:
    pause = 0.001
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                message = f"{directory} is locked by another process for {_LOCK_WAIT:g} s"
                raise DownloadFailed(ErrorKind.DISK, message) from None
            time.sleep(pause)
            pause = min(pause * 2, 0.05)


_LOCK_WAIT = 10.0


def _mode_at_path(path: str) -> int:
    try:
        return os.lstat(path).st_mode
    except FileNotFoundError:
        return 0
