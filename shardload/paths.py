"""URL -> relative file path: readable in the simple case, safe and injective in every case.

The rule (``url_to_relpath``), on a URL already split and normalised by ``shardload.urls``:

1. The first component is the host, then ``_<port>`` when the port is not the scheme's default:
   ``https://httpbin.org/links/0`` -> ``httpbin.org/links/0``, ``http://127.0.0.1:8080/links/3``
   -> ``127.0.0.1_8080/links/3``. In the host, ``_`` is escaped (``%5F``) so the port suffix is
   unambiguous; IPv6 hosts are written without brackets, ``:`` escaped.
2. The path, less one leading ``/``, is split on ``/``. Each segment is percent-decoded to
   bytes (so ``%2F`` is a ``/`` *inside* a name, a real ``/`` separates directories) and then
   escaped: every byte outside ``A-Za-z0-9-._~+,=`` becomes ``%XX`` (uppercase hex), ``%``
   included. A segment of dots only is escaped entirely (``..`` -> ``%2E%2E``), and the leading
   dot of a segment starting with ``.shardload`` (any case) is escaped, since ``.shardload*`` is
   reserved for the writer's temporary directory ``TEMP_DIR_NAME``. Two escapes are not
   decoded, because the request keeps them, so they name another resource than the character
   they spell (RFC 3986 2.2): that of a character a segment may hold as written
   (``!$&'()*+,;=:@[]``), and the escaped dots of a dot-segment (``%2e%2e``). Each becomes
   ``%=XX``: ``/C%2B%2B`` -> ``C%=2B%=2B`` beside ``/C++`` -> ``C++``, ``/%2e%2e`` ->
   ``%=2E%=2E`` beside ``/..`` -> ``%2E%2E``.
3. An empty segment (a trailing slash, an empty path, a ``//`` run) is named ``INDEX_NAME``
   (``%index``): ``http://h`` and ``http://h/`` -> ``h/%index``, ``http://h/a/`` -> ``h/a/%index``,
   ``http://h/a//b`` -> ``h/a/%index/b``.
4. A non-empty query is appended to the last component after ``@`` (which escaping never leaves in
   a name), escaped by the same rule but *not* decoded first: ``/a?b=1`` -> ``a@b=1``,
   ``/?q=1`` -> ``%index@q=1``; ``?x=%2F`` and ``?x=/`` stay distinct.
5. A component longer than ``MAX_COMPONENT`` bytes becomes its first 120 characters (never
   splitting a ``%XX`` escape) + ``%~`` + 40 hex digits of its blake2b hash. A relative path longer
   than ``MAX_RELPATH`` bytes becomes ``<host>/%long/<40 hex of blake2b(path)>-<first 100 chars of
   the last component>``.

Invariants: every component is ASCII, non-empty, not ``.`` or ``..``, free of ``/``, ``\\`` and
NUL, never starts with ``.shardload``; the result is relative, so it stays under home. Escaping
only ever produces ``%`` followed by two hex digits, or ``%=`` and two, so the reserved names
(``%index``, ``%file``, ``%long``) and markers (``%~``) never collide with a URL-derived name:
the mapping is injective over (host key, request target), up to blake2b collisions. Spellings
of one request target share a file, by design: ``/a b`` and ``/a%20b``, ``/%41`` and ``/A``; so
do ``http`` and ``https`` of the same host, port, path and query (the scheme is not part of the
path). Dot segments are not resolved (``/a/../b`` is stored under ``a/%2E%2E/b``). The result
is a pure function of the URL: no randomness, no environment, always ``/``-joined whatever
``os.sep`` is.
Names are case-sensitive: on a case-insensitive filesystem ``/A`` and ``/a`` may collide.

Files and directories: when a URL's file path is also needed as a directory by another URL
(``/a`` next to ``/a/b``), the file lives at ``displaced_path(path)`` = ``<path>/%file``. The
layout is then a function of the set of URLs, independent of the order of downloads; the writer
does the move.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from urllib.parse import unquote_to_bytes

from shardload.errors import DownloadFailed, ErrorKind
from shardload.urls import UrlParts

TEMP_DIR_NAME = ".shardload-tmp"
INDEX_NAME = "%index"
DISPLACED_NAME = "%file"
LONG_DIR_NAME = "%long"
MAX_COMPONENT = 200
MAX_RELPATH = 3000
_KEEP = 120  # characters kept of an over-long component
_KEEP_LONG = 100  # characters of the last component kept in a collapsed path
_RESERVED_PREFIX = b".shardload"
_SAFE = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+,="
_TABLE = tuple(chr(b) if b in _SAFE else f"%{b:02X}" for b in range(256))
_HOST_TABLE = tuple("%5F" if b == ord("_") else name for b, name in enumerate(_TABLE))


def _escape(raw: bytes, table: tuple[str, ...] = _TABLE) -> str:
    """Escape bytes into one safe file name component (empty for empty input)."""
    if raw and not raw.strip(b"."):
        return "".join(f"%{b:02X}" for b in raw)
    if table is _TABLE and not raw.translate(None, _SAFE):
        out = raw.decode("ascii")  # the common case: nothing to escape
    else:
        out = "".join(map(table.__getitem__, raw))
    if raw[: len(_RESERVED_PREFIX)].lower() == _RESERVED_PREFIX:
        out = "%2E" + out[1:]
    return out


def is_text_path(value: object) -> bool:
    """Whether ``value`` is a path as shardload takes one: a str, or a path-like of a str."""
    return isinstance(value, str) or (
        isinstance(value, os.PathLike) and isinstance(os.fspath(value), str)
    )


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode("ascii"), digest_size=20).hexdigest()


def _prefix(name: str, size: int) -> str:
    """The first ``size`` characters of an escaped name, shortened so no ``%XX`` or ``%=XX``
    is split."""
    cut = min(size, len(name))
    pct = name.rfind("%", max(0, cut - 3), cut)
    if pct < 0 or cut >= len(name):
        return name[:cut]
    end = pct + (4 if name.startswith("%=", pct) else 3)
    return name[:pct] if end > cut else name[:cut]


def _fit(name: str) -> str:
    if len(name) <= MAX_COMPONENT:
        return name
    return f"{_prefix(name, _KEEP)}%~{_digest(name)}"


def _host_component(parts: UrlParts) -> str:
    return _host_name(parts.host, parts.port)


@functools.lru_cache(maxsize=65536)
def _host_name(host_text: str, port: int | None) -> str:
    host = _escape(host_text.encode("utf-8", "surrogatepass"), _HOST_TABLE)
    if not host:
        raise DownloadFailed(ErrorKind.INVALID_URL, "URL has no host")
    return _fit(host if port is None else f"{host}_{port}")


# A path whose segments escape to themselves: only _SAFE characters (so no "%"), and no
# segment starting with "." (so none is dots-only or ".shardload..."). Most URLs; one regex
# instead of decoding and escaping each segment.
_SEGMENT = "(?:[{}][{}]*)?".format(
    re.escape(_SAFE.replace(b".", b"").decode("ascii")), re.escape(_SAFE.decode("ascii"))
)
_PLAIN_PATH = re.compile(f"{_SEGMENT}(?:/{_SEGMENT})*")


def _segment_names(path: str) -> list[str]:
    """Rules 2 and 3 for a path less its leading ``/``."""
    if _PLAIN_PATH.fullmatch(path):
        return [segment or INDEX_NAME for segment in path.split("/")]
    return [_segment_name(segment) or INDEX_NAME for segment in path.split("/")]


# Characters a path segment may hold as written (RFC 3986's reserved ones, less the
# delimiters it cannot): escaped, they are another request target, so their escape gets a
# name of its own, "%=XX" (rule 2).
_LITERAL_ON_WIRE = frozenset(b"!$&'()*+,;=:@[]")
_DOT_TOKEN = re.compile(rb"%2[Ee]|\.")
_TOKEN = re.compile(rb"%([0-9A-Fa-f]{2})|[^%]+|%")


def _segment_name(segment: str) -> str:
    """Rule 2 for one segment."""
    raw = segment.encode("utf-8", "surrogatepass")
    if b"%" not in raw:
        return _escape(raw)
    if unquote_to_bytes(raw) in (b".", b".."):
        # A dot-segment spelled with escapes ("%2E.") goes as spelled (``urls``), another
        # request than "..": its escapes keep their own names.
        return "".join("%2E" if tok == b"." else "%=2E" for tok in _DOT_TOKEN.findall(raw))
    out: list[str] = []
    run = bytearray()
    for match in _TOKEN.finditer(raw):
        hexdigits = match.group(1)
        if hexdigits is not None and int(hexdigits, 16) in _LITERAL_ON_WIRE:
            out.append(_escape(bytes(run)) if run else "")
            run.clear()
            out.append("%=" + hexdigits.decode("ascii").upper())
        elif hexdigits is not None:
            run.append(int(hexdigits, 16))
        else:
            run += match.group()
    out.append(_escape(bytes(run)) if run else "")
    return "".join(out)


def url_to_relpath(parts: UrlParts) -> str:
    """The file of ``parts`` relative to the download home, ``/``-joined (rule in module doc)."""
    names = _segment_names(parts.path.removeprefix("/"))
    if parts.query:
        names[-1] += "@" + _escape(parts.query.encode("utf-8", "surrogatepass"))
    host = _host_component(parts)
    relpath = "/".join([host, *(_fit(name) for name in names)])
    if len(relpath) <= MAX_RELPATH:
        return relpath
    return f"{host}/{LONG_DIR_NAME}/{_digest(relpath)}-{_prefix(names[-1], _KEEP_LONG)}"


def displaced_path(relpath: str) -> str:
    """Where the file of ``relpath`` lives when ``relpath`` is needed as a directory."""
    return f"{relpath}/{DISPLACED_NAME}"


def absolute(path: str) -> str:
    """``os.path.abspath(path)``; remembered for absolute paths, whose answer cannot change
    (a relative one depends on the working directory). Every file's checks ask for home's."""
    return _absolute_cached(path) if os.path.isabs(path) else os.path.abspath(path)


@functools.lru_cache(maxsize=64)
def _absolute_cached(path: str) -> str:
    return os.path.abspath(path)


def is_within(home: str, path: str) -> bool:
    """True when ``path`` (relative paths are taken relative to ``home``) is ``home`` or under it.

    Pure string comparison of normalised absolute paths: symlinks are the writer's concern.
    """
    base = absolute(home)
    return contains(base, os.path.normpath(os.path.join(base, path)))  # base is absolute


def contains(base: str, target: str) -> bool:
    """``is_within`` for paths already absolute and normalised (no second ``normpath``)."""
    return target == base or target.startswith(base if base.endswith(os.sep) else base + os.sep)
