"""The manifest: one JSON record per input URL, written incrementally, read back for ``--resume``.

The writer appends records as bundles finish and flushes them in batches (every ``flush_every``
records or ``flush_interval`` seconds, whichever comes first), so a crash loses at most the records
in flight. The reader keeps only the latest record per URL, so an appended history is fine.
A writer holds an exclusive lock (flock) on its file until it closes: one run per manifest.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from shardload.cli.url_table import UrlTable
from shardload.errors import ErrorKind, is_transient

DONE_STATES = frozenset({"written", "cached"})


class Prior(StrEnum):
    """What the latest manifest record says about a URL."""

    DONE = "done"
    DONE_AT_OWN_PATH = "done_at_own_path"  # done for an input line that named its own path
    TRANSIENT = "transient"  # failed, but a later attempt may succeed
    PERMANENT = "permanent"  # failed for good (404, invalid URL, bad input line, ...)


class Action(StrEnum):
    """What this run does with an input URL."""

    RUN = "run"
    SKIP_DONE = "skip_done"
    SKIP_PERMANENT = "skip_permanent"


def worth_retrying(kind: str | None, status: int | None) -> bool:
    """What ``--retry-transient`` retries: the library's transient failures (``is_transient``),
    and a failure of this machine's disk (full, over a file-size limit), which is fixed here,
    not at the server. The library's own attempts never retry a disk failure."""
    return is_transient(kind, status) or kind == ErrorKind.DISK


def classify(record: Mapping[str, Any]) -> Prior | None:
    """The ``Prior`` of one record; ``None`` when it says nothing final (pending, unknown)."""
    state = record.get("state")
    if state in DONE_STATES:
        return Prior.DONE_AT_OWN_PATH if record.get("own_path") is True else Prior.DONE
    if state != "failed":
        return None
    kind = record.get("error_kind")
    status = record.get("status")
    status = status if isinstance(status, int) and not isinstance(status, bool) else None
    return Prior.TRANSIENT if worth_retrying(kind, status) else Prior.PERMANENT


def decide(prior: Prior | None, *, transient_only: bool) -> Action:
    """``--resume`` skips what is done; ``--retry-transient`` also skips permanent failures."""
    if prior is Prior.DONE or prior is Prior.DONE_AT_OWN_PATH:
        return Action.SKIP_DONE
    if transient_only and prior is Prior.PERMANENT:
        return Action.SKIP_PERMANENT
    return Action.RUN


def iter_records(lines: Iterable[bytes]) -> Iterator[dict[str, Any] | None]:
    """Parse manifest lines; ``None`` for a line that is not a record (a torn last line)."""
    for line in lines:
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            yield None
            continue
        # Every record this writes has a url and a state: a line of JSON input (a url, a
        # path, info) is no record, so an input file named as the manifest is refused.
        is_record = isinstance(obj, dict) and all(isinstance(obj.get(k), str) for k in _KEYS)
        yield obj if is_record else None


_KEYS = ("url", "state")


Priors = UrlTable[Prior | None]


def latest_priors(records: Iterable[dict[str, Any] | None]) -> tuple[Priors, int]:
    """The prior of each URL from its LAST record, and how many lines were unreadable.

    A record of a line's own failure, not the URL's (``_of_the_line``), never hides another
    line's record of that URL, which --resume would fetch again, or --retry-transient skip as
    permanent."""
    priors: Priors = UrlTable()
    unreadable = 0
    for record in records:
        if record is None:
            unreadable += 1
        elif not _of_the_line(record) or record["url"] not in priors:
            priors[record["url"]] = classify(record)
    return priors, unreadable


def _of_the_line(record: Mapping[str, Any]) -> bool:
    """Whether a record's failure was its input line's, and says nothing of the URL's
    downloads: a line that could not be run (``bad_input``: an empty ``path``, an ``info``
    nested too deep), or one whose own ``path`` can never be written (``unsafe_path``)."""
    kind = record.get("error_kind")
    return kind == ErrorKind.BAD_INPUT or (
        kind == ErrorKind.UNSAFE_PATH and record.get("own_path") is True
    )


def load_priors(path: str | os.PathLike[str]) -> tuple[Priors, int]:
    """Read a manifest for ``--resume``; a missing manifest means nothing is known yet.
    Raises ``ValueError`` for one that is not a regular file (``/dev/stdout``, a pipe: reading
    it would wait for ever, or read our own output)."""
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise ValueError(f"--resume needs a manifest that is a regular file: {path}")
    try:
        with open(path, "rb") as f:
            priors, unreadable = latest_priors(iter_records(f))
    except FileNotFoundError:
        return UrlTable(), 0
    # A crash tears at most the last line, which then has no newline and starts as every
    # record does: anything else without one record is some other file (a URL list, say),
    # which --resume would cut and append to.
    if not priors and unreadable and (unreadable > 1 or not _torn_record(Path(path))):
        raise ValueError(
            f"--resume: {path} is not a manifest (none of its {unreadable} lines is a record)"
        )
    return priors, unreadable


def encode(record: Mapping[str, Any]) -> bytes:
    """One manifest line. ``info`` that is not JSON is written as its ``str``."""
    text = json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str)
    return text.encode("utf-8", "backslashreplace") + b"\n"


_LOOKED_AT = 5  # lines looked at to tell a manifest from another file
_BLOCK = 1 << 16


class ManifestInUse(OSError):
    """Another run writes this manifest: two runs would empty or interleave each other's."""


def looks_like_manifest(path: str | os.PathLike[str]) -> bool:
    """Whether a file may be replaced by a new manifest: blank, or one of its first lines a
    manifest record. A mistyped ``--manifest urls.txt`` must not empty the user's URL list."""
    lines: list[bytes] = []
    try:
        with open(path, "rb") as f:
            while len(lines) < _LOOKED_AT and (line := f.readline(1 << 20)):
                if line.strip():
                    lines.append(line)
    except OSError:
        return True  # nothing readable to lose; opening it for writing says what is wrong
    # Any of the first lines: the very first may be a record a full disk cut short.
    return not lines or any(_is_record(line) for line in lines)


def _is_record(line: bytes) -> bool:
    try:
        record = json.loads(line)
    except ValueError:
        return False
    return isinstance(record, dict) and "url" in record and "state" in record


def _torn_record(path: Path) -> bool:
    """Whether a file of one unreadable line is a record a crash cut short."""
    with open(path, "rb") as f:
        start = f.read(64).lstrip()
    return start.startswith(b'{"url":') and _ends_without_newline(path)


def _ends_without_newline(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                return False
            f.seek(-1, os.SEEK_END)
            return f.read(1) != b"\n"
    except FileNotFoundError:
        return False


class ManifestWriter:
    """Buffers encoded records and writes them in batches. Not thread-safe: callers lock."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        append: bool,
        flush_every: int = 1000,
        flush_interval: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # What to remove if this writer must leave no trace: the file it creates (the target
        # of a dangling symlink, not the link).
        self._created = None if self.path.exists() else Path(os.path.realpath(self.path))
        # Opened at once, so that an unwritable manifest stops the run before it starts, but
        # emptied only when the first records are written: a run that ends in a usage error
        # found later (by the library) leaves the previous run's manifest as it was.
        # Unbuffered: a failed write (a full disk) says how far it got, so ``written`` counts
        # exactly the records the file holds whole.
        self._file: IO[bytes] = open(self.path, "ab", buffering=0)  # noqa: SIM115
        # A pipe or a device (`--manifest /dev/stdout`) has nothing to empty.
        self._regular = stat.S_ISREG(os.fstat(self._file.fileno()).st_mode)
        if self._regular:
            try:  # held until closed; the kernel lets go if this process dies
                fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._file.close()
                if self._created is not None:
                    self._created.unlink(missing_ok=True)
                raise ManifestInUse(
                    f"another shardload run is writing {self.path}: wait for it to end, "
                    "or give this run its own --manifest"
                ) from None
            except OSError:
                pass  # a file system without locks (NFS without lockd): written unlocked
        self._untouched = self._regular and not append
        # A crash may have torn the last line: cut off, unless it holds a whole record (which
        # the resume counted): a line that is not JSON would stop jq or pandas on the file.
        torn = append and self._regular and _ends_without_newline(self.path)
        # The newline that ends a torn record kept whole goes first, counted as no record.
        self._lead = b"\n" if torn and not self._cut_torn_line() else b""
        self._pending: list[bytes] = []
        self._flush_every = flush_every
        self._flush_interval = flush_interval
        self._clock = clock
        self._last_flush = clock()
        self.added = 0  # records given to add()
        self.written = 0  # records the file holds whole; the rest were lost with a failed write

    def _cut_torn_line(self) -> bool:
        """Truncate the file at its last newline if what follows is no record; True if cut."""
        with open(self.path, "rb") as f:  # ours is opened to append: it cannot read
            fd = f.fileno()
            end = start = os.fstat(fd).st_size
            while start > 0:  # back to the last newline, a block at a time
                size = min(_BLOCK, start)
                block = os.pread(fd, size, start - size)
                start -= size
                newline = block.rfind(b"\n")
                if newline >= 0:
                    start += newline + 1
                    break
            if _is_record(os.pread(fd, end - start, start)):
                return False
        os.truncate(self._file.fileno(), start)
        return True

    @property
    def unwritten(self) -> int:
        """Records added but not in the file: pending, or lost with a failed write."""
        return self.added - self.written

    def add(self, record: Mapping[str, Any]) -> None:
        self._pending.append(encode(record))
        self.added += 1
        if len(self._pending) >= self._flush_every:
            self.flush()

    def flush_if_due(self) -> None:
        if self._pending and self._clock() - self._last_flush >= self._flush_interval:
            self.flush()

    def flush(self) -> None:
        if self._untouched:
            self._file.truncate(0)
            self._untouched = False
        if self._pending:
            # A batch that fails is dropped (``unwritten`` counts it), not written again: the
            # run stops, and the next --resume cuts off the torn line it may have left.
            data = self._lead + b"".join(self._pending)
            self._pending = []
            done = 0
            try:
                while done < len(data):
                    n = self._file.write(memoryview(data)[done:])
                    if n is None:  # a pipe set non-blocking, full
                        raise BlockingIOError(errno.EAGAIN, "the manifest's pipe is full")
                    done += n
            finally:
                self.written += data.count(b"\n", len(self._lead), done)
                if done >= len(self._lead):
                    self._lead = b""
        self._last_flush = self._clock()

    def close(self, *, keep_previous: bool = False, leave_no_trace: bool = False) -> None:
        """Write what is pending and close; ``keep_previous``: if nothing was written yet,
        leave the previous manifest's records as they are; ``leave_no_trace``: and a file this
        writer created is removed (absent, as it was)."""
        if self._file.closed:
            return
        if (keep_previous or leave_no_trace) and self._untouched and not self._pending:
            self._file.close()
            if self._created is not None and leave_no_trace:
                self._created.unlink(missing_ok=True)
            return
        try:
            self.flush()
            if self._regular:  # a pipe cannot be synced (EINVAL)
                os.fsync(self._file.fileno())
        finally:
            self._file.close()

    def __enter__(self) -> ManifestWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
