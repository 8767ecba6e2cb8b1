"""URL validation and normalisation: the host key every other policy is built on.

Rules and invariants:

- Only ``http`` and ``https`` are accepted (scheme compared case-insensitively); anything else,
  including a missing scheme, fails with ``ErrorKind.UNSUPPORTED_SCHEME``.
- Every other defect fails with ``ErrorKind.INVALID_URL``: not a string, empty, whitespace or
  control characters inside the URL (surrounding whitespace is stripped first), lone surrogates,
  no host, a port that is not 1..65535, a host that is not a valid host name after IDNA encoding.
- The host is lowercase ASCII: IDNA (punycode) encoded, labels of ``a-z 0-9 - _`` of 1..63 chars,
  253 chars at most (one trailing dot, the DNS root, is kept); or a dotted IPv4 address; or an
  IPv6 address, written without brackets in its compressed form (zone ids are refused).
- The default port of the scheme (80 for http, 443 for https) is stored as ``None``, so
  ``http://h`` and ``http://h:80`` have the same host key.
- Credentials (``user:pass@``) are accepted but never kept, and never appear in an error message:
  messages show ``redact(url)``, cut to a readable length. The fragment is dropped.
- ``params`` are appended to the query as aiohttp sends them on a GET (``urlencode``, a list
  or tuple giving one pair per value); aiohttp's value types only (str, int, finite float): a
  value of another type is an invalid URL, not its ``str`` (an object's repr, ``True``). A
  ``None`` value is left out, as ``requests`` does.
- The host key is ``host`` or ``host:port``; IPv6 hosts are always bracketed (``[::1]``,
  ``[::1]:8080``) so the key is unambiguous. It is what sharding and per-host limits use.
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlencode, urljoin, urlsplit

from shardload.errors import DownloadFailed, ErrorKind

DEFAULT_PORTS = {"http": 80, "https": 443}
_MAX_HOST = 253
_MAX_LABEL = 63
_MAX_SHOWN = 200  # characters of a URL quoted in an error message
_LABEL = re.compile(r"[a-z0-9_-]{1,63}", re.ASCII)
# C0 and C1 controls, DEL, and every Unicode whitespace (``\s`` is ``str.isspace`` on str).
_BAD_CHAR = re.compile(r"[\x00-\x20\x7f-\x9f\s]")
_STARTS_LIKE_A_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s/?#]+[/?#]")
# Leading zeros are allowed, as browsers (the WHATWG URL standard) and curl read them; the
# value is checked apart, and at most 5 digits follow them (int() of a long run is slow).
_PORT = re.compile(r"0*[0-9]{1,5}", re.ASCII)
# Optional "scheme:", any run of slashes, then the authority: lenient, so garbage is redacted too.
_AUTHORITY = re.compile(r"^(?:[^/?#\\@:]*:)?[/\\]*([^/?#\\]*)", re.DOTALL)


@dataclass(frozen=True, slots=True)
class UrlParts:
    """A validated, normalised http(s) URL, without credentials or fragment."""

    scheme: str
    host: str
    port: int | None
    path: str
    query: str

    @property
    def authority(self) -> str:
        """``host`` or ``host:port`` as the URL names it; IPv6 hosts are bracketed
        (``[::1]:8080``). What a request says (its Host header) and what an origin is."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"

    @property
    def host_key(self) -> str:
        """The key of sharding and politeness: the authority, but a name's trailing dot is
        dropped (``a.com.`` is ``a.com`` to DNS, so one server and one set of limits; its
        requests and files keep the host as written)."""
        if not self.host.endswith("."):
            return self.authority
        return self.host[:-1] if self.port is None else f"{self.host[:-1]}:{self.port}"


def redact(url: str) -> str:
    """The URL with any userinfo replaced by ``***@``; never raises, whatever it is given."""
    try:
        text = url if isinstance(url, str) else str(url)
        match = _AUTHORITY.match(text)
        if match is None or "@" not in match.group(1):
            return text
        start, end = match.span(1)
        at = text.rindex("@", start, end)
        return f"{text[:start]}***{text[at:]}"
    except Exception:  # redact must never raise, even on a str subclass that misbehaves
        return "<unprintable url>"


def userinfo(url: str) -> str:
    """The ``user:password`` part of ``url`` ("" for none), found as ``redact`` finds it.
    ``UrlParts`` leave it out; a request with credentials is still another request."""
    if "@" not in url:
        return ""
    match = _AUTHORITY.match(url)
    return "" if match is None else match.group(1).rpartition("@")[0]


def basic_authorization(url: str) -> str | None:
    """The ``Authorization`` value for the credentials in ``url``, or None. Both clients send
    them as UTF-8 (RFC 7617's charset), as curl does: aiohttp's default, Latin-1, made a
    non-ASCII password work on one client only."""
    info = userinfo(url)
    if not info:
        return None
    user, _, password = info.partition(":")
    pair = f"{unquote(user)}:{unquote(password)}".encode()
    return f"Basic {base64.b64encode(pair).decode('ascii')}"


def with_userinfo(url: str, info: str) -> str:
    """``url`` (absolute, with no credentials of its own) carrying ``info`` ("user:password")."""
    if not info:
        return url
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{info}@{rest}"


def _shown(url: str) -> str:
    """``redact(url)``, cut to a readable length, with unprintable characters escaped."""
    text = redact(url)
    text = text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN] + "..."
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def _invalid(url: str, why: str) -> DownloadFailed:
    return DownloadFailed(ErrorKind.INVALID_URL, f"invalid URL ({why}): {_shown(url)}")


def _split_host_port(hostport: str, url: str) -> tuple[str, str]:
    """Split ``host[:port]`` or ``[v6][:port]`` into host and port text."""
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise _invalid(url, "unclosed IPv6 bracket")
        host, rest = hostport[1:end], hostport[end + 1 :]
        if rest and not rest.startswith(":"):
            raise _invalid(url, "junk after IPv6 address")
        return host, rest[1:]
    host, _, port = hostport.partition(":")
    return host, port


def _normalise_host(host: str, bracketed: bool, url: str) -> str:
    try:
        return _normalised_host(host, bracketed)
    except UnicodeError as exc:
        raise _invalid(url, "IDNA encoding failed") from exc


@functools.lru_cache(maxsize=65536)
def _normalised_host(host: str, bracketed: bool) -> str:
    """The normal form of a host ('' when invalid). Cached: a crawl repeats its hosts."""
    if bracketed:
        try:
            return str(ipaddress.IPv6Address(host)) if "%" not in host else ""
        except ValueError:
            return ""
    if not host.isascii():
        host = host.encode("idna").decode("ascii")
    host = host.lower()
    name = host[:-1] if host.endswith(".") else host
    if not name or len(name) > _MAX_HOST:
        return ""
    labels = name.split(".")
    if any(len(label) > _MAX_LABEL or not _LABEL.fullmatch(label) for label in labels):
        return ""
    return host


def split_url(url: str, params: Mapping[str, Any] | None = None) -> UrlParts:
    """Validate and normalise ``url``; raise ``DownloadFailed`` with the reason otherwise."""
    if params or not isinstance(url, str):
        return _split_url(url, params)
    return _split_cached(url)


@functools.lru_cache(maxsize=4096)
def _split_cached(url: str) -> UrlParts:
    # The engine asks twice per URL (itself, then get_file_path): keep recent answers.
    return _split_url(url, None)


# The common case, parsed by one regex: lowercase scheme, a plain lowercase host, an optional
# port, then printable ASCII only. Anything else (userinfo, IPv6, IDNA, uppercase, spaces,
# non-ASCII) takes the general path below; both give the same answer where both apply.
_SIMPLE = re.compile(
    r"(https?)://([a-z0-9._-]+)(?::([0-9]{1,5}))?"
    r"(/[!\"$->@-~]*)?"  # path: printable ASCII but '#' and '?'
    r"(?:[?]([!\"$-~]*))?"  # query: printable ASCII but '#'
    r"(?:#[!-~]*)?",
    re.ASCII,
)


def _split_url(url: str, params: Mapping[str, Any] | None) -> UrlParts:
    if not params and isinstance(url, str) and (simple := _SIMPLE.fullmatch(url)):
        scheme, host, raw_port, path, query = simple.groups()
        port = int(raw_port) if raw_port else None
        if _normalised_host(host, False) == host and (port is None or 0 < port <= 65535):
            return UrlParts(
                scheme,
                host,
                None if port == DEFAULT_PORTS[scheme] else port,
                _normal_path(path) if path and "%" in path else path or "",
                query or "",
            )
    return _split_general(url, params)


def _normal_path(path: str) -> str:
    """``path`` with its percent-encoding normalised (RFC 3986 6.2.2.1-2): an escaped
    unreserved character (``%41``, ``%7e``) decoded, any other escape's hex upper-cased. Two
    URLs that differ only there name one resource, stored in one file: now they are also one
    request (``/d/%41`` and ``/d/A`` were two requests, each written over the other). A
    segment that would decode to ``.`` or ``..`` keeps its escapes: decoded, it would be a
    dot-segment, another resource."""
    if "%" not in path:
        return path
    segments = path.split("/")
    for i, segment in enumerate(segments):
        if "%" in segment:
            # One pass, a bare '%' escaped as it goes: decoding "%61" in "%%61a" must not
            # make a new escape ("%aa") out of the bare '%' before it.
            normal = _ESCAPE_OR_BARE.sub(
                lambda match: normal_escape(match.group(1)) if match.group(1) else "%25",
                segment,
            )
            if normal in (".", ".."):
                normal = _ESCAPE.sub(lambda match: match.group().upper(), segment)
            segments[i] = normal
    return "/".join(segments)


_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_ESCAPE_OR_BARE = re.compile(r"%([0-9A-Fa-f]{2})?")
UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def normal_escape(hex_digits: str) -> str:
    """The normal form of the escape ``%<hex_digits>`` (RFC 3986 6.2.2): an unreserved
    character decoded, any other escape with its hex upper-cased."""
    char = chr(int(hex_digits, 16))
    return char if char in UNRESERVED else "%" + hex_digits.upper()


def _split_general(url: str, params: Mapping[str, Any] | None) -> UrlParts:
    if not isinstance(url, str):
        why = f"invalid URL (not a string but {type(url).__name__})"
        raise DownloadFailed(ErrorKind.INVALID_URL, why)
    text = url.strip()
    if not text:
        raise _invalid(url, "empty")
    # A space inside a URL is sent as %20, as browsers, wget and aiohttp (so aiodownload) do:
    # scraped links hold them ("Annual Report.pdf"). Other whitespace, and spaces in text that
    # does not even start like a URL ("not a url"), stay refused.
    if _STARTS_LIKE_A_URL.match(text):
        text = text.replace(" ", "%20")
    if _BAD_CHAR.search(text):
        raise _invalid(url, "whitespace or control character")
    try:
        text.encode("utf-8")
        parts = urlsplit(text)
    except (UnicodeError, ValueError) as exc:
        raise _invalid(url, "unparsable") from exc
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        why = f"scheme {scheme!r}" if scheme else "no scheme"
        raise DownloadFailed(
            ErrorKind.UNSUPPORTED_SCHEME, f"unsupported URL ({why}): {_shown(url)}"
        )
    hostport = parts.netloc.rpartition("@")[2]
    raw_host, raw_port = _split_host_port(hostport, url)
    if not raw_host:
        raise _invalid(url, "no host")
    host = _normalise_host(raw_host, hostport.startswith("["), url)
    if not host:
        raise _invalid(url, "bad host")
    port: int | None = None
    if raw_port:
        if not _PORT.fullmatch(raw_port) or not 0 < int(raw_port) <= 65535:
            raise _invalid(url, "bad port")
        port = int(raw_port)
    if port == DEFAULT_PORTS[scheme]:
        port = None
    query = parts.query
    if params:
        try:
            extra = urlencode(_query_pairs(params))
        except (TypeError, ValueError, UnicodeError) as exc:
            raise _invalid(url, f"unencodable params: {exc}") from exc
        query = f"{query}&{extra}" if query else extra
    return UrlParts(scheme, host, port, _normal_path(parts.path), query)


def _query_pairs(params: Mapping[str, Any]) -> list[tuple[str, str | int | float]]:
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a mapping, got {type(params).__name__}")
    pairs: list[tuple[str, str | int | float]] = []
    for key, value in params.items():
        if not isinstance(key, str):
            raise TypeError(f"a params key must be a str, got {type(key).__name__}")
        for one in value if isinstance(value, list | tuple) else (value,):
            if one is None:
                continue
            if isinstance(one, bool) or not isinstance(one, str | int | float):
                raise TypeError(f"params[{key!r}] is a {type(one).__name__}, not str, int or float")
            if isinstance(one, float) and not math.isfinite(one):
                raise ValueError(f"params[{key!r}] is {one}")
            pairs.append((key, one))
    return pairs


def redirect_target(url: str, location: str) -> tuple[str, UrlParts]:
    """Where a redirect from ``url`` with this ``Location`` goes; a target shardload would not
    fetch as a URL of its own (another scheme, no host) fails as ``redirect``. Spaces and
    control characters inside a Location are percent-encoded first, as browsers, curl and
    aiohttp do (servers send ``Location: /a file.pdf``)."""
    try:
        target = urljoin(url, _UNSENDABLE.sub(_percent, location.strip()))
        return target, split_url(target)
    except DownloadFailed as exc:
        raise DownloadFailed(ErrorKind.REDIRECT, f"redirect refused: {exc.message}") from exc
    except ValueError as exc:  # urljoin: "http://[bad" is no URL at all
        raise DownloadFailed(
            ErrorKind.REDIRECT, f"redirect refused: unparsable Location: {exc}"
        ) from exc


_UNSENDABLE = re.compile(r"[\x00-\x20\x7f]")


def _percent(match: re.Match[str]) -> str:
    return f"%{ord(match.group()):02X}"


def host_key(url: str) -> str:
    """``split_url(url).host_key``: the key of sharding and per-host limits."""
    return split_url(url).host_key


def normalise_host_key(text: str, scheme: str | None = None) -> str:
    """The host key of ``host[:port]`` text: what ``host_key`` gives for URLs on that host.

    With a scheme, only its default port is dropped. Without one, both 80 and 443 are: a key
    names a host, and ``example.com:443`` is how one writes the https default port (so an http
    URL on port 443, a rare thing, cannot be named without its scheme). IPv6 addresses may be
    written with or without brackets.
    """
    if not isinstance(text, str):
        raise DownloadFailed(
            ErrorKind.INVALID_URL, f"invalid host (not a string but {type(text).__name__})"
        )
    if scheme is not None and scheme.lower() not in DEFAULT_PORTS:
        raise DownloadFailed(ErrorKind.UNSUPPORTED_SCHEME, f"unsupported scheme {scheme!r}")
    hostport = text.strip()
    # Anything but host and port would be silently dropped by the URL parser (user@, /path).
    if any(ch in hostport for ch in "/?#@\\"):
        raise DownloadFailed(ErrorKind.INVALID_URL, f"invalid host (not host[:port]): {hostport!r}")
    if hostport.count(":") > 1 and not hostport.startswith("["):
        hostport = f"[{hostport}]"
    try:
        parts = split_url(f"{(scheme or 'http').lower()}://{hostport}/")
    except DownloadFailed as exc:
        raise DownloadFailed(exc.kind, f"invalid host {hostport!r}: {exc.message}") from None
    port = parts.port
    if scheme is None and port == DEFAULT_PORTS["https"]:
        port = None
    return UrlParts(parts.scheme, parts.host, port, "", "").host_key
