"""shardload.backoff: Retry-After parsing, exponential delays, retry decisions."""

from __future__ import annotations

import math
import sys
from email.utils import formatdate

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardload.backoff import (
    RetryDecision,
    decide,
    exponential_delay,
    parse_retry_after,
    retry_delay,
)

NOW = 1445412480.0  # Wed, 21 Oct 2015 07:28:00 GMT
INF = float("inf")
NAN = float("nan")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0.0),
        ("120", 120.0),
        ("  5 ", 5.0),
        ("\t7\r\n", 7.0),
        ("007", 7.0),
        ("1.5", 1.5),
        ("2.", 2.0),
        (".5", 0.5),
        ("86400", 86400.0),
        ("99999999999999999999", 1e20),
        ("1" * 5000, sys.float_info.max),  # absurdly long: the largest float, capped later
        ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # in the past
        ("Sun, 06 Nov 1994 08:49:37 GMT", 0.0),
        ("Wed, 21 Oct 2015 09:28:00 +0200", 0.0),
        ("Wed, 21 Oct 2015 10:28:00 +0200", 3600.0),
        ("Wed, 21 Oct 2015 08:28:00 -0000", 3600.0),  # no zone information: UTC
        ("Wed, 21 Oct 2015 08:28:00", 3600.0),  # naive: UTC
        ("Wednesday, 21-Oct-15 08:28:00 GMT", 3600.0),  # RFC 850
        ("Wed Oct 21 08:28:00 2015", 3600.0),  # asctime
        ("  Wed, 21 Oct 2015 07:29:00 GMT  ", 60.0),
        ("Fri, 31 Dec 9999 23:59:59 GMT", 253402300799.0 - NOW),
    ],
)
def test_parse_retry_after(value: str, expected: float) -> None:
    assert parse_retry_after(value, NOW) == pytest.approx(expected)


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "   ",
        "-1",
        "-0.5",
        "+5",
        "nan",
        "NaN",
        "inf",
        "-inf",
        "Infinity",
        "1e5",
        "1_000",
        "0x10",
        "5 seconds",
        "\u0661\u0662",  # Arabic-Indic digits
        "garbage",
        "Wed, 32 Oct 2015 07:28:00 GMT",
        "Mon, 99 Foo 2020 99:99:99 GMT",
        "Wed, 21 Oct",
        "1.2.3",
        ".",
    ],
)
def test_parse_retry_after_garbage(value: str | None) -> None:
    assert parse_retry_after(value, NOW) is None


def test_parse_retry_after_non_string() -> None:
    assert parse_retry_after(5, NOW) is None  # type: ignore[arg-type]
    assert parse_retry_after(b"5", NOW) is None  # type: ignore[arg-type]


def test_parse_retry_after_with_odd_now() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", NAN) is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", INF) is None
    assert parse_retry_after("30", NAN) == 30.0


@given(st.text(max_size=40), st.floats(0, 4e9))
@settings(max_examples=500, deadline=None)
def test_parse_retry_after_total(value: str, now: float) -> None:
    seconds = parse_retry_after(value, now)
    assert seconds is None or (math.isfinite(seconds) and seconds >= 0)


@given(st.integers(0, 10**30), st.floats(0, 4e9))
@settings(max_examples=300, deadline=None)
def test_parse_retry_after_integers(n: int, now: float) -> None:
    assert parse_retry_after(f" {n} ", now) == pytest.approx(float(n))


@given(st.integers(0, 10**9), st.floats(1e9, 2e9))
@settings(max_examples=300, deadline=None)
def test_parse_retry_after_dates(offset: int, now: float) -> None:
    header = formatdate(int(now) + offset, usegmt=True)
    assert parse_retry_after(header, now) == pytest.approx(max(0.0, int(now) + offset - now))


@pytest.mark.parametrize(
    ("attempt", "base", "cap", "expected"),
    [
        (-5, 0.25, 60.0, 0.0),
        (0, 0.25, 60.0, 0.0),
        (1, 0.25, 60.0, 0.25),
        (2, 0.25, 60.0, 0.5),
        (3, 0.25, 60.0, 1.0),
        (8, 0.25, 60.0, 32.0),
        (9, 0.25, 60.0, 60.0),
        (10, 0.25, 60.0, 60.0),
        (1024, 0.25, 60.0, 60.0),
        (10**6, 0.25, 60.0, 60.0),
        (10**100, 0.25, 60.0, 60.0),
        (3, 1.0, 3.0, 3.0),
        (3, 0.0, 60.0, 0.0),
        (3, -1.0, 60.0, 0.0),
        (3, NAN, 60.0, 0.0),
        (3, 0.25, -1.0, 0.0),
        (3, 0.25, NAN, 0.0),
        (5000, 0.25, INF, INF),
    ],
)
def test_exponential_delay(attempt: int, base: float, cap: float, expected: float) -> None:
    assert exponential_delay(attempt, base, cap) == expected


def test_exponential_defaults_match_backoff_doc() -> None:
    # BackOff: 0.25, 0.5, 1, ... capped at 60 s.
    assert [exponential_delay(a) for a in range(1, 11)] == [
        0.25,
        0.5,
        1.0,
        2.0,
        4.0,
        8.0,
        16.0,
        32.0,
        60.0,
        60.0,
    ]


@given(
    st.integers(-10, 5000),
    st.floats(0, 1e6, allow_nan=False),
    st.floats(0, 1e9, allow_nan=False),
)
@settings(max_examples=500, deadline=None)
def test_exponential_monotone_and_capped(attempt: int, base: float, cap: float) -> None:
    now = exponential_delay(attempt, base, cap)
    later = exponential_delay(attempt + 1, base, cap)
    assert 0.0 <= now <= later <= cap
    assert math.isfinite(later)


@pytest.mark.parametrize(
    ("strategy_delay", "retry_after", "cap", "expected"),
    [
        (0.25, None, 300.0, 0.25),
        (0.25, 30.0, 300.0, 30.0),
        (60.0, 30.0, 300.0, 60.0),
        (0.25, 3600.0, 300.0, 300.0),
        (600.0, 3600.0, 300.0, 600.0),  # the strategy's own delay is never cut
        (0.25, sys.float_info.max, 300.0, 300.0),
        (-1.0, None, 300.0, 0.0),
        (NAN, None, 300.0, 0.0),
        (NAN, 5.0, 300.0, 5.0),
        (1.0, -5.0, 300.0, 1.0),
        (1.0, NAN, 300.0, 1.0),
        (1.0, 50.0, -1.0, 1.0),
        (1.0, 50.0, NAN, 1.0),
        (0.0, 0.0, 0.0, 0.0),
    ],
)
def test_retry_delay(
    strategy_delay: float, retry_after: float | None, cap: float, expected: float
) -> None:
    assert retry_delay(strategy_delay, retry_after, cap) == expected


_delays = st.floats(-1e12, 1e12) | st.just(NAN)


@given(_delays, st.none() | _delays, _delays)
@settings(max_examples=500, deadline=None)
def test_retry_delay_bounds(strategy_delay: float, retry_after: float | None, cap: float) -> None:
    delay = retry_delay(strategy_delay, retry_after, cap)
    assert delay >= 0.0
    assert not math.isnan(delay)
    clamp = strategy_delay if strategy_delay > 0 else 0.0
    assert delay >= clamp  # never shorter than the strategy asked
    assert delay <= max(clamp, cap if cap > 0 else 0.0)  # Retry-After honoured up to the cap only


@given(st.floats(0, 1e6), st.floats(0, 1e6), st.floats(0, 1e6))
@settings(max_examples=300, deadline=None)
def test_retry_delay_monotone_in_retry_after(strategy_delay: float, a: float, cap: float) -> None:
    assert retry_delay(strategy_delay, a, cap) <= retry_delay(strategy_delay, a + 1.0, cap)


def _decide(**overrides: object) -> RetryDecision:
    args: dict[str, object] = {
        "attempts": 1,
        "max_attempts": 5,
        "wants_retry": True,
        "never_retry": False,
        "strategy_delay": 60.0,
        "retry_after": None,
        "retry_after_cap": 300.0,
    }
    args.update(overrides)
    return decide(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "retry", "delay"),
    [
        ({}, True, 60.0),
        ({"attempts": 4}, True, 60.0),
        ({"attempts": 5}, False, 0.0),
        ({"attempts": 6}, False, 0.0),
        ({"max_attempts": 0}, False, 0.0),
        ({"max_attempts": 1}, False, 0.0),
        ({"max_attempts": -3}, False, 0.0),
        ({"max_attempts": 2}, True, 60.0),
        ({"attempts": 2, "max_attempts": 2}, False, 0.0),
        ({"wants_retry": False}, False, 0.0),
        ({"never_retry": True}, False, 0.0),
        ({"never_retry": True, "wants_retry": False}, False, 0.0),
        ({"retry_after": 120.0}, True, 120.0),
        ({"retry_after": 1.0}, True, 60.0),
        ({"retry_after": 1e9}, True, 300.0),
        ({"strategy_delay": 0.25, "retry_after": 1e9, "retry_after_cap": 30.0}, True, 30.0),
        ({"strategy_delay": -1.0}, True, 0.0),
        ({"attempts": 0, "max_attempts": 0}, True, 60.0),
    ],
)
def test_decide_table(overrides: dict[str, object], retry: bool, delay: float) -> None:
    decision = _decide(**overrides)
    assert decision.retry is retry
    assert decision.delay == delay
    assert decision.reason


def test_decide_reasons() -> None:
    assert "never" in _decide(never_retry=True).reason
    assert "exhausted" in _decide(attempts=5).reason
    assert "Retry-After" in _decide(retry_after=120.0).reason
    assert "attempt 2 of 5" in _decide().reason


def test_retry_decision_is_frozen() -> None:
    decision = _decide()
    with pytest.raises(AttributeError):
        decision.retry = False  # type: ignore[misc]


@given(
    max_attempts=st.integers(-5, 30),
    wants_retry=st.booleans(),
    never_retry=st.booleans(),
    strategy_delay=st.floats(0, 1e4),
    retry_after=st.none() | st.floats(0, 1e9),
    retry_after_cap=st.floats(0, 1e4),
)
@settings(max_examples=500, deadline=None)
def test_decide_properties(
    max_attempts: int,
    wants_retry: bool,
    never_retry: bool,
    strategy_delay: float,
    retry_after: float | None,
    retry_after_cap: float,
) -> None:
    """The documented rules, each checked on its own (no formula of the code as oracle), for
    every attempt count up to past the budget."""

    def at(n: int) -> RetryDecision:
        return decide(
            attempts=n,
            max_attempts=max_attempts,
            wants_retry=wants_retry,
            never_retry=never_retry,
            strategy_delay=strategy_delay,
            retry_after=retry_after,
            retry_after_cap=retry_after_cap,
        )

    for attempts in [*range(35), 100, 10**9]:
        decision = at(attempts)
        # A never-retry failure, or one the strategy does not want retried, is never retried.
        if never_retry or not wants_retry:
            assert not decision.retry
        # Attempts are a budget: the retry would be attempt attempts + 1, within
        # max(1, max_attempts) (0 and 1 both mean a single attempt).
        if decision.retry:
            assert attempts + 1 <= max(1, max_attempts)
        # A retry after n attempts means a retry after fewer, with the same wait.
        if decision.retry and attempts > 0:
            earlier = at(attempts - 1)
            assert earlier.retry and earlier.delay == decision.delay
        # And one that is wanted, allowed, and within the budget happens.
        if wants_retry and not never_retry and attempts + 1 <= max(1, max_attempts):
            assert decision.retry
        if not decision.retry:
            assert decision.delay == 0.0
            continue
        # The wait: at least the strategy's delay, and the server's Retry-After honoured up to
        # the cap; never longer than the strategy's delay or the capped Retry-After asked for.
        assert decision.delay >= strategy_delay
        assert decision.delay <= max(strategy_delay, retry_after_cap)
        if retry_after is None:
            assert decision.delay == strategy_delay
        else:
            assert decision.delay >= min(retry_after, retry_after_cap)
            assert decision.delay <= max(strategy_delay, retry_after)
