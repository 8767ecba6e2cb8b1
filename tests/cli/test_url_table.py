"""The resume table behaves as a dict of URL -> value, in a fraction of a dict's memory."""

from __future__ import annotations

import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardload.cli.url_table import UrlTable

_URLS = st.one_of(
    st.text(max_size=30),  # lone surrogates too: a manifest's JSON may hold them
    st.sampled_from(["http://a/x", "http://a/y", "http://b/x", "", "http://a/x "]),
)


@settings(max_examples=300)
@given(st.lists(st.tuples(_URLS, st.sampled_from(["done", "transient", None])), max_size=200))
def test_same_answers_as_a_dict(writes: list[tuple[str, str | None]]) -> None:
    table: UrlTable[str | None] = UrlTable()
    model: dict[str, str | None] = {}
    for url, value in writes:
        table[url] = value
        model[url] = value
        assert len(table) == len(model)
    for url, value in model.items():
        assert table.get(url) == value and url in table
    for url in ("http://never/seen", "http://a/x/", "http://A/x"):
        if url not in model:
            assert table.get(url) is None and url not in table


def test_keeps_every_url_through_many_grows() -> None:
    table: UrlTable[int] = UrlTable()
    urls = [f"http://h{i % 7}/{i}" for i in range(20_000)]  # 1,024 slots to 32,768
    for i, url in enumerate(urls):
        table[url] = i % 3
    for i, url in enumerate(urls[::3]):
        table[url] = 9  # the latest value wins, after the grows too
    assert len(table) == len(urls)
    assert all(table.get(url) == (9 if i % 3 == 0 else i % 3) for i, url in enumerate(urls))
    assert table.get("http://h0/20000") is None


def test_at_most_255_distinct_values() -> None:
    table: UrlTable[int] = UrlTable()
    for value in range(255):
        table[f"u{value}"] = value
    table["again"] = 254  # a value it holds already needs no new code
    with pytest.raises(ValueError, match="255 distinct values"):
        table["one too many"] = 255


def test_a_fraction_of_a_dicts_memory() -> None:
    """What it is for: resuming 10 million URLs took ~1.3 GB as a dict of the strings."""
    urls = [f"http://host{i % 97}.example.com/images/{i:09d}/photo.jpg" for i in range(50_000)]
    tracemalloc.start()
    try:
        table: UrlTable[str] = UrlTable()
        for url in urls:
            table[url] = "done"
        held, _peak = tracemalloc.get_traced_memory()
        # Strings of its own, as a dict read from a manifest holds.
        as_dict = {url.encode().decode(): "done" for url in urls}
        with_dict, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(as_dict) == len(table)
    assert held < (with_dict - held) / 2.5
    assert held / len(urls) < 50  # bytes a URL
