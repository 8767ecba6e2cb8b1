"""shardload.paths: the URL -> relative path rule, its safety, injectivity and limits."""

from __future__ import annotations

import ntpath
import os
import re
import types

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

import shardload.paths as paths_module
from shardload.errors import DownloadFailed
from shardload.paths import (
    DISPLACED_NAME,
    INDEX_NAME,
    MAX_COMPONENT,
    MAX_RELPATH,
    TEMP_DIR_NAME,
    displaced_path,
    is_within,
    url_to_relpath,
)
from shardload.urls import UrlParts, split_url
from shardload.worker.http import request_target


def rel(url: str) -> str:
    return url_to_relpath(split_url(url))


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://httpbin.org/links/0", "httpbin.org/links/0"),
        ("http://127.0.0.1:8080/links/3", "127.0.0.1_8080/links/3"),
        ("http://h", "h/%index"),
        ("http://h/", "h/%index"),
        ("http://h/a/", "h/a/%index"),
        ("http://h/a//b", "h/a/%index/b"),
        ("http://h//", "h/%index/%index"),
        ("http://h/?q=1", "h/%index@q=1"),
        ("http://h?q=1", "h/%index@q=1"),
        ("http://h/a?b=1", "h/a@b=1"),
        ("http://h/a_b_1", "h/a_b_1"),
        ("http://h/a%40b=1", "h/a%=40b=1"),
        ("http://h/a@b=1", "h/a%40b=1"),
        ("http://h/a?", "h/a"),
        ("http://h/a#frag", "h/a"),
        ("http://h/a/../b", "h/a/%2E%2E/b"),
        ("http://h/%2e%2E/x", "h/%=2E%=2E/x"),
        ("http://h/./x", "h/%2E/x"),
        ("http://h/.../x", "h/%2E%2E%2E/x"),
        ("http://h/%2e../x", "h/%2E%2E%2E/x"),  # goes as "..." (not a dot-segment): one file
        ("http://h/.%2E/x", "h/%2E%=2E/x"),
        ("http://h/C++/C%2b%2B", "h/C++/C%=2B%=2B"),
        ("http://h/a%3Ab%40c%41", "h/a%=3Ab%=40cA"),
        ("http://h/%5B1%5D%20x", "h/%=5B1%=5D%20x"),
        ("http://h/%%61a", "h/%25aa"),
        ("http://h/a%2Fb/c", "h/a%2Fb/c"),
        ("http://h/a%2fb", "h/a%2Fb"),
        ("http://h/a\\b", "h/a%5Cb"),
        ("http://h/%5C..%5C", "h/%5C..%5C"),
        ("http://h/%00", "h/%00"),
        ("http://h/%", "h/%25"),
        ("http://h/%25", "h/%25"),
        ("http://h/%zz", "h/%25zz"),
        ("http://h/%41", "h/A"),
        ("http://h/%7e+,=", "h/~+,="),
        ("http://h/a:b;c", "h/a%3Ab%3Bc"),
        ("http://h/.shardload-tmp/x", "h/%2Eshardload-tmp/x"),
        ("http://h/.SHARDLOAD", "h/%2ESHARDLOAD"),
        ("http://h/%2Eshardload", "h/%2Eshardload"),
        ("http://h/.well-known/x", "h/.well-known/x"),
        ("http://h/%index", "h/%25index"),
        ("http://h/%file", "h/%25file"),
        ("http://a_b.com:81/x", "a%5Fb.com_81/x"),
        ("http://h:80/x", "h/x"),
        ("https://h:80/x", "h_80/x"),
        ("http://[::1]:8080/x", "%3A%3A1_8080/x"),
        ("http://[::1]/x", "%3A%3A1/x"),
        ("http://u:secret@h/x", "h/x"),
        ("http://bücher.de/ü", "xn--bcher-kva.de/%C3%BC"),
        ("http://h/%C3%BC", "h/%C3%BC"),
        ("http://h/%FF", "h/%FF"),
        ("http://h/x?x=%2F", "h/x@x=%252F"),
        ("http://h/x?x=/", "h/x@x=%2F"),
        ("http://h/x?a=1&b=2", "h/x@a=1%26b=2"),
        ("http://h/x?@", "h/x@%40"),
    ],
)
def test_golden(url: str, expected: str) -> None:
    assert rel(url) == expected


def test_scheme_is_not_part_of_the_path() -> None:
    assert rel("http://h/a?b") == rel("https://h/a?b")
    assert rel("http://h:8443/a") == rel("https://h:8443/a")


def test_equivalent_spellings_share_a_file() -> None:
    assert url_to_relpath(UrlParts("http", "h", None, "/a b", "")) == rel("http://h/a%20b")
    assert rel("http://h/%41") == rel("http://h/A")
    assert rel("http://H/x") == rel("http://h/x")
    assert rel("http://bücher.de/x") == rel("http://xn--bcher-kva.de/x")


def test_reserved_names() -> None:
    assert TEMP_DIR_NAME == ".shardload-tmp"
    assert INDEX_NAME == "%index"
    assert DISPLACED_NAME == "%file"
    assert displaced_path("h/a") == "h/a/%file"


def test_long_component_is_hashed() -> None:
    path = rel("http://h/" + "x" * 300)
    name = path.split("/")[1]
    assert re.fullmatch(r"x{120}%~[0-9a-f]{40}", name)
    assert rel("http://h/" + "x" * 301) != path


def test_long_component_never_splits_an_escape() -> None:
    for pad in range(4):
        name = rel("http://h/" + "a" * pad + "%C3%BC" * 100).split("/")[1]
        prefix = name.split("%~")[0]
        assert re.fullmatch(r"a*(%C3%BC)*(%C3)?", prefix), prefix
        assert len(prefix) in (118, 119, 120)


def test_long_component_never_splits_an_escape_kept_apart() -> None:
    for pad in range(5):
        name = rel("http://h/" + "a" * pad + "%2B" * 100).split("/")[1]
        prefix = name.split("%~")[0]
        assert re.fullmatch(r"a*(%=2B)*", prefix), prefix
        assert len(prefix) in (117, 118, 119, 120)


def test_long_query() -> None:
    path = rel("http://h/a?" + "q" * 10_000)
    assert re.fullmatch(r"h/a@q{118}%~[0-9a-f]{40}", path)


def test_long_relpath_collapses() -> None:
    url = "http://h/" + "/".join(f"{i:03d}" + "d" * 150 for i in range(30)) + "/last"
    path = rel(url)
    assert re.fullmatch(r"h/%long/[0-9a-f]{40}-last", path)
    assert rel(url + "x") != path
    deeper = rel("http://h/" + "/".join(["s"] * 2000))
    assert re.fullmatch(r"h/%long/[0-9a-f]{40}-s", deeper)
    long_last = rel("http://h/" + "/".join(["d" * 150] * 30) + "/" + "z" * 300)
    assert re.fullmatch(r"h/%long/[0-9a-f]{40}-z{100}", long_last)


def test_empty_host_is_refused() -> None:
    with pytest.raises(DownloadFailed):
        url_to_relpath(UrlParts("http", "", None, "/x", ""))


def _clear_path_caches() -> None:
    """Forget every memoised answer in shardload.paths, so nothing computed under one ``os``
    is reused under another."""
    caches = [v for v in vars(paths_module).values() if hasattr(v, "cache_clear")]
    assert caches, "shardload.paths has no lru caches any more: update this helper"
    for cached in caches:
        cached.cache_clear()


# URL -> the pattern its relative path must match in full.
_SEP_URLS = {
    "http://h:81/a/b%5Cc?d": re.escape("h_81/a/b%5Cc@d"),
    "http://a_b.com/x/y/": re.escape("a%5Fb.com/x/y/%index"),
    "http://[::1]:8080/a//b": re.escape("%3A%3A1_8080/a/%index/b"),
    "http://h/" + "x" * 300: r"h/x{120}%~[0-9a-f]{40}",
    "http://h/" + "/".join(["s"] * 2000): r"h/%long/[0-9a-f]{40}-s",
}


def test_independent_of_os_sep(monkeypatch: pytest.MonkeyPatch) -> None:
    """On Windows (``os`` is ntpath there, ``os.sep`` a backslash) paths are still /-joined."""
    _clear_path_caches()
    before = {url: rel(url) for url in _SEP_URLS}
    windows_os = types.SimpleNamespace(
        **{name: getattr(os, name) for name in dir(os) if not name.startswith("__")}
    )
    windows_os.path = ntpath
    windows_os.sep = "\\"
    windows_os.altsep = "/"
    monkeypatch.setattr(paths_module, "os", windows_os)
    try:
        _clear_path_caches()
        after = {url: rel(url) for url in _SEP_URLS}
    finally:
        monkeypatch.undo()
        _clear_path_caches()
    assert after == before
    for url, pattern in _SEP_URLS.items():
        assert re.fullmatch(pattern, after[url]), (url, after[url])


# --- property tests ---------------------------------------------------------------------------

_TOKENS = [
    "..",
    ".",
    "...",
    "%2e%2e",
    "%2E",
    "%2F",
    "%2f",
    "\\",
    "%5C",
    "%00",
    "%01",
    "%",
    "%%",
    "%zz",
    "%4",
    "@",
    "%40",
    "?",
    "%3F",
    "_",
    "~",
    "+",
    "=",
    "%20",
    ".shardload-tmp",
    ".SHARDLOAD",
    "%2Eshardload",
    "%index",
    "%file",
    "%long",
    "%~",
    "a",
    "A",
    "%41",
    "ü",
    "%C3%BC",
    "%FF",
    "\U0001f600",
    ":",
    "",
]
_HOSTS = [
    "h",
    "H",
    "a_b",
    "a-b.example.com",
    "bücher.de",
    "xn--bcher-kva.de",
    "127.0.0.1",
    "[::1]",
    "[::2]",
    "h.",
]
_token = st.sampled_from(_TOKENS)
_segment = st.one_of(
    st.lists(_token, max_size=4).map("".join),
    st.text(
        alphabet=st.characters(
            blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp"), blacklist_characters="/?#\x85"
        ),
        max_size=12,
    ),
    st.integers(190, 260).map(lambda n: "x" * n),
    st.integers(60, 80).map(lambda n: "%C3%BC" * n),
)
_query = st.one_of(
    st.just(""),
    st.lists(st.sampled_from(["a", "=", "&", "%2F", "/", "@", "%", "1", "?", "ü"]), max_size=6).map(
        "".join
    ),
    st.integers(0, 9).map(lambda n: "q" * 10_000 if n == 0 else "q=1"),
)


@st.composite
def urls(draw: st.DrawFn, deep: bool = True) -> str:
    scheme = draw(st.sampled_from(["http", "https"]))
    creds = draw(st.sampled_from(["", "user:pw@", "user@"]))
    host = draw(st.sampled_from(_HOSTS))
    port = draw(st.sampled_from(["", ":80", ":443", ":8080", ":1"]))
    segments = draw(st.lists(_segment, max_size=6))
    if deep and segments and draw(st.integers(0, 9)) == 0:  # sometimes very deep
        segments *= draw(st.integers(2, 60))
    rooted = bool(segments) or draw(st.booleans())
    path = "/" + "/".join(segments) if rooted else ""
    query = draw(_query if deep else _query.filter(lambda q: len(q) < 100))
    sep = "?" if query or draw(st.booleans()) else ""
    frag = draw(st.sampled_from(["", "#", "#frag"]))
    return f"{scheme}://{creds}{host}{port}{path}{sep}{query}{frag}"


# Any UrlParts at all, even ones split_url would never produce: the path must still be safe.
any_parts = st.builds(
    UrlParts,
    scheme=st.sampled_from(["http", "https"]),
    host=st.text(min_size=1, max_size=300),
    port=st.none() | st.integers(0, 70000),
    path=st.one_of(st.text(), st.lists(_token, max_size=8).map("/".join)),
    query=st.text(),
)

_RESERVED_PCT = re.compile(r"%(index|file|long|~|=[0-9A-F]{2})")


def check_safe(relpath: str) -> None:
    assert relpath
    assert relpath.isascii()
    assert not relpath.startswith("/")
    assert "\x00" not in relpath
    assert "\\" not in relpath
    assert len(relpath.encode()) <= MAX_RELPATH
    components = relpath.split("/")
    assert len(components) >= 2
    for name in components:
        assert name not in ("", ".", "..")
        assert len(name.encode()) <= MAX_COMPONENT
        assert not name.lower().startswith(".shardload")
        # Every '%' is an escape of two uppercase hex digits, or starts a reserved marker.
        assert re.fullmatch(r"([^%]|%[0-9A-F]{2})*", _RESERVED_PCT.sub("", name)), name
    home = "/srv/home"
    assert is_within(home, relpath)
    assert os.path.normpath(os.path.join(home, relpath)).startswith(home + "/")
    assert os.path.normpath(relpath) == relpath


def wire_key(url: str) -> tuple[str, tuple[bytes, ...], str]:
    """What distinguishes two URLs on the wire, for the injectivity property."""
    parts = split_url(url)
    return parts.host_key, request_target(parts)


@given(urls())
@settings(max_examples=500, deadline=None)
@example("http://h/..")
@example("http://h/%2e%2e/%2e%2e/etc/passwd")
@example("http://user:pw@h:8080//a//?x=1")
def test_urls_map_to_safe_paths(url: str) -> None:
    parts = split_url(url)
    relpath = url_to_relpath(parts)
    check_safe(relpath)
    assert url_to_relpath(split_url(url)) == relpath  # deterministic
    assert "pw" not in relpath.split("/")[0]


@given(any_parts)
@settings(max_examples=500, deadline=None)
def test_any_parts_map_to_safe_paths(parts: UrlParts) -> None:
    check_safe(url_to_relpath(parts))


@given(st.lists(urls(), min_size=2, max_size=10))
@settings(max_examples=300, deadline=None)
def test_injective(batch: list[str]) -> None:
    check_injective(batch)


def check_injective(batch: list[str]) -> None:
    seen: dict[str, tuple[str, tuple[bytes, ...], str]] = {}
    for url in batch:
        key = wire_key(url)
        relpath = rel(url)
        assert seen.setdefault(relpath, key) == key, (url, relpath)


# A tiny alphabet, so that random batches often hold near-collisions ('?' vs '@' vs '%40', ...).
_TINY_SEGMENTS = ["a", "b=1", "a@b=1", "a%40b=1", "@", "%40", "%", "%25", "%2540", ".", "..", "%2e"]
_TINY_SEGMENTS += ["%2F", "a%2Fb", "_", "%5F", "%index", "%25index", "%file", "", "%7E", "~"]


@st.composite
def tiny_urls(draw: st.DrawFn) -> str:
    host = draw(st.sampled_from(["h", "h:8080", "h_8080"]))
    path = "/".join(draw(st.lists(st.sampled_from(_TINY_SEGMENTS), max_size=2)))
    query = draw(st.sampled_from(["", "?", "?b=1", "?%2F", "?/", "?@", "?%40", "?%"]))
    return f"http://{host}/{path}{query}"


@given(st.lists(tiny_urls(), min_size=2, max_size=40))
@settings(max_examples=300, deadline=None)
def test_injective_tiny_alphabet(batch: list[str]) -> None:
    check_injective(batch)


# Rewrites that turn a URL into a near neighbour that may or may not be the same on the wire.
_REWRITES = [
    ("?", "@"),
    ("?", "/"),
    ("@", "?"),
    ("@", "%40"),
    ("%40", "@"),
    ("/", "%2F"),
    ("%2F", "/"),
    ("/", "//"),
    ("_", ":"),
    (":", "_"),
    ("%", "%25"),
    ("%25", "%"),
    (".", "%2E"),
    ("%index", ""),
    ("=", "_"),
    ("_", "%5F"),
]


@given(tiny_urls() | urls(deep=False))
@settings(max_examples=200, deadline=None)
def test_injective_under_rewrites(url: str) -> None:
    url = url.split("#", maxsplit=1)[0]
    batch = [url, url + "/", url + "?", url + "%index", url.rstrip("/")]
    for old, new in _REWRITES:
        batch += [
            url.replace(old, new),
            url.replace(old, new, 1),
            url[::-1].replace(old, new, 1)[::-1],
        ]
    valid = []
    for candidate in batch:
        try:
            split_url(candidate)
        except DownloadFailed:
            continue
        valid.append(candidate)
    check_injective(valid)


@given(st.lists(urls(), min_size=1, max_size=5), st.data())
@settings(max_examples=250, deadline=None)
def test_injective_under_small_mutations(batch: list[str], data: st.DataObject) -> None:
    """Near-identical URLs (one token appended or changed) never share a file."""
    for url in batch:
        token = data.draw(st.sampled_from([t for t in _TOKENS if t]))
        base = url.split("#")[0]
        for other in (base + token, base + "/" + token, base.replace("/", "/" + token, 3)):
            try:
                key = wire_key(other)
            except DownloadFailed:
                continue
            if key != wire_key(base):
                assert rel(other) != rel(base), (base, other)


@given(st.lists(urls(), min_size=1, max_size=10))
@settings(max_examples=200, deadline=None)
def test_displacement_gives_an_order_free_layout(batch: list[str]) -> None:
    """A file needed as a directory moves to <path>/%file; the result is a valid tree."""
    paths = {rel(url) for url in batch}
    # Add parents of some paths as files too, to force file/directory conflicts.
    paths |= {p.rsplit("/", 1)[0] for p in list(paths) if p.count("/") >= 2}
    dirs = {p[:i] for p in paths for i in range(len(p)) if p[i] == "/"}
    final = {displaced_path(p) if p in dirs else p for p in paths}
    assert len(final) == len(paths)
    final_dirs = {p[:i] for p in final for i in range(len(p)) if p[i] == "/"}
    assert not (final & final_dirs)


@pytest.mark.parametrize(
    ("home", "path", "inside"),
    [
        ("/srv/h", "a/b", True),
        ("/srv/h", "/srv/h/a", True),
        ("/srv/h", "/srv/h", True),
        ("/srv/h", ".", True),
        ("/srv/h", "a/../b", True),
        ("/srv/h", "..", False),
        ("/srv/h", "a/../../x", False),
        ("/srv/h", "/srv/hx", False),
        ("/srv/h", "/srv/h/../hx/y", False),
        ("/srv/h", "/etc/passwd", False),
        ("/srv/h/", "a", True),
        ("/srv//h/./", "/srv/h/a", True),
        ("/", "/x", True),
        ("relative/home", "x", True),
        ("relative/home", "../x", False),
    ],
)
def test_is_within(home: str, path: str, inside: bool) -> None:
    assert is_within(home, path) is inside


@given(st.lists(st.sampled_from(["..", ".", "a", "", "/", "b"]), max_size=8).map("/".join))
@settings(max_examples=300, deadline=None)
def test_is_within_agrees_with_commonpath(path: str) -> None:
    home = "/srv/h"
    target = os.path.normpath(os.path.join(home, path))
    assume(target)
    assert is_within(home, path) is (os.path.commonpath([home, target]) == home)


@given(st.text(alphabet="aZ09-._~+,=/%2Fé", max_size=30))
@example(".shardload-tmp/x")
@example("a/./b/../.")
@example("")
@settings(max_examples=500)
def test_the_plain_path_shortcut_agrees_with_the_general_rule(path):
    general = [
        paths_module._segment_name(segment) or paths_module.INDEX_NAME
        for segment in path.split("/")
    ]
    assert paths_module._segment_names(path) == general
