"""Retry policy: whether to try again, and how long to wait first. Pure functions of numbers.

Rules and invariants:

- ``max_attempts`` counts attempts, not retries, as in aiodownload: 0 and 1 both mean a single
  attempt; ``Lenient(max_attempts=5)`` makes one attempt and up to 4 retries.
- A retry happens only when the strategy wants it, the failure is not of a never-retry kind and
  attempts remain.
- The wait is the strategy's delay, raised to the server's Retry-After when that is longer; a
  Retry-After is honoured up to ``retry_after_cap`` only, so a server cannot park a worker for
  days. No wait is ever negative: negative or NaN inputs count as 0.
- ``exponential_delay`` is ``base * 2 ** (attempt - 1)`` capped at ``cap``; it never overflows.
- ``parse_retry_after`` reads both forms of RFC 9110 Retry-After: delay-seconds (a decimal
  fraction such as ``1.5`` is also accepted, no sign or exponent) and an HTTP-date (a date without
  zone is taken as UTC; a past date means 0). Garbage, negative numbers, ``nan`` and ``inf`` give
  ``None``; a delay too large for a float is taken as the largest float (the cap then applies),
  since the server clearly asked for a long wait.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass
from datetime import UTC

_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+", re.ASCII)
_MAX_EXPONENT = 2048  # 2.0 ** 2048 overflows a float: beyond it every delay is the cap


def _clamp(value: float) -> float:
    """``value``, or 0.0 when it is negative or NaN."""
    return value if value > 0 else 0.0


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header value at POSIX time ``now``; None if unusable."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if _SECONDS.fullmatch(text):
        seconds = float(text)
        return seconds if math.isfinite(seconds) else sys.float_info.max
    when = http_date(text)
    if when is None:
        return None
    delta = when - now
    return _clamp(delta) if math.isfinite(delta) else None


def http_date(value: str) -> float | None:
    """The POSIX time an HTTP-date names (RFC 9110 5.6.7; a date without a zone is UTC);
    None if unusable."""
    from email.utils import parsedate_to_datetime  # noqa: PLC0415  (rare: kept off worker start)

    try:
        when = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    try:
        return when.timestamp()
    except (OverflowError, OSError, ValueError):
        return None


def exponential_delay(attempt: int, base: float = 0.25, cap: float = 60.0) -> float:
    """Delay before retry ``attempt`` (1 = the first retry): ``base * 2**(attempt-1)``, capped."""
    if attempt <= 0:
        return 0.0
    cap = _clamp(cap)
    base = _clamp(base)
    try:
        delay = math.ldexp(base, min(attempt - 1, _MAX_EXPONENT))
    except OverflowError:
        delay = math.inf
    return min(delay, cap)


def retry_delay(strategy_delay: float, retry_after: float | None, cap: float) -> float:
    """The wait before the next attempt: the strategy's delay or the capped Retry-After."""
    delay = _clamp(strategy_delay)
    if retry_after is None:
        return delay
    return max(delay, min(_clamp(retry_after), _clamp(cap)))


@dataclass(frozen=True)
class RetryDecision:
    """Whether to retry, after how many seconds, and a short reason for logs and bundles."""

    retry: bool
    delay: float
    reason: str


def decide(
    *,
    attempts: int,
    max_attempts: int,
    wants_retry: bool,
    never_retry: bool,
    strategy_delay: float,
    retry_after: float | None,
    retry_after_cap: float,
) -> RetryDecision:
    """Decide on a retry after ``attempts`` attempts have been made (the last one failed)."""
    limit = max(1, max_attempts)
    if never_retry:
        return RetryDecision(False, 0.0, "failure is never retried")
    if not wants_retry:
        return RetryDecision(False, 0.0, "strategy does not retry this failure")
    if attempts >= limit:
        return RetryDecision(False, 0.0, f"attempts exhausted ({attempts} of {limit})")
    delay = retry_delay(strategy_delay, retry_after, retry_after_cap)
    why = f"attempt {attempts + 1} of {limit} in {delay:g}s"
    if retry_after is not None:
        why += f" (Retry-After {retry_after:g}s, capped at {retry_after_cap:g}s)"
    return RetryDecision(True, delay, why)
