"""Per-host statistics (pure): what each kind of finished bundle adds (tables)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardload.bundle import Bundle
from shardload.errors import ErrorKind
from shardload.stats import HostStats, RunStats


def _bundle(state: str, *, attempts: int = 1, size: int = 100, shared: bool = False) -> Bundle:
    bundle = Bundle("http://a:1/x", host="a:1", state=state, attempts=attempts)
    bundle.bytes = size
    bundle._shared = shared
    return bundle


@pytest.mark.parametrize(
    ("bundle", "requests", "size"),
    [
        (_bundle("written"), 1, 100),
        (_bundle("written", attempts=3), 3, 100),
        (_bundle("written", shared=True), 0, 0),  # a repeat: its first counted it
        (_bundle("cached", attempts=0), 0, 0),  # found on disk: nothing downloaded
        (_bundle("failed", attempts=2, size=0), 2, 0),
    ],
    ids=["written", "retried", "repeat", "cached", "failed"],
)
def test_what_a_bundle_adds(bundle: Bundle, requests: int, size: int) -> None:
    stats = RunStats()
    stats.add(bundle)
    for counted in (stats.hosts["a:1"], stats.total):
        assert (counted.bundles, counted.requests, counted.bytes) == (1, requests, size)
        assert counted.states == {bundle.state: 1}


@pytest.mark.parametrize(
    ("state", "errors"),
    [("failed", {"robots": 1}), ("skipped", {})],
    ids=["failed", "skipped"],
)
def test_errors_count_failed_bundles_only(state: str, errors: dict[str, int]) -> None:
    # A robots.txt that could not be read fails its URLs (ErrorKind.ROBOTS); a URL robots.txt
    # disallows is skipped, and the CLI's summary does not count it as an error either.
    bundle = _bundle(state, size=0)
    bundle.error_kind = ErrorKind.ROBOTS
    stats = RunStats()
    stats.add(bundle)
    assert stats.hosts["a:1"].errors == errors and stats.total.errors == errors


def test_latency_is_of_the_responses_and_elapsed_of_every_bundle() -> None:
    """A host held to one request at a time: its URLs' elapsed grows with its queue, the
    latency is what its server took to answer."""
    stats = RunStats()
    for elapsed, latency, shared in [
        (0.1, 0.1, False),
        (0.2, 0.1, False),
        (0.3, 0.1, True),  # a repeat of a URL: no request of its own
        (0.6, None, False),  # no response (refused, timeout)
        (0.4, 0.3, False),
    ]:
        bundle = _bundle("written", shared=shared)
        bundle.elapsed, bundle._latency = elapsed, latency
        stats.add(bundle)
    host = stats.hosts["a:1"]
    record = host.to_record()
    assert (record["latency_mean"], record["latency_max"]) == (round(0.5 / 3, 6), 0.3)
    assert (record["elapsed_mean"], record["elapsed_max"]) == (pytest.approx(0.32), 0.6)
    # The names README gives run.stats.hosts: attributes too, not only the record's keys.
    assert (host.latency_mean, host.elapsed_mean) == (pytest.approx(0.5 / 3), pytest.approx(0.32))
    assert stats.total.to_record()["latency_mean"] == record["latency_mean"]
    assert RunStats().total.to_record()["latency_mean"] == 0.0  # nothing answered


def _counted(
    host: str | None,
    state: str,
    attempts: int,
    size: int,
    status: int | None,
    elapsed: float,
    latency: float | None,
    shared: bool,
) -> Bundle:
    bundle = _bundle(state, attempts=attempts, size=size, shared=shared)
    bundle.host, bundle.status, bundle.elapsed = host, status, elapsed
    bundle._latency = latency
    if state == "failed":
        bundle.error_kind = ErrorKind.HTTP if status else ErrorKind.CONNECT
    return bundle


_BUNDLES = st.builds(
    _counted,
    st.sampled_from(["a:1", "b:2", None]),
    st.sampled_from(["written", "cached", "failed", "skipped"]),
    st.integers(0, 5),
    st.integers(0, 10**6),
    st.sampled_from([None, 200, 404, 503]),
    st.floats(0, 100),
    st.none() | st.floats(0, 100),
    st.booleans(),
)


def _fields(stats: HostStats) -> dict[str, object]:
    fields = dataclasses.asdict(stats)
    for total in ("elapsed_total", "latency_total"):  # summed in another order
        fields[total] = pytest.approx(fields[total])
    return fields


@given(st.lists(_BUNDLES, max_size=12), st.lists(_BUNDLES, max_size=12))
def test_absorbing_counts_as_adding_each_bundle(first: list[Bundle], then: list[Bundle]) -> None:
    """The CLI counts bundles the run did not (bad input lines, those a stop left unread) on
    its own and absorbs them: the same statistics as one count of all."""
    together, apart, elsewhere = RunStats(), RunStats(), RunStats()
    for bundle in first + then:
        together.add(bundle)
    for bundle in first:
        apart.add(bundle)
    for bundle in then:
        elsewhere.add(bundle)
    apart.absorb(elsewhere)
    assert _fields(apart.total) == _fields(together.total)
    assert apart.hosts.keys() == together.hosts.keys()
    for host, stats in apart.hosts.items():
        assert _fields(stats) == _fields(together.hosts[host])
