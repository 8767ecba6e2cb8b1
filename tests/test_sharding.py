"""shardload.sharding: stable host -> shard assignment, hot-host splitting, budget division."""

from __future__ import annotations

import collections
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardload.errors import ConfigurationError
from shardload.sharding import shard_for_url, shard_of, split_budget


@pytest.mark.parametrize(
    ("host", "crc"),
    [
        ("httpbin.org", 2806288855),
        ("example.com", 3069857465),
        ("127.0.0.1:8080", 144111656),
        ("[::1]:8080", 2018229329),
        ("xn--bcher-kva.de", 1634369507),
        ("a", 3904355907),
    ],
)
def test_golden_values(host: str, crc: int) -> None:
    for shards in (1, 2, 7, 8, 16, 1000):
        assert shard_of(host, shards) == crc % shards


def test_golden_table() -> None:
    assert [shard_of(h, 8) for h in ("httpbin.org", "example.com", "127.0.0.1:8080")] == [7, 1, 0]
    assert shard_of("[::1]:8080", 16) == 1
    assert shard_of("anything", 1) == 0


def test_independent_of_hash_seed() -> None:
    code = "from shardload.sharding import shard_of; print(shard_of('httpbin.org', 1000))"
    outputs = set()
    for seed in ("1", "2", "random"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        outputs.add(done.stdout.strip())
    assert outputs == {str(2806288855 % 1000)}


@pytest.mark.parametrize("shards", [0, -1])
def test_bad_shard_count(shards: int) -> None:
    with pytest.raises(ConfigurationError):
        shard_of("h", shards)
    with pytest.raises(ConfigurationError):
        shard_for_url("h", "/x", shards, split=2)


def test_roughly_uniform() -> None:
    shards = 8
    counts = collections.Counter(shard_of(f"host{i}.example.com", shards) for i in range(8000))
    assert set(counts) == set(range(shards))
    assert all(800 <= n <= 1200 for n in counts.values()), counts


def test_split_spreads_roughly_uniformly() -> None:
    counts = collections.Counter(
        shard_for_url("cdn.example", f"/img/{i}", 16, 4) for i in range(4000)
    )
    assert len(counts) == 4
    assert all(800 <= n <= 1200 for n in counts.values()), counts


@given(st.text(max_size=50), st.integers(1, 64))
@settings(max_examples=300, deadline=None)
def test_shard_in_range_and_stable(host: str, shards: int) -> None:
    shard = shard_of(host, shards)
    assert 0 <= shard < shards
    assert shard_of(host, shards) == shard


@given(st.text(max_size=30), st.lists(st.text(max_size=30), max_size=50), st.integers(1, 32))
@settings(max_examples=300, deadline=None)
def test_no_split_keeps_a_host_on_one_shard(host: str, urls: list[str], shards: int) -> None:
    for split in (1, 0, -3):
        assert {shard_for_url(host, u, shards, split) for u in urls} <= {shard_of(host, shards)}


@given(st.text(max_size=30), st.integers(1, 32), st.integers(2, 40))
@settings(max_examples=200, deadline=None)
def test_split_uses_exactly_min_k_shards(host: str, shards: int, k: int) -> None:
    base = shard_of(host, shards)
    expected = {(base + i) % shards for i in range(min(k, shards))}
    used = {shard_for_url(host, f"/u/{i}", shards, k) for i in range(40 * k)}
    assert used == expected
    assert len(used) == min(k, shards)


@given(st.text(max_size=30), st.text(max_size=30), st.integers(1, 32), st.integers(1, 40))
@settings(max_examples=300, deadline=None)
def test_same_url_key_same_shard(host: str, key: str, shards: int, k: int) -> None:
    first = shard_for_url(host, key, shards, k)
    assert first == shard_for_url(host, key, shards, k)
    assert 0 <= first < shards


@pytest.mark.parametrize(
    ("concurrency", "delay", "k", "expected"),
    [
        (8, 0.0, 4, (4, 2, 0.0)),
        (10, 0.0, 3, (3, 3, 0.0)),
        (2, 0.0, 8, (2, 1, 0.0)),
        (8, 0.25, 4, (1, 8, 0.25)),  # a delay: not split (the gap stays exact)
        (1, 1.0, 16, (1, 1, 1.0)),
        (5, 0.5, 1, (1, 5, 0.5)),
        (5, 0.5, 0, (1, 5, 0.5)),
        (5, 0.5, -2, (1, 5, 0.5)),
    ],
)
def test_split_budget_table(
    concurrency: int, delay: float, k: int, expected: tuple[int, int, float]
) -> None:
    assert split_budget(concurrency, delay, k) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("concurrency", "delay"), [(0, 0.0), (-1, 0.0), (2, -0.1), (2, float("nan"))]
)
def test_split_budget_refuses_bad_limits(concurrency: int, delay: float) -> None:
    with pytest.raises(ConfigurationError):
        split_budget(concurrency, delay, 2)


@given(
    st.integers(1, 10_000),
    st.floats(0, 3600, allow_nan=False),
    st.integers(-5, 10_000),
)
@settings(max_examples=500, deadline=None)
def test_split_budget_never_exceeds_the_host_limits(concurrency: int, delay: float, k: int) -> None:
    k_eff, per_worker, per_delay = split_budget(concurrency, delay, k)
    assert 1 <= k_eff <= max(1, min(k, concurrency))
    assert per_worker >= 1
    assert k_eff * per_worker <= concurrency  # summed concurrency within the host's limit
    assert per_delay == delay
    if delay > 0:
        assert k_eff == 1  # one worker: its gap between two starts is exact
    if k <= 1:
        assert (k_eff, per_worker, per_delay) == (1, concurrency, delay)
