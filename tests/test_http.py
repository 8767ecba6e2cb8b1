"""The lean HTTP/1.1 client (``shardload.worker.http``): when the engine uses it, and the edge
cases of HTTP it must get right, against real local servers (aiohttp's, and a raw TCP one for
answers no framework sends on purpose)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import re
import socket
import ssl
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from urllib.parse import unquote

import aiohttp
import pytest
import trustme
from hypothesis import given, settings
from hypothesis import strategies as st

import shardload
from shardload import (
    AioDownload,
    Bundle,
    ConfigurationError,
    DownloadStrategy,
    ErrorKind,
    RequestStrategy,
)
from shardload.testing.server import body_for
from shardload.urls import split_url
from shardload.worker import exchange
from shardload.worker.http import LeanClient, request_target
from shardload.worker.http.connection import Connection
from shardload.worker.http.response import HIGH_WATER

from .conftest import ViaAiohttp, files_under, make_download, temp_files
from .raw_server import RawServer, read_request


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n" % (len(body), extra) + body


class CheckedResponses(RequestStrategy):
    def assert_response(self, response):
        super().assert_response(response)


class PathOnly(DownloadStrategy):
    def get_file_path(self, bundle):
        return os.path.join(self.home, "x")


def test_the_engine_uses_the_lean_client_only_when_it_owns_the_request(home):
    assert AioDownload(download_strategy=DownloadStrategy(home=home))._owns_requests()
    assert AioDownload(download_strategy=PathOnly(home=home))._owns_requests()
    assert not AioDownload(download_strategy=ViaAiohttp(home=home))._owns_requests()
    assert not AioDownload(request_strategy=CheckedResponses())._owns_requests()

    async def with_session() -> bool:
        async with aiohttp.ClientSession() as session:
            return AioDownload(client=session)._owns_requests()

    assert not asyncio.run(with_session())


@pytest.mark.parametrize(("client", "lean"), [("lean", True), ("aiohttp", False)])
def test_the_chosen_client_is_the_one_that_runs(srv, home, client, lean):
    async def run() -> tuple[bool, bool]:
        engine = make_download(home, client=client)
        bundle = await engine.main(shardload.AioDownloadBundle(srv.base_urls[0] + "/links/1"))
        assert bundle.ok
        used = (engine._lean is not None, engine._session is not None)
        await engine.close()
        return used

    assert asyncio.run(run()) == (lean, not lean)


def test_keep_alive_reuses_connections(home):
    def handler(conn, index):
        while (head := server.recorded(conn)) is not None:
            conn.sendall(ok(head.split(b" ")[1]))

    with RawServer(handler) as server:
        urls = [f"{server.url}/k/{i}" for i in range(30)]
        bundles = shardload.swarm(urls, download=make_download(home, RequestStrategy(concurrent=2)))
    assert all(b.ok for b in bundles)
    assert [open(b.file_path, "rb").read() for b in bundles] == [
        f"/k/{i}".encode() for i in range(30)
    ]
    assert server.connections <= 2


def test_a_pooled_connection_the_server_dropped_is_retried_on_a_new_one(home):
    """The server answers one request per connection and drops the next unanswered, as a
    server whose keep-alive timeout fires just as the request arrives."""

    def handler(conn, index):
        head = server.recorded(conn)
        if head is not None:
            conn.sendall(ok(b"body " + head.split(b" ")[1]))
            server.recorded(conn)  # the next request on this connection: closed unanswered

    with RawServer(handler) as server:
        urls = [f"{server.url}/p/{i}" for i in range(5)]
        bundles = shardload.swarm(urls, download=make_download(home, RequestStrategy(concurrent=1)))
    assert [(b.state, b.attempts) for b in bundles] == [("written", 1)] * 5
    assert server.connections == 5


def test_a_request_goes_past_every_pooled_connection_the_server_dropped(home, client):
    """Four pooled connections, all dropped by the server unanswered at their next request
    (a server closing its idle connections at once): the next request ends on a new one.
    aiohttp alone retries once, on the second dropped connection, and failed as reset."""

    def handler(conn, index):
        head = server.recorded(conn)
        if head is not None:
            conn.sendall(ok(b"body " + head.split(b" ")[1]))
            server.recorded(conn)  # the next request on this connection: closed unanswered

    download = make_download(home, RequestStrategy(concurrent=4), client=client)

    async def run() -> tuple[list[Bundle], Bundle]:
        try:
            first = await asyncio.gather(
                *(download.main(Bundle(f"{server.url}/a{i}")) for i in range(4))
            )
            return first, await download.main(Bundle(f"{server.url}/b"))
        finally:
            await download.close()

    with RawServer(handler) as server:
        first, then = asyncio.run(run())
    assert [b.state for b in first] == ["written"] * 4
    assert (then.state, then.attempts) == ("written", 1), then.error_message
    assert open(then.file_path, "rb").read() == b"body /b"


@pytest.mark.parametrize(
    "head", [b"HTTP/1.1 200 OK\r\n\r\n", b"HTTP/1.0 200 OK\r\nServer: old\r\n\r\n"]
)
def test_a_body_without_length_ends_with_the_connection(home, head):
    body = body_for(300_000)

    def handler(conn, index):
        if server.recorded(conn) is not None:
            conn.sendall(head + body)

    with RawServer(handler) as server:
        (b,) = shardload.swarm([server.url + "/eof"], download=make_download(home))
    assert b.state == "written", b.error_message
    assert open(b.file_path, "rb").read() == body


def test_an_interim_100_answer_is_skipped(home):
    def handler(conn, index):
        if server.recorded(conn) is not None:
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"final"))

    with RawServer(handler) as server:
        (b,) = shardload.swarm([server.url + "/c"], download=make_download(home))
    assert b.state == "written" and b.status == 200
    assert open(b.file_path, "rb").read() == b"final"


_PAST_HEAD_CAP = body_for(300_000)  # more than MAX_HEAD, in the read of the interim answer


@pytest.mark.parametrize(
    "final",
    [
        ok(_PAST_HEAD_CAP),
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
        % (len(_PAST_HEAD_CAP), _PAST_HEAD_CAP),
    ],
    ids=["length", "chunked"],
)
def test_an_interim_answer_read_with_a_large_final_one(home, client, final):
    """The final answer's head and body, in the same read as the 100 Continue before it, are
    not counted as the interim answer's headers (they were: "headers over 102400 bytes")."""

    def handler(conn, index):
        if server.recorded(conn) is not None:
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n" + final)
            conn.close()

    with RawServer(handler) as server:
        bundles = shardload.swarm(
            [f"{server.url}/c/{i}" for i in range(4)], download=make_download(home, client=client)
        )
    assert [(b.state, b.status, b.error_message) for b in bundles] == [("written", 200, None)] * 4
    assert all(open(b.file_path, "rb").read() == _PAST_HEAD_CAP for b in bundles)


@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        (b"SPDY/9 oops\r\n\r\n", ErrorKind.PROTOCOL),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nContent-Length: 20\r\n\r\n",
            ErrorKind.PROTOCOL,
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Le", ErrorKind.RESET),
        (b"", ErrorKind.RESET),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", ErrorKind.TRUNCATED),
    ],
)
def test_broken_answers_fail_cleanly(home, answer, kind):
    def handler(conn, index):
        if server.recorded(conn) is not None:
            conn.sendall(answer)

    with RawServer(handler) as server:
        (b,) = shardload.swarm([server.url + "/bad"], download=make_download(home))
    assert b.state == "failed" and b.error_kind == kind, b.error_message
    assert files_under(home) == set() and temp_files(home) == []


@pytest.mark.parametrize("wbits", [zlib.MAX_WBITS, -zlib.MAX_WBITS], ids=["zlib", "raw"])
def test_deflate_bodies_are_decoded_both_ways_servers_send_them(home, wbits):
    plain = body_for(200_000)
    packer = zlib.compressobj(wbits=wbits)
    packed = packer.compress(plain) + packer.flush()

    def handler(conn, index):
        head = server.recorded(conn)
        if head is not None:
            conn.sendall(ok(packed, b"Content-Encoding: deflate\r\n"))

    with RawServer(handler) as server:
        (b,) = shardload.swarm([server.url + "/z"], download=make_download(home))
    assert b.state == "written", b.error_message
    assert open(b.file_path, "rb").read() == plain and b.bytes == len(plain)
    assert b"accept-encoding: gzip, deflate" in server.requests[0].lower()


def _gz(data: bytes) -> bytes:
    return zlib.compress(data, wbits=31)


def _deflate(data: bytes, wbits: int) -> bytes:
    packer = zlib.compressobj(wbits=wbits)
    return packer.compress(data) + packer.flush()


_PLAIN = body_for(100_000)


@pytest.mark.parametrize(
    ("encoding", "packed", "kind", "stored"),
    [
        ("gzip", _gz(_PLAIN)[:-20], ErrorKind.TRUNCATED, None),
        ("deflate", _deflate(_PLAIN, zlib.MAX_WBITS)[:-20], ErrorKind.TRUNCATED, None),
        ("deflate", _deflate(_PLAIN, -zlib.MAX_WBITS)[:-20], ErrorKind.TRUNCATED, None),
        ("gzip", _gz(_PLAIN[:60_000]) + _gz(_PLAIN[60_000:]), None, _PLAIN),
        ("gzip", _gz(_PLAIN) + b"\0" * 16, None, _PLAIN),
        ("gzip", _gz(_PLAIN) + b"trailing junk", ErrorKind.PROTOCOL, None),
        ("gzip", b"", None, b""),
        ("gzip", _gz(b"") + b"\0" * 20 + _gz(_PLAIN), None, _PLAIN),
        # Bytes that decode to nothing and keep coming: no end, and no byte of a body.
        ("gzip", _gz(b"") * 60_000, ErrorKind.PROTOCOL, None),
        ("gzip", _gz(_PLAIN) + b"\0" * 1_200_000, ErrorKind.PROTOCOL, None),
    ],
    ids=[
        "gzip-cut",
        "deflate-cut",
        "raw-deflate-cut",
        "gzip-members",
        "gzip-padding",
        "gzip-junk",
        "gzip-empty",
        "gzip-padded-member",
        "gzip-endless-empty-members",
        "gzip-endless-padding",
    ],
)
def test_encoded_bodies_are_whole_or_fail(home, encoding, packed, kind, stored):
    """A compressed body stored as written is the whole of what was compressed: every gzip
    member (as gzip -d reads them), never a stream that stops before its end."""

    def handler(conn, index):
        if server.recorded(conn) is not None:
            conn.sendall(ok(packed, b"Content-Encoding: %s\r\n" % encoding.encode()))

    with RawServer(handler) as server:
        (b,) = shardload.swarm([server.url + "/enc"], download=make_download(home))
    assert b.error_kind == kind, b.error_message
    if stored is None:
        assert files_under(home) == set() and temp_files(home) == []
    else:
        assert open(b.file_path, "rb").read() == stored


@pytest.mark.parametrize(
    ("url_tail", "sent"),
    [
        ("/plain/a.txt?x=1&y=2", "/plain/a.txt?x=1&y=2"),
        ("", "/"),
        ("/d%2fx/%41", "/d%2Fx/A"),  # escapes normalised (RFC 3986 6.2.2)
        ("/\u00e9t\u00e9?q=\u00fc", "/%C3%A9t%C3%A9?q=%C3%BC"),
        ("/100%/x", "/100%25/x"),
        ('/a"b<c>', "/a%22b%3Cc%3E"),
    ],
)
def test_request_target_keeps_escapes_and_escapes_the_rest(url_tail, sent):
    assert request_target(split_url("http://h" + url_tail)) == sent


def test_urls_that_differ_only_in_escapes_are_one_request_and_one_file(home):
    """``/d/%41`` and ``/d/A`` map to one file but went as two requests; ``/d/C++`` and
    ``/d/C%2B%2B`` went as two and mapped to one file: a server that answered them
    differently left one bundle's sha256 and bytes describing no file."""

    def handler(conn, index):
        request = server.recorded(conn)
        if request is not None:
            conn.sendall(ok(request.split(b" ")[1]))  # the body: the target it was sent

    # Each path, and the request target it goes as: escapes of unreserved characters are
    # decoded (one request, one file); a reserved character and its escape, or a dot-segment
    # and its escaped spelling, are two requests (RFC 3986 2.2), so two files.
    sent = {
        "/d/%41": "/d/A",
        "/d/A": "/d/A",
        "/d/%7e": "/d/~",
        "/d/~": "/d/~",
        "/d/C++": "/d/C++",
        "/d/C%2b%2B": "/d/C%2B%2B",
        "/d/a:b=1": "/d/a:b=1",
        "/d/a%3Ab%3D1": "/d/a%3Ab%3D1",
        "/e/x/../y": "/e/x/../y",
        "/e/x/%2e%2E/y": "/e/x/%2E%2E/y",
        "/e/x/.%2e/y": "/e/x/.%2E/y",
        "/f/%%61a": "/f/%25aa",  # a bare '%' stays one: not read as the escape %aa
        "/f/%aa": "/f/%AA",
    }
    with RawServer(handler) as server:
        bundles = shardload.swarm([server.url + p for p in sent], download=make_download(home))
    for b, target in zip(bundles, sent.values(), strict=True):
        with open(b.file_path, "rb") as f:
            assert f.read() == target.encode(), b.url
        assert b.sha256 == hashlib.sha256(target.encode()).hexdigest()
    assert len({b.file_path for b in bundles}) == len(set(sent.values()))


def test_request_line_and_headers_on_the_wire(home):
    def handler(conn, index):
        if server.recorded(conn) is not None:
            conn.sendall(ok(b"x"))

    strategy = RequestStrategy(headers={"Accept": "text/plain", "X-Trace": "7"})
    with RawServer(handler) as server:
        port = server.url.rsplit(":", 1)[1]
        url = f"http://alice:p%40ss@127.0.0.1:{port}/\u00e9?q=1"
        (b,) = shardload.swarm([url], download=make_download(home, strategy))
    assert b.ok
    lines = server.requests[0].decode().split("\r\n")
    assert lines[0] == "GET /%C3%A9?q=1 HTTP/1.1"
    headers = dict(line.split(": ", 1) for line in lines[1:] if line)
    assert headers["Host"] == f"127.0.0.1:{port}"
    assert headers["Accept"] == "text/plain" and headers["X-Trace"] == "7"
    assert headers["User-Agent"].startswith("shardload/")
    # "alice:p@ss", the password's %40 decoded as aiohttp does.
    assert headers["Authorization"] == "Basic YWxpY2U6cEBzcw=="


def test_credentials_do_not_follow_a_redirect(srv, home):
    target = srv.base_urls[1] + "/echo"
    start = srv.base_urls[0].replace("http://", "http://bob:pw@") + "/redirect-to?url=" + target
    (b,) = shardload.swarm([start], download=make_download(home))
    assert b.ok, b.error_message
    with open(b.file_path) as f:
        assert "Authorization" not in json.load(f)["headers"]


@pytest.mark.parametrize("client", ["lean", "aiohttp"])
def test_credentials_follow_a_redirect_to_their_own_origin(srv, home, client):
    """An absolute Location on the same origin (Apache's /dir -> /dir/) dropped them: the
    protected target answered 401. A relative one kept them."""
    base = srv.base_urls[0]
    start = base.replace("http://", "http://bob:pw@") + "/redirect-to?url=" + base + "/echo"
    (b,) = shardload.swarm([start], download=make_download(home, client=client))
    assert b.ok, b.error_message
    with open(b.file_path) as f:
        assert json.load(f)["headers"]["Authorization"] == "Basic Ym9iOnB3"


@pytest.mark.parametrize("client", ["lean", "aiohttp"])
def test_non_ascii_credentials_go_as_utf8_on_both_clients(srv, home, client):
    """RFC 7617's charset, as curl sends them; aiohttp's Latin-1 made a password work on
    one client only."""
    url = srv.base_urls[0].replace("http://", "http://j%C3%B6rg:p%C3%A4@") + "/echo"
    (b,) = shardload.swarm([url], download=make_download(home, client=client))
    assert b.ok, b.error_message
    with open(b.file_path) as f:
        sent = json.load(f)["headers"]["Authorization"]
    assert base64.b64decode(sent.removeprefix("Basic ")) == "jörg:pä".encode()


@pytest.mark.parametrize("client", ["lean", "aiohttp"])
def test_a_300_with_a_location_is_followed(srv, home, client):
    """Its page was stored as the resource, with status 300."""
    target = srv.base_urls[0] + "/bytes/77?name=choice"
    start = srv.base_urls[0] + "/redirect-to?code=300&url=" + target
    (b,) = shardload.swarm([start], download=make_download(home, client=client))
    assert (b.state, b.status, b.bytes) == ("written", 200, 77), b.error_message
    (plain,) = shardload.swarm(
        [srv.base_urls[0] + "/status/300"], download=make_download(home, client=client)
    )
    assert (plain.state, plain.status) == ("written", 300)  # no Location: nothing to follow


def test_a_header_with_a_line_break_is_never_sent(srv, home):
    """A run refuses it before any work (every URL would fail alike); ``main()`` awaited
    directly, with no run to check first, fails its bundle."""
    url = srv.base_urls[0] + "/links/1?crlf"
    strategy = RequestStrategy(headers={"X-A": "1\r\nX-Injected: 2"})
    with pytest.raises(ConfigurationError, match="line break"):
        shardload.swarm([url] * 2, download=make_download(home, strategy))

    async def direct() -> Bundle:
        download = make_download(home, strategy)
        try:
            return await download.main(Bundle(url))
        finally:
            await download.close()

    assert asyncio.run(direct()).error_kind == ErrorKind.STRATEGY
    assert not any("crlf" in path for path in srv.stats()["paths"])


def _client(limit: int = 64, read_timeout: float = 10) -> LeanClient:
    return LeanClient(
        limit=limit,
        headers={},
        connect_timeout=5,
        read_timeout=read_timeout,
        dns_ttl=300,
    )


def test_open_connections_never_exceed_the_limit(srv):
    async def run() -> list[int]:
        client = _client(limit=2)
        seen = []
        for round_ in range(3):
            for base in srv.base_urls:
                url = f"{base}/links/{round_}"
                async with client.get(split_url(url), url) as response:
                    assert response.status == 200
                    await response.read()
                seen.append(client._open)
        await client.close()
        return seen

    seen = asyncio.run(run())
    assert max(seen) <= 2 and len(seen) == 3 * len(srv.base_urls)


def test_went_is_told_once_each_request_is_written_also_on_a_pooled_connection(srv, monkeypatch):
    """The host slot counts its gap from ``went``: it was told only when a request had waited
    for a new connection, so on a pooled one the gap counted from the claim, and work the loop
    did between the claim and the write shortened the gap the server saw."""
    events: list[str] = []
    send = Connection.send

    def sending(self: Connection, *args: object) -> asyncio.Future[object]:
        events.append("write")
        return send(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(Connection, "send", sending)

    async def run() -> None:
        client = _client()
        for i in range(3):
            url = f"{srv.base_urls[0]}/links/{i}"
            async with client.get(split_url(url), url, True, lambda: events.append("went")) as r:
                await r.read()
        assert client._open == 1  # one connection, pooled between the requests
        await client.close()

    asyncio.run(run())
    assert events == ["write", "went"] * 3


def test_connections_being_opened_count_against_the_limit(srv):
    """An idle connection, then as many requests to other hosts at once as the limit allows:
    the idle one must make room, though none of the new ones is open when they decide."""
    limit = len(srv.base_urls) - 1

    async def fetch(client: LeanClient, base: str) -> None:
        url = f"{base}/links/1"
        async with client.get(split_url(url), url) as response:
            await response.read()

    async def run() -> int:
        client = _client(limit=limit)
        await fetch(client, srv.base_urls[0])  # now idle in the pool
        await asyncio.gather(*(fetch(client, base) for base in srv.base_urls[1:]))
        opened = client._open
        await client.close()
        return opened

    assert asyncio.run(run()) <= limit


def test_a_slow_reader_pauses_the_socket_without_timing_out(srv):
    """Reading pauses when 4 MiB are buffered; a reader slower than read_timeout is not a
    stalled server."""
    size = 16_000_000
    url = f"{srv.base_urls[0]}/bytes/{size}"

    async def run() -> tuple[int, int, bytes]:
        client = _client(read_timeout=0.3)
        most = 0
        body = bytearray()
        async with client.get(split_url(url), url) as response:
            async for piece in response.content.iter_chunked(1 << 20):
                body += piece
                most = max(most, response._buffered)
                if len(body) < 2 << 20:
                    await asyncio.sleep(0.5)  # longer than read_timeout, while paused
        await client.close()
        return len(body), most, bytes(body[:64])

    got, most, head = asyncio.run(run())
    assert got == size and head == body_for(size)[:64]
    assert most <= HIGH_WATER + (1 << 20)


@pytest.mark.parametrize(
    ("hops", "max_redirects", "ok"), [(3, 3, True), (3, 2, False), (1, 0, False)]
)
def test_max_redirects_is_the_number_followed(srv, home, client, hops, max_redirects, ok):
    strategy = RequestStrategy(max_redirects=max_redirects)
    (b,) = shardload.swarm(
        [f"{srv.base_urls[0]}/redirect/{hops}"],
        download=make_download(home, strategy, client=client),
    )
    if ok:
        assert b.state == "written", b.error_message
    else:
        assert b.error_kind == ErrorKind.REDIRECT, b.error_message
        assert files_under(home) == set()


@pytest.mark.parametrize("extra", [b"", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nextra"])
def test_a_connection_that_sent_more_than_was_asked_is_not_reused(home, extra):
    """Two answers for one request: the second is ignored, and the next request goes out on
    a new connection, so it can never be answered by stale bytes."""

    def handler(conn, index):
        while (head := server.recorded(conn)) is not None:
            conn.sendall(ok(head.split(b" ")[1], b"X-Conn: %d\r\n" % index) + extra)

    with RawServer(handler) as server:
        urls = [f"{server.url}/u/{i}" for i in range(4)]
        bundles = shardload.swarm(urls, download=make_download(home, RequestStrategy(concurrent=1)))
    assert [open(b.file_path, "rb").read() for b in bundles] == [
        f"/u/{i}".encode() for i in range(4)
    ]
    assert server.connections == (1 if not extra else 4)


def test_bytes_past_the_content_length_in_one_packet_as_each_client_reads_them(home, client):
    """The one documented difference (docs/guarantees.md): the lean client stores the body
    the answer declared, as curl does; aiohttp parses the surplus as a next answer and fails
    the URL as ``protocol``. Neither leaves the surplus in a file."""

    def handler(conn, _index):
        if server.recorded(conn) is not None:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n" + b"q" * 500)

    with RawServer(handler) as server:
        (bundle,) = shardload.swarm(
            [f"{server.url}/excess"], download=make_download(home, client=client)
        )
    if client == "lean":
        assert bundle.state == "written" and bundle.bytes == 10
        assert open(bundle.file_path, "rb").read() == b"q" * 10
    else:
        assert bundle.error_kind == ErrorKind.PROTOCOL and files_under(home) == set()


def test_bytes_arriving_on_an_idle_pooled_connection_never_answer_the_next_request(home, client):
    """A stray answer sent while the connection sits idle in the pool: aiohttp queued it and
    handed it to the next request (that file held 'STALE', and every later file on the
    connection was the answer meant for the one before)."""

    def handler(conn, index):
        while (head := server.recorded(conn)) is not None:
            conn.sendall(ok(head.split(b" ")[1]))
            time.sleep(0.05)
            conn.sendall(ok(b"STALE"))

    strategy = RequestStrategy(concurrent=1, delay=0.3)
    with RawServer(handler) as server:
        urls = [f"{server.url}/s/{i}" for i in range(3)]
        bundles = shardload.swarm(urls, download=make_download(home, strategy, client=client))
    assert [open(b.file_path, "rb").read() for b in bundles] == [b"/s/0", b"/s/1", b"/s/2"]


def test_however_many_idle_connections_received_stray_bytes_none_answers_a_request(home, client):
    """Twelve pooled connections, each sent a stray answer while idle: the aiohttp path gave
    up checking after eight and handed the ninth's stray bytes to the next request."""

    def handler(conn, index):
        while (head := server.recorded(conn)) is not None:
            conn.sendall(ok(head.split(b" ")[1]))
            time.sleep(0.05)
            conn.sendall(ok(b"STALE"))

    def items(base: str) -> Iterator[str]:
        yield from (f"{base}/s/{i}" for i in range(12))
        time.sleep(0.6)  # twelve connections idle in the pool, each with a stray answer
        yield f"{base}/next"

    with RawServer(handler) as server:
        download = make_download(home, RequestStrategy(concurrent=12), client=client)
        bundles = list(shardload.each(items(server.url), download=download))
    assert server.connections >= 12
    by_path = {b.url.removeprefix(server.url): b for b in bundles}
    assert open(by_path["/next"].file_path, "rb").read() == b"/next"


@pytest.mark.parametrize("status", [b"204 No Content", b"304 Not Modified"])
def test_a_late_body_of_a_204_or_304_never_answers_the_next_request(home, client, status):
    """A 204/304 has no body whatever its Content-Length; a server that sends the declared
    bytes anyway, a moment later, made the next URL on that connection fail (kind protocol,
    never retried)."""

    def handler(conn, index):
        while (head := server.recorded(conn)) is not None:
            path = head.split(b" ")[1]
            if path == b"/empty":
                conn.sendall(b"HTTP/1.1 %s\r\nContent-Length: 5\r\n\r\n" % status)
                time.sleep(0.02)
                conn.sendall(b"hello")
            else:
                conn.sendall(ok(path))

    with RawServer(handler) as server:
        urls = [server.url + "/empty", server.url + "/next"]
        bundles = shardload.swarm(
            urls, download=make_download(home, RequestStrategy(concurrent=1), client=client)
        )
    assert bundles[1].state == "written", bundles[1].error_message
    assert open(bundles[1].file_path, "rb").read() == b"/next"


def test_a_101_answer_fails_and_keeps_the_earlier_copy(home, client):
    """A 101 Switching Protocols to a GET: aiohttp handed it over as a response, stored as
    an empty file over the good copy."""
    answers = [b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n"]

    def handler(conn, index):
        while server.recorded(conn) is not None:
            conn.sendall(answers.pop() if len(server.requests) == 2 else ok(b"GOOD COPY"))

    with RawServer(handler) as server:
        download = make_download(home, client=client)
        (first,) = shardload.swarm([server.url + "/f"], download=download)
        (second,) = shardload.swarm([server.url + "/f"], download=download)
    assert first.state == "written"
    assert (second.state, second.error_kind) == ("failed", ErrorKind.PROTOCOL)
    assert "switched protocols" in second.error_message
    assert open(first.file_path, "rb").read() == b"GOOD COPY"


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_body_that_does_not_decode_is_a_protocol_failure_on_both_clients(home, client, encoding):
    """Asking again gets the same bytes: aiohttp's ClientPayloadError is no cut here, and a
    retrying strategy must not spend its attempts on it."""

    def handler(conn, index):
        while server.recorded(conn) is not None:
            body = b"\x1f\x8b\x08 this is no compressed stream at all"
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Encoding: %s\r\nContent-Length: %d\r\n\r\n%s"
                % (encoding.encode(), len(body), body)
            )

    with RawServer(handler) as server:
        download = make_download(home, RequestStrategy(max_attempts=3), client=client)
        (bundle,) = shardload.swarm([server.url + "/z"], download=download)
    assert (bundle.error_kind, bundle.attempts) == (ErrorKind.PROTOCOL, 1)
    assert "\n" not in bundle.error_message


@pytest.mark.parametrize(
    "target", ["/a/../b", "/%2e%2e/x", "/q?y=%2F", "/q?x=[1]", "/%2eshardload-tmp", "/q?y=/"]
)
def test_both_clients_ask_for_the_same_resource(home, client, target):
    """yarl resolved '..' and decoded '%2F' in a query on the aiohttp path: the file named for
    one URL held another resource's bytes, and two URLs stored as two files became one."""

    def handler(conn, index):
        while (head := server.recorded(conn)) is not None:
            conn.sendall(ok(head.split(b" ")[1]))

    with RawServer(handler) as server:
        (bundle,) = shardload.swarm(
            [server.url + target], download=make_download(home, client=client)
        )
    assert (
        open(bundle.file_path, "rb").read()
        == request_target(split_url(server.url + target)).encode()
    )


def _head(size: int) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size


def test_a_body_sent_after_its_headers_is_whole_and_the_connection_reused(home):
    """Headers first, then the body in pieces: the rest of a body with a Content-Length skips
    the parser (see connection.py), and the connection still serves the next request."""

    def handler(conn, index):
        while (head := server.recorded(conn)) is not None:
            body = body_for(90_000, head.split(b" ")[1].decode())
            conn.sendall(_head(len(body)))
            for start in range(0, len(body), 30_000):
                time.sleep(0.01)
                conn.sendall(body[start : start + 30_000])

    with RawServer(handler) as server:
        urls = [f"{server.url}/r/{i}" for i in range(3)]
        bundles = shardload.swarm(urls, download=make_download(home, RequestStrategy(concurrent=1)))
    assert [b.state for b in bundles] == ["written"] * 3, [b.error_message for b in bundles]
    for i, b in enumerate(bundles):
        assert open(b.file_path, "rb").read() == body_for(90_000, f"/r/{i}")
    assert server.connections == 1


def test_a_body_cut_after_its_headers_is_truncated_with_the_count(home):
    def handler(conn, index):
        if server.recorded(conn) is not None:
            conn.sendall(_head(50_000))
            time.sleep(0.02)
            conn.sendall(body_for(20_000))

    with RawServer(handler) as server:
        (b,) = shardload.swarm([server.url + "/cut"], download=make_download(home))
    assert b.error_kind == ErrorKind.TRUNCATED
    assert "got 20000 of 50000 bytes" in (b.error_message or "")
    assert files_under(home) == set() and temp_files(home) == []


def test_bytes_past_a_late_body_are_not_taken_as_the_next_answer(home):
    def handler(conn, index):
        while (head := server.recorded(conn)) is not None:
            body = head.split(b" ")[1] * 1000
            conn.sendall(_head(len(body)))
            time.sleep(0.02)
            conn.sendall(body + ok(b"stale"))

    with RawServer(handler) as server:
        urls = [f"{server.url}/x/{i}" for i in range(3)]
        bundles = shardload.swarm(urls, download=make_download(home, RequestStrategy(concurrent=1)))
    assert [open(b.file_path, "rb").read() for b in bundles] == [
        f"/x/{i}".encode() * 1000 for i in range(3)
    ]
    assert server.connections == 3


@given(st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x2FF), max_size=40))
@settings(max_examples=300)
def test_request_target_is_printable_ascii_and_stable(tail):
    try:
        parts = split_url("http://h/" + tail)
    except shardload.errors.DownloadFailed:
        return
    target = request_target(parts)
    assert re.fullmatch(r"/[!-~]*", target)
    assert request_target(split_url("http://h" + target)) == target  # escaping once is enough
    assert unquote(target) == unquote(
        _fix_lone_percents(parts.path + ("?" + parts.query if parts.query else ""))
    )


def _fix_lone_percents(text):
    return re.sub(r"%(?![0-9A-Fa-f]{2})", "%25", text)


def test_idle_connections_expire():
    """A connection idle past the keep-alive time is not reused (servers drop them) but
    replaced by a new one; and releasing any connection sweeps out the expired ones."""

    def handler(conn, index):
        while (head := server.recorded(conn)) is not None:
            conn.sendall(ok(head.split(b" ")[1]))

    async def fetch(client: LeanClient, url: str) -> None:
        async with client.get(split_url(url), url) as response:
            await response.read()

    async def run() -> tuple[int, int]:
        client = _client()
        await fetch(client, f"{server.url}/a")
        for conn in client._lru:
            conn.idle_since -= 60  # as if idle for a minute
        await fetch(client, f"{server.url}/b")  # the aged connection is not reused
        reused_at = server.connections
        # An aged idle connection of another host, then a release: the sweep closes it.
        await fetch(client, f"{second.url}/c")
        for conn in client._lru:
            if conn.key[1] == "127.0.0.3":
                conn.idle_since -= 60
        client._last_sweep -= 60
        await fetch(client, f"{server.url}/d")
        await asyncio.sleep(0.05)  # the close lands on the next loop turns
        hosts = sorted(conn.key[1] for conn in client._lru)
        await client.close()
        return reused_at, hosts

    with RawServer(handler) as server, RawServer(handler, host="127.0.0.3") as second:
        reused_at, hosts = asyncio.run(run())
    assert reused_at == 2  # a new connection for /b
    assert hosts == ["127.0.0.1"]  # the other host's aged connection was swept


@pytest.fixture
def tls_server_context():
    """A server context with a certificate for 127.0.0.1 from a throwaway CA; the CA's file."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    with ca.cert_pem.tempfile() as ca_file:
        yield context, ca_file


def _serve_ok(conn, index):
    while (head := read_request(conn)) is not None:
        conn.sendall(ok(b"secret " + head.split(b" ")[1]))


def test_https_with_a_trusted_certificate(home, tls_server_context, monkeypatch):
    context, ca_file = tls_server_context
    monkeypatch.setenv("SSL_CERT_FILE", ca_file)  # read when the client makes its TLS context
    with RawServer(_serve_ok, tls=context) as server:
        urls = [f"{server.url}/s/{i}" for i in range(3)]
        strategy = RequestStrategy(concurrent=1)
        bundles = shardload.swarm(urls, download=make_download(home, strategy))
    assert [b.state for b in bundles] == ["written"] * 3, bundles[0].error_message
    assert open(bundles[2].file_path, "rb").read() == b"secret /s/2"
    assert server.connections == 1  # kept alive over TLS too


def test_https_with_an_untrusted_certificate_fails_as_tls(home, client, tls_server_context):
    context, _ = tls_server_context
    with RawServer(_serve_ok, tls=context) as server:
        (b,) = shardload.swarm([server.url + "/s"], download=make_download(home, client=client))
    assert b.state == "failed" and b.error_kind == ErrorKind.TLS, b.error_message
    assert files_under(home) == set()


def test_an_ipv6_literal_host(home, client):
    def handler(conn, index):
        while (head := server.recorded(conn)) is not None:
            conn.sendall(ok(head.split(b" ")[1]))

    with RawServer(handler, host="::1") as server:
        (b,) = shardload.swarm([server.url + "/v6"], download=make_download(home, client=client))
    assert b.state == "written", b.error_message
    port = server.url.rsplit(":", 1)[1]
    assert f"Host: [::1]:{port}\r\n".encode() in server.requests[0]
    assert open(b.file_path, "rb").read() == b"/v6"


def test_endless_headers_fail_as_protocol(home):
    def handler(conn, index):
        if server.recorded(conn) is not None:
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            for i in range(20_000):  # ~400 KiB of headers, never ending
                conn.sendall(b"X-Filler-%05d: %s\r\n" % (i, b"y" * 8))

    with RawServer(handler) as server:
        (b,) = shardload.swarm([server.url + "/h"], download=make_download(home))
    assert b.error_kind == ErrorKind.PROTOCOL and "headers over" in b.error_message
    assert files_under(home) == set()


@pytest.mark.parametrize(("to_host", "kept"), [(1, False), (0, True)], ids=["other", "same"])
def test_a_callers_authorization_goes_only_to_the_origin_asked_for(
    srv, home, client, to_host, kept
):
    strategy = RequestStrategy(headers={"Authorization": "Bearer t0k"})
    start = f"{srv.base_urls[0]}/redirect-to?url={srv.base_urls[to_host]}/echo"
    (b,) = shardload.swarm([start], download=make_download(home, strategy, client=client))
    assert b.ok, b.error_message
    with open(b.file_path) as f:
        assert json.load(f)["headers"].get("Authorization") == ("Bearer t0k" if kept else None)


def test_a_callers_host_header_is_sent(srv, home, client):
    strategy = RequestStrategy(headers={"Host": "vhost.example"})
    (b,) = shardload.swarm(
        [srv.base_urls[0] + "/echo"], download=make_download(home, strategy, client=client)
    )
    assert b.ok, b.error_message
    with open(b.file_path) as f:
        assert json.load(f)["headers"]["Host"] == "vhost.example"


@pytest.mark.parametrize(("to_host", "kept"), [(0, True), (1, False)], ids=["same", "other"])
def test_a_callers_host_header_goes_only_to_the_origin_asked_for(srv, home, client, to_host, kept):
    strategy = RequestStrategy(headers={"host": "vhost.example"})
    start = f"{srv.base_urls[0]}/redirect-to?url={srv.base_urls[to_host]}/echo"
    (b,) = shardload.swarm([start], download=make_download(home, strategy, client=client))
    assert b.ok, b.error_message
    own = srv.base_urls[to_host].removeprefix("http://")
    with open(b.file_path) as f:
        assert json.load(f)["headers"]["Host"] == ("vhost.example" if kept else own)


def test_a_connect_cancelled_after_the_socket_opened_keeps_the_count(srv, monkeypatch):
    url = f"{srv.base_urls[0]}/links/1"
    made = Connection.connection_made
    fetching: list[asyncio.Future[object]] = []

    def made_then_cancelled(conn, transport):
        made(conn, transport)
        fetching[0].cancel()  # the caller gives up before create_connection returns

    async def run() -> list[int]:
        client = _client()
        with monkeypatch.context() as patch:
            patch.setattr(Connection, "connection_made", made_then_cancelled)
            fetching.append(asyncio.ensure_future(client.fetch(split_url(url), url)))
            with pytest.raises(asyncio.CancelledError):
                await fetching[0]
        await asyncio.sleep(0.05)  # the close lands on the next loop turns
        counts = [client._open]
        async with client.get(split_url(url), url) as response:
            await response.read()
            counts.append(client._open)
        await client.close()
        await asyncio.sleep(0.05)
        return [*counts, client._open]

    assert asyncio.run(run()) == [0, 1, 0]


def test_the_pool_forgets_emptied_hosts_and_expired_names():
    def handler(conn, index):
        while server.recorded(conn) is not None:
            conn.sendall(ok(b"x"))

    async def run(url: str) -> tuple[object, object, object]:
        client = LeanClient(
            limit=4,
            headers={},
            connect_timeout=5,
            read_timeout=5,
            dns_ttl=0.05,
        )
        for _ in range(2):
            async with client.get(split_url(url), url) as response:
                await response.read()
                idle = dict(client._idle)  # the second request took the only idle connection
        resolved = dict(client._dns)
        await asyncio.sleep(0.1)
        client._sweep(client.loop.time())
        await client.close()
        return idle, resolved, client._dns

    with RawServer(handler) as server:
        port = server.url.rsplit(":", 1)[1]
        idle, resolved, left = asyncio.run(run(f"http://localhost:{port}/n"))
    assert server.connections == 1
    assert idle == {} and list(resolved) == [("localhost", int(port))] and left == {}


def test_an_unknown_host_fails_as_dns(home):
    (b,) = shardload.swarm(["http://no-such-host.invalid/x"], download=make_download(home))
    assert b.error_kind == ErrorKind.DNS
    assert b.error_message.startswith("cannot resolve no-such-host.invalid")


def test_a_long_robots_txt_is_read_to_its_end(home, client):
    padding = b"".join(b"# %05d: a long comment block before the rules\n" % i for i in range(6000))
    robots = padding + b"User-agent: *\nDisallow: /private/\n"

    def handler(conn, index):
        while (head := server.recorded(conn)) is not None:
            conn.sendall(ok(robots if head.startswith(b"GET /robots.txt ") else b"x"))

    strategy = RequestStrategy(robots=True)
    with RawServer(handler) as server:
        bundles = shardload.swarm(
            [server.url + "/private/1", server.url + "/public/1"],
            download=make_download(home, strategy, client=client),
        )
    assert len(robots) > 256 * 1024
    assert [b.state for b in bundles] == ["skipped", "written"]


def test_the_line_the_robots_txt_cap_cuts_is_ignored(home):
    """512 KiB are read; a rule cut there ("Disallow: /private" kept as "Disallow: /") would
    refuse the whole site, so the cut line is dropped."""
    head = b"User-agent: *\n"
    rule = b"Disallow: /private\n"
    cap = 512 * 1024
    fill = cap - len(head) - len(b"Disallow: /")  # the cap falls right after "Disallow: /"
    lines = (fill - 1) // 100
    padding = b"#" * 99 + b"\n"
    padding = padding * lines + b"#" * (fill - 100 * lines - 1) + b"\n"
    robots = head + padding + rule
    assert robots[cap - len(b"Disallow: /") : cap] == b"Disallow: /"

    def handler(conn, index):
        while (got := server.recorded(conn)) is not None:
            conn.sendall(ok(robots if got.startswith(b"GET /robots.txt ") else b"x"))

    strategy = RequestStrategy(robots=True)
    with RawServer(handler) as server:
        (b,) = shardload.swarm([server.url + "/public/1"], download=make_download(home, strategy))
    assert b.state == "written", b.error_message


@pytest.mark.parametrize(
    ("drip", "timeout", "max_time"), [(False, 0.3, 10), (True, 5, 0.5)], ids=["stall", "drip"]
)
def test_only_max_time_is_reported_as_max_time(home, client, drip, timeout, max_time):
    def handler(conn, index):
        if server.recorded(conn) is None:
            return
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\nab")
        if not drip:
            conn.recv(1)  # silent until the client gives up
            return
        for _ in range(38):
            conn.sendall(b"c")
            time.sleep(0.1)

    strategy = RequestStrategy(timeout=timeout, max_time=max_time)
    with RawServer(handler) as server:
        (b,) = shardload.swarm(
            [server.url + "/t"], download=make_download(home, strategy, client=client)
        )
    assert b.error_kind == ErrorKind.TIMEOUT
    assert ("attempt exceeded max_time" in b.error_message) == drip, b.error_message


def test_headers_dripped_a_line_at_a_time_end_at_the_read_timeout(home, client):
    """A server that sends a header line every 0.1 s never leaves the connection silent for
    ``timeout``: until the headers are complete, the timeout runs from the request."""
    stop = threading.Event()

    def handler(conn, index):
        if server.recorded(conn) is None:
            return
        conn.sendall(b"HTTP/1.1 200 OK\r\n")
        for i in range(100):  # 10 s at most, far past the timeout
            if stop.wait(0.1):
                return
            with contextlib.suppress(OSError):
                conn.sendall(b"X-Drip-%d: y\r\n" % i)

    strategy = RequestStrategy(timeout=0.5)
    with RawServer(handler) as server:
        (b,) = shardload.swarm(
            [server.url + "/t"], download=make_download(home, strategy, client=client)
        )
        stop.set()
    assert b.error_kind == ErrorKind.TIMEOUT, (b.state, b.error_message)
    # From when the request went, on both clients (not connect and headers added up).
    assert "no complete response headers within 0.5 s" in b.error_message, b.error_message


def test_a_bundle_sharing_a_cancelled_download_makes_it_itself(home):
    def handler(conn, index):
        if server.recorded(conn) is None:
            return
        if index == 0:
            conn.recv(1)  # the first download hangs until it is cancelled
        else:
            conn.sendall(ok(b"mine"))

    async def run(url: str) -> shardload.AioDownloadBundle:
        engine = make_download(home)
        first = asyncio.ensure_future(engine.main(shardload.AioDownloadBundle(url)))
        while not server.requests:  # the first download's request is at the server
            await asyncio.sleep(0.01)
        twin = asyncio.ensure_future(engine.main(shardload.AioDownloadBundle(url)))
        waiting = asyncio.ensure_future(engine.main(shardload.AioDownloadBundle(url)))
        await asyncio.sleep(0.05)
        waiting.cancel()  # a bundle cancelled itself stays cancelled
        await asyncio.sleep(0.05)
        first.cancel()
        for cancelled in (first, waiting):
            with pytest.raises(asyncio.CancelledError):
                await cancelled
        bundle = await asyncio.wait_for(twin, 5)
        await engine.close()
        return bundle

    with RawServer(handler) as server:
        b = asyncio.run(run(server.url + "/same"))
    assert b.state == "written", (b.state, b.error_message)
    assert open(b.file_path, "rb").read() == b"mine"


@pytest.mark.parametrize("client", ["lean", "aiohttp"])
def test_an_unparsable_location_is_a_redirect_failure(home, client):
    def handler(conn, index):
        while server.recorded(conn) is not None:
            conn.sendall(
                b"HTTP/1.1 302 Found\r\nLocation: http://[bad\r\nContent-Length: 0\r\n\r\n"
            )

    with RawServer(handler) as server:
        (b,) = shardload.swarm([f"{server.url}/start"], download=make_download(home, client=client))
    assert b.state == "failed" and b.error_kind == ErrorKind.REDIRECT, b.error_message


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_without_location_fails_instead_of_storing_its_body(home, client, status):
    def handler(conn, index):
        while server.recorded(conn) is not None:
            conn.sendall(b"HTTP/1.1 %d Moved\r\nContent-Length: 5\r\n\r\nmoved" % status)

    with RawServer(handler) as server:
        (b,) = shardload.swarm([f"{server.url}/gone"], download=make_download(home, client=client))
    assert (b.state, b.error_kind, b.status) == ("failed", ErrorKind.REDIRECT, status)
    assert b.error_message == f"HTTP {status} without a Location"
    assert files_under(home) == set() and temp_files(home) == []


@pytest.mark.parametrize("status", [b"000", b"042", b"099"])
def test_a_status_under_100_fails_and_keeps_an_earlier_copy(home, client, status):
    """Stored as written (status 0, 42, 99) over an earlier good copy, where curl refuses
    it; aiohttp's path called it a switch of protocols."""
    answers = [b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ngood"]

    def handler(conn, index):
        while server.recorded(conn) is not None:
            conn.sendall(answers[-1])

    with RawServer(handler) as server:
        download = make_download(home, client=client)
        (first,) = shardload.swarm([f"{server.url}/x"], download=download)
        answers.append(b"HTTP/1.1 %s Weird\r\nContent-Length: 5\r\n\r\nweird" % status)
        (b,) = shardload.swarm([f"{server.url}/x"], download=download)
    assert (b.state, b.error_kind) == ("failed", ErrorKind.PROTOCOL), b.error_message
    assert f"status {status.decode()} is no HTTP status" in b.error_message
    assert open(first.file_path, "rb").read() == b"good"


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data)


@pytest.mark.parametrize(
    "head",
    [
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
        b"Transfer-Encoding: identity, chunked",
        b"Transfer-Encoding: chunked\r\nContent-Encoding: identity",
        b"Transfer-Encoding: chunked\r\nContent-Encoding: identity\r\nContent-Encoding: identity",
    ],
    ids=["chunked-twice", "identity-chunked", "content-identity", "content-identity-twice"],
)
def test_codings_said_twice_or_as_identity_are_read_as_curl_reads_them(home, client, head):
    body = body_for(5_000)

    def handler(conn, index):
        while server.recorded(conn) is not None:
            conn.sendall(b"HTTP/1.1 200 OK\r\n%s\r\n\r\n%s" % (head, _chunked(body)))

    with RawServer(handler) as server:
        (b,) = shardload.swarm([f"{server.url}/dup"], download=make_download(home, client=client))
    assert b.state == "written", b.error_message
    assert open(b.file_path, "rb").read() == body


@pytest.mark.parametrize(
    ("head", "body", "message"),
    [
        (b"Content-Encoding: gzip, gzip", _gz(_gz(b"x" * 500)), "Content-Encoding gzip, gzip"),
        (b"Content-Encoding: gzip\r\nContent-Encoding: gzip", _gz(_gz(b"x")), "gzip, gzip"),
        (
            b"Transfer-Encoding: gzip, chunked",
            _chunked(_gz(b"x" * 500)),
            "Transfer-Encoding gzip, chunked",
        ),
        (b"Content-Encoding: gzip, identity", _gz(b"x" * 500), "Content-Encoding gzip, identity"),
        (b"Content-Encoding: identity\r\nContent-Encoding: gzip", _gz(b"x"), "identity, gzip"),
        # Not chunked in the end (RFC 9112: read to the close), but gzip, never decoded.
        (b"Transfer-Encoding: chunked, gzip", _gz(b"x" * 500), "Transfer-Encoding chunked, gzip"),
    ],
    ids=[
        "gzip-gzip",
        "two-lines",
        "gzip-chunked",
        "gzip-identity",
        "identity-gzip-lines",
        "chunked-not-last",
    ],
)
def test_codings_that_would_be_stored_undecoded_fail(home, client, head, body, message):
    """Both clients remove one content coding and chunked; a body under more layers than
    that would be stored still encoded, as written: it fails instead."""

    def handler(conn, index):
        while server.recorded(conn) is not None:
            conn.sendall(b"HTTP/1.1 200 OK\r\n%s\r\n\r\n%s" % (head, body))

    with RawServer(handler) as server:
        (b,) = shardload.swarm(
            [f"{server.url}/layers"], download=make_download(home, client=client)
        )
    assert (b.state, b.error_kind) == ("failed", ErrorKind.PROTOCOL)
    assert message in b.error_message, b.error_message
    assert files_under(home) == set() and temp_files(home) == []


@pytest.mark.parametrize("robots", [False, True], ids=["page", "with-robots"])
def test_origin_only_headers_reach_no_other_host(srv, home, client, robots):
    """Authorization, Cookie and Host go to the origin asked for: not to a redirect's target,
    nor to that target's robots.txt (as curl; aiohttp drops Authorization and Cookie too)."""

    def handler(conn, index):
        while (head := server.recorded(conn)) is not None:
            body = b"User-agent: *\r\n" if head.startswith(b"GET /robots.txt") else b"landed"
            conn.sendall(ok(body))

    secret = {"Authorization": "Bearer SECRET", "Cookie": "sid=SECRET", "Host": "vhost.example"}
    strategy = RequestStrategy(headers=secret, robots=robots)
    with RawServer(handler, host="127.0.0.10") as server:
        start = f"{srv.base_urls[0]}/redirect-to?url={server.url}/landed"
        (b,) = shardload.swarm([start], download=make_download(home, strategy, client=client))
        seen = list(server.requests)
    assert b.ok, b.error_message
    assert len(seen) == (2 if robots else 1)
    for head in seen:
        text = head.decode()
        assert "SECRET" not in text and "vhost.example" not in text, text
        assert f"Host: {server.url.removeprefix('http://')}" in text


def test_a_url_with_credentials_is_not_served_by_the_same_url_without(home):
    def handler(conn, index):
        while (head := server.recorded(conn)) is not None:
            time.sleep(0.2)  # both requests are in flight at once
            if b"Authorization: Basic" in head:
                conn.sendall(ok(b"secret page"))
            else:
                conn.sendall(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")

    class OneFile(DownloadStrategy):
        def get_file_path(self, bundle):
            return os.path.join(self.home, "doc")  # one file for both: the engine's sharing

    with RawServer(handler) as server:
        plain = f"{server.url}/doc"
        with_credentials = plain.replace("http://", "http://alice:pw@")
        download = AioDownload(download_strategy=OneFile(home=home))
        first, second = shardload.swarm([plain, with_credentials], download=download)
    assert (first.status, second.status) == (401, 200)
    assert second.state == "written"


@pytest.mark.parametrize("client", ["lean", "aiohttp"])
def test_an_authorization_header_wins_over_credentials_in_the_url(srv, home, client):
    strategy = RequestStrategy(headers={"Authorization": "Bearer t0k"})
    url = srv.base_urls[0].replace("http://", "http://alice:pw@") + "/echo"
    (b,) = shardload.swarm([url], download=make_download(home, strategy, client=client))
    assert b.ok, b.error_message
    with open(b.file_path) as f:
        assert json.load(f)["headers"]["Authorization"] == "Bearer t0k"


def test_a_request_to_another_host_does_not_close_an_idle_connection(home):
    """Three hosts, one request each at a time, two in flight in all: the next URL is for
    another host than the one that just finished, and still each host needs one connection."""

    def handler(conn, index):
        while read_request(conn) is not None:
            conn.sendall(ok(b"x" * 100))

    servers = [RawServer(handler) for _ in range(3)]
    try:
        urls = [f"{servers[i % 3].url}/{i}" for i in range(24)]
        download = make_download(home, RequestStrategy(concurrent=1, worker_concurrent=2))
        bundles = shardload.swarm(urls, download=download)
    finally:
        for server in servers:
            server.stop()
    assert [b.state for b in bundles] == ["written"] * 24
    assert [server.connections for server in servers] == [1, 1, 1]


@pytest.mark.parametrize(
    ("budget", "in_flight", "pool"), [(496, 64, 128), (496, 496, 496), (70, 64, 76), (4, 4, 4)]
)
def test_idle_connections_fit_in_the_descriptors_requests_leave(
    monkeypatch, budget, in_flight, pool
):
    """A request in flight holds two descriptors (socket, temporary file), an idle one one."""
    monkeypatch.setattr(exchange, "_descriptor_budget", lambda: budget)
    assert exchange._pool_limit(in_flight) == pool


_BIG = body_for(60_000)


@pytest.mark.parametrize(
    ("answer", "body", "connections"),
    [
        (ok(_BIG), _BIG, 1),
        (ok(_BIG) + ok(b"stale"), _BIG, 2),
        (b"HTTP/1.1 100 Continue\r\n\r\n" + ok(_BIG), _BIG, 1),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
            % (len(_BIG), _BIG),
            _BIG,
            1,
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s"
            % (len(gz := zlib.compress(_BIG, wbits=31)), gz),
            _BIG,
            1,
        ),
        (_head(30_000) + _BIG, _BIG[:30_000], 2),
        (_head(90_000) + _BIG, None, 2),
    ],
    ids=["length", "stale-after", "interim", "chunked", "gzip", "longer-than-said", "cut"],
)
def test_a_large_body_in_the_read_of_its_headers(home, answer, body, connections):
    """Headers and a large body in one send (the usual case for bodies of ~100 KiB): the part
    past the headers skips httptools, and every way an answer can go on from there holds."""

    def handler(conn, index):
        while server.recorded(conn) is not None:
            conn.sendall(answer)
            if body is None:
                return  # the connection closes before the declared length

    with RawServer(handler) as server:
        urls = [f"{server.url}/big/{i}" for i in range(2)]
        bundles = shardload.swarm(urls, download=make_download(home, RequestStrategy(concurrent=1)))
    assert server.connections == connections
    if body is None:
        assert [b.error_kind for b in bundles] == [ErrorKind.TRUNCATED] * 2
        assert "got 60000 of 90000 bytes" in (bundles[0].error_message or "")
        assert files_under(home) == set() and temp_files(home) == []
    else:
        assert [b.state for b in bundles] == ["written"] * 2, [b.error_message for b in bundles]
        assert [open(b.file_path, "rb").read() for b in bundles] == [body, body]


def test_a_body_read_with_its_headers_is_handed_on_without_a_copy():
    def handler(conn, index):
        while server.recorded(conn) is not None:
            conn.sendall(ok(_BIG))

    async def run(url: str) -> tuple[bytes, set[type]]:
        client = _client()
        kinds: set[type] = set()
        body = bytearray()
        async with client.get(split_url(url), url) as response:
            async for piece in response.content.iter_chunked(1 << 20):
                kinds.add(type(piece))
                body += piece
        await client.close()
        return bytes(body), kinds

    with RawServer(handler) as server:
        body, kinds = asyncio.run(run(server.url + "/view"))
    assert body == _BIG and memoryview in kinds


def test_an_endless_stream_of_trailers_fails_instead_of_filling_memory(home):
    """Trailer fields after a chunked body are dropped, and capped like headers: bytes that
    keep coming would otherwise never end the body (nor the stall timer)."""

    def handler(conn, index):
        if server.recorded(conn) is not None:
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n"
            )
            with contextlib.suppress(OSError):
                for i in range(20_000):  # ~1.2 MB of trailers, far past the cap
                    conn.sendall(b"X-Trailer-%d: %s\r\n" % (i, b"v" * 48))

    with RawServer(handler) as server:
        (b,) = shardload.swarm([server.url + "/trailers"], download=make_download(home))
    assert b.error_kind == ErrorKind.PROTOCOL and "trailers" in (b.error_message or "")
    assert files_under(home) == set()


@pytest.mark.parametrize(
    "start",
    [b"5;ext=", b"5\r\nhello\r\n" * 10 + b"3;"],
    ids=["first-line", "after-ten-chunks"],
)
def test_an_endless_chunk_size_line_fails_instead_of_running_on(home, start):
    """Bytes keep coming, so the stall timer never fires, yet none is body: chunk framing
    is capped like headers and trailers. Small chunks (5 bytes of framing each) are fine."""

    def handler(conn, index):
        if server.recorded(conn) is not None:
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + start)
            with contextlib.suppress(OSError):
                for _ in range(20_000):  # ~1.2 MB of one extension, far past the cap
                    conn.sendall(b"x" * 64)

    with RawServer(handler) as server:
        (b,) = shardload.swarm([server.url + "/endless"], download=make_download(home))
    assert b.error_kind == ErrorKind.PROTOCOL and "chunk framing" in (b.error_message or "")
    assert files_under(home) == set()


def test_chunk_framing_read_with_an_interim_answer_counts(home):
    """120 KB of a chunk extension, sent with a 100 Continue and the final head and then the
    end of the connection: all of it is framing past the cap, whether or not it came in the
    read of the interim answer (it was not counted there, and the body ended as truncated)."""

    def handler(conn, index):
        if server.recorded(conn) is not None:
            conn.sendall(
                b"HTTP/1.1 100 Continue\r\n\r\n"
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=" + b"x" * 120_000
            )
            conn.close()

    with RawServer(handler) as server:
        (b,) = shardload.swarm([server.url + "/framing"], download=make_download(home))
    assert b.error_kind == ErrorKind.PROTOCOL and "chunk framing" in (b.error_message or "")


def test_a_body_of_many_tiny_chunks_is_read_whole(home):
    body = body_for(30_000)
    chunked = b"".join(b"1;e=1\r\n%s\r\n" % body[i : i + 1] for i in range(len(body)))

    def handler(conn, index):
        if server.recorded(conn) is not None:
            head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            conn.sendall(head + chunked + b"0\r\n\r\n")

    with RawServer(handler) as server:
        (b,) = shardload.swarm([server.url + "/tiny"], download=make_download(home))
    assert b.state == "written", b.error_message
    assert open(b.file_path, "rb").read() == body


def test_a_body_without_length_cut_by_a_reset_is_truncated(home):
    def handler(conn, index):
        if server.recorded(conn) is not None:
            conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body_for(50_000))
            time.sleep(0.05)
            # SO_LINGER 0: close() sends a reset, not an end of stream.
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    with RawServer(handler) as server:
        (b,) = shardload.swarm([server.url + "/rst"], download=make_download(home))
    assert b.error_kind == ErrorKind.TRUNCATED and "reset" in (b.error_message or "")
    assert files_under(home) == set()


@pytest.mark.parametrize(
    ("answer", "stored"),
    [
        (b"HTTP/1.1 204 No Content\r\nContent-Length: 1234\r\n\r\n", b""),
        (b"HTTP/1.1 200 OK\nContent-Length: 5\n\nhello", b"hello"),
        (b"HTTP/1.1 200 OK\r\nX-Folded: one\r\n two\r\nContent-Length: 5\r\n\r\nhello", b"hello"),
    ],
    ids=["204-with-length", "lf-only-lines", "folded-header"],
)
def test_unusual_but_complete_answers_are_stored(home, answer, stored):
    def handler(conn, index):
        if server.recorded(conn) is not None:
            conn.sendall(answer)
            conn.shutdown(socket.SHUT_WR)  # the end of a body without length

    with RawServer(handler) as server:
        (b,) = shardload.swarm([server.url + "/odd"], download=make_download(home))
    assert b.state == "written", b.error_message
    assert open(b.file_path, "rb").read() == stored


@pytest.mark.parametrize("length", [b"", b"Content-Length: 1234\r\n"], ids=["bare", "length"])
def test_a_304_never_replaces_a_stored_copy(srv, home, client, length):
    """shardload asks nothing conditionally: a 304 has no body to store, and fails."""
    url = srv.base_urls[0] + "/links/1"
    (first,) = shardload.swarm([url], download=make_download(home, client=client))
    good = open(first.file_path, "rb").read()

    def handler(conn, index):
        if server.recorded(conn) is not None:
            conn.sendall(b"HTTP/1.1 304 Not Modified\r\n%s\r\n" % length)

    with RawServer(handler) as server:
        moved = Bundle(server.url + "/links/1", file_path=first.file_path)
        (b,) = shardload.swarm([moved], download=make_download(home, client=client))
    assert b.state == "failed" and b.status == 304 and b.error_kind == ErrorKind.HTTP
    assert open(first.file_path, "rb").read() == good


class _Clock:
    """An event loop's clock and timers, as far as a connection's read timeout uses them."""

    def __init__(self, now: float) -> None:
        self.now = now
        self.timers: list[float] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: object) -> _Clock:
        self.timers.append(when)
        return self  # the handle: only cancel() is asked of it

    def cancel(self) -> None:
        pass


class _NoClient:
    def __init__(self, loop: _Clock) -> None:
        self.loop = loop


@pytest.mark.parametrize(
    ("last", "fired", "timers", "failed"),
    [
        (10.0, 10.4, [], True),  # on time: no data for the whole timeout
        (10.0, 10.3996, [], True),  # a millisecond timer a hair early still ends it
        (10.2, 10.4, [10.6], False),  # data came 0.2 s in: look again 0.4 s after it
        (10.39, 10.4, [10.79], False),
    ],
)
def test_the_read_timeout_is_counted_from_the_last_data_not_from_the_check(
    last: float, fired: float, timers: list[float], failed: bool
) -> None:
    """A stall fails after ``timeout``, never 2x: the check that finds data came meanwhile
    sets its next look from that data, and a timer that fires a hair early (the loop's clock
    counts milliseconds) does not push the failure a whole timeout later."""
    from shardload.worker.http.connection import Connection

    clock = _Clock(fired)
    conn = Connection(_NoClient(clock), ("http", "h", 80))  # type: ignore[arg-type]
    conn._head = None  # the headers are in: the body stalls
    conn._last, conn._timeout = last, 0.4
    conn._check_stall()
    assert clock.timers == pytest.approx(timers)
    assert conn.closed is failed


def test_the_host_header_keeps_a_trailing_dot() -> None:
    from shardload.urls import split_url
    from shardload.worker.http.client import LeanClient

    async def head() -> bytes:
        client = LeanClient(
            limit=1, headers={}, connect_timeout=None, read_timeout=None, dns_ttl=None
        )
        try:
            return client._head(split_url("http://a.com.:81/x"), "http://a.com.:81/x", True)
        finally:
            await client.close()

    assert b"\r\nHost: a.com.:81\r\n" in asyncio.run(head())


def test_decoding_stops_where_its_consumer_stops():
    """One network read of a gzip bomb (127 KB) was decoded whole (125 MiB) before the size
    check saw its first piece."""
    import tracemalloc

    from shardload.worker.http.response import _decoder

    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb = b"".join([packer.compress(b"\0" * (1 << 20)) for _ in range(64)] + [packer.flush()])
    decoder = _decoder("gzip")
    assert decoder is not None
    tracemalloc.start()
    try:
        pieces = decoder.feed(bomb)
        taken = [len(next(pieces)) for _ in range(3)]
        pieces.close()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert taken == [1 << 20] * 3
    assert peak < 8 << 20, peak


_BOMBS = """
import resource, socket, sys, tempfile, threading, zlib
import shardload
from shardload import AioDownload, DownloadStrategy, RequestStrategy

packer = zlib.compressobj(9, zlib.DEFLATED, 31)
BOMB = b"".join([packer.compress(b"\\0" * (1 << 20)) for _ in range(200)] + [packer.flush()])
HEAD = b"HTTP/1.1 200 OK\\r\\nContent-Encoding: gzip\\r\\nContent-Length: %d\\r\\n" % len(BOMB)
listener = socket.create_server(("127.0.0.1", 0))

def serve(conn):
    with conn:
        conn.recv(65536)
        conn.sendall(HEAD + b"Connection: close\\r\\n\\r\\n" + BOMB)

def accept():
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()

threading.Thread(target=accept, daemon=True).start()
url = "http://127.0.0.1:%d/bomb/" % listener.getsockname()[1]
download = AioDownload(
    download_strategy=DownloadStrategy(home=tempfile.mkdtemp(), max_bytes=10_000_000),
    request_strategy=RequestStrategy(concurrent=4),
)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
kinds = {str(b.error_kind) for b in shardload.swarm([url + str(i) for i in range(4)], download)}
grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print("KINDS", sorted(kinds), "GREW_MIB", grew // 1024)
"""


def test_gzip_bombs_under_max_bytes_stay_small_in_memory(tmp_path):
    """Four 200 MiB bombs at once under max_bytes=10 MB took a worker to ~500 MB: at the
    default 64 requests a worker, a hostile host could have it killed for memory."""
    import subprocess
    import sys

    script = tmp_path / "bombs.py"
    script.write_text(_BOMBS)
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False
    )
    words = out.stdout.split()
    assert words[:2] == ["KINDS", "['too_large']"], out.stdout + out.stderr[-2000:]
    assert int(words[3]) < 120, out.stdout


def test_a_last_attempt_that_got_no_answer_reports_no_status(home, client):
    """The first attempt's 500 stayed on the bundle of a last attempt that timed out (so in
    the manifest, and the host's 5xx count)."""
    gate = threading.Event()

    def handler(conn, index):
        if server.recorded(conn) is None:
            return
        if index == 0:
            conn.sendall(b"HTTP/1.1 500 Oops\r\nContent-Length: 3\r\nConnection: close\r\n\r\nerr")
        else:
            gate.wait(10)  # never answered: a read timeout

    strategy = RequestStrategy(max_attempts=2, timeout=0.5)
    with RawServer(handler) as server:
        (b,) = shardload.swarm(
            [server.url + "/x"], download=make_download(home, strategy, client=client)
        )
        gate.set()
    assert (b.state, b.error_kind, b.status, b.attempts) == ("failed", "timeout", None, 2)


def test_a_refused_connection_reads_the_same_on_every_event_loop(home, closed_port):
    """uvloop said "Connection refused", asyncio's own loop "Connect call failed (...)"."""
    url = f"http://127.0.0.1:{closed_port}/x"
    (on_uvloop,) = shardload.swarm([url], download=make_download(home))
    on_asyncio = asyncio.run(shardload.aone(url, download=make_download(home)))
    expected = f"cannot connect to 127.0.0.1:{closed_port}: Connection refused"
    assert on_uvloop.error_message == on_asyncio.error_message == expected
