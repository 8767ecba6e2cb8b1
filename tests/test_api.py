"""one / swarm / each / async API against a real local server (issue 2, item 5)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import gc
import hashlib
import itertools
import json
import os
import sys
import threading
import time
import typing
from collections.abc import AsyncIterator

import pytest

import shardload
from shardload import (
    AioDownloadBundle,
    Bundle,
    ConfigurationError,
    DownloadStrategy,
    ErrorKind,
    RequestStrategy,
)
from shardload import plan as plan_module
from shardload.coordinator import Limits
from shardload.plan import make_plan
from shardload.testing.server import body_for

from .conftest import files_under, make_download, temp_files


def read_file(path: str | None) -> bytes:
    assert path is not None
    with open(path, "rb") as f:
        return f.read()


def test_basic_usage_files_at_host_links_i(srv, home):
    """The seed example: 5 URLs -> <home>/<host>/links/<i>, contents as served."""
    base = srv.base_urls[0]
    urls = [f"{base}/links/{i}" for i in range(5)]
    bundles = shardload.swarm(urls, download=make_download(home))
    host_dir = base.removeprefix("http://").replace(":", "_")
    assert [b.url for b in bundles] == urls
    for i, bundle in enumerate(bundles):
        assert bundle.state == "written" and bundle.ok
        assert bundle.status == 200 and bundle.attempts == 1
        assert bundle.file_path == os.path.join(home, host_dir, "links", str(i))
        with open(bundle.file_path, "rb") as f:
            data = f.read()
        assert data.count(b"<a href") == i
        assert bundle.bytes == len(data)
        assert "File written" in bundle.status_msg


def test_default_home_is_working_directory(srv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bundle = shardload.one(srv.base_urls[0] + "/links/1")
    assert bundle.file_path is not None
    assert bundle.file_path.startswith(str(tmp_path) + os.sep)
    assert os.path.isfile(bundle.file_path)


def test_swarm_empty_returns_empty_list():
    assert shardload.swarm([]) == []
    assert list(shardload.each([])) == []


@pytest.mark.parametrize("processes", [1, 2])
def test_swarm_keeps_input_order_when_completion_order_differs(srv, home, processes):
    urls = [f"{srv.base_urls[i % 4]}/slow/{(9 - i) * 30}/n{i}" for i in range(10)]
    bundles = shardload.swarm(urls, download=make_download(home), processes=processes)
    assert [b.url for b in bundles] == urls
    assert all(b.state == "written" for b in bundles)
    assert [read_file(b.file_path) for b in bundles] == [f"slow n{i}".encode() for i in range(10)]


def test_each_yields_as_they_finish(srv, home):
    slow = f"{srv.base_urls[0]}/slow/1500/late"
    fast = [f"{srv.base_urls[1]}/links/{i}" for i in range(5)]
    order = [b.url for b in shardload.each([slow, *fast], download=make_download(home))]
    assert order[-1] == slow
    assert set(order[:-1]) == set(fast)


@pytest.mark.parametrize("processes", [1, 2])
def test_each_closed_from_another_thread_just_ends_the_consumers_loop(srv, home, processes):
    """A watchdog thread closes a run while its consumer waits in next(): the loop ends (no
    asyncio.CancelledError, a BaseException, reaches the consumer) and nothing is left."""
    urls = [f"{srv.base_urls[i % 2]}/slow/5000/watched-{i}" for i in range(4)]
    run = shardload.each(urls, download=make_download(home), processes=processes)
    watchdog = threading.Timer(0.5, run.close)
    watchdog.start()
    try:
        got = list(run)
    finally:
        watchdog.join()
    assert got == []
    assert files_under(home) == set() and temp_files(home) == []


def test_each_closed_from_another_thread_before_its_first_bundle_is_asked_for(srv, home):
    """close() from another thread before (or while) the consumer's first next() starts the
    run: close() does not raise, and the consumer's loop just ends."""
    for _ in range(5):
        run = shardload.each([f"{srv.base_urls[0]}/links/3"], download=make_download(home))
        run.close()
        assert list(run) == []
    run = shardload.each([f"{srv.base_urls[0]}/slow/2000/early"], download=make_download(home))
    run._bridge = shardload.run._Bridge(run._plan, max_undelivered=4096)  # made, not started
    run.close()  # raised "cannot join thread before it is started"
    assert temp_files(home) == []


def _hold_the_gil(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_a_consumer_waiting_for_a_batch_is_never_stranded_by_a_close_draining_it():
    """close() from another thread drains the bridge's queue while the consumer waits in a
    timed get: on CPython 3.11's SimpleQueue that get blocked for ever when the item it was
    woken for was taken, and its deadline passed, before it ran again (each() hung about
    once in 150 such closes). Holding the GIL makes the interleaving likely (4 in 10)."""
    stranded = 0
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1.0)
    try:
        for _ in range(20):
            bridge = shardload.run._Bridge(None, max_undelivered=1)  # type: ignore[arg-type]
            ready, done = threading.Event(), threading.Event()

            def consumer(bridge: typing.Any = bridge, ready=ready, done=done) -> None:
                ready.set()
                with contextlib.suppress(StopIteration):
                    bridge.take(timeout=0.02)
                done.set()

            threading.Thread(target=consumer, daemon=True).start()
            ready.wait(5)
            time.sleep(0.015)
            bridge.out.put([])
            _hold_the_gil(0.002)  # the consumer is woken, and waits for the GIL
            bridge.unread()  # what close() does, from its own thread
            _hold_the_gil(0.01)  # past the consumer's deadline
            stranded += not done.wait(1)
    finally:
        sys.setswitchinterval(switch)
    assert stranded == 0


def test_a_close_while_the_first_next_starts_the_run_stops_it(srv, home, monkeypatch):
    """The close() landed between next()'s check and the bridge it made: the run went on
    and the consumer got every bundle of a closed run."""
    made = threading.Event()
    real_init = shardload.run._Bridge.__init__

    def slow_init(self: typing.Any, *args: typing.Any, **kwargs: typing.Any) -> None:
        made.set()
        time.sleep(0.3)  # the consumer's thread descheduled right here
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(shardload.run._Bridge, "__init__", slow_init)
    urls = [f"{srv.base_urls[0]}/slow/3000/first-next-{i}" for i in range(4)]
    run = shardload.each(urls, download=make_download(home))
    closer = threading.Thread(target=lambda: (made.wait(10), run.close()))
    closer.start()
    try:
        got = list(run)
    finally:
        closer.join()
    assert got == [] and run._bridge is None
    assert files_under(home) == set() and temp_files(home) == []


class _CollectsGarbage(shardload.DownloadStrategy):
    async def on_success(self, response: typing.Any, bundle: shardload.Bundle) -> None:
        await super().on_success(response, bundle)
        if "late" in bundle.url:
            gc.collect()


def test_an_abandoned_run_collected_on_its_own_loop_thread_stops_quietly(srv, home):
    """With processes=1 a strategy runs on the run's loop thread; a collection there of
    the abandoned run tried to join that thread ("cannot join current thread")."""
    base = srv.base_urls[0]
    urls = [f"{base}/bytes/5?name=gc-first"] + [
        f"{base}/slow/{300 + 50 * i}/late{i}" for i in range(4)
    ]
    seen: list[str] = []
    hook = sys.unraisablehook
    sys.unraisablehook = lambda raised: seen.append(repr(raised.exc_value))
    try:
        run = shardload.each(
            urls, download=shardload.AioDownload(download_strategy=_CollectsGarbage(home=home))
        )
        next(run)
        run.cycle = run  # type: ignore[attr-defined]  # only a collection frees it
        del run
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(
            t.name == "shardload-loop" for t in threading.enumerate()
        ):
            time.sleep(0.05)
    finally:
        sys.unraisablehook = hook
    assert seen == []
    assert not any(t.name == "shardload-loop" for t in threading.enumerate())
    assert temp_files(home) == []


def test_each_reads_input_lazily_and_stops_on_early_close(srv, home, monkeypatch):
    # Jobs are never parked on disk here: on a busy machine the jobs in memory could look
    # slow to drain, and reading on to park them is test_coordinator_spill.py's subject.
    monkeypatch.setattr(plan_module, "Limits", functools.partial(Limits, patience=1e9))
    read = 0  # items the input has handed out

    def endless():
        nonlocal read
        for i in itertools.count():
            read += 1
            yield f"{srv.base_urls[i % 4]}/bytes/10?name={i}"

    def settled(timeout: float = 30.0) -> int:
        """``read`` once it stops growing: the run has gone as far ahead as it ever will."""
        deadline = time.monotonic() + timeout
        last = -1
        while read != last and time.monotonic() < deadline:
            last = read
            time.sleep(0.5)
        assert read == last, "the input is still being read"
        return read

    download = make_download(home)
    got = []
    for bundle in shardload.each(endless(), download=download):
        got.append(bundle)
        if len(got) == 20:
            ahead = settled()  # a consumer that stops taking bundles stops the input too
            break
    assert all(b.state == "written" for b in got)
    stats = srv.stats()
    after = sum(h["requests"] for h in stats["hosts"].values())
    assert read == ahead  # closing read nothing more
    # Bounded read-ahead: an endless input was not drained. Every item read was requested
    # (each /bytes URL once), or is one of: outstanding in the one worker (shard_cap), waiting
    # in flow control (waiting_cap), buffered by the input thread (read_ahead), and the one
    # that thread holds while its buffer is full.
    limits = make_plan([], None, download, {}, sync=True).limits
    assert read <= after + limits.shard_cap + limits.waiting_cap + limits.read_ahead + 1
    assert read < 100_000  # and those limits stay small, whatever they are set to
    # Nothing keeps running after the iterator is closed.
    time.sleep(0.3)
    later = sum(h["requests"] for h in srv.stats()["hosts"].values())
    assert later == after


def test_no_url_map_call_starts_after_each_is_closed(srv, home):
    """An item the input thread was still getting from a slow iterator when ``close()``
    came was mapped anyway, after close() had returned (the thread itself cannot be stopped
    inside the caller's ``next``)."""
    mapped: list[tuple[str, float]] = []

    def slow():
        for i in range(10):
            time.sleep(0.3)
            yield i

    def url_map(i: int) -> str:
        mapped.append((threading.current_thread().name, time.monotonic()))
        return f"{srv.base_urls[0]}/bytes/10?name={i}"

    run = shardload.each(slow(), url_map=url_map, download=make_download(home))
    next(run)
    run.close()
    closed = time.monotonic()
    time.sleep(0.8)  # the item being made at close() has come out of the iterator by now
    assert [at for _, at in mapped if at > closed] == []


def test_a_break_out_of_a_runs_with_block_stops_it(srv, home):
    """The README's pattern: a run kept in a variable, inside ``with``, and a break."""

    def requests() -> int:
        return sum(h["requests"] for h in srv.stats()["hosts"].values())

    urls = [f"{srv.base_urls[i % 2]}/bytes/10?name={i}" for i in range(20_000)]
    with shardload.each(urls, download=make_download(home)) as run:
        for bundle in run:
            if run.stats.total.bundles == 10:
                break
    after = requests()
    time.sleep(0.3)
    assert requests() == after < 20_000 and run.stats.total.bundles == 10


def test_repeats_of_a_pending_url_count_against_the_read_ahead(srv, home):
    """A URL repeated while its first request is pending: the repeats wait in memory too, so
    they must not let the input be read without bound (a placeholder image, say)."""
    read = 0

    def repeats():
        nonlocal read
        for _ in range(500_000):
            read += 1
            yield f"{srv.base_urls[0]}/slow/2500/same"

    limits = make_plan([], None, make_download(home), {}, sync=True).limits
    seen = []  # how far the input was read while the first request was still pending
    timer = threading.Timer(2.0, lambda: seen.append(read))
    run = shardload.each(repeats(), download=make_download(home))
    try:
        timer.start()
        first = next(iter(run))
    finally:
        run.close()
        timer.cancel()
    assert first.state == "written"
    assert seen and seen[0] <= limits.shard_cap + limits.waiting_cap + limits.read_ahead + 1


class Item:
    def __init__(self, number: int) -> None:
        self.number = number


@pytest.mark.parametrize("processes", [1, 2])
def test_url_map_keeps_info_identity(srv, home, processes):
    items = [Item(i) for i in range(6)]
    url_map = lambda item: f"{srv.base_urls[item.number % 4]}/links/{item.number}"  # noqa: E731
    bundles = list(
        shardload.each(items, url_map=url_map, download=make_download(home), processes=processes)
    )
    assert {id(b.info) for b in bundles} == {id(i) for i in items}
    for bundle in bundles:
        assert bundle.url.endswith(f"/links/{bundle.info.number}")
        assert bundle.state == "written"


class Page:
    """An input record whose str() is its URL (aiodownload's default url_map is str)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __str__(self) -> str:
        return self.url


def test_bytes_items_are_their_utf8_urls(srv, home):
    """Bytes, a bytearray or a memoryview of a UTF-8 URL are that URL (a memoryview's was
    "<memory at 0x...>"); only the caller's object rides along as info."""
    url = f"{srv.base_urls[0]}/bytes/10?name=caf\u00e9"
    items = [url.encode(), bytearray(url.encode()), memoryview(url.encode())]
    bundles = shardload.swarm(items, download=make_download(home))
    assert [(b.url, b.state) for b in bundles] == [(url, "written")] * 3


@pytest.mark.parametrize("processes", [1, 2])
def test_an_item_that_is_not_its_url_string_rides_along_as_info(srv, home, processes):
    pages = [Page(f"{srv.base_urls[i % 2]}/links/{i}") for i in range(4)]
    bundles = shardload.swarm(pages, download=make_download(home), processes=processes)
    assert [b.url for b in bundles] == [p.url for p in pages]
    assert all(b.info is p and b.ok for b, p in zip(bundles, pages, strict=True))


def test_a_url_with_spaces_is_downloaded_as_browsers_send_it(srv, home):
    """aiodownload (aiohttp) sent an inner space as %20; a scraped link often holds one."""
    bundle = shardload.one(f"{srv.base_urls[0]}/bytes/10?name=Annual Report", make_download(home))
    assert bundle.ok, bundle.error_message
    assert bundle.url.endswith("name=Annual Report") and bundle.bytes == 10
    assert srv.stats()["paths"]["/bytes/10?name=Annual%20Report"] == 1
    assert os.path.isfile(bundle.file_path)


def test_plain_urls_have_no_info(srv, home):
    bundle = shardload.one(srv.base_urls[0] + "/links/2", download=make_download(home))
    assert bundle.info is None


def test_one_accepts_a_bundle_and_updates_it_in_place(srv, home):
    bundle = AioDownloadBundle(srv.base_urls[0] + "/links/3", info={"k": 1})
    got = shardload.one(bundle, download=make_download(home))
    assert got is bundle
    assert bundle.state == "written" and bundle.info == {"k": 1}
    assert os.path.isfile(bundle.file_path)


@pytest.mark.parametrize("several", [list, tuple, set, iter])
def test_one_given_several_urls_is_a_usage_error(srv, home, several):
    """As swarm() given one URL is: one([url]) came back as a failed bundle whose URL was
    the list's text."""
    with pytest.raises(ConfigurationError, match=r"one\(\) takes a single URL or bundle"):
        shardload.one(several([srv.base_urls[0] + "/links/1"]), download=make_download(home))
    with pytest.raises(ConfigurationError, match=r"use swarm\(\)"):
        asyncio.run(shardload.aone([srv.base_urls[0] + "/links/1"], download=make_download(home)))
    assert files_under(home) == set()
    page = _Page(srv.base_urls[0] + "/links/2", 1)  # a NamedTuple whose str() is its URL
    assert shardload.one(page, download=make_download(home)).ok


def test_duplicate_urls_fetched_once_each_input_gets_its_bundle(srv, home):
    url = srv.base_urls[0] + "/bytes/5000?name=dup"
    bundles = shardload.swarm([url, url, url], download=make_download(home))
    assert len(bundles) == 3
    assert all(b.state == "written" for b in bundles)
    assert len({b.file_path for b in bundles}) == 1
    assert srv.stats()["paths"]["/bytes/5000?name=dup"] == 1
    with open(bundles[0].file_path, "rb") as f:
        assert f.read() == body_for(5000, "dup")


@pytest.mark.parametrize("processes", [1, 2])
def test_duplicates_far_apart_are_fetched_once(srv, home, processes):
    """More repeats than a host's share of the worker's queue: the coordinator, not the worker's
    in-flight sharing, has to notice them."""
    urls = [f"{srv.base_urls[i % 2]}/bytes/50?name=far{processes}-{i}" for i in range(40)]
    bundles = shardload.swarm(
        urls + urls + urls[:5], download=make_download(home), processes=processes
    )
    assert len(bundles) == 85 and all(b.state == "written" for b in bundles)
    assert [b.url for b in bundles] == urls + urls + urls[:5]
    counts = srv.stats()["paths"]
    assert all(counts[u.split(":", 2)[2].split("/", 1)[1].join(["/", ""])] == 1 for u in urls)
    for first, again in zip(bundles[:40], bundles[40:80], strict=True):
        assert (again.file_path, again.sha256, again.bytes) == (
            first.file_path,
            first.sha256,
            first.bytes,
        )


def test_two_urls_given_one_path_each_record_their_own_download(srv, home):
    """Explicit paths can collide; a bundle must never report another URL's bytes as its own."""
    target = os.path.join(home, "same.bin")
    first = Bundle(srv.base_urls[0] + "/bytes/100?name=a", file_path=target)
    second = Bundle(srv.base_urls[0] + "/bytes/200?name=b", file_path=target)
    shardload.swarm([first, second], download=make_download(home))
    assert srv.stats()["paths"]["/bytes/100?name=a"] == 1
    assert srv.stats()["paths"]["/bytes/200?name=b"] == 1
    assert (first.bytes, second.bytes) == (100, 200)
    assert first.sha256 == hashlib.sha256(body_for(100, "a")).hexdigest()
    assert second.sha256 == hashlib.sha256(body_for(200, "b")).hexdigest()
    with open(target, "rb") as f:
        assert f.read() in (body_for(100, "a"), body_for(200, "b"))


def test_params_are_a_query_string_on_a_get(srv, home):
    bundle = Bundle(srv.base_urls[0] + "/echo", params={"q": "x y", "n": 2})
    shardload.one(bundle, download=make_download(home))
    import json

    with open(bundle.file_path) as f:
        echoed = json.load(f)
    assert echoed["method"] == "GET"
    assert echoed["query"] == {"q": "x y", "n": "2"}


@pytest.mark.parametrize(
    ("item", "kind"),
    [
        ("ftp://example.com/x", ErrorKind.UNSUPPORTED_SCHEME),
        ("not a url", ErrorKind.INVALID_URL),
        ("example.com/page", ErrorKind.UNSUPPORTED_SCHEME),
        ("http://", ErrorKind.INVALID_URL),
        ("http://exa mple.com/", ErrorKind.INVALID_URL),
        ("http://host:99999/", ErrorKind.INVALID_URL),
        ("", ErrorKind.INVALID_URL),
        (None, ErrorKind.BAD_INPUT),
        ({"url": "http://127.0.0.1:1/x"}, ErrorKind.BAD_INPUT),  # no url_map to find it
        (("http://127.0.0.1:1/x", "info"), ErrorKind.BAD_INPUT),
        (5, ErrorKind.BAD_INPUT),
        # Bytes that are not UTF-8 (a Latin-1 list read in binary): decoded with replacement,
        # caf\xe9 and caf\xe8 were one URL, one request, one file.
        (b"http://127.0.0.1:1/caf\xe9", ErrorKind.BAD_INPUT),
        (bytearray(b"http://127.0.0.1:1/caf\xe8"), ErrorKind.BAD_INPUT),
    ],
)
def test_bad_items_become_failed_bundles(home, item, kind):
    (bundle,) = shardload.swarm([item], download=make_download(home))
    assert bundle.state == "failed"
    assert bundle.error_kind == kind
    assert bundle.error_message
    assert files_under(home) == set()


@pytest.mark.parametrize("processes", [1, 2])
def test_a_bundle_whose_file_path_is_no_path_fails_alone(srv, home, processes):
    """swarm() raised TypeError while ordering its results, and every result was lost."""
    urls = [f"{srv.base_urls[i % 2]}/links/{i}" for i in range(4)]
    items = [urls[0], Bundle(urls[1], file_path=5), Bundle(urls[2], file_path=b"x"), urls[3]]
    bundles = shardload.swarm(items, download=make_download(home), processes=processes)
    assert [b.state for b in bundles] == ["written", "failed", "failed", "written"]
    assert bundles[1] is items[1] and bundles[2] is items[2]
    assert [(b.error_kind, b.error_message) for b in bundles[1:3]] == [
        ("bad_input", "file_path is a int, not a path (a str)"),
        ("bad_input", "file_path is a bytes, not a path (a str)"),
    ]
    streamed = list(shardload.each(items, download=make_download(home), processes=processes))
    assert sorted(b.state for b in streamed) == ["failed", "failed", "written", "written"]


class _Page(typing.NamedTuple):
    url: str
    rank: int

    def __str__(self) -> str:
        return self.url


def test_a_record_class_whose_str_is_its_url_needs_no_url_map(srv, home):
    page = _Page(f"{srv.base_urls[0]}/links/1", 1)
    (bundle,) = shardload.swarm([page], download=make_download(home))
    assert bundle.state == "written" and bundle.info == page


def test_a_record_without_url_map_says_what_is_missing(home):
    (bundle,) = shardload.swarm([{"url": "http://127.0.0.1:1/x"}], download=make_download(home))
    assert bundle.error_message == "a dict is not a URL: pass url_map= to say where its URL is"
    assert bundle.info == {"url": "http://127.0.0.1:1/x"}
    (mapped,) = shardload.swarm([1], download=make_download(home), url_map=lambda i: [i])
    assert (mapped.error_kind, mapped.error_message) == (
        "bad_input",
        "url_map gave a list, not a URL",
    )


def test_url_map_that_raises_gives_a_failed_bundle(srv, home):
    def url_map(item):
        if item == 2:
            raise KeyError("no url for 2")
        return f"{srv.base_urls[0]}/links/{item}"

    bundles = shardload.swarm([1, 2, 3], download=make_download(home), url_map=url_map)
    assert [b.state for b in bundles] == ["written", "failed", "written"]
    assert bundles[1].error_kind == ErrorKind.BAD_INPUT
    assert bundles[1].info == 2


def test_works_from_inside_a_running_event_loop(srv, home):
    """A notebook cell: the sync API called while a loop is running in this thread."""

    async def cell():
        return shardload.swarm([srv.base_urls[0] + "/links/1"], download=make_download(home))

    (bundle,) = asyncio.run(cell())
    assert bundle.state == "written"


def test_one_bundle_given_to_two_runs_at_once_gets_a_result_from_each(srv, tmp_path):
    """Each run answers for itself: the second run works on a copy of a bundle the first
    still holds, and after both ends the bundle can go to a third run in place."""
    bundle = Bundle(f"{srv.base_urls[0]}/slow/300/shared")
    homes = [str(tmp_path / "a"), str(tmp_path / "b")]

    async def both():
        return await asyncio.gather(
            *(shardload.aswarm([bundle], download=make_download(home)) for home in homes)
        )

    (first,), (second,) = asyncio.run(both())
    assert first.ok and second.ok and first is not second
    assert first.file_path.startswith(homes[0] + os.sep)
    assert second.file_path.startswith(homes[1] + os.sep)
    (third,) = shardload.swarm([bundle], download=make_download(str(tmp_path / "c")))
    assert third is bundle and third.ok


def test_async_api(srv, home):
    # Distinct URLs per call, so each call's files are its own: name -> size.
    sizes = {f"{call}{i}": 100 + 37 * i for call in ("s", "e", "o") for i in range(8)}

    def url(name: str) -> str:
        return f"{srv.base_urls[sizes[name] % 4]}/bytes/{sizes[name]}?name={name}"

    async def main():
        urls = [url(f"s{i}") for i in range(8)]
        bundles = await shardload.aswarm(urls, download=make_download(home))
        streamed = [
            b
            async for b in shardload.aeach(
                [url(f"e{i}") for i in range(3)], download=make_download(home)
            )
        ]
        single = await shardload.aone(url("o0"), download=make_download(home))
        return bundles, streamed, single

    bundles, streamed, single = asyncio.run(main())
    assert [b.url for b in bundles] == [url(f"s{i}") for i in range(8)]
    assert sorted(b.url for b in streamed) == sorted(url(f"e{i}") for i in range(3))
    assert single.url == url("o0")
    for bundle in [*bundles, *streamed, single]:
        assert bundle.state == "written", (bundle.url, bundle.error_message)
        name = bundle.url.rsplit("=", 1)[1]
        assert bundle.bytes == sizes[name]
        assert read_file(bundle.file_path) == body_for(sizes[name], name)
    assert len(files_under(home)) == 8 + 3 + 1


@pytest.mark.parametrize("processes", [1, 2])
def test_the_async_api_reads_an_async_iterable(srv, home, processes):
    """An async generator as input (TypeError: not iterable before): awaited in the caller's
    loop as the run needs items; its failure is raised in the caller; leaving early stops
    it at the item it was awaiting."""
    urls = [f"{srv.base_urls[i % 4]}/links/{i}" for i in range(40)]
    asked: list[int] = []

    async def source(limit: int, fail_at: int | None = None) -> AsyncIterator[str]:
        for i in range(limit):
            asked.append(i)
            if i == fail_at:
                raise ValueError("the source broke")
            await asyncio.sleep(0)
            yield urls[i % len(urls)]

    async def main() -> tuple[list[Bundle], int]:
        loop = asyncio.get_running_loop()
        bundles = await shardload.aswarm(source(40), make_download(home), processes=processes)
        with pytest.raises(ValueError, match="the source broke"):
            await shardload.aswarm(source(40, fail_at=25), make_download(home))
        asked.clear()
        stream = shardload.aeach(source(10**9), download=make_download(home))
        async with contextlib.aclosing(stream):
            async for _ in stream:
                break
        stopped_at = len(asked)
        await asyncio.sleep(0.2)
        assert len(asked) == stopped_at  # nothing more was asked of it once the run ended
        assert asyncio.all_tasks(loop) == {asyncio.current_task()}
        return bundles, stopped_at

    bundles, stopped_at = asyncio.run(main())
    assert [b.url for b in bundles] == urls
    assert all(b.state == "written" for b in bundles), [b.error_message for b in bundles]
    assert stopped_at < 100_000  # read as the run needed items, not all at once


def test_async_api_uses_a_callers_client_session(srv, home):
    import aiohttp

    async def main():
        async with aiohttp.ClientSession() as session:
            download = shardload.AioDownload(
                client=session, download_strategy=shardload.DownloadStrategy(home=home)
            )
            bundle = await shardload.aone(srv.base_urls[0] + "/links/1", download=download)
            assert not session.closed  # the caller's session stays open
            return bundle

    assert asyncio.run(main()).state == "written"


def test_a_callers_session_sends_the_strategys_headers_and_user_agent(srv, home):
    """They were dropped on a caller's session: an API token and a crawler's User-Agent went
    out on the other clients only. A User-Agent the session sets itself stays, unless the
    strategy names one."""
    import aiohttp

    async def fetch(session_headers, strategy):
        async with aiohttp.ClientSession(headers=session_headers) as session:
            download = shardload.AioDownload(
                client=session,
                download_strategy=shardload.DownloadStrategy(home=home),
                request_strategy=strategy,
            )
            bundle = await shardload.aone(srv.base_urls[0] + "/echo", download=download)
            assert bundle.ok, bundle.error_message
            return json.loads(read_file(bundle.file_path))["headers"]

    async def main():
        mine = RequestStrategy(user_agent="MyUA/1", headers={"X-Token": "abc"})
        sent = await fetch({}, mine)
        assert sent["User-Agent"] == "MyUA/1" and sent["X-Token"] == "abc"
        sent = await fetch({"User-Agent": "SessionUA/2"}, RequestStrategy())
        assert sent["User-Agent"] == "SessionUA/2"
        sent = await fetch({"User-Agent": "SessionUA/2"}, mine)
        assert sent["User-Agent"] == "MyUA/1"
        sent = await fetch({}, RequestStrategy())
        assert sent["User-Agent"].startswith("shardload/")

    asyncio.run(main())


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # aiohttp 3.14 deprecates BasicAuth
def test_credentials_in_the_url_on_a_callers_session(srv, home):
    """They go as UTF-8, and a session's own auth or Authorization wins over them (aiohttp
    refused the request when given both)."""
    import aiohttp

    url = srv.base_urls[0].replace("http://", "http://j%C3%B6rg:pw@") + "/echo"

    async def sent(**session_options: typing.Any) -> str:
        async with aiohttp.ClientSession(**session_options) as session:
            download = shardload.AioDownload(
                client=session, download_strategy=shardload.DownloadStrategy(home=home)
            )
            bundle = await shardload.aone(url, download=download)
            assert bundle.ok, bundle.error_message
            return json.loads(read_file(bundle.file_path))["headers"]["Authorization"]

    async def main() -> None:
        assert await sent() == "Basic " + base64.b64encode("jörg:pw".encode()).decode()
        own = await sent(auth=aiohttp.BasicAuth("s", "t"))
        assert own == aiohttp.BasicAuth("s", "t").encode()
        assert await sent(headers={"Authorization": "Bearer x"}) == "Bearer x"

    asyncio.run(main())


def test_sync_api_with_a_live_client_is_a_clear_error(home):
    async def main():
        import aiohttp

        async with aiohttp.ClientSession() as session:
            download = shardload.AioDownload(client=session)
            with pytest.raises(ConfigurationError, match="aswarm"):
                shardload.swarm(["http://127.0.0.1/"], download=download)

    asyncio.run(main())


def test_input_iterator_error_propagates(home):
    def broken():
        yield "http://127.0.0.1:1/x"
        raise RuntimeError("input broke")

    with pytest.raises(RuntimeError, match="input broke"):
        shardload.swarm(broken(), download=make_download(home))


def test_an_input_tied_to_its_thread_fails_with_what_to_do(home):
    """A sqlite3 cursor cannot be read on shardload's input thread: its own error comes back
    to the caller, with a note saying where it was raised and what to do instead."""
    import sqlite3

    db = sqlite3.connect(":memory:")
    db.execute("create table u (url text)")
    db.execute("insert into u values ('http://127.0.0.1:1/x')")
    with pytest.raises(sqlite3.ProgrammingError, match="thread") as raised:
        shardload.swarm(
            db.execute("select url from u"),
            url_map=lambda row: row[0],
            download=make_download(home),
        )
    assert any("read into a list first" in note for note in raised.value.__notes__)
    db.close()


def test_a_single_string_is_rejected_with_a_clear_message():
    with pytest.raises(ConfigurationError, match="one"):
        shardload.swarm("http://127.0.0.1/")


@pytest.mark.timeout(60)
def test_one_download_object_serves_a_run_nested_in_another(srv, home):
    """``one()`` while iterating ``each()`` with the same download: two event loops, one engine."""
    download = make_download(home)
    urls = [f"{srv.base_urls[0]}/slow/200/outer{i}" for i in range(6)]  # outer still busy
    inner = []
    for bundle in shardload.each(urls, download=download):
        assert bundle.ok
        inner.append(shardload.one(f"{srv.base_urls[0]}/bytes/10?name=in{len(inner)}", download))
    assert [b.state for b in inner] == ["written"] * 6


@pytest.mark.timeout(60)
def test_one_download_object_shared_by_two_threads(srv, home):
    download = make_download(home)
    results: dict[int, list[Bundle]] = {}

    def run(k: int) -> None:
        urls = [f"{srv.base_urls[0]}/slow/20/t{k}-{i}" for i in range(6)]
        results[k] = shardload.swarm(urls, download=download)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=50)
    assert sorted(results) == [0, 1]
    assert all(b.ok for k in results for b in results[k])


@pytest.mark.timeout(60)
@pytest.mark.parametrize("call", ["main", "request_and_download"])
def test_a_run_in_another_thread_leaves_a_direct_call_under_way_alone(srv, home, call):
    """``await download.main(bundle)`` in one thread's loop while a ``swarm()`` with the same
    download starts in another: the run takes a copy of the engine instead of rebinding the
    one the direct call is using (which failed it with a KeyError of its own bookkeeping)."""
    download = make_download(home)
    direct = Bundle(f"{srv.base_urls[0]}/slow/1500/direct-{call}")
    done: list[Bundle] = []
    thread = threading.Thread(
        target=lambda: done.append(asyncio.run(getattr(download, call)(direct)))
    )
    thread.start()
    time.sleep(0.5)  # the direct call is waiting for its answer
    (ran,) = shardload.swarm([f"{srv.base_urls[1]}/bytes/10?name={call}"], download=download)
    thread.join(timeout=30)
    assert ran.state == "written", ran.error_message
    assert done == [direct] and direct.state == "written", direct.error_message


def test_a_run_ending_in_the_loop_of_direct_calls_leaves_them_alone(srv, home):
    """Direct ``main()`` calls under way when an ``aswarm()`` with the same download ends in
    the same loop: the run's end does not close the engine under them (a KeyError of its
    bookkeeping failed all of them)."""
    download = make_download(home)

    async def both() -> tuple[list[Bundle], list[Bundle]]:
        direct = [
            asyncio.ensure_future(download.main(Bundle(f"{srv.base_urls[0]}/slow/800/d{i}")))
            for i in range(4)
        ]
        await asyncio.sleep(0.2)
        ran = await shardload.aswarm([f"{srv.base_urls[1]}/links/7"], download=download)
        return ran, list(await asyncio.gather(*direct))

    ran, direct = asyncio.run(both())
    assert [b.state for b in ran] == ["written"]
    assert [b.state for b in direct] == ["written"] * 4, [b.error_message for b in direct]


class RetriesInItsOwnMain(shardload.AioDownload):
    """aiodownload's pattern: its own main() calls request_and_download once per attempt,
    waiting between attempts."""

    async def main(self, bundle: Bundle) -> Bundle:
        await self.request_and_download(bundle)
        await asyncio.sleep(0.8)  # between attempts: no request of this engine under way
        return await self.request_and_download(bundle)


@pytest.mark.timeout(60)
def test_a_run_in_another_thread_leaves_an_overridden_main_between_attempts_alone(srv, home):
    download = RetriesInItsOwnMain(download_strategy=shardload.DownloadStrategy(home=home))
    direct = Bundle(f"{srv.base_urls[0]}/links/11")
    done: list[Bundle] = []
    thread = threading.Thread(target=lambda: done.append(asyncio.run(download.main(direct))))
    thread.start()
    time.sleep(0.4)  # its main() waits between its attempts
    ran = shardload.swarm([f"{srv.base_urls[1]}/links/12"], download=download)
    thread.join(timeout=30)
    assert [b.state for b in ran] == ["written"]
    assert done == [direct] and direct.state == "written", direct.error_message
    assert direct.attempts == 2


def test_main_works_again_in_a_new_event_loop(srv, home):
    download = make_download(home)
    for i in range(2):
        bundle = asyncio.run(download.main(Bundle(f"{srv.base_urls[0]}/links/{i}")))
        assert bundle.state == "written", bundle.error_message


@pytest.mark.parametrize("processes", [1, 2])
def test_the_same_bundle_object_twice_gives_a_bundle_per_item(srv, home, processes):
    # params: no de-duplication of repeats, so each copy really goes to a worker
    bundle = Bundle(f"{srv.base_urls[0]}/bytes/20", params={"name": f"same{processes}"})
    download = make_download(home)
    got = shardload.swarm([bundle] * 3, download=download, processes=processes)
    assert len(got) == 3 and got[0] is bundle
    assert all(b.state == "written" and b.url == bundle.url for b in got)
    streamed = list(shardload.each([bundle] * 5, download=download, processes=processes))
    assert len(streamed) == 5 and all(b.state == "written" for b in streamed)


def test_a_bundle_from_an_earlier_run_gets_the_new_downloads_path(srv, home, tmp_path):
    bundle = Bundle(f"{srv.base_urls[0]}/links/1")
    shardload.one(bundle, download=make_download(home))
    other = str(tmp_path / "other-home")
    shardload.one(bundle, download=make_download(other))
    assert bundle.state == "written", bundle.error_message
    assert bundle.file_path.startswith(other + os.sep)
    preset = Bundle(f"{srv.base_urls[0]}/links/2", file_path="mine/two")
    shardload.one(preset, download=make_download(home))
    assert preset.file_path == os.path.join(home, "mine", "two")  # the owner's path is kept


def test_a_bundle_keeps_the_path_its_owner_set_when_it_runs_again(srv, home):
    """Retrying the failures with the same bundles: a path the owner set is kept (it was
    taken for the run's own answer, and the second run wrote to the URL's default path); a
    path a run computed is computed again, by the next run's strategy."""
    download = make_download(home)
    preset = Bundle(srv.base_urls[0] + "/links/1", file_path="mine/one.txt")
    computed = Bundle(srv.base_urls[0] + "/links/2")
    for _ in range(2):
        preset, computed = shardload.swarm([preset, computed], download=download)
        assert preset.file_path == os.path.join(home, "mine", "one.txt")
        assert computed.file_path == os.path.join(
            home, srv.host_key(0).replace(":", "_"), "links", "2"
        )
    other = os.path.join(home, "other")
    (again,) = shardload.swarm([computed], download=make_download(other))
    assert again.ok and again.file_path.startswith(other + os.sep)
    assert shardload.one(preset, download=download).file_path == preset.file_path


def test_main_called_again_starts_afresh_as_aiodownloads_did(srv, home):
    """aiodownload's main() computed the path on every call: a bundle reused with another
    engine failed as unsafe_path (the first home's path), and one whose URL changed was
    stored under the old URL's name."""
    first, second = make_download(os.path.join(home, "1")), make_download(os.path.join(home, "2"))

    async def main():
        b = Bundle(srv.base_urls[0] + "/links/1")
        await first.main(b)
        await second.main(b)
        assert b.ok and b.file_path.startswith(os.path.join(home, "2") + os.sep), b
        b.url = srv.base_urls[0] + "/bytes/5"
        await second.main(b)
        assert b.ok and b.file_path.endswith(os.path.join("bytes", "5")) and b.attempts == 1
        await first.close()
        await second.close()

    asyncio.run(main())


def test_a_bundle_from_url_map_carries_its_item_as_info(srv, home):
    """As in aiodownload: url_map may answer with a bundle; the item becomes its info unless
    the bundle has its own."""
    items = [("one", 1), ("two", 2)]

    def to_bundle(item):
        info = {"mine": True} if item[1] == 2 else None
        return AioDownloadBundle(f"{srv.base_urls[0]}/links/{item[1]}", info=info)

    bundles = shardload.swarm(items, download=make_download(home), url_map=to_bundle)
    assert [b.info for b in bundles] == [("one", 1), {"mine": True}]
    assert all(b.ok for b in bundles)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"download": shardload.DownloadStrategy()}, "must be an AioDownload"),
        ({"start_method": "bogus"}, "start_method must be"),
        ({"start_method": "fork"}, "fork"),
        ({"split_hosts": ["127.0.0.1"]}, "split_hosts must map"),
    ],
    ids=["strategy-as-download", "bogus-start-method", "fork", "split-hosts-list"],
)
def test_misuse_is_a_configuration_error_whatever_the_input(arguments, message):
    """One host runs in the caller: a bad start_method was accepted there (and a ValueError
    elsewhere); a list of split hosts or a strategy given as the download was an
    AttributeError, none of them a ShardloadError."""
    with pytest.raises(ConfigurationError, match=message):
        shardload.swarm(["http://127.0.0.1:9/x"], **arguments)


@pytest.mark.parametrize("processes", [1, 2])
def test_error_kind_is_an_error_kind_whichever_side_failed_the_bundle(srv, home, processes):
    """A worker's failure came back as a plain string, the coordinator's as an ErrorKind."""
    urls = [srv.base_urls[0] + "/status/404", srv.base_urls[1] + "/links/1", "http://"]
    bundles = shardload.swarm(urls, download=make_download(home), processes=processes)
    kinds = [b.error_kind for b in bundles]
    assert kinds == [ErrorKind.HTTP, None, ErrorKind.INVALID_URL]
    assert all(isinstance(k, ErrorKind) for k in kinds if k is not None)


def test_a_relative_path_its_owner_set_is_kept_as_set_for_the_next_home(srv, home):
    """Run under one home, a preset "mine/five.bin" came back absolute, and a rerun under
    another home failed it as a path outside that home."""
    bundle = Bundle(srv.base_urls[0] + "/bytes/5", file_path="mine/five.bin")
    for where in ("first", "second"):
        done = shardload.one(bundle, download=make_download(os.path.join(home, where)))
        assert done.ok and done.file_path == os.path.join(home, where, "mine", "five.bin")


def test_main_called_again_recomputes_the_path_of_a_twin_and_of_a_displaced_copy(srv, home):
    """Two bundles of one URL in one engine (the second takes the first's outcome), and a
    cached copy found moved to a/%file: both paths were taken for their owners' next time."""
    first, second = os.path.join(home, "1"), os.path.join(home, "2")

    async def main():
        engine = shardload.AioDownload(download_strategy=DownloadStrategy(home=first))
        twins = [Bundle(srv.base_urls[0] + "/slow/100/t"), Bundle(srv.base_urls[0] + "/slow/100/t")]
        await asyncio.gather(*(engine.main(b) for b in twins))
        moved = Bundle(srv.base_urls[0] + "/any/a")
        await engine.main(moved)
        await engine.main(Bundle(srv.base_urls[0] + "/any/a/b"))  # a moves to a/%file
        cached = shardload.AioDownload(
            download_strategy=DownloadStrategy(home=first, skip_cached=True)
        )
        await cached.main(moved)
        assert moved.state == "cached" and moved.file_path.endswith("%file")
        other = shardload.AioDownload(download_strategy=DownloadStrategy(home=second))
        for bundle in [*twins, moved]:
            await other.main(bundle)
            assert bundle.ok and bundle.file_path.startswith(second + os.sep), bundle
        for engine_ in (engine, cached, other):
            await engine_.close()

    asyncio.run(main())


def test_a_closed_client_session_fails_its_bundles_instead_of_being_replaced(srv, home):
    """A closed caller's session was replaced by shardload's own: the download went out
    without the caller's headers (its Authorization), and said nothing."""
    import aiohttp

    async def main():
        session = aiohttp.ClientSession(headers={"Authorization": "Bearer x"})
        await session.close()
        download = shardload.AioDownload(
            client=session, download_strategy=DownloadStrategy(home=home)
        )
        return await shardload.aone(srv.base_urls[0] + "/links/1", download=download)

    bundle = asyncio.run(main())
    assert bundle.state == "failed" and "client= is closed" in bundle.error_message


def test_a_download_passed_where_url_map_goes_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="where url_map goes"):
        list(shardload.each(["http://127.0.0.1:9/x"], shardload.AioDownload()))


async def _async_url(item: str) -> str:
    return item


class _AsyncMapper:
    async def __call__(self, item: str) -> str:
        return item


@pytest.mark.parametrize(
    ("url_map", "message"),
    [
        ("http://127.0.0.1:9/", "url_map must be a function of an item, got str"),
        (_async_url, "not an async one"),
        (functools.partial(_async_url), "not an async one"),
        (_AsyncMapper(), "not an async one"),
    ],
)
def test_a_url_map_that_cannot_map_is_a_configuration_error(url_map, message):
    """Each item failed alone (an async url_map's coroutine taken for the URL, never awaited)
    where one error before any work says what is wrong."""
    with pytest.raises(ConfigurationError, match=message):
        shardload.swarm(["a"], url_map=url_map)


def test_one_run_read_from_two_threads_gives_every_bundle_once(srv, home):
    """Both threads started the run: one raised, the other ended after a few bundles, and
    the rest were lost without an error."""
    urls = [f"{srv.base_urls[i % 2]}/links/{i}" for i in range(200)]
    run = shardload.each(urls, download=make_download(home))
    got: list[list[Bundle]] = [[], []]
    errors: list[BaseException] = []

    def read(mine: list[Bundle]) -> None:
        try:
            mine.extend(run)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=read, args=(mine,), daemon=True) for mine in got]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert sorted(b.url for b in got[0] + got[1]) == sorted(urls)
