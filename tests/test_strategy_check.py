"""Strategy values checked before a run: a clear ConfigurationError naming the value."""

from __future__ import annotations

import math
from typing import Any

import pytest

import shardload
from shardload import ConfigurationError, DownloadStrategy, RequestStrategy
from shardload.strategy_check import check_download_strategy, check_request_strategy

from .conftest import make_download

REFUSED_REQUEST = [
    ("concurrent", 0),
    ("concurrent", -1),
    ("concurrent", "2"),
    ("concurrent", None),
    ("concurrent", True),
    ("max_attempts", None),
    ("max_attempts", "3"),
    ("worker_concurrent", 0),
    ("breaker_threshold", 1.5),
    ("dns_ttl", -5),
    ("timeout", -1),
    ("timeout", math.nan),
    ("timeout", "60"),
    ("delay", math.inf),  # an endless gap: the host's URLs would never finish
    ("concurrent", 2.5),
    ("connect_timeout", -0.5),
    ("max_time", -1),
    ("delay", None),
    ("delay", -0.25),
    ("jitter", math.nan),
    ("retry_after_cap", -1),
    ("breaker_cooldown", "30"),
    ("low_speed_limit", -1),
]
ACCEPTED_REQUEST = [
    # What ran before the check came (its audit): whole floats, inf as no limit, a float TTL.
    ("concurrent", 4.0),
    ("max_attempts", -1),
    ("max_redirects", -1),
    ("timeout", math.inf),
    ("max_time", math.inf),
    ("retry_after_cap", math.inf),
    ("breaker_cooldown", math.inf),
    ("low_speed_time", math.inf),
    ("dns_ttl", 60.0),
    ("dns_ttl", 0.5),
    ("concurrent", 1),
    ("max_attempts", 0),
    ("timeout", 0),
    ("timeout", None),
    ("timeout", 0.5),
    ("connect_timeout", None),
    ("connect_timeout", 0),
    ("max_time", None),
    ("max_time", 0),
    ("delay", 0),
    ("dns_ttl", None),
    ("breaker_threshold", 0),
    ("low_speed_limit", 0),
]


def _with(attr: str, value: Any) -> RequestStrategy:
    strategy = RequestStrategy()
    setattr(strategy, attr, value)
    return strategy


@pytest.mark.parametrize(("attr", "value"), REFUSED_REQUEST)
def test_a_request_strategy_value_no_run_can_use_is_refused_by_name(attr, value):
    with pytest.raises(ConfigurationError, match=rf"RequestStrategy\.{attr} must be"):
        check_request_strategy(_with(attr, value))


@pytest.mark.parametrize(("attr", "value"), ACCEPTED_REQUEST)
def test_request_strategy_values_a_run_can_use_pass(attr, value):
    check_request_strategy(_with(attr, value))


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ({"X(bad)": "1"}, "not a header name"),  # every URL got a 400
        ({"": "1"}, "not a header name"),
        ({"X Y": "1"}, "not a header name"),
        ({b"X": "1"}, "not a header name"),
        ({"Content-Length": "40"}, "frames a request body"),  # the server waited for 40 bytes
        ({"transfer-encoding": "chunked"}, "frames a request body"),
        ({"X": "a\r\nInjected: 1"}, "line break"),
        ({"X": "a\0"}, "NUL"),
        ([("X", "1")], "must map names to values"),
    ],
)
def test_request_headers_that_cannot_be_sent_are_refused(headers: Any, why: str) -> None:
    with pytest.raises(ConfigurationError, match=rf"RequestStrategy\.headers.*{why}"):
        check_request_strategy(_with("headers", headers))


@pytest.mark.parametrize(
    "headers",
    [{}, {"X-A": "1"}, {"Host": "example.org"}, {"Accept": "*/*", "X-Num": 5}, {"X-U": "é"}],
)
def test_request_headers_that_can_be_sent_pass(headers: dict[str, Any]) -> None:
    check_request_strategy(_with("headers", headers))
    check_request_strategy(RequestStrategy(headers=headers))


def test_a_user_agent_with_a_line_break_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"user_agent cannot hold a line break"):
        check_request_strategy(RequestStrategy(user_agent="x\r\nInjected: 1"))


@pytest.mark.parametrize(
    ("kwargs", "ok"),
    [
        ({}, True),
        ({"chunk_size": 1}, True),
        ({"max_bytes": 0}, True),
        ({"max_bytes": None}, True),
        ({"chunk_size": 0}, True),  # a hint: reads are at least 1 MiB
        ({"chunk_size": 65536.0}, True),
        ({"chunk_size": "64k"}, False),
        ({"max_bytes": -1}, False),
        ({"max_bytes": 1.5}, False),
    ],
)
def test_download_strategy_values(kwargs, ok, tmp_path):
    strategy = DownloadStrategy(home=tmp_path, **kwargs)
    if ok:
        check_download_strategy(strategy)
    else:
        with pytest.raises(ConfigurationError, match=r"DownloadStrategy\.\w+ must be"):
            check_download_strategy(strategy)


def test_an_attribute_a_subclass_removed_is_left_to_it():
    class Bare(RequestStrategy):
        def __init__(self) -> None:  # aiodownload-era: sets only what it knew
            self.concurrent = 3

    check_request_strategy(Bare())


def test_every_entry_point_refuses_before_any_work(home):
    """``concurrent="2"`` raised a TypeError from the coordinator; ``max_bytes=-1`` failed
    every URL as too_large."""
    bad = shardload.AioDownload(request_strategy=RequestStrategy(concurrent="2"))  # type: ignore[arg-type]
    for call in (
        lambda: shardload.swarm(["http://127.0.0.1:9/x"], download=bad),
        lambda: shardload.one("http://127.0.0.1:9/x", download=bad),
        lambda: list(shardload.each(["http://127.0.0.1:9/x"], download=bad)),
    ):
        with pytest.raises(ConfigurationError, match="concurrent"):
            call()
    too_small = make_download(home, max_bytes=-1)
    with pytest.raises(ConfigurationError, match="max_bytes"):
        shardload.swarm(["http://127.0.0.1:9/x"], download=too_small)


@pytest.mark.parametrize("client", ["lean", "aiohttp"])
@pytest.mark.parametrize("option", ["timeout", "connect_timeout", "max_time"])
def test_a_timeout_of_zero_is_no_limit_on_both_clients(srv, home, client, option):
    """The lean client failed every URL at once as a connect timeout; aiohttp took 0 as no
    limit."""
    download = make_download(home, RequestStrategy(**{option: 0}), client=client)
    bundle = shardload.one(srv.base_urls[0] + "/links/1", download=download)
    assert bundle.state == "written", bundle.error_message


@pytest.mark.parametrize("client", ["lean", "aiohttp"])
def test_values_that_ran_before_the_check_still_run(srv, home, client):
    strategy = RequestStrategy(
        concurrent=4.0,  # type: ignore[arg-type]
        timeout=math.inf,
        max_time=math.inf,
        dns_ttl=60.0,  # type: ignore[arg-type]
        max_attempts=-1,
    )
    download = make_download(home, strategy, client=client, chunk_size=0)
    bundles = shardload.swarm(
        [srv.base_urls[0] + f"/links/{i}" for i in range(3)], download=download
    )
    assert [b.state for b in bundles] == ["written"] * 3, [b.error_message for b in bundles]
