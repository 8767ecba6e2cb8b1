"""one / swarm / each / async API against a real local server (issue 2, item 5)."""

from __future__ import annotations

import asyncio
import itertools
import os

import pytest

import shardload
from shardload import AioDownloadBundle, Bundle, ConfigurationError, ErrorKind
from shardload.testing.server import body_for

from .conftest import files_under, make_download


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


def test_each_yields_as_they_finish(srv, home):
    slow = f"{srv.base_urls[0]}/slow/1500/late"
    fast = [f"{srv.base_urls[1]}/links/{i}" for i in range(5)]
    order = [b.url for b in shardload.each([slow, *fast], download=make_download(home))]
    assert order[-1] == slow
    assert set(order[:-1]) == set(fast)


def test_each_reads_input_lazily_and_stops_on_early_close(srv, home):
    consumed = itertools.count()

    def endless():
        for i in itertools.count():
            next(consumed)
            yield f"{srv.base_urls[i % 4]}/bytes/10?name={i}"

    got = []
    for bundle in shardload.each(endless(), download=make_download(home)):
        got.append(bundle)
        if len(got) == 20:
            break
    read = next(consumed)
    assert all(b.state == "written" for b in got)
    # Bounded read-ahead: an endless input was not drained.
    assert read < 100_000
    stats = srv.stats()
    after = sum(h["requests"] for h in stats["hosts"].values())
    # Nothing keeps running after the iterator is closed.
    import time

    time.sleep(0.3)
    later = sum(h["requests"] for h in srv.stats()["hosts"].values())
    assert later == after


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


def test_plain_urls_have_no_info(srv, home):
    bundle = shardload.one(srv.base_urls[0] + "/links/2", download=make_download(home))
    assert bundle.info is None


def test_one_accepts_a_bundle_and_updates_it_in_place(srv, home):
    bundle = AioDownloadBundle(srv.base_urls[0] + "/links/3", info={"k": 1})
    got = shardload.one(bundle, download=make_download(home))
    assert got is bundle
    assert bundle.state == "written" and bundle.info == {"k": 1}
    assert os.path.isfile(bundle.file_path)


def test_duplicate_urls_fetched_once_each_input_gets_its_bundle(srv, home):
    url = srv.base_urls[0] + "/bytes/5000?name=dup"
    bundles = shardload.swarm([url, url, url], download=make_download(home))
    assert len(bundles) == 3
    assert all(b.state == "written" for b in bundles)
    assert len({b.file_path for b in bundles}) == 1
    assert srv.stats()["paths"]["/bytes/5000?name=dup"] == 1
    with open(bundles[0].file_path, "rb") as f:
        assert f.read() == body_for(5000, "dup")


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
        (None, ErrorKind.UNSUPPORTED_SCHEME),
    ],
)
def test_bad_items_become_failed_bundles(home, item, kind):
    (bundle,) = shardload.swarm([item], download=make_download(home))
    assert bundle.state == "failed"
    assert bundle.error_kind == kind
    assert bundle.error_message
    assert files_under(home) == set()


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


def test_async_api(srv, home):
    async def main():
        urls = [f"{srv.base_urls[i % 4]}/links/{i}" for i in range(8)]
        bundles = await shardload.aswarm(urls, download=make_download(home))
        streamed = [b async for b in shardload.aeach(urls[:3], download=make_download(home))]
        single = await shardload.aone(urls[0], download=make_download(home))
        return bundles, streamed, single

    bundles, streamed, single = asyncio.run(main())
    assert [b.state for b in bundles] == ["written"] * 8
    assert len(streamed) == 3 and single.ok


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


def test_a_single_string_is_rejected_with_a_clear_message():
    with pytest.raises(ConfigurationError, match="one"):
        shardload.swarm("http://127.0.0.1/")
