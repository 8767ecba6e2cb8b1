"""The CLI's input: URL lines or JSON Lines, plain or gzip'd, from a file or stdin, read lazily.

A line is a URL, or a JSON object with ``url`` and optional ``path`` (output path relative to the
output directory) and ``info`` (passed through into the manifest). Blank lines and lines starting
with ``#`` are ignored. A line that cannot be understood becomes a ``BadLine``; it never aborts the
run. Reading is line by line, so a 10-million-line input streams in constant memory.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import math
import os
import stat
import sys
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO

from shardload.errors import DownloadFailed
from shardload.paths import url_to_relpath
from shardload.urls import host_key, split_url

GZIP_MAGIC = b"\x1f\x8b"
MAX_LINE_BYTES = 1 << 20  # a longer line is reported as bad, never held in memory whole
KEY_CHARS = 200  # how much of an unparseable line the manifest keeps as its "url"


@dataclass(frozen=True, slots=True)
class InputItem:
    """One usable input line."""

    lineno: int
    url: str
    path: str | None = None
    info: Any = None


@dataclass(frozen=True, slots=True)
class BadLine:
    """One line that cannot be sent to the library.

    ``key`` is what the manifest records as the url: the url when the line had a usable one,
    else the start of the line itself.
    """

    lineno: int
    key: str
    reason: str
    info: Any = None


Parsed = InputItem | BadLine


def _norm(path: str) -> str:
    return os.path.normcase(os.path.normpath(path))


def _reserved_by(path: str, reserved: Sequence[str]) -> str | None:
    """The reserved file that ``path`` would replace, or move aside by writing below it."""
    wanted = _norm(path)
    for name in reserved:
        taken = _norm(name)
        if wanted == taken or wanted.startswith(taken + os.sep):
            return name
    return None


def _from_output(path: str, output: str) -> str:
    """``path`` as a line spells it (relative to the output directory, absolute, through
    ``..`` or a symlinked folder), relative to ``output``, a resolved directory. Its last name
    stays unresolved: a symlink there is replaced by the download, not followed. A path the
    filesystem cannot take (a NUL, a lone surrogate) is returned as it is: the download
    refuses it."""
    parent, name = os.path.split(os.path.join(output, path))
    try:
        return os.path.relpath(os.path.join(os.path.realpath(parent), name), output)
    except (ValueError, OSError):
        return path


def _may_be_below(url: str, hints: set[str], map_all: bool) -> bool:
    if map_all or not url.isascii():
        return True
    lowered = url.lower()
    return any(hint in lowered for hint in hints)


def default_path(url: str) -> str:
    """Where the default strategy puts ``url``, relative to the output directory ("" for a URL
    it cannot map: the download fails that one with its own reason)."""
    try:
        return url_to_relpath(split_url(url))
    except DownloadFailed:
        return ""


def _key(text: str) -> str:
    return text[:KEY_CHARS]


def _not_json(name: str) -> Any:
    """Python's json reads NaN and Infinity; passed on as ``info``, they would make the
    manifest's line unreadable for every strict JSON reader."""
    raise ValueError(f"{name} is not a JSON value")


def _finite(text: str) -> float:
    """A JSON number too large for a float (``1e999``) would come back out as Infinity."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is too large a number")
    return value


# The manifest writes an info back out, deeper in the stack than it was read: an info nested
# near the parser's limit (~1,000) would pass here and then stop the run at its record.
MAX_INFO_DEPTH = 100


def _nested_over(value: Any, depth: int) -> bool:
    """Whether ``value`` has lists or objects nested more than ``depth`` deep (no recursion)."""
    level = [value]
    for _ in range(depth):
        level = [
            child
            for item in level
            if isinstance(item, dict | list)
            for child in (item.values() if isinstance(item, dict) else item)
        ]
        if not level:
            return False
    return any(isinstance(item, dict | list) for item in level)


def _parse_json(text: str, lineno: int) -> Parsed:
    try:
        obj = json.loads(text, parse_constant=_not_json, parse_float=_finite)
    except (ValueError, RecursionError) as exc:
        return BadLine(lineno, _key(text), f"line {lineno}: invalid JSON: {exc}")
    if not isinstance(obj, dict):
        return BadLine(lineno, _key(text), f"line {lineno}: JSON line is not an object")
    url, info = obj.get("url"), obj.get("info")
    if _nested_over(info, MAX_INFO_DEPTH):
        key = url.strip() if isinstance(url, str) and url.strip() else _key(text)
        return BadLine(lineno, key, f"line {lineno}: 'info' nested over {MAX_INFO_DEPTH} deep")
    if not isinstance(url, str) or not url.strip():
        why = "missing 'url' field" if url is None else "'url' must be a non-empty string"
        return BadLine(lineno, _key(text), f"line {lineno}: {why}", info)
    url = url.strip()
    path = obj.get("path")
    if path is not None and (not isinstance(path, str) or not path):
        return BadLine(lineno, url, f"line {lineno}: 'path' must be a non-empty string", info)
    return InputItem(lineno, url, path, info)


def parse_line(text: str, lineno: int) -> Parsed | None:
    """Parse one decoded line: ``None`` for blank and comment lines. Pure.

    Blank means ASCII whitespace only, as ``is_countable`` decides on the raw bytes: a line of
    other whitespace (a no-break space) is an item, and gets its record (an invalid URL),
    rather than vanishing from the manifest and the progress total.
    """
    text = text.strip(_ASCII_SPACE)
    if not text or text.startswith("#"):
        return None
    if text.startswith(("{", "[")):  # no URL starts with "[": a JSON line that is no object
        return _parse_json(text, lineno)
    return InputItem(lineno, text)


_ASCII_SPACE = " \t\n\r\x0b\x0c"  # what bytes.strip() removes


def is_countable(raw: bytes) -> bool:
    """True when a raw line will produce an item or a bad line (for the progress total)."""
    text = raw.strip()
    return bool(text) and not text.startswith(b"#")


_BOM = b"\xef\xbb\xbf"


def iter_raw_lines(stream: BinaryIO) -> Iterator[tuple[int, bytes | None]]:
    """Yield ``(lineno, raw bytes)``; ``None`` for a line longer than ``MAX_LINE_BYTES``."""
    lineno = 0
    while True:
        raw = stream.readline(MAX_LINE_BYTES)
        if not raw:
            return
        lineno += 1
        if len(raw) >= MAX_LINE_BYTES and not raw.endswith(b"\n"):
            while raw and not raw.endswith(b"\n"):  # skip the rest of the monster line
                raw = stream.readline(MAX_LINE_BYTES)
            yield lineno, None
            continue
        # A byte-order mark (exports from Windows tools) is not part of the first line: a
        # comment after it stays a comment, for the items and for the progress total alike.
        yield lineno, raw.removeprefix(_BOM) if lineno == 1 else raw


def iter_parsed(
    stream: BinaryIO, reserved: Sequence[str] = (), output: str = "."
) -> Iterator[Parsed]:
    """Every item and bad line of ``stream``. Never raises for bad data or a read error.

    An explicit ``path`` that is one of ``reserved`` (the manifest, its side-car and the input
    file, relative to ``output``, the resolved output directory), however it is spelled, or
    below one, would replace that file or move it aside into ``<name>/%file``: such a line is
    a bad line. So is a URL whose default path would: a reserved file in a folder below the
    output directory, or one directly in it whose name is a host's folder (``--manifest
    out/127.0.0.1_8080``, or a host named manifest.jsonl).
    """
    inside = [_norm(r) for r in reserved if not _norm(r).startswith("..")]
    nested = [r for r in inside if os.sep in r]
    # A default path starts with the host's folder, "host" or "host_port": only a URL that
    # holds a top-level reserved name's host part is worth mapping (a few us) to compare.
    # A host can be spelled otherwise (full-width digits, Unicode against punycode) only
    # with non-ASCII characters: such a URL, or such a name, is always mapped.
    top = [r for r in inside if os.sep not in r]
    hints = {r.split("_", 1)[0].lower() for r in top}
    map_all = not all(r.isascii() for r in top)
    lines = iter_raw_lines(stream)
    lineno = 0
    while True:
        try:
            lineno, raw = next(lines)
        except StopIteration:
            return
        except (OSError, EOFError, ValueError, zlib.error) as exc:  # a corrupt gzip too
            yield BadLine(lineno + 1, f"<input line {lineno + 1}>", f"input read error: {exc}")
            return
        if raw is None:
            yield BadLine(lineno, f"<input line {lineno}>", f"line {lineno}: line too long")
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            key = _key(raw.decode("utf-8", "replace").strip())
            yield BadLine(lineno, key, f"line {lineno}: not UTF-8: {exc}")
            continue
        parsed = parse_line(text, lineno)
        if isinstance(parsed, InputItem) and (
            parsed.path or nested or (hints and _may_be_below(parsed.url, hints, map_all))
        ):
            wanted = _from_output(parsed.path, output) if parsed.path else default_path(parsed.url)
            taken = _reserved_by(wanted, reserved)
            if taken is not None:
                why = f"line {lineno}: 'path' would overwrite {taken} (this run's own file)"
                parsed = BadLine(lineno, parsed.url, why, parsed.info)
        if parsed is not None:
            yield parsed


class _Prefixed(io.RawIOBase):
    """A raw stream that first returns ``head``, then the rest of ``rest``."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        super().__init__()
        self._head = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._head:
            n = min(len(view), len(self._head))
            view[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        read1 = getattr(self._rest, "read1", None)
        data = read1(len(view)) if read1 is not None else self._rest.read(len(view))
        view[: len(data)] = data
        return len(data)


def _read_head(raw: BinaryIO, n: int) -> bytes:
    head = b""
    while len(head) < n:
        chunk = raw.read(n - len(head))
        if not chunk:
            break
        head += chunk
    return head


def _stdin() -> BinaryIO:
    """Our own unbuffered reader on a copy of fd 0, never ``sys.stdin.buffer``.

    The library reads input on a daemon thread, which may still be blocked reading a pipe when
    an interrupted run exits; if that thread held ``sys.stdin.buffer``'s lock, the interpreter
    would abort at shutdown. A private reader on a duplicate descriptor is left alone (and
    deliberately not closed: another thread may be blocked reading it).
    """
    if sys.stdin is None:  # started with fd 0 closed (`<&-`)
        raise OSError("standard input is closed")
    try:
        return os.fdopen(os.dup(sys.stdin.fileno()), "rb", buffering=0)
    except (AttributeError, OSError, ValueError):  # no real stdin (embedded, captured)
        buffer = getattr(sys.stdin, "buffer", None)
        if buffer is None:
            raise OSError("standard input cannot be read as bytes") from None
        return buffer  # type: ignore[no-any-return]


@contextmanager
def open_input(spec: str, stdin: BinaryIO | None = None) -> Iterator[BinaryIO]:
    """Open a path, or stdin for ``-``, as a binary stream; gzip is detected by magic bytes.

    Raises ``OSError`` when the path cannot be opened (a usage error for the CLI).
    """
    if spec == "-":
        raw: BinaryIO = stdin if stdin is not None else _stdin()
        owned = False
    else:
        raw = open(spec, "rb")  # noqa: SIM115 - closed below
        owned = True
    try:
        head = _read_head(raw, len(GZIP_MAGIC))
        stream: BinaryIO = io.BufferedReader(_Prefixed(head, raw))
        if head == GZIP_MAGIC:
            stream = gzip.GzipFile(fileobj=stream, mode="rb")  # type: ignore[assignment]
        yield stream
    finally:
        if owned:
            raw.close()


def count_hosts(spec: str, up_to_bytes: int = 1 << 20, up_to_items: int = 50_000) -> int | None:
    """How many distinct hosts the URLs of the input at ``spec`` name; ``None`` unless it is a
    regular file of at most ``up_to_bytes`` with at most ``up_to_items`` items (reading ahead
    must stay cheap, and must not steal a pipe's lines). The CLI starts no more workers than
    that: a list on one host needs one, whatever the core count."""
    try:
        info = os.stat(spec)
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode) or info.st_size > up_to_bytes:
        return None
    hosts: set[str] = set()
    with open_input(spec) as stream:
        for n, parsed in enumerate(iter_parsed(stream)):
            if n >= up_to_items:
                return None
            if isinstance(parsed, InputItem):
                with contextlib.suppress(DownloadFailed):
                    hosts.add(host_key(parsed.url))
    return len(hosts)


def count_items(spec: str) -> int | None:
    """How many lines of the input at ``spec`` are not blank or comments; ``None`` unless it
    is a regular file (counting ahead in a pipe, ``<(zcat ...)``, would steal its lines)."""
    try:
        if not stat.S_ISREG(os.stat(spec).st_mode):
            return None
    except OSError:
        return None
    total = 0
    with open_input(spec) as stream:
        for _, raw in iter_raw_lines(stream):
            if raw is None or is_countable(raw):
                total += 1
    return total
