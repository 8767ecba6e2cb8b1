"""Strategies: documented defaults, retry counts seen by the server, overrides (issue 2)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import shardload
from shardload import (
    AioDownload,
    BackOff,
    Bundle,
    DownloadStrategy,
    ErrorKind,
    Lenient,
    Outcome,
    RequestStrategy,
)
from shardload.testing.server import body_for

from .conftest import make_download, temp_files


def requests_for(srv, path: str) -> int:
    return srv.stats()["paths"].get(path, 0)


class QuickLenient(Lenient):
    """Lenient's retry rules with short sleeps, so its counts can be tested quickly."""

    def get_sleep_time(self, bundle: Bundle) -> float:
        return 0.01 if bundle.attempts else 0.0


def test_documented_defaults():
    ds = DownloadStrategy()
    assert (ds.chunk_size, ds.home, ds.skip_cached) == (65536, os.getcwd(), False)
    rs = RequestStrategy()
    assert (rs.concurrent, rs.max_attempts, rs.timeout) == (2, 0, 60)
    lenient = Lenient()
    assert (lenient.concurrent, lenient.max_attempts, lenient.delay) == (2, 5, 0.25)
    assert BackOff().max_attempts == 10
    assert Lenient(3).max_attempts == 3  # positional max_attempts reaches max_attempts
    # Not aiodownload's Lenient(): with real retries it would hold a failing URL 4 minutes.
    assert type(shardload.AioDownload().request_strategy) is RequestStrategy


@pytest.mark.parametrize(("attempts", "sleep"), [(0, 0.0), (1, 60.0), (2, 60.0), (4, 60.0)])
def test_lenient_sleeps_60_seconds_between_retries(attempts, sleep):
    assert Lenient().get_sleep_time(Bundle("http://h/", attempts=attempts)) == sleep


@pytest.mark.parametrize(
    ("attempts", "sleep"),
    [(0, 0.0), (1, 0.25), (2, 0.5), (3, 1.0), (8, 32.0), (9, 60.0), (50, 60.0)],
)
def test_backoff_doubles_from_a_quarter_second_to_a_minute(attempts, sleep):
    assert BackOff().get_sleep_time(Bundle("http://h/", attempts=attempts)) == sleep


def test_lenient_retries_503_four_times_then_fails(srv, home):
    path = "/status/503"
    (b,) = shardload.swarm([srv.base_urls[0] + path], download=make_download(home, QuickLenient()))
    assert b.state == "failed" and b.error_kind == ErrorKind.HTTP and b.status == 503
    assert b.attempts == 5
    assert requests_for(srv, path) == 5


def test_lenient_never_retries_404(srv, home):
    path = "/status/404"
    (b,) = shardload.swarm([srv.base_urls[0] + path], download=make_download(home, QuickLenient()))
    assert b.attempts == 1 and requests_for(srv, path) == 1


def test_backoff_retries_transient_until_success(srv, home):
    path = "/flaky/bo/2/503"
    (b,) = shardload.swarm([srv.base_urls[0] + path], download=make_download(home, BackOff()))
    assert b.state == "written" and b.attempts == 3
    assert requests_for(srv, path) == 3


def test_backoff_gives_up_after_max_attempts(srv, home):
    path = "/status/500"
    (b,) = shardload.swarm([srv.base_urls[0] + path], download=make_download(home, BackOff(3)))
    assert b.state == "failed" and b.attempts == 3 and requests_for(srv, path) == 3


def test_backoff_does_not_retry_permanent_errors(srv, home):
    path = "/status/410"
    (b,) = shardload.swarm([srv.base_urls[0] + path], download=make_download(home, BackOff()))
    assert b.attempts == 1 and requests_for(srv, path) == 1


def test_default_strategy_makes_a_single_attempt(srv, home):
    path = "/status/503"
    (b,) = shardload.swarm([srv.base_urls[0] + path], download=make_download(home))
    assert b.attempts == 1 and requests_for(srv, path) == 1
    assert not b.ok and "Download failed" in b.status_msg


@pytest.mark.parametrize("date", [False, True])
def test_retry_after_is_honoured(srv, home, date):
    key = f"ra-{date}"
    path = f"/retry-after/{key}/1/503?after=2" + ("&date=1" if date else "")
    (b,) = shardload.swarm([srv.base_urls[0] + path], download=make_download(home, BackOff(3)))
    assert b.state == "written" and b.attempts == 2
    starts = srv.stats()["hosts"][srv.host_key(0)]["starts"]
    assert len(starts) == 2
    # BackOff alone would wait 0.25 s; the server asked for 2 s (an HTTP date has 1 s precision).
    assert starts[1] - starts[0] >= (0.85 if date else 1.8)


def test_retry_after_is_capped(srv, home):
    path = "/retry-after/cap/1/429?after=3600"
    strategy = BackOff(2, retry_after_cap=0.5)
    (b,) = shardload.swarm([srv.base_urls[0] + path], download=make_download(home, strategy))
    assert b.state == "written" and b.attempts == 2
    starts = srv.stats()["hosts"][srv.host_key(0)]["starts"]
    assert len(starts) == 2
    # The server asked for an hour; the cap (0.5 s, above BackOff's own 0.25 s) is what is waited.
    assert 0.45 <= starts[1] - starts[0] <= 2


def test_refused_connection_is_retried_then_fails(home, closed_port):
    strategy = BackOff(3)
    (b,) = shardload.swarm(
        [f"http://127.0.0.1:{closed_port}/x"], download=make_download(home, strategy)
    )
    assert b.state == "failed" and b.error_kind == ErrorKind.CONNECT
    assert b.attempts == 3 and b.status is None


def test_retry_sees_network_errors_with_no_status(home, closed_port):
    seen: list[Outcome] = []

    class Recording(RequestStrategy):
        def retry(self, response):
            seen.append(response)
            return False

    shardload.swarm(
        [f"http://127.0.0.1:{closed_port}/x"], download=make_download(home, Recording())
    )
    assert len(seen) == 1
    assert seen[0].status is None and seen[0].error_kind == ErrorKind.CONNECT
    assert seen[0].transient


class StatusOnlyRetry(RequestStrategy):
    """aiodownload-era code: assumes every failure has an HTTP status."""

    def retry(self, response):
        return response.status >= 500


def test_a_retry_written_for_statuses_keeps_the_network_error(home, closed_port):
    download = make_download(home, StatusOnlyRetry(max_attempts=3))
    (b,) = shardload.swarm([f"http://127.0.0.1:{closed_port}/x"], download=download)
    assert b.state == "failed" and b.error_kind == ErrorKind.CONNECT, b.error_message
    assert "retry() raised TypeError" in b.error_message
    assert b.attempts == 1


def test_request_and_download_gives_a_failed_bundle_for_a_bad_url(home):
    async def main() -> shardload.Bundle:
        async with make_download(home) as engine:
            return await engine.request_and_download(shardload.Bundle("ftp://example.com/x"))

    b = asyncio.run(main())
    assert b.state == "failed" and b.error_kind == ErrorKind.UNSUPPORTED_SCHEME


@pytest.mark.parametrize("client", ["lean", "aiohttp"])
def test_request_and_download_follows_redirects_in_one_attempt(srv, home, client):
    async def main() -> tuple[shardload.Bundle, shardload.Bundle]:
        async with make_download(home, RequestStrategy(max_redirects=2), client=client) as engine:
            chain = await engine.request_and_download(Bundle(srv.base_urls[0] + "/redirect/2"))
            loop = await engine.request_and_download(Bundle(srv.base_urls[0] + "/loop"))
            return chain, loop

    chain, loop = asyncio.run(main())
    assert chain.state == "written" and chain.attempts == 1 and chain.status == 200
    assert loop.state == "failed" and loop.error_kind == ErrorKind.REDIRECT
    assert "too many redirects (max_redirects=2)" in loop.error_message and loop.attempts == 1


def test_user_overrides_take_effect(srv, home):
    class OnlyOk(RequestStrategy):
        def __init__(self):
            super().__init__(max_attempts=3)

        def assert_response(self, response):
            assert response.status == 200

        def retry(self, response):
            return response.status == 201

        def get_sleep_time(self, bundle):
            return 0.0

    class Flat(DownloadStrategy):
        def get_file_path(self, bundle):
            return os.path.join(self.home, "flat-" + bundle.url.rsplit("/", 1)[-1])

    download = shardload.AioDownload(download_strategy=Flat(home=home), request_strategy=OnlyOk())
    ok, created = shardload.swarm(
        [srv.base_urls[0] + "/links/2", srv.base_urls[0] + "/status/201"], download=download
    )
    assert ok.state == "written" and ok.file_path == os.path.join(home, "flat-2")
    assert created.state == "failed" and created.attempts == 3
    assert not os.path.exists(os.path.join(home, "flat-201"))


def test_raise_for_status_in_assert_response_is_an_http_failure(srv, home):
    """aiodownload's users wrote assert_response with aiohttp's raise_for_status(): a 503
    refused that way is a transient http failure, retried as an ``assert`` refusal is."""

    class RaiseForStatus(RequestStrategy):
        def assert_response(self, response):
            response.raise_for_status()

        def get_sleep_time(self, bundle):
            return 0.0

    download = shardload.AioDownload(
        download_strategy=DownloadStrategy(home=home),
        request_strategy=RaiseForStatus(max_attempts=2),
    )
    busy, gone = shardload.swarm(
        [srv.base_urls[0] + "/status/503", srv.base_urls[0] + "/status/404"], download=download
    )
    assert (busy.state, busy.error_kind, busy.status, busy.attempts) == ("failed", "http", 503, 2)
    assert (gone.state, gone.error_kind, gone.status, gone.attempts) == ("failed", "http", 404, 1)
    assert shardload.is_transient(busy.error_kind, busy.status)


def test_custom_on_success_and_on_fail_are_called(srv, home):
    calls = []

    class Recording(DownloadStrategy):
        async def on_success(self, response, bundle):
            calls.append(("success", response.status))
            await super().on_success(response, bundle)

        async def on_fail(self, bundle):
            calls.append(("fail", bundle.status))

    download = shardload.AioDownload(download_strategy=Recording(home=home))
    shardload.swarm(
        [srv.base_urls[0] + "/links/1", srv.base_urls[0] + "/status/404"], download=download
    )
    assert sorted(calls) == [("fail", 404), ("success", 200)]


class RecordsFailures(DownloadStrategy):
    failed: list[str] = []  # one process: processes=1 and main()

    async def on_fail(self, bundle: Bundle) -> None:
        self.failed.append(bundle.url)


def test_on_fail_is_not_called_for_input_refused_before_any_download(home):
    """An invalid URL: main() called on_fail, swarm() did not (the coordinator refuses it).
    Neither does now, as on_fail's docstring says; bad params neither."""
    RecordsFailures.failed = []
    download = shardload.AioDownload(download_strategy=RecordsFailures(home=home))
    refused = ["notaurl", "ftp://x/y", "http://"]
    bundles = shardload.swarm(refused, download=download)
    assert {b.error_kind for b in bundles} <= {ErrorKind.INVALID_URL, ErrorKind.UNSUPPORTED_SCHEME}

    async def direct() -> list[Bundle]:
        done = [await download.main(Bundle(url)) for url in refused]
        await download.close()
        return done

    assert all(b.state == "failed" for b in asyncio.run(direct()))
    assert RecordsFailures.failed == []


def test_on_fail_runs_for_a_failing_get_file_path_and_one_that_raises_keeps_the_cause(srv, home):
    failed: list[str | None] = []

    class Fussy(DownloadStrategy):
        def get_file_path(self, bundle: Bundle) -> str:
            if bundle.url.endswith("/links/1"):
                raise LookupError("no name for it")
            return super().get_file_path(bundle)

        async def on_fail(self, bundle: Bundle) -> None:
            failed.append(bundle.error_kind)
            raise RuntimeError("on_fail bug")

    download = shardload.AioDownload(download_strategy=Fussy(home=home))
    named, missing = shardload.swarm(
        [srv.base_urls[0] + "/links/1", srv.base_urls[0] + "/status/404"], download=download
    )
    assert failed.count("strategy") == 1 and failed.count("http") == 1
    assert named.error_kind == "strategy" and "no name for it" in named.error_message
    assert missing.error_kind == "http" and missing.status == 404
    assert missing.error_message.endswith("; on_fail() raised RuntimeError: on_fail bug")


class NamesByInfo(DownloadStrategy):
    """Returns whatever the bundle's info holds as its path."""

    def get_file_path(self, bundle: Bundle) -> Any:
        return bundle.info["path"]


def test_a_get_file_path_that_returns_no_path_says_so(srv, home):
    """None, bytes or a number from get_file_path fail the bundle as ``strategy`` with a
    message that names get_file_path (it was a bare "TypeError: expected str, bytes or
    os.PathLike object"); a Path is a path."""
    given = [None, b"a/b", 5, Path("in/a/path")]
    bundles = shardload.swarm(
        [Bundle(srv.base_urls[0] + f"/links/{i}", info={"path": p}) for i, p in enumerate(given)],
        download=shardload.AioDownload(download_strategy=NamesByInfo(home=home)),
    )
    assert [(b.state, b.error_message) for b in bundles] == [
        ("failed", "get_file_path returned NoneType, not a path (a str)"),
        ("failed", "get_file_path returned bytes, not a path (a str)"),
        ("failed", "get_file_path returned int, not a path (a str)"),
        ("written", None),
    ]
    assert {b.error_kind for b in bundles[:3]} == {"strategy"}
    assert bundles[3].file_path == os.path.join(home, "in", "a", "path")


class WritesItself(DownloadStrategy):
    """aiodownload 0.2.5's on_success: it read the response and wrote the file itself."""

    async def on_success(self, response: Any, bundle: Bundle) -> None:
        assert bundle.file_path is not None
        os.makedirs(os.path.dirname(bundle.file_path), exist_ok=True)
        with open(bundle.file_path, "wb") as f:
            while chunk := await response.content.read(self.chunk_size):
                f.write(chunk)


@pytest.mark.parametrize("sha256", [True, False])
def test_an_on_success_that_writes_the_file_itself_reports_its_bytes_and_hash(srv, home, sha256):
    download = shardload.AioDownload(download_strategy=WritesItself(home=home, sha256=sha256))
    b = shardload.one(f"{srv.base_urls[0]}/bytes/3000", download=download)
    body = body_for(3000)
    assert b.state == "written" and b.bytes == 3000, (b.state, b.bytes, b.error_message)
    assert b.sha256 == (hashlib.sha256(body).hexdigest() if sha256 else None)


@pytest.mark.parametrize("processes", [1, 2])
def test_an_on_success_that_writes_the_file_itself_never_leaves_a_cut_body_at_the_final_path(
    srv, home, processes
):
    """skip_cached can trust what it finds, also when the file is written by an override of
    aiodownload's kind: a cut body it wrote is removed, over an earlier copy or not."""
    download = shardload.AioDownload(download_strategy=WritesItself(home=home))
    good = shardload.one(f"{srv.base_urls[0]}/bytes/3000", download=download, processes=processes)
    assert good.state == "written" and good.bytes == 3000
    cached = shardload.AioDownload(download_strategy=WritesItself(home=home, skip_cached=True))
    for url in (f"{srv.base_urls[0]}/truncate/1000", f"{srv.base_urls[1]}/truncate/900"):
        for _ in range(2):  # nothing at the final path: a rerun does not take it for a copy
            cut = shardload.one(url, download=cached, processes=processes)
            assert (cut.state, cut.error_kind) == ("failed", "truncated"), cut.error_message
            assert not os.path.exists(cut.file_path)
    assert temp_files(home) == []


class SwallowsReadErrors(WritesItself):
    """An aiodownload-era wrapper: there an exception aborted the whole swarm."""

    async def on_success(self, response: Any, bundle: Bundle) -> None:
        with contextlib.suppress(Exception):
            await super().on_success(response, bundle)


def test_an_on_success_that_swallows_a_cut_body_still_fails_and_leaves_nothing(srv, home):
    download = shardload.AioDownload(download_strategy=SwallowsReadErrors(home=home))
    cut = shardload.one(f"{srv.base_urls[0]}/truncate/2000", download=download)
    assert (cut.state, cut.error_kind) == ("failed", "truncated"), cut.error_message
    assert not os.path.exists(cut.file_path)


class NamesItAndSwallows(DownloadStrategy):
    """Derives its file's name, appends to it, and catches a read error itself."""

    async def on_success(self, response: Any, bundle: Bundle) -> None:
        assert bundle.file_path is not None
        bundle.file_path += ".png"
        os.makedirs(os.path.dirname(bundle.file_path), exist_ok=True)
        with open(bundle.file_path, "ab") as f, contextlib.suppress(Exception):
            while chunk := await response.content.read(100):
                f.write(chunk)


def test_a_failed_override_s_own_path_is_cleaned_and_nothing_outside_home(srv, home, tmp_path):
    download = shardload.AioDownload(download_strategy=NamesItAndSwallows(home=home))
    cut = shardload.one(f"{srv.base_urls[0]}/truncate/3000", download=download)
    assert (cut.state, cut.error_kind) == ("failed", "truncated"), cut.error_message
    assert cut.file_path.endswith(".png") and not os.path.exists(cut.file_path)
    # A folder of home linked outside it: the override follows the link (it is the caller's
    # code), but what shardload removes after it is never outside home.
    outside = tmp_path / "outside"
    outside.mkdir()
    host_dir = os.path.join(home, srv.host_key(1).replace(":", "_"))
    os.symlink(outside, host_dir)
    (outside / "1000.png").write_bytes(b"precious")
    linked = shardload.one(f"{srv.base_urls[1]}/truncate/1000", download=download)
    assert linked.state == "failed" and linked.file_path.startswith(host_dir + os.sep)
    assert (outside / "1000.png").read_bytes().startswith(b"precious")


class AppendsToOneFile(DownloadStrategy):
    """Pages gathered into one file: each override appends to what is there."""

    def get_file_path(self, bundle: Bundle) -> str:
        return os.path.join(self.home, "all-pages")

    async def on_success(self, response: Any, bundle: Bundle) -> None:
        assert bundle.file_path is not None
        with open(bundle.file_path, "ab") as f:
            f.write(await response.read() + b"\n")


class NamesByType(DownloadStrategy):
    """The image downloader's pattern: an extension from the Content-Type, then the write."""

    async def on_success(self, response: Any, bundle: Bundle) -> None:
        assert bundle.file_path is not None
        bundle.file_path += ".bin"
        os.makedirs(os.path.dirname(bundle.file_path), exist_ok=True)
        with open(bundle.file_path, "wb") as f:
            f.write(await response.read())
        with open(bundle.file_path + ".json", "w") as f:  # a side file beside it
            json.dump({"status": response.status}, f)


def test_overrides_that_append_or_derive_names_from_the_path_work_as_in_aiodownload(srv, home):
    base = srv.base_urls[0]
    pages = [f"{base}/bytes/{n}" for n in (10, 20, 30)]
    download = shardload.AioDownload(
        download_strategy=AppendsToOneFile(home=home),
        request_strategy=RequestStrategy(concurrent=1),
    )
    assert [b.state for b in shardload.swarm(pages, download=download)] == ["written"] * 3
    with open(os.path.join(home, "all-pages"), "rb") as f:
        assert f.read() == b"".join(body_for(n) + b"\n" for n in (10, 20, 30))
    named = shardload.one(
        f"{base}/bytes/40", download=shardload.AioDownload(download_strategy=NamesByType(home=home))
    )
    assert named.state == "written" and named.file_path.endswith(os.sep + "40.bin")
    assert open(named.file_path, "rb").read() == body_for(40)
    assert json.load(open(named.file_path + ".json")) == {"status": 200}
    assert temp_files(home) == []


def test_an_on_success_that_raises_mid_write_or_writes_nothing_leaves_nothing(srv, home):
    class Raises(WritesItself):
        async def on_success(self, response: Any, bundle: Bundle) -> None:
            assert bundle.file_path is not None
            os.makedirs(os.path.dirname(bundle.file_path), exist_ok=True)
            with open(bundle.file_path, "wb") as f:
                f.write(b"half")
            raise OSError("the disk went away")

    class Uploads(DownloadStrategy):
        async def on_success(self, response: Any, bundle: Bundle) -> None:
            await response.read()  # sent elsewhere: nothing is written under home

    url = f"{srv.base_urls[0]}/bytes/300"
    raised = shardload.one(url, download=shardload.AioDownload(download_strategy=Raises(home=home)))
    assert raised.state == "failed" and "the disk went away" in raised.error_message
    uploaded = shardload.one(
        url, download=shardload.AioDownload(download_strategy=Uploads(home=home))
    )
    assert uploaded.state == "written", uploaded.error_message
    assert uploaded.file_path == raised.file_path and not os.path.exists(uploaded.file_path)
    assert temp_files(home) == []


def test_an_on_success_that_calls_super_and_then_reads_its_file_sees_the_final_path(srv, home):
    seen: list[tuple[str, bytes]] = []

    class Reads(DownloadStrategy):
        async def on_success(self, response: Any, bundle: Bundle) -> None:
            await super().on_success(response, bundle)
            assert bundle.file_path is not None
            with open(bundle.file_path, "rb") as f:
                seen.append((bundle.file_path, f.read()))

    download = shardload.AioDownload(download_strategy=Reads(home=home))
    b = shardload.one(f"{srv.base_urls[0]}/bytes/500", download=download)
    assert b.state == "written" and b.bytes == 500 and b.sha256 is not None
    assert seen == [(b.file_path, body_for(500))] and ".shardload-tmp" not in b.file_path


class PostProcess(DownloadStrategy):  # module level: worker processes import it
    async def on_success(self, response: Any, bundle: Bundle) -> None:
        await super().on_success(response, bundle)
        raise ValueError("thumbnail failed")


@pytest.mark.parametrize("processes", [1, 2])
def test_an_on_success_that_fails_after_super_keeps_the_complete_file(srv, home, processes):
    """super() committed a complete, verified body over a good copy; the override then
    raised (post-processing): the file was removed, leaving nothing where the copy was."""
    urls = [f"{base}/bytes/{300 + i}?post" for i, base in enumerate(srv.base_urls[:2])]
    good = shardload.swarm(urls, download=make_download(home))
    assert all(b.ok for b in good)
    again = shardload.swarm(
        urls,
        download=shardload.AioDownload(download_strategy=PostProcess(home=home)),
        processes=processes,
    )
    for i, b in enumerate(again):
        assert b.state == "failed" and "thumbnail failed" in (b.error_message or "")
        assert open(good[i].file_path, "rb").read() == body_for(300 + i)
    assert temp_files(home) == []


def test_an_on_success_that_changes_the_file_after_super_and_fails_leaves_nothing(srv, home):
    class Appends(DownloadStrategy):
        async def on_success(self, response: Any, bundle: Bundle) -> None:
            await super().on_success(response, bundle)
            assert bundle.file_path is not None
            with open(bundle.file_path, "ab") as f:
                f.write(b"half a trailer")
            raise OSError("the disk went away")

    url = f"{srv.base_urls[0]}/bytes/310"
    b = shardload.one(url, download=shardload.AioDownload(download_strategy=Appends(home=home)))
    assert b.state == "failed" and b.file_path is not None
    assert not os.path.exists(b.file_path)


def test_a_request_and_download_that_fails_after_super_keeps_the_complete_file(srv, home):
    class Checks(shardload.AioDownload):
        async def request_and_download(self, bundle: Bundle) -> Any:
            await super().request_and_download(bundle)
            raise RuntimeError("checksum list unreachable")

    url = f"{srv.base_urls[0]}/bytes/320"
    (good,) = shardload.swarm([url], download=make_download(home))
    b = shardload.one(url, download=Checks(download_strategy=DownloadStrategy(home=home)))
    assert b.state == "failed" and "checksum list unreachable" in (b.error_message or "")
    assert open(good.file_path, "rb").read() == body_for(320)


def test_a_strategy_that_raises_fails_its_bundle_not_the_batch(srv, home):
    class Broken(RequestStrategy):
        def get_sleep_time(self, bundle):
            raise ZeroDivisionError("oops")

    bundles = shardload.swarm(
        [srv.base_urls[0] + "/links/1", srv.base_urls[1] + "/links/1"],
        download=make_download(home, Broken()),
    )
    assert [b.error_kind for b in bundles] == [ErrorKind.STRATEGY] * 2
    assert "oops" in bundles[0].error_message
    assert temp_files(home) == []


class Fatal(BaseException):
    """A BaseException of a user's own, as GeneratorExit is one of Python's."""


class RaisesOnPoison(DownloadStrategy):
    """Raises ``error`` for a poison URL from ``where`` (a method of its own, or the engine's
    ``main``: see ``MainRaisesOnPoison``), as one leaked from a strategy's own awaited work
    would."""

    def __init__(self, error: type[BaseException], where: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.error, self.where = error, where

    def poisoned(self, bundle: Bundle, where: str) -> None:
        if where == self.where and "poison" in bundle.url:
            raise self.error

    def get_file_path(self, bundle: Bundle) -> str:
        self.poisoned(bundle, "get_file_path")
        return super().get_file_path(bundle)

    async def on_success(self, response: Any, bundle: Bundle) -> None:
        self.poisoned(bundle, "on_success")
        await super().on_success(response, bundle)


class MainRaisesOnPoison(AioDownload):
    async def main(self, bundle: Bundle) -> Bundle:
        self.download_strategy.poisoned(bundle, "main")  # type: ignore[attr-defined]
        return await super().main(bundle)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("processes", [1, 2])
@pytest.mark.parametrize("where", ["get_file_path", "on_success", "main"])
@pytest.mark.parametrize("error", [asyncio.CancelledError, GeneratorExit, Fatal])
def test_a_strategy_that_raises_a_base_exception_fails_its_bundle_instead_of_hanging(
    srv, home, processes, where, error
):
    """Nobody cancelled the download: passed on, the CancelledError (or GeneratorExit, or any
    BaseException but KeyboardInterrupt and SystemExit) ended the job's task with no result,
    and the run waited for it for ever."""
    urls = [f"{srv.base_urls[i % 2]}/links/{i}" for i in range(6)] + [
        f"{srv.base_urls[0]}/bytes/10?name=poison"
    ]
    download = MainRaisesOnPoison(download_strategy=RaisesOnPoison(error, where, home=home))
    bundles = shardload.swarm(urls, download=download, processes=processes)
    assert [b.state for b in bundles] == ["written"] * 6 + ["failed"]
    assert bundles[-1].error_kind == ErrorKind.STRATEGY
    assert error.__name__ in bundles[-1].error_message


@pytest.mark.parametrize("error", [asyncio.CancelledError, GeneratorExit, Fatal])
def test_a_strategy_that_raises_a_base_exception_fails_a_direct_main_call(srv, home, error):
    """``await download.main(bundle)``, as aiodownload's callers did, with no worker around it
    to catch what the engine lets through: the bundle fails, the call returns."""
    download = AioDownload(download_strategy=RaisesOnPoison(error, "get_file_path", home=home))
    bundle = asyncio.run(download.main(Bundle(f"{srv.base_urls[0]}/bytes/10?name=poison")))
    assert (bundle.state, bundle.error_kind) == ("failed", ErrorKind.STRATEGY)
    assert error.__name__ in bundle.error_message


@pytest.mark.parametrize("wait", [math.inf, math.nan])
def test_an_endless_sleep_from_a_strategy_fails_its_bundle_instead_of_hanging(srv, home, wait):
    class Forever(RequestStrategy):
        def get_sleep_time(self, bundle):
            return wait if bundle.attempts else 0.0

    (b,) = shardload.swarm(
        [srv.base_urls[0] + "/status/503"], download=make_download(home, Forever(max_attempts=3))
    )
    assert b.error_kind == ErrorKind.STRATEGY and "not a finite number" in b.error_message


def test_the_failure_message_says_why_retrying_stopped(srv, home):
    (b,) = shardload.swarm(
        [srv.base_urls[0] + "/status/502"], download=make_download(home, BackOff(3))
    )
    assert b.error_message == "HTTP 502; attempts exhausted (3 of 3)"


class NamedBundle(Bundle):
    """An aiodownload-style bundle subclass carrying what the strategy names files by."""

    def __init__(self, url: str, name: str) -> None:
        super().__init__(url)
        self.name = name


class ByName(DownloadStrategy):
    def get_file_path(self, bundle: Bundle) -> str:
        assert isinstance(bundle, NamedBundle)
        return os.path.join(self.home, f"{bundle.name}.{bundle.tag}")  # type: ignore[attr-defined]


@pytest.mark.parametrize("processes", [1, 2])
def test_a_strategy_sees_the_callers_bundle_class_and_attributes(srv, home, processes):
    bundles = [NamedBundle(f"{srv.base_urls[i % 3]}/links/{i}", f"page{i}") for i in range(4)]
    for b in bundles:
        b.tag = "html"  # an attribute set on the object, not in any __init__
    download = shardload.AioDownload(download_strategy=ByName(home=home))
    done = shardload.swarm(bundles, download=download, processes=processes)
    assert done == bundles and all(b.ok for b in done), [b.error_message for b in done]
    assert sorted(n for n in os.listdir(home) if not n.startswith(".")) == [
        f"page{i}.html" for i in range(4)
    ]


class Tagging(DownloadStrategy):
    """Notes on the bundle what the response said, as aiodownload users did in on_success."""

    async def on_success(self, response: Any, bundle: Bundle) -> None:
        await super().on_success(response, bundle)
        bundle.content_type = response.headers.get("Content-Type")  # type: ignore[attr-defined]
        bundle.response = response  # type: ignore[attr-defined]  (cannot cross a process)

    async def on_fail(self, bundle: Bundle) -> None:
        bundle.noted = bundle.status  # type: ignore[attr-defined]
        bundle.error = NeedsTwo(1, 2)  # type: ignore[attr-defined]  (pickles, does not load)


class NeedsTwo(Exception):
    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}-{b}")


@pytest.mark.parametrize("processes", [1, 2])
def test_attributes_a_strategy_sets_on_the_bundle_reach_the_caller(srv, home, processes):
    """What on_success/on_fail note on the bundle comes back on the caller's own object; an
    attribute that cannot cross a process stays behind in every mode, and the caller's own
    attributes stay its own objects."""
    mine = {"k": 1}
    ok, bad = Bundle(f"{srv.base_urls[0]}/links/1"), Bundle(f"{srv.base_urls[1]}/status/404")
    ok.mine = mine  # type: ignore[attr-defined]
    download = shardload.AioDownload(download_strategy=Tagging(home=home))
    done = shardload.swarm([ok, bad], download=download, processes=processes)
    assert done == [ok, bad] and ok.ok and bad.state == "failed"
    assert ok.content_type.startswith("text/html")  # type: ignore[attr-defined]
    assert not hasattr(ok, "response")
    assert ok.mine is mine  # type: ignore[attr-defined]
    assert bad.noted == 404 and not hasattr(bad, "error")  # type: ignore[attr-defined]
    assert shardload.one(f"{srv.base_urls[2]}/links/2", download=download).content_type


def test_a_plain_bundle_crosses_to_a_worker_as_plain_fields_only():
    """The common case pays for nothing: no class, no attribute dict, no pickling check."""
    from shardload.bundle import extra_of
    from shardload.intake import RunMark, prepare_item

    run = RunMark()
    assert extra_of(prepare_item(0, "http://h/x", None, run)) is None
    assert extra_of(prepare_item(1, Bundle("http://h/y", info={"k": 1}), None, run)) is None
    tagged = Bundle("http://h/z")
    tagged.tag = "t"  # type: ignore[attr-defined]
    assert extra_of(prepare_item(2, tagged, None, run)) == (Bundle, {"tag": "t"})


class ByInfoName(DownloadStrategy):
    def get_file_path(self, bundle: Bundle) -> str:
        return os.path.join(self.home, bundle.info["name"])


@pytest.mark.parametrize("processes", [1, 2])
def test_one_url_named_twice_by_get_file_path_gives_both_files(srv, home, processes):
    url = f"{srv.base_urls[0]}/bytes/100"
    items = [{"url": url, "name": "first.bin"}, {"url": url, "name": "second.bin"}]
    items += [{"url": f"{srv.base_urls[1]}/links/1", "name": "other.html"}]
    download = shardload.AioDownload(download_strategy=ByInfoName(home=home))
    done = list(
        shardload.each(items, url_map=lambda i: i["url"], download=download, processes=processes)
    )
    by_name = {b.info["name"]: b for b in done}
    assert all(b.state == "written" for b in done), [b.error_message for b in done]
    for name in ("first.bin", "second.bin"):
        assert by_name[name].file_path == os.path.join(home, name)
        with open(os.path.join(home, name), "rb") as f:
            assert len(f.read()) == 100


class OldStyleRequests(RequestStrategy):
    """aiodownload-era code: sets what it knew, never calls RequestStrategy.__init__."""

    def __init__(self) -> None:
        self.concurrent = 3
        self.max_attempts = 2
        self.timeout = 10


class OldStyleDownloads(DownloadStrategy):
    def __init__(self, home: str) -> None:
        self.chunk_size = 1024
        self.home = home
        self.skip_cached = False


@pytest.mark.parametrize("processes", [1, 2])
def test_strategy_subclasses_that_skip_init_still_work(srv, home, processes):
    download = shardload.AioDownload(
        download_strategy=OldStyleDownloads(home), request_strategy=OldStyleRequests()
    )
    urls = [f"{srv.base_urls[i]}/links/{i}" for i in range(3)]
    done = shardload.swarm(urls, download=download, processes=processes)
    assert all(b.state == "written" for b in done), [b.error_message for b in done]


@pytest.mark.parametrize("cls", [RequestStrategy, DownloadStrategy])
def test_class_level_defaults_are_the_init_defaults(cls):
    import inspect

    for name, parameter in inspect.signature(cls.__init__).parameters.items():
        if name in ("self", "home") or parameter.default is inspect.Parameter.empty:
            continue
        expected = {} if name == "headers" else parameter.default
        if name == "user_agent":
            expected = cls().user_agent
        assert getattr(cls, name) == expected, name


class LoggingDownload(shardload.AioDownload):
    """A subclass with an override and an attribute of its own, as aiodownload users wrote."""

    def __init__(self, log_path: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.log_path = log_path

    async def main(self, bundle: Bundle) -> Bundle:
        done = await super().main(bundle)
        with open(self.log_path, "a") as log:
            log.write(f"{done.url} {done.state}\n")
        return done


@pytest.mark.parametrize("processes", [1, 2])
def test_an_aiodownload_subclass_runs_its_overrides_in_workers(srv, home, tmp_path, processes):
    log = tmp_path / "log.txt"
    download = LoggingDownload(str(log), download_strategy=DownloadStrategy(home=home))
    urls = [f"{srv.base_urls[i]}/links/{i}" for i in range(4)]
    done = shardload.swarm(urls, download=download, processes=processes)
    assert all(b.ok for b in done)
    assert sorted(log.read_text().splitlines()) == sorted(f"{u} written" for u in urls)


class CountingAttempts(shardload.AioDownload):
    """aiodownload's main() ran request_and_download once per attempt: an override sees each."""

    def __init__(self, log_path: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.log_path = log_path

    async def request_and_download(self, bundle: Bundle) -> Bundle:
        with open(self.log_path, "a") as log:
            log.write(f"{bundle.url}\n")
        return await super().request_and_download(bundle)


@pytest.mark.parametrize("processes", [1, 2])
def test_a_request_and_download_override_runs_for_every_attempt(srv, home, tmp_path, processes):
    log = tmp_path / "log.txt"
    download = CountingAttempts(
        str(log), download_strategy=DownloadStrategy(home=home), request_strategy=QuickLenient(3)
    )
    flaky, fine = f"{srv.base_urls[0]}/flaky/rad/2/500", f"{srv.base_urls[1]}/links/1"
    done = shardload.swarm([flaky, fine], download=download, processes=processes)
    assert [b.state for b in done] == ["written", "written"]
    assert [b.attempts for b in done] == [3, 1]
    assert sorted(log.read_text().splitlines()) == sorted([flaky] * 3 + [fine])


class AiodownloadStyle(shardload.AioDownload):
    """aiodownload 0.2.5's own request_and_download, as its users copied it into subclasses:
    ``self.client.get``, and ``bundle._status_msg`` to say how it went."""

    async def request_and_download(self, bundle: Bundle) -> Bundle:
        bundle.num_tries += 1  # aiodownload 0.1's counter, still in copied overrides
        async with self.client.get(bundle.url, headers={"X-Token": "t"}) as response:
            try:
                self._request_strategy.assert_response(response)
                await self._download_strategy.on_success(response, bundle)
                bundle._status_msg = "File written"
            except AssertionError:
                bundle._status_msg = "Download failed"
        return bundle


@pytest.mark.parametrize("processes", [1, 2])
def test_an_aiodownload_style_request_and_download_override_works(srv, home, processes):
    """aiodownload always had a session in self.client, and its overrides said success in
    _status_msg: the file was written but the bundle failed ("did not write the file"), or
    without client= the override could not run at all (self.client was None)."""
    download = AiodownloadStyle(download_strategy=DownloadStrategy(home=home))
    urls = [f"{srv.base_urls[0]}/echo?n={i}" for i in range(3)] + [srv.base_urls[1] + "/status/404"]
    bundles = shardload.swarm(urls, download=download, processes=processes)
    assert [b.state for b in bundles] == ["written"] * 3 + ["failed"], [
        b.error_message for b in bundles
    ]
    # Its own request's status, which it never set on the bundle (None, and a 404 told
    # from a 500 by nothing but the message "said: Download failed").
    assert [b.status for b in bundles] == [200] * 3 + [404]
    assert bundles[3].error_message.startswith("HTTP 404: ")
    for b in bundles[:3]:
        assert b.bytes == os.path.getsize(b.file_path) > 0
        with open(b.file_path, "rb") as f:
            assert json.loads(f.read())["headers"]["X-Token"] == "t"
    assert download.client is None  # outside a run: the caller gave none


def test_a_request_and_download_copied_from_aiodownload_leaves_no_cut_body(srv, home):
    """Its on_success call goes past the engine's; what a failed attempt wrote is still
    removed, and a written file's size and hash are measured."""
    download = AiodownloadStyle(download_strategy=WritesItself(home=home, skip_cached=True))
    ok, cut = shardload.swarm(
        [f"{srv.base_urls[0]}/bytes/700", f"{srv.base_urls[0]}/truncate/800"], download=download
    )
    assert (ok.state, ok.bytes) == ("written", 700)
    assert ok.sha256 == hashlib.sha256(body_for(700)).hexdigest()
    assert cut.state == "failed" and not os.path.exists(cut.file_path), cut.error_message


class SaysWrittenAfterTheBase(shardload.AioDownload):
    """An override that says success after the base method, only when it returns."""

    async def request_and_download(self, bundle: Bundle) -> Bundle:
        await super().request_and_download(bundle)
        if bundle.state == "written":
            bundle._status_msg = "File written"
        return bundle


@pytest.mark.parametrize("processes", [1, 2])
def test_a_status_word_from_an_earlier_run_never_makes_a_failure_written(srv, home, processes):
    """_status_msg came back with the bundle and went out with its next job: with the
    server gone, the rerun counted as written, with no file."""
    download = SaysWrittenAfterTheBase(download_strategy=DownloadStrategy(home=home))
    bundle = Bundle(srv.base_urls[0] + "/links/1")
    (bundle,) = shardload.swarm([bundle], download=download, processes=processes)
    assert bundle.ok
    os.remove(bundle.file_path)
    bundle.url = srv.base_urls[0] + "/status/404"
    (bundle,) = shardload.swarm([bundle], download=download, processes=processes)
    assert bundle.state == "failed", bundle


class CountsOnFail(DownloadStrategy):
    async def on_fail(self, bundle: Bundle) -> None:
        bundle.on_fail_calls = getattr(bundle, "on_fail_calls", 0) + 1


class GivesUpAsAiodownloadDid(shardload.AioDownload):
    """aiodownload 0.2.5's request_and_download failure branch: it called on_fail itself and
    said "Download failed" (or "Download attempted" when its strategy would retry)."""

    async def request_and_download(self, bundle: Bundle) -> Bundle:
        bundle.attempts += 1
        async with self.client.get(bundle.url) as response:
            try:
                self._request_strategy.assert_response(response)
                await self._download_strategy.on_success(response, bundle)
                bundle._status_msg = "File written"
            except AssertionError:
                if self._request_strategy.retry(response):
                    if bundle.attempts >= self._request_strategy.max_attempts:
                        await self._download_strategy.on_fail(bundle)
                        bundle._status_msg = "Download failed"
                    else:
                        bundle._status_msg = "Download attempted"
                else:
                    await self._download_strategy.on_fail(bundle)
                    bundle._status_msg = "Download failed"
        return bundle


@pytest.mark.parametrize("processes", [1, 2])
def test_an_aiodownload_override_that_gave_up_gets_no_second_on_fail_nor_retry(
    srv, home, processes
):
    download = GivesUpAsAiodownloadDid(
        download_strategy=CountsOnFail(home=home), request_strategy=RequestStrategy(max_attempts=3)
    )
    urls = [srv.base_urls[0] + "/status/404", srv.base_urls[1] + "/status/503"]
    missing, unavailable = shardload.swarm(urls, download=download, processes=processes)
    assert missing.state == "failed" and missing.attempts == 1 and missing.on_fail_calls == 1
    # "Download attempted" twice, then it gave up at the third: shardload retried as asked.
    assert unavailable.state == "failed" and unavailable.attempts == 3
    assert unavailable.on_fail_calls == 1
    # Its own decision, not a retry() that said no (the message said so).
    assert unavailable.error_message == "HTTP 503: request_and_download() said: Download failed"


@pytest.mark.parametrize("processes", [1, 2])
def test_an_aiodownload_override_retried_to_success_reports_the_last_status(srv, home, processes):
    """The first attempt's 503 stayed on the bundle, written with status 503."""
    download = GivesUpAsAiodownloadDid(
        download_strategy=CountsOnFail(home=home), request_strategy=RequestStrategy(max_attempts=3)
    )
    path = f"/flaky/last-status-{processes}/1/503"
    (b,) = shardload.swarm([srv.base_urls[0] + path], download=download, processes=processes)
    assert (b.state, b.status, b.attempts) == ("written", 200, 2), b.error_message


STATUS_ATTEMPT, STATUS_CACHE, STATUS_INIT = "Download attempted", "Cache hit", "Initialized"


class CopiedMain(shardload.AioDownload):
    """aiodownload 0.2.5's own main, copied into a subclass; the one edit is ``async with``
    for ``with (await ...)``, which Python 3.9 removed."""

    async def main(self, bundle: Bundle) -> Bundle:
        async with self._main_semaphore:
            bundle.file_path = self._download_strategy.get_file_path(bundle)
            file_exists = os.path.isfile(bundle.file_path)
            if not (file_exists and self._download_strategy.skip_cached):
                while bundle._status_msg in (STATUS_ATTEMPT, STATUS_INIT):
                    sleep_time = self._request_strategy.get_sleep_time(bundle)
                    await asyncio.sleep(sleep_time)
                    bundle = await self.request_and_download(bundle)
            else:
                bundle._status_msg = STATUS_CACHE
        return bundle


@pytest.mark.parametrize("processes", [1, 2])
def test_a_main_copied_from_aiodownload_works(srv, home, processes):
    """It reads ``self._main_semaphore`` and a fresh bundle's ``_status_msg``, which only
    aiodownload's own code had set (AttributeError here before)."""
    download = CopiedMain(download_strategy=DownloadStrategy(home=home, skip_cached=True))
    urls = [f"{srv.base_urls[0]}/links/{i}" for i in range(3)] + [srv.base_urls[1] + "/status/404"]
    bundles = shardload.swarm(urls, download=download, processes=processes)
    assert [b.state for b in bundles] == ["written"] * 3 + ["failed"]
    assert [b._status_msg for b in bundles] == ["File written"] * 3 + ["Download failed"]
    assert all(os.path.isfile(b.file_path) for b in bundles[:3])
    again = shardload.swarm(urls[:1], download=download, processes=processes)
    assert again[0]._status_msg == STATUS_CACHE, again[0].state
    assert again[0].state == "cached", again[0].error_message


class VerbatimMain(shardload.AioDownload):
    """aiodownload 0.2.5's main with no edit: ``with (await ...)``, which Python 3.9 took
    from asyncio's semaphores (a TypeError for every bundle here before)."""

    async def main(self, bundle: Bundle) -> Bundle:
        with await self._main_semaphore:  # type: ignore[attr-defined]
            bundle.file_path = self._download_strategy.get_file_path(bundle)
            if not (os.path.isfile(bundle.file_path) and self._download_strategy.skip_cached):
                while bundle._status_msg in (STATUS_ATTEMPT, STATUS_INIT):
                    await asyncio.sleep(self._request_strategy.get_sleep_time(bundle))
                    bundle = await self.request_and_download(bundle)
            else:
                bundle._status_msg = STATUS_CACHE
        return bundle


@pytest.mark.parametrize("processes", [1, 2])
@pytest.mark.parametrize("engine", [CopiedMain, VerbatimMain])
def test_a_main_copied_from_aiodownload_retries_as_its_strategy_says(srv, home, processes, engine):
    """The base request_and_download failed the bundle at its first failed attempt, so the
    copied loop ("while it says Download attempted") never retried; on_fail was not called."""
    download = engine(download_strategy=CountsOnFail(home=home), request_strategy=QuickLenient(3))
    key = f"{engine.__name__}{processes}"
    urls = [
        f"{srv.base_urls[0]}/flaky/{key}/2/503",  # two failures, then written
        f"{srv.base_urls[1]}/status/503",  # retried until attempts run out
        f"{srv.base_urls[2]}/status/404",  # Lenient never retries a 404
    ]
    flaky, unavailable, missing = shardload.swarm(urls, download=download, processes=processes)
    assert (flaky.state, flaky.attempts, flaky.error_kind) == ("written", 3, None)
    assert flaky._status_msg == "File written" and not hasattr(flaky, "on_fail_calls")
    assert (unavailable.state, unavailable.attempts, unavailable.status) == ("failed", 3, 503)
    assert "attempts exhausted (3 of 3)" in unavailable.error_message
    assert (missing.state, missing.attempts) == ("failed", 1)
    assert missing._status_msg == "Download failed"
    assert unavailable.on_fail_calls == missing.on_fail_calls == 1
    assert requests_for(srv, "/status/503") == 3 and requests_for(srv, "/status/404") == 1


def test_the_base_request_and_download_says_download_attempted_for_a_failure_to_retry(srv, home):
    """Awaited directly, one attempt at a time, as aiodownload's users drove it."""
    download = shardload.AioDownload(
        download_strategy=CountsOnFail(home=home), request_strategy=QuickLenient(2)
    )

    async def drive() -> list[tuple[str, str, str | None]]:
        bundle = Bundle(srv.base_urls[0] + "/status/500")
        seen = []
        for _ in range(2):
            await download.request_and_download(bundle)
            seen.append((bundle.state, bundle._status_msg, bundle.error_kind))
        await download.close()
        return seen

    assert asyncio.run(drive()) == [
        ("pending", "Download attempted", "http"),
        ("failed", "Download failed", "http"),
    ]


def test_aiodownloads_loop_drives_the_engine_as_its_each_did(srv, home):
    """aiodownload's each ran ``download.loop.run_until_complete(asyncio.wait(tasks))``;
    ``loop`` did not exist (AttributeError). Its users also gathered outside the loop
    (``asyncio.gather`` takes the thread's current loop), which failed while ``loop`` was a
    loop of the engine's own ("The future belongs to a different loop")."""
    script = f"""
import asyncio
from shardload import AioDownload, AioDownloadBundle, DownloadStrategy, swarm
download = AioDownload(download_strategy=DownloadStrategy(home={home!r}))
urls = ["{srv.base_urls[0]}/links/1", "{srv.base_urls[1]}/links/2"]
tasks = [download.loop.create_task(download.main(AioDownloadBundle(u))) for u in urls]
done, _ = download.loop.run_until_complete(asyncio.wait(tasks))
print("STATES", *sorted(t.result().state for t in done))
gathered = asyncio.gather(*[download.main(AioDownloadBundle(u + "?g")) for u in urls])
print("GATHERED", *[b.state for b in download.loop.run_until_complete(gathered)])
print("CURRENT", download.loop is asyncio.get_event_loop())
print("AGAIN", *[b.state for b in swarm(urls, download=download)])
async def inside():
    return download.loop is asyncio.get_running_loop()
print("RUNNING", asyncio.run(inside()))
# asyncio.run() leaves the thread with no current loop; loop sets its own again.
again = download.loop.run_until_complete(asyncio.gather(download.main(AioDownloadBundle(urls[0]))))
print("AFTER_RUN", *[b.state for b in again])
"""
    out = subprocess.run(
        [sys.executable, "-X", "dev", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "STATES written written" in out.stdout, out.stderr[-2000:]
    assert "AGAIN written written" in out.stdout and "RUNNING True" in out.stdout, out.stderr
    assert "GATHERED written written" in out.stdout and "CURRENT True" in out.stdout, out.stderr
    assert "AFTER_RUN written" in out.stdout, out.stderr
    assert "Unclosed" not in out.stderr and "ResourceWarning" not in out.stderr, out.stderr


def test_aiodownloads_loop_is_the_callers_sessions(srv, home):
    """aiodownload's ``loop`` was its ``client=`` session's (``client._loop``): the caller drove
    the engine there. Here it was the thread's current loop, where the session cannot work."""
    import aiohttp

    async def make() -> aiohttp.ClientSession:
        return aiohttp.ClientSession()

    loop = asyncio.new_event_loop()
    try:
        session = loop.run_until_complete(make())
        download = AioDownload(client=session, download_strategy=DownloadStrategy(home=home))
        assert download.loop is loop
        bundle = Bundle(f"{srv.base_urls[0]}/links/3")
        assert download.loop.run_until_complete(download.main(bundle)).state == "written"
        loop.run_until_complete(session.close())
    finally:
        loop.close()


def test_every_bundle_has_aiodownload_status_word(srv, home):
    """aiodownload kept ``_status_msg`` on every bundle and its users read it; an override's
    own word wins while it stands."""
    fresh = Bundle(srv.base_urls[0] + "/links/1")
    assert fresh._status_msg == "Initialized"
    download = shardload.AioDownload(
        download_strategy=DownloadStrategy(home=home, skip_cached=True)
    )
    ok, missing = shardload.swarm([fresh, srv.base_urls[0] + "/status/404"], download=download)
    assert (ok._status_msg, missing._status_msg) == ("File written", "Download failed")
    (cached,) = shardload.swarm([srv.base_urls[0] + "/links/1"], download=download)
    assert cached.state == "cached" and cached._status_msg == "Cache hit"
    fresh._status_msg = "Download attempted"
    assert fresh._status_msg == "Download attempted"
    # status_msg is aiodownload's line as it was: the reason is in error_kind/error_message.
    assert missing.status_msg == (
        f"[URL: {missing.url}, File Path: {missing.file_path}, Attempts: 1, "
        "Status: Download failed]"
    )
    assert fresh.status_msg.endswith("Status: Download attempted]")  # an override's word
    assert cached.status_msg.endswith("Attempts: 0, Status: Cache hit]")


def test_a_semaphore_a_subclass_sets_is_the_one_its_main_uses(srv, home):
    class OwnSemaphore(CopiedMain):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._main_semaphore = asyncio.BoundedSemaphore(1)

    download = OwnSemaphore(download_strategy=DownloadStrategy(home=home))
    assert download._main_semaphore._value == 1  # type: ignore[attr-defined]
    (b,) = shardload.swarm([srv.base_urls[0] + "/links/1"], download=download)
    assert b.state == "written"


def test_aiodownload_submodule_paths_work_after_a_bare_import():
    """``aiodownload.strategy.Lenient`` worked after ``import aiodownload``, which imported
    its submodules; shardload loads its own on first use."""
    code = "import shardload as a; print(a.strategy.Lenient.__name__, a.api.swarm.__name__)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.stdout.split() == ["Lenient", "swarm"], out.stderr


class DoesNothing(shardload.AioDownload):
    async def main(self, bundle: Bundle) -> Bundle:
        return bundle


class GivesUp(shardload.AioDownload):
    async def main(self, bundle: Bundle) -> Bundle:
        bundle._status_msg = "Download failed"
        return bundle


@pytest.mark.parametrize("processes", [1, 2])
def test_a_main_override_that_leaves_a_bundle_pending_fails_it(srv, home, processes):
    """Every bundle leaves a run with a final state: one a ``main`` override returned as it
    came was handed back pending."""
    url = srv.base_urls[0] + "/links/1"
    (b,) = shardload.swarm([url], download=DoesNothing(), processes=processes)
    assert (b.state, b.error_kind) == ("failed", "strategy")
    assert "returned the bundle unfinished" in (b.error_message or "")
    (b,) = shardload.swarm([url], download=GivesUp(), processes=processes)
    assert (b.state, b.error_kind, b.error_message) == (
        "failed",
        "http",
        "main() said: Download failed",
    )


class CopiedBoth(CopiedMain, AiodownloadStyle):
    """aiodownload's main and request_and_download, both copied: the second calls
    ``self.client.get``, so the engine must be bound to the worker's loop before a main
    it never runs itself."""


@pytest.mark.parametrize("processes", [1, 2])
def test_main_and_request_and_download_both_copied_from_aiodownload(
    srv, home, processes, closed_port
):
    """Also what the pair's own requests were answered: the status (aiodownload's code sets
    none; it stayed None), and a refused connection it lets out fails as ``connect``, a
    transient failure (it failed as ``strategy``)."""
    download = CopiedBoth(download_strategy=DownloadStrategy(home=home))
    urls = [f"{srv.base_urls[0]}/echo?n={i}" for i in range(2)] + [srv.base_urls[1] + "/status/404"]
    urls.append(f"http://127.0.0.1:{closed_port}/x")
    bundles = shardload.swarm(urls, download=download, processes=processes)
    assert [(b.state, b.status, b.error_kind) for b in bundles] == [
        ("written", 200, None),
        ("written", 200, None),
        ("failed", 404, "http"),
        ("failed", None, "connect"),
    ], [b.error_message for b in bundles]
    assert bundles[2].error_message == "HTTP 404: main() said: Download failed"
    assert "ClientConnectorError" in (bundles[3].error_message or "")


def test_self_client_is_a_session_when_copied_overrides_are_awaited_directly(srv, home):
    """aiodownload built its session with the engine, and its users awaited their own
    ``main``/``request_and_download`` under a loop of their own; here ``self.client`` was
    None outside swarm/each (AttributeError on ``.get``), also right after an ``aswarm`` in
    the same loop."""
    download = CopiedBoth(download_strategy=DownloadStrategy(home=home))

    async def drive() -> list[Bundle]:
        first = await download.main(Bundle(srv.base_urls[0] + "/echo?n=1"))
        await shardload.aswarm([srv.base_urls[0] + "/links/1"], download=download)
        alone = Bundle(srv.base_urls[1] + "/echo?n=2")
        alone.file_path = download._download_strategy.get_file_path(alone)
        second = await download.request_and_download(alone)
        return [first, second]

    bundles = asyncio.run(drive())
    assert [b._status_msg for b in bundles] == ["File written", "File written"]
    assert all(os.path.getsize(b.file_path) > 0 for b in bundles)
    assert download.client is None  # no loop runs: nothing to make a session in


def test_a_network_error_out_of_a_copied_override_is_a_retried_failure_of_its_kind(
    home, closed_port
):
    """aiodownload's request_and_download lets aiohttp's errors out; they failed the bundle
    as a strategy bug, and were never retried."""
    download = AiodownloadStyle(
        download_strategy=DownloadStrategy(home=home),
        request_strategy=RequestStrategy(max_attempts=2),
    )
    (b,) = shardload.swarm([f"http://127.0.0.1:{closed_port}/x"], download=download)
    assert (b.state, b.error_kind, b.attempts) == ("failed", "connect", 2), b.error_message
    assert "ClientConnectorError" in (b.error_message or "")


def test_reading_client_in_another_loop_leaves_a_running_download_alone(srv, home):
    """A copied main holds no count on the engine: reading ``.client`` from a second loop
    rebound it and closed the first loop's session under its request."""
    download = CopiedBoth(download_strategy=DownloadStrategy(home=home))
    done: list[Bundle] = []
    first = threading.Thread(
        target=lambda: done.append(
            asyncio.run(download.main(Bundle(srv.base_urls[0] + "/slow/800/in-flight")))
        )
    )
    first.start()
    time.sleep(0.3)  # its request is in flight

    async def look() -> object:
        return download.client

    assert asyncio.run(look()) is None  # held by the other loop
    first.join(timeout=30)
    assert done and done[0]._status_msg == "File written", done and done[0].error_message


class RaisesItsOwnBug(AiodownloadStyle):
    async def request_and_download(self, bundle: Bundle) -> Bundle:
        raise FileNotFoundError(2, "a bug of the override's", "/nowhere")


def test_an_override_s_own_error_stays_a_strategy_failure(srv, home):
    """Only network errors take their kind; an OSError of the override's own was taken for
    a transient disk failure."""
    download = RaisesItsOwnBug(
        download_strategy=DownloadStrategy(home=home),
        request_strategy=RequestStrategy(max_attempts=3),
    )
    (b,) = shardload.swarm([srv.base_urls[0] + "/links/1"], download=download)
    assert (b.state, b.error_kind, b.attempts) == ("failed", "strategy", 1), b.error_message
    assert b.error_message.startswith("FileNotFoundError")
