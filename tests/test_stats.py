"""Per-host statistics (pure): what each kind of finished bundle adds (tables)."""

from __future__ import annotations

import pytest

from shardload.bundle import Bundle
from shardload.errors import ErrorKind
from shardload.stats import RunStats


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
