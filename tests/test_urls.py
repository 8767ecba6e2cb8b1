"""shardload.urls: validation, normalisation, host keys and redaction."""

from __future__ import annotations

import pickle
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardload.errors import DownloadFailed, ErrorKind
from shardload.urls import (
    UrlParts,
    host_key,
    normalise_host_key,
    redact,
    redirect_target,
    split_url,
)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://httpbin.org/links/0", UrlParts("https", "httpbin.org", None, "/links/0", "")),
        ("http://127.0.0.1:8080/links/3", UrlParts("http", "127.0.0.1", 8080, "/links/3", "")),
        ("HTTP://Example.COM", UrlParts("http", "example.com", None, "", "")),
        ("http://h:80/x", UrlParts("http", "h", None, "/x", "")),
        ("https://h:443/x", UrlParts("https", "h", None, "/x", "")),
        ("http://h:443/x", UrlParts("http", "h", 443, "/x", "")),
        ("https://h:80/x", UrlParts("https", "h", 80, "/x", "")),
        ("http://h:/x", UrlParts("http", "h", None, "/x", "")),
        ("  http://h/x\n", UrlParts("http", "h", None, "/x", "")),
        ("http://u:p@h/x?a=1#frag", UrlParts("http", "h", None, "/x", "a=1")),
        ("http://u@h:81", UrlParts("http", "h", 81, "", "")),
        ("http://h?x", UrlParts("http", "h", None, "", "x")),
        ("http://h/?", UrlParts("http", "h", None, "/", "")),
        ("http://a_b.example.com/", UrlParts("http", "a_b.example.com", None, "/", "")),
        ("http://bücher.de/ü", UrlParts("http", "xn--bcher-kva.de", None, "/ü", "")),
        ("http://BÜCHER.de/", UrlParts("http", "xn--bcher-kva.de", None, "/", "")),
        ("http://xn--bcher-kva.de/", UrlParts("http", "xn--bcher-kva.de", None, "/", "")),
        ("http://a\u3002b.com/", UrlParts("http", "a.b.com", None, "/", "")),
        ("http://example.com./", UrlParts("http", "example.com.", None, "/", "")),
        ("http://[::1]:8080/x", UrlParts("http", "::1", 8080, "/x", "")),
        ("http://[0:0::1]/", UrlParts("http", "::1", None, "/", "")),
        ("http://[::FFFF:1.2.3.4]/", UrlParts("http", "::ffff:102:304", None, "/", "")),
        ("http://h/a/../b//c", UrlParts("http", "h", None, "/a/../b//c", "")),
        # Escapes normalised (RFC 3986 6.2.2): unreserved decoded, others' hex upper-cased;
        # a segment that would decode to a dot-segment keeps its escapes.
        ("http://h/%2e%2E/%2f", UrlParts("http", "h", None, "/%2E%2E/%2F", "")),
        ("http://h/d/%41%7e%2d%5f%30", UrlParts("http", "h", None, "/d/A~-_0", "")),
        (
            "http://h/a%2fb%3F/%e2%82%ac/.%2e/x%2e",
            UrlParts("http", "h", None, "/a%2Fb%3F/%E2%82%AC/.%2E/x.", ""),
        ),
        ("http://h/%41?q=%41", UrlParts("http", "h", None, "/A", "q=%41")),  # the query as sent
        ("http://h/%zz%4", UrlParts("http", "h", None, "/%25zz%254", "")),
        ("http://h:65535", UrlParts("http", "h", 65535, "", "")),
        ("http://h:030721/x", UrlParts("http", "h", 30721, "/x", "")),  # as curl reads it
        ("http://h:0000080/", UrlParts("http", "h", None, "/", "")),  # the default port
        # A space inside is sent as %20 (browsers, wget, aiohttp); a scraped link holds them.
        ("http://h/My Report.pdf", UrlParts("http", "h", None, "/My%20Report.pdf", "")),
        ("http://h/q?name=a b#f g", UrlParts("http", "h", None, "/q", "name=a%20b")),
    ],
)
def test_split_url_normalises(url: str, expected: UrlParts) -> None:
    assert split_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "ftp://h/x",
        "file:///etc/passwd",
        "example.com/x",
        "localhost:8080/x",
        "//h/x",
        "/just/a/path",
        "javascript:alert(1)",
        "mailto:a@b",
        "ftp://user:secret@h/x",
    ],
)
def test_unsupported_scheme(url: str) -> None:
    with pytest.raises(DownloadFailed) as info:
        split_url(url)
    assert info.value.kind == ErrorKind.UNSUPPORTED_SCHEME
    assert "secret" not in info.value.message


@pytest.mark.parametrize(
    "url",
    [
        "",
        "   ",
        "http://",
        "http:///x",
        "http://:80/",
        "http://u:p@/x",
        "http://h x/",
        "http://h/a\tb",
        "http://h/\x00",
        "http://h/\x7f",
        "http://h/\x85x",
        "http://h/\u3000x",
        "http://h/\x9fx",
        "http://h/\u2028x",
        "http://h:0/",
        "http://h:99999/",
        "http://h:65536/",
        "http://h:0000/",
        "http://h:065536/",
        "http://h:8o/",
        "http://h:-1/",
        "http://h:\uff11\uff12/",
        "http://h:80:80/",
        "http://a..b/",
        "http://.a/",
        "http://./",
        "http://" + "a" * 64 + ".com/",
        "http://" + ".".join(["a" * 60] * 5) + "/",
        "http://ex%41mple.com/",
        "http://a\\b/",
        "http://a!b/",
        "http://a*b/",
        "http://\uff41\uff0fb.com/",
        "http://" + "ü" * 70 + ".de/",
        "http://[::1/",
        "http://[::1]x/",
        "http://[not-v6]/",
        "http://[fe80::1%25eth0]/",
        "http://1.2.3.4:8080:9/",
        "http://\ud800.com/",
        "http://h/\udfff",
    ],
)
def test_invalid_url(url: str) -> None:
    with pytest.raises(DownloadFailed) as info:
        split_url(url)
    assert info.value.kind == ErrorKind.INVALID_URL
    info.value.message.encode("utf-8")  # printable, encodable messages only


@pytest.mark.parametrize("url", [None, 5, b"http://h/", ["http://h/"]])
def test_non_string_is_invalid(url: object) -> None:
    with pytest.raises(DownloadFailed) as info:
        split_url(url)  # type: ignore[arg-type]
    assert info.value.kind == ErrorKind.INVALID_URL


@pytest.mark.parametrize(
    "url",
    [
        "http://user:hunter2@a..b/",
        "http://user:hunter2@h:99999/",
        "http://user:hunter2@h/\x00",
        "http://user:hunter2@/x",
        "gopher://user:hunter2@h/",
        "http://user:hunter2@ex%41mple.com/",
        "http://us@er:hunter2@h:bad/",
    ],
)
def test_messages_never_contain_credentials(url: str) -> None:
    with pytest.raises(DownloadFailed) as info:
        split_url(url)
    assert "hunter2" not in info.value.message
    assert "hunter2" not in str(info.value)
    assert "***@" in info.value.message


def test_long_url_message_is_cut() -> None:
    with pytest.raises(DownloadFailed) as info:
        split_url("http://h:bad/" + "x" * 10_000)
    assert len(info.value.message) < 400


def test_params_are_appended_as_aiohttp_sends_them() -> None:
    assert split_url("http://h/x", {"a": "1"}).query == "a=1"
    assert split_url("http://h/x?z=0", {"a": [1, 2], "b": "c d"}).query == "z=0&a=1&a=2&b=c+d"
    assert split_url("http://h/x?z=0", {}).query == "z=0"
    assert split_url("http://h/x?z=0", None).query == "z=0"
    assert split_url("http://h/x", {"q": "/&="}).query == "q=%2F%26%3D"
    assert split_url("http://h/x", {"a": None, "b": [1, None, 2.5], "c": ("x",)}).query == (
        "b=1&b=2.5&c=x"
    )


@pytest.mark.parametrize(
    "params",
    [{"a": object()}, {"a": True}, {"a": [1, {}]}, {"a": float("nan")}, {1: "x"}, {"a": b"x"}],
    ids=["object", "bool", "dict-in-list", "nan", "int-key", "bytes"],
)
def test_params_aiohttp_would_refuse_are_an_invalid_url(params: dict[Any, Any]) -> None:
    """Their str() went into the query (an object's repr, memory address included; True):
    a request nobody meant, and another with processes=1 than with 2 (which refused them
    as unpicklable)."""
    with pytest.raises(DownloadFailed) as info:
        split_url("http://h/x", params)
    assert info.value.kind == ErrorKind.INVALID_URL and "unencodable params" in info.value.message


@pytest.mark.parametrize(
    ("url", "key"),
    [
        ("https://httpbin.org/links/0", "httpbin.org"),
        ("http://127.0.0.1:8080/links/3", "127.0.0.1:8080"),
        ("http://H:80/", "h"),
        ("https://h:80/", "h:80"),
        ("http://[::1]:8080/", "[::1]:8080"),
        ("http://[::1]/", "[::1]"),
        ("http://u:p@bücher.de:81/", "xn--bcher-kva.de:81"),
        ("http://a.com./x", "a.com"),  # the same host to DNS, so the same limits
        ("http://A.Com.:81/", "a.com:81"),
    ],
)
def test_host_key(url: str, key: str) -> None:
    assert host_key(url) == key
    assert split_url(url).host_key == key


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://u:p@h/x", "http://***@h/x"),
        ("https://user@h:8080/x?y=@z", "https://***@h:8080/x?y=@z"),
        ("http://a@b@h/x", "http://***@h/x"),
        ("//u:p@h/x", "//***@h/x"),
        ("http://h/x@y", "http://h/x@y"),
        ("http://h/x", "http://h/x"),
        ("not a url", "not a url"),
        ("", ""),
        ("http://u:p@h", "http://***@h"),
        ("ftp://u:p@h/x", "ftp://***@h/x"),
        ("://u:p@h/x", "://***@h/x"),
        ("http:u:p@h/x", "http:***@h/x"),
        ("http:\\\\u:p@h/x", "http:\\\\***@h/x"),
        ("garbage here://u:p@h", "garbage here://***@h"),
    ],
)
def test_redact(url: str, shown: str) -> None:
    assert redact(url) == shown


class _Hostile(str):
    def __getitem__(self, item: object) -> str:
        raise RuntimeError("boom")

    def rindex(self, *args: object) -> int:
        raise RuntimeError("boom")


@given(st.one_of(st.text(), st.binary(), st.none(), st.integers()))
@settings(max_examples=300, deadline=None)
def test_redact_never_raises(value: object) -> None:
    assert isinstance(redact(value), str)  # type: ignore[arg-type]


def test_redact_survives_hostile_str() -> None:
    assert isinstance(redact(_Hostile("http://u:p@h/x")), str)


_SCHEMES = st.sampled_from(["http", "https", "HTTP", "ftp", "", "javascript"])
_HOSTS = st.sampled_from(
    ["h", "Example.com", "bücher.de", "a_b.c", "127.0.0.1", "[::1]", "", "a..b", "[::1", "h:99"]
)
_SEGMENT = st.one_of(
    st.sampled_from(["..", ".", "%2e%2e", "%2F", "\\", "%00", "@", "", "a b", "%", "#", "?"]),
    st.text(max_size=20),
)


@st.composite
def _urls(draw: st.DrawFn) -> str:
    scheme = draw(_SCHEMES)
    creds = draw(st.sampled_from(["", "u:secretpw@", "secretpw@"]))
    host = draw(_HOSTS)
    port = draw(st.sampled_from(["", ":80", ":8080", ":0", ":x"]))
    path = "/".join(draw(st.lists(_SEGMENT, max_size=5)))
    return f"{scheme}://{creds}{host}{port}/{path}"


@given(_urls())
@settings(max_examples=500, deadline=None)
def test_split_url_total(url: str) -> None:
    """split_url either returns normalised parts or raises DownloadFailed; never leaks secrets."""
    try:
        parts = split_url(url)
    except DownloadFailed as exc:
        assert exc.kind in (ErrorKind.INVALID_URL, ErrorKind.UNSUPPORTED_SCHEME)
        assert "secretpw" not in exc.message
        return
    assert parts.scheme in ("http", "https")
    assert parts.host == parts.host.lower()
    assert parts.host.isascii()
    assert "secretpw" not in repr(parts)
    assert parts.port is None or 0 < parts.port <= 65535
    assert parts.port not in ({"http": 80, "https": 443}[parts.scheme],)
    assert split_url(url) == parts  # deterministic


@given(st.text(max_size=60))
@settings(max_examples=500, deadline=None)
def test_split_url_never_raises_anything_else(url: str) -> None:
    try:
        split_url(url)
    except DownloadFailed:
        pass


def test_urlparts_is_frozen_and_picklable() -> None:
    parts = split_url("http://h:81/x?y")
    assert pickle.loads(pickle.dumps(parts)) == parts
    with pytest.raises(AttributeError):
        parts.host = "evil"  # type: ignore[misc]


def _outcome(split, url):
    try:
        return split(url, None)
    except DownloadFailed as exc:
        return exc.kind


# URLs near the edge of the one-regex fast path: hosts with odd labels, ports out of range,
# every printable ASCII character and some that are not in the path, query and fragment.
_url_text = st.builds(
    lambda scheme, host, port, rest: f"{scheme}://{host}{port}{rest}",
    st.sampled_from(["http", "https", "http", "https", "HTTP", "ftp"]),
    st.from_regex(r"[a-z0-9_-]{1,12}(\.[a-z0-9_-]{1,12}){0,3}\.?", fullmatch=True)
    | st.from_regex(r"[a-zA-Z0-9._-]{0,70}", fullmatch=True),
    st.sampled_from(["", ":", ":0", ":80", ":443", ":8080", ":65535", ":65536", ":x"]),
    st.text(
        alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7F) | st.sampled_from("é\t")
    ).map(lambda t: "/" + t if t and t[0] not in "?#" else t),
)


@given(_url_text)
@settings(max_examples=500)
def test_the_fast_path_agrees_with_the_general_parser(url):
    from shardload import urls

    assert _outcome(urls._split_url, url) == _outcome(urls._split_general, url)


@pytest.mark.parametrize(
    ("text", "scheme", "key"),
    [
        ("example.com", None, "example.com"),
        ("EXAMPLE.Com", None, "example.com"),
        ("  example.com ", None, "example.com"),
        ("example.com:80", None, "example.com"),
        ("example.com:443", None, "example.com"),
        ("example.com:8080", None, "example.com:8080"),
        ("example.com:443", "http", "example.com:443"),
        ("example.com:80", "https", "example.com:80"),
        ("example.com:443", "HTTPS", "example.com"),
        ("example.com.", None, "example.com"),  # the DNS root's dot names the same host
        ("bücher.de", None, "xn--bcher-kva.de"),
        ("BÜCHER.de:443", None, "xn--bcher-kva.de"),
        ("127.0.0.1:80", None, "127.0.0.1"),
        ("[::1]:8080", None, "[::1]:8080"),
        ("[0:0::1]:443", None, "[::1]"),
        ("::1", None, "[::1]"),
    ],
)
def test_normalise_host_key(text: str, scheme: str | None, key: str) -> None:
    assert normalise_host_key(text, scheme) == key


@pytest.mark.parametrize(
    ("text", "url"),
    [
        ("example.com:443", "https://example.com/"),
        ("Example.COM:80", "http://example.com/a"),
        ("example.com:8443", "https://EXAMPLE.com:8443/"),
        ("[::1]:8080", "http://[0::1]:8080/"),
        ("bücher.de", "https://xn--bcher-kva.de/"),
        ("example.com", "http://example.com./a"),
    ],
)
def test_a_normalised_key_is_the_host_key_of_its_urls(text: str, url: str) -> None:
    assert normalise_host_key(text) == host_key(url)


@pytest.mark.parametrize(
    "text", ["", ":80", "a b", "user@example.com", "example.com/x", "h:99999", "h:x", "[::1"]
)
def test_normalise_host_key_refuses_what_is_not_a_host(text: str) -> None:
    with pytest.raises(DownloadFailed) as info:
        normalise_host_key(text)
    assert info.value.kind == ErrorKind.INVALID_URL


def test_split_hosts_are_matched_however_they_are_written() -> None:
    """``--split-host example.com:443=4`` must apply to https://example.com/ URLs."""
    from shardload import AioDownload, RequestStrategy
    from shardload.errors import ConfigurationError
    from shardload.plan import make_plan

    download = AioDownload(request_strategy=RequestStrategy(concurrent=4))
    urls = [f"https://example.com/{i}" for i in range(8)]
    options = {"processes": 4, "split_hosts": {"Example.com:443": 4}}
    plan = make_plan(urls, None, download, options, sync=True)  # type: ignore[arg-type]
    assert plan.split_hosts == {"example.com": 4}
    assert plan.processes == 4
    with pytest.raises(ConfigurationError, match="split_hosts"):
        make_plan(urls, None, download, {"split_hosts": {"a b": 2}}, sync=True)


@pytest.mark.parametrize(
    ("url", "location", "target"),
    [
        ("http://a/x/y", "/z", "http://a/z"),
        ("http://a/x/y", "z?q=1", "http://a/x/z?q=1"),
        ("http://a/x", "https://B:443/p", "https://B:443/p"),
        ("http://u:p@a/x", "//b/p", "http://b/p"),
        ("http://a/x?q=1", "?r=2", "http://a/x?r=2"),
        ("http://a/x", " /a file.pdf\t", "http://a/a%20file.pdf"),
        ("http://a/x", "/p\x01?q=a b", "http://a/p%01?q=a%20b"),
    ],
)
def test_redirect_target(url: str, location: str, target: str) -> None:
    assert redirect_target(url, location) == (target, split_url(target))


@pytest.mark.parametrize(
    ("location", "why"),
    [
        ("ftp://a/x", "unsupported URL"),
        ("http://[bad", "unparsable Location"),
        ("https:///nohost", "no host"),
    ],
)
def test_a_redirect_target_shardload_would_not_fetch_is_a_redirect_failure(
    location: str, why: str
) -> None:
    with pytest.raises(DownloadFailed) as raised:
        redirect_target("http://u:secret@a/x", location)
    assert raised.value.kind == ErrorKind.REDIRECT
    assert raised.value.message.startswith("redirect refused: ") and why in raised.value.message
    assert "secret" not in raised.value.message


@pytest.mark.parametrize(
    ("url", "authority", "key"),
    [
        ("http://a.com./x", "a.com.", "a.com"),
        ("http://a.com.:81/x", "a.com.:81", "a.com:81"),
        ("http://a.com/x", "a.com", "a.com"),
        ("http://[::1]:8080/", "[::1]:8080", "[::1]:8080"),
    ],
)
def test_requests_keep_the_host_as_written(url: str, authority: str, key: str) -> None:
    """The trailing dot goes from the politeness key only: the Host header, robots.txt's
    URL and same-origin checks use the authority as written (RFC 9110)."""
    parts = split_url(url)
    assert (parts.authority, parts.host_key) == (authority, key)
